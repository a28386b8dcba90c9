"""Benchmark of the synthetic world: frames rendered per second on one core, dataset size per 100 dives,
and broadcast frames per second (render, compose, H.264 encode) at 320x180 and 640x360.

Usage: ``python bench/bench_synth.py [--dives 20] [--seed 0] [--broadcasts 2] [--broadcast-dives 3]``
(``--dives 0`` or ``--broadcasts 0`` skips that part).  Everything runs on one pinned core, the
ffmpeg encoder included (it inherits the pinning).  A benchmark reports numbers; it never fails
because a machine is slow.
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

from synth import generate_broadcasts, generate_dataset, synth_dive  # noqa: E402
from synth.render import render_frames  # noqa: E402


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
    parser.add_argument("--broadcasts", type=int, default=2, help="broadcasts per size (0: skip)")
    parser.add_argument("--broadcast-dives", type=int, default=3)
    args = parser.parse_args(argv)
    where = _pin_to_one_core()
    if args.dives > 0:
        _bench_dataset(args, where)
    if args.broadcasts > 0:
        _bench_broadcasts(args, where)
    return 0


def _bench_broadcasts(args: argparse.Namespace, where: str) -> None:
    """Broadcast frames per second with the default (honest) settings: cutaways, follow camera, replays."""
    print(f"broadcasts: {args.broadcasts} per size, {args.broadcast_dives} dives each, seed {args.seed}, "
          f"25 fps, default settings, {where}")
    print(f"{'size':<12}{'frames':>10}{'seconds':>10}{'frames/s':>10}{'s per 4-dive broadcast':>24}")
    for size in ((320, 180), (640, 360)):
        with tempfile.TemporaryDirectory(prefix="bench_broadcast_") as tmp:
            start = time.perf_counter()
            videos = generate_broadcasts(tmp, args.broadcasts, args.seed, size=size,
                                         dives_per_broadcast=args.broadcast_dives, progress=False)
            seconds = time.perf_counter() - start
        frames = sum(v.num_frames for v in videos)
        per_broadcast = seconds / args.broadcasts * 4 / args.broadcast_dives
        print(f"{size[0]}x{size[1]:<8}{frames:>10d}{seconds:>10.1f}{frames / seconds:>10.0f}{per_broadcast:>24.1f}")


def _bench_dataset(args: argparse.Namespace, where: str) -> None:
    """Dataset rendering: in memory, then written as JPEGs with annotations."""
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


if __name__ == "__main__":
    sys.exit(main())
