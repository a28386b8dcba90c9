"""Export time, package file sizes and onnxruntime CPU latency of the exported graphs, per preset.

    python bench/bench_export.py --presets tiny full --runs 5

Each preset: a random-weight model is saved as a checkpoint and exported with `fineparser-export`
(no bank, one random parity clip), then encoder.onnx (one clip) and pair_head.onnx (K exemplars)
are timed with onnxruntime on the CPU: medians of several runs after one warm-up.  Reports
numbers; never fails on a slow machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import median_seconds  # bench/timing.py (the script folder is on sys.path)


def bench_preset(preset: str, runs: int, exemplars: int, workdir: Path) -> dict[str, float]:
    """Export one preset and time its graphs; returns seconds and bytes."""
    import onnxruntime as ort
    import torch

    from export.cli import main as export_main
    from fineparser.checkpoint import save_checkpoint
    from fineparser.config import FineParserConfig
    from fineparser.model import FineParser

    torch.manual_seed(0)
    checkpoint = save_checkpoint(workdir / f"{preset}.pt", FineParser(FineParserConfig.from_preset(preset)).eval())
    package = workdir / f"{preset}-package"
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the parity table
        rc = export_main([str(checkpoint), "--out", str(package), "--parity-clips", "1"])
    export_s = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"export of {preset} failed with exit code {rc}")
    manifest = json.loads((package / "manifest.json").read_text())
    sizes = {name: entry["size"] for name, entry in manifest["files"].items()}

    options = ort.SessionOptions()
    encoder = ort.InferenceSession(str(package / "encoder.onnx"), options, providers=["CPUExecutionProvider"])
    pair_head = ort.InferenceSession(str(package / "pair_head.onnx"), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, 96, 112, 112, 3), dtype=np.uint8)
    query = dict(zip([o.name for o in encoder.get_outputs()], encoder.run(None, {"frames": frames})))
    feed = {f"query_{k}": query[k] for k in ("window_features", "transitions", "static_tokens")}
    feed.update({f"exemplar_{k}": np.repeat(query[k], exemplars, axis=0)
                 for k in ("window_features", "transitions", "static_tokens")})
    return {
        "export_s": export_s,
        "parity_s": manifest["parity"]["seconds"],
        "encoder_mb": sizes["encoder.onnx"] / 1e6,
        "encoder_masks_mb": sizes.get("encoder_masks.onnx", 0) / 1e6,
        "pair_head_mb": sizes["pair_head.onnx"] / 1e6,
        "encoder_ms": 1000 * median_seconds(lambda: encoder.run(None, {"frames": frames}), runs),
        "pair_head_ms": 1000 * median_seconds(lambda: pair_head.run(None, feed), max(runs, 20)),
        "score_drift": manifest["parity"]["score_drift"]["max"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "full"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--exemplars", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("export").setLevel(logging.ERROR)  # "no --data-root" is intended here
    import onnxruntime as ort
    import torch

    print(f"onnxruntime {ort.__version__} CPU, torch {torch.__version__}, {os.cpu_count()} cores; medians of "
          f"{args.runs} runs (pair head: of {max(args.runs, 20)})")
    header = (f"{'preset':<7}{'export s':>9}{'parity s':>9}{'encoder MB':>11}{'masks MB':>9}{'pair MB':>8}"
              f"{'encoder ms':>11}{'pair K=' + str(args.exemplars) + ' ms':>14}{'drift':>10}")
    print(header)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for preset in args.presets:
            r = bench_preset(preset, args.runs, args.exemplars, Path(tmp))
            print(f"{preset:<7}{r['export_s']:>9.1f}{r['parity_s']:>9.1f}{r['encoder_mb']:>11.1f}"
                  f"{r['encoder_masks_mb']:>9.1f}{r['pair_head_mb']:>8.2f}{r['encoder_ms']:>11.1f}"
                  f"{r['pair_head_ms']:>14.2f}{r['score_drift']:>10.1e}", flush=True)


if __name__ == "__main__":
    main()
