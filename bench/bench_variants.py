"""onnxruntime CPU latency of a package's precision variants (fp32 / fp16 / int8), medians in one run.

    python bench/bench_variants.py PKG [--runs 10] [--threads 2] [--k 10]

PKG is a package calibrated by fineparser-calibrate.  Every graph gets one session with `--threads`
intra-op threads; the encoder runs on one random uint8 clip, the pair head against K rows of the
package's bank.  Prints a table and the drift figures the manifest recorded for each variant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import median_seconds  # noqa: E402

from fineparser.package import ENCODER_INPUT, ENCODER_OUTPUTS, load_package  # noqa: E402
from fineparser.scoring import pair_feeds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    import onnxruntime as ort

    package = load_package(args.package)
    bank = package.bank()
    frames = np.random.default_rng(0).integers(0, 256, (1, 96, 112, 112, 3), dtype=np.uint8)
    rows = np.arange(min(args.k, len(bank)))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    print(f"onnxruntime {ort.__version__} CPUExecutionProvider, {args.threads} threads, medians of {args.runs} runs")
    print(f"{'variant':<8}{'encoder ms':>12}{'pair head ms':>14}{'encoder MB':>12}  drift (manifest)")
    for variant in ["fp32", *[v["name"] for v in package.variants if v.get("name") != "fp32"]]:
        files = package.variant_files(variant)
        enc = ort.InferenceSession(str(files["encoder"]), options, providers=["CPUExecutionProvider"])
        pair = ort.InferenceSession(str(files["pair_head"]), options, providers=["CPUExecutionProvider"])
        query = dict(zip(ENCODER_OUTPUTS, enc.run(list(ENCODER_OUTPUTS), {ENCODER_INPUT: frames})))
        feeds = pair_feeds(query, bank.pair_head_inputs(rows))
        t_enc = median_seconds(lambda s=enc: s.run(None, {ENCODER_INPUT: frames}), args.runs)
        t_pair = median_seconds(lambda s=pair, f=feeds: s.run(None, f), args.runs)
        record = next((v for v in package.variants if v.get("name") == variant), {})
        drift = record.get("drift") or {}
        note = (f"rho {drift['rho_vs_fp32']:.4f}, mean |d| {drift['mean_abs_delta']:.4f}, "
                f"max |d| {drift['max_abs_delta']:.3f} on {drift['clips']} clips" if drift else "reference")
        size = files["encoder"].stat().st_size / 1e6
        print(f"{variant:<8}{t_enc * 1000:>12.1f}{t_pair * 1000:>14.2f}{size:>12.2f}  {note}")


if __name__ == "__main__":
    main()
