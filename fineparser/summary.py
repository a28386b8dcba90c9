"""`python -m fineparser.summary --preset NAME`: parameters and FLOPs per part, and the decomposition gain.

`--spotter [TRUNK]` prints the spotter's figures instead (parameters, FLOPs per frame, input size).

FLOPs are counted by torch's FlopCounterMode on the meta device (no real arithmetic, so even the
`full` preset is summarised in seconds).  The paper's test procedure runs the whole network on
(query, exemplar) once per exemplar, both directions and mask logits included; ours encodes the
query once and runs the pair head batched over the exemplars, whose encodings are cached.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from fineparser.config import FineParserConfig
from fineparser.model import FineParser, QueryFeatures, parameter_counts
from fineparser.spotter import DEFAULT_TRUNK, TRUNKS, SpotterConfig, format_spotter_summary, summarise_spotter


def _flops_by_part(fn) -> tuple[int, dict[str, int]]:
    counter = FlopCounterMode(display=False, depth=2)
    with counter:
        fn()
    # Methods such as encode() are not module calls, so parts are named by their class here.
    per_part: dict[str, int] = defaultdict(int)
    for name, counts in counter.get_flop_counts().items():
        if "." not in name and name not in ("Global", "FineParser"):
            per_part[name] += sum(counts.values())
    return counter.get_total_flops(), dict(per_part)


def _params_by_class(model: FineParser) -> dict[str, tuple[list[str], int]]:
    groups: dict[str, tuple[list[str], int]] = {}
    counts = parameter_counts(model)
    for name, module in model.named_children():
        names, total = groups.get(type(module).__name__, ([], 0))
        groups[type(module).__name__] = (names + [name], total + counts[name])
    return groups


def summarise(preset: str, exemplars: int = 10) -> dict:
    """Parameter and FLOP figures of one preset (meta device)."""
    config = FineParserConfig.from_preset(preset)
    with torch.device("meta"):
        model = FineParser(config).eval()
        clip = torch.empty(1, 3, 96, 112, 112)
        query = model.encode(clip)
        bank = QueryFeatures(*(t.expand(exemplars, *t.shape[1:]) for t in
                               (query.window_features, query.transitions, query.transition_probs,
                                query.static_tokens)))
        encode_total, encode_parts = _flops_by_part(lambda: model.encode(clip))
        head_total, head_parts = _flops_by_part(lambda: model.pair_head(query, bank))
        pair_total, _ = _flops_by_part(lambda: model(clip, clip, with_masks=True))
    paper = exemplars * pair_total
    ours = encode_total + head_total
    return {"preset": preset, "params": parameter_counts(model), "groups": _params_by_class(model),
            "encode_flops": encode_parts,
            "encode_total": encode_total, "pair_head_flops": head_parts, "pair_head_total": head_total,
            "paper_total": paper, "ours_total": ours, "ratio": paper / ours, "exemplars": exemplars}


def format_summary(s: dict) -> str:
    """A readable table of `summarise` output."""
    lines = [f"FineParser preset '{s['preset']}'", "",
             f"{'part (official module names)':<52}{'params':>12}{'encode GFLOPs':>15}"
             f"{'pair head GFLOPs (K=' + str(s['exemplars']) + ')':>27}"]
    for cls, (names, n) in s["groups"].items():
        enc = s["encode_flops"].get(cls, 0) / 1e9
        head = s["pair_head_flops"].get(cls, 0) / 1e9
        label = f"{cls} ({', '.join(names)})"
        lines.append(f"{label:<52}{n:>12,}{enc:>15.3f}{head:>27.4f}")
    lines.append(f"{'total':<52}{sum(s['params'].values()):>12,}{s['encode_total'] / 1e9:>15.3f}"
                 f"{s['pair_head_total'] / 1e9:>27.4f}")
    lines += ["",
              f"paper test procedure ({s['exemplars']} x whole network per pair): {s['paper_total'] / 1e9:,.1f} GFLOPs",
              f"decomposed (1 encode + 1 batched pair head, exemplars cached): {s['ours_total'] / 1e9:,.1f} GFLOPs",
              f"ratio paper / ours: {s['ratio']:.1f}x"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the summary of one preset."""
    parser = argparse.ArgumentParser(prog="python -m fineparser.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=FineParserConfig.preset_names())
    parser.add_argument("--exemplars", type=int, default=10, help="voters per query (paper: 10)")
    parser.add_argument("--spotter", nargs="?", const=DEFAULT_TRUNK, choices=TRUNKS, metavar="TRUNK",
                        help=f"summarise the spotter instead (trunk: {', '.join(TRUNKS)}; default {DEFAULT_TRUNK})")
    args = parser.parse_args(argv)
    if args.spotter:
        print(format_spotter_summary(summarise_spotter(SpotterConfig(trunk=args.spotter))))
        return 0
    print(format_summary(summarise(args.preset, args.exemplars)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
