"""CPU latency of `encode` (one clip) and `pair_head` (K exemplars) per preset: medians of several runs.

    python bench/bench_model.py --presets tiny full --runs 5

Reports numbers; never fails on a slow machine.
"""

from __future__ import annotations

import argparse

import torch
from timing import median_seconds  # bench/timing.py (the script folder is on sys.path)

from fineparser.config import FineParserConfig
from fineparser.model import FineParser, QueryFeatures


@torch.inference_mode()
def bench_preset(preset: str, runs: int, exemplars: int) -> dict[str, float]:
    """Encode and pair-head medians (seconds) for one preset."""
    torch.manual_seed(0)
    model = FineParser(FineParserConfig.from_preset(preset)).eval()
    clip = torch.randn(1, 3, 96, 112, 112)
    query = model.encode(clip)
    bank = QueryFeatures.cat([query] * exemplars)
    return {
        "encode_s": median_seconds(lambda: model.encode(clip), runs),
        "pair_head_s": median_seconds(lambda: model.pair_head(query, bank), max(runs, 10)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "full"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--exemplars", type=int, default=10)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'preset':<8}{'encode (s, median)':>20}{'pair_head K=' + str(args.exemplars) + ' (ms, median)':>30}")
    for preset in args.presets:
        r = bench_preset(preset, args.runs, args.exemplars)
        print(f"{preset:<8}{r['encode_s']:>20.3f}{r['pair_head_s'] * 1000:>30.2f}", flush=True)


if __name__ == "__main__":
    main()
