"""Spotter cost per frame: the exported one-frame step graph in onnxruntime on the CPU.

For each trunk: parameters, FLOPs per frame (FlopCounterMode), and the median wall time of one
``spotter.onnx`` step (intra-op threads as given, state fed back each step) over `--steps` steps
after a warm-up, plus the median cost of ``spotter_frame`` bringing a 1280x720 frame to the input.
The goal of issue 15 is a median <= 3 ms per step on 2 CPU cores.  Weights are random (cost does
not depend on them).

    .venv/bin/python bench/bench_spotter_cost.py [--trunks mobilenetv3_small_050 regnety_002]
                                                 [--input 90x160] [--threads 2] [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from timing import median_seconds  # bench/timing.py (the script folder is on sys.path)

from export.spotter import export_spotter
from fineparser.onnx_session import CPU_PROVIDERS, onnx_session
from fineparser.spotter import DEFAULT_TRUNK, TRUNKS, Spotter, SpotterConfig
from fineparser.spotter_spec import INPUT_HW, SPOTTER_INPUTS, SPOTTER_OUTPUTS, SpotterSpec, spotter_frame

GOAL_MS = 3.0


def step_cost_ms(path: Path, spec: SpotterSpec, threads: int, steps: int, warmup: int) -> float:
    """Median ms of one session.run of the step graph, state fed back as a runtime does."""
    session = onnx_session(path, providers=CPU_PROVIDERS, threads=threads)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, spec.input_height, spec.input_width, 3), dtype=np.uint8)
    carry = {"state": spec.start_state(), "t": 0}

    def step() -> None:
        frame = frames[carry["t"] % len(frames)][None]
        _, carry["state"] = session.run(list(SPOTTER_OUTPUTS), {SPOTTER_INPUTS[0]: frame,
                                                                SPOTTER_INPUTS[1]: carry["state"]})
        carry["t"] += 1

    return median_seconds(step, steps, warmup) * 1e3


def main(argv: list[str] | None = None) -> int:
    """Export each trunk's spotter to a temporary folder, time its step graph, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunks", nargs="+", default=[DEFAULT_TRUNK, "regnety_002"], choices=TRUNKS)
    parser.add_argument("--input", default=f"{INPUT_HW[0]}x{INPUT_HW[1]}", help="HxW of the spotter input")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.input.lower().split("x"))

    broadcast = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    prepare_ms = median_seconds(lambda: spotter_frame(broadcast, (height, width)), args.steps, args.warmup) * 1e3
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for trunk in args.trunks:
            model = Spotter(SpotterConfig(trunk=trunk, input_height=height, input_width=width)).eval()
            record = export_spotter(model, Path(tmp) / trunk)
            spec = model.config.to_spec()
            ms = step_cost_ms(Path(tmp) / trunk / record["file"], spec, args.threads, args.steps, args.warmup)
            rows.append((trunk, record["params"], record["flops_per_frame"] / 1e6, record["size"] / 1e6, ms,
                         record["parity"]["max_abs_probs"]))

    print(f"\nspotter step cost, onnxruntime CPU, {args.threads} intra-op thread(s), input {height}x{width}, "
          f"median of {args.steps} steps after {args.warmup} warm-up; {os.cpu_count()} CPU(s) on this machine, "
          f"load {os.getloadavg()[0]:.2f}")
    header = f"{'trunk':<24}{'params':>12}{'MFLOPs/frame':>14}{'onnx MB':>10}{'ms/frame':>10}{'goal':>8}{'parity':>10}"
    print(header)
    print("-" * len(header))
    for trunk, params, mflops, size_mb, ms, parity in rows:
        verdict = "met" if ms <= GOAL_MS else "missed"
        print(f"{trunk:<24}{params:>12,}{mflops:>14.1f}{size_mb:>10.1f}{ms:>10.2f}{verdict:>8}{parity:>10.1e}")
    print(f"spotter_frame 1280x720 -> {height}x{width} (INTER_AREA): {prepare_ms:.2f} ms per frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
