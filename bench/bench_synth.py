"""Benchmark of the synthetic world: frames rendered per second on one core, dataset size per 100 dives.

Usage: ``python bench/bench_synth.py [--dives 20] [--seed 0]``.  A benchmark reports numbers; it never
fails because a machine is slow.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineparser.synth import generate_dataset, synth_dive  # noqa: E402
from fineparser.synth.render import render_frames  # noqa: E402


def _pin_to_one_core() -> str:
    """Run on a single CPU (where the OS allows it) so the numbers are per core."""
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        try:
            cpu = min(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpu})
            return f"pinned to cpu {cpu}"
        except OSError:
            pass
    return "not pinned (OpenCV single-threaded)"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a short table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dives", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    where = _pin_to_one_core()

    # 1) Rendering only, in memory (planning + background + drawing).
    start = time.perf_counter()
    rendered = 0
    for index in range(args.dives):
        dive = synth_dive(args.seed, index)
        for _frame, _mask in render_frames(dive.plan, dive.scene):
            rendered += 1
    render_s = time.perf_counter() - start

    # 2) The full writer: render + RGB JPEG + mask JPEG + annotations, one worker.
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        summary = generate_dataset(Path(tmp) / "world", args.dives, args.seed, progress=False)
        on_disk = sum(p.stat().st_size for p in (Path(tmp) / "world").rglob("*") if p.is_file())

    per_100 = on_disk / args.dives * 100 / 1e6
    print(f"fineparser-synth benchmark: {args.dives} dives, seed {args.seed}, {where}")
    print(f"{'measure':<44}{'value':>12}")
    print(f"{'frames rendered (in memory)':<44}{rendered:>12d}")
    print(f"{'render only, frames/s':<44}{rendered / render_s:>12.0f}")
    print(f"{'render + JPEG frames/masks written, frames/s':<44}{summary.frames_per_second:>12.0f}")
    print(f"{'frames per dive (mean)':<44}{summary.num_frames / args.dives:>12.1f}")
    print(f"{'dataset size per 100 dives, MB':<44}{per_100:>12.1f}")
    print(
        f"{'seconds for 300 dives at this speed (est.)':<44}"
        f"{300 * summary.num_frames / args.dives / summary.frames_per_second:>12.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
