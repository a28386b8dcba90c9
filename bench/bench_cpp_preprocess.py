"""Per-frame preprocessing cost, C++ (cpp_demo) against Python, on the same decoded 1080p frames.

Writes a lossless (FFV1) 1920x1080 video of natural-looking moving frames, then times, per frame,
``fineparser.preprocess.prepare_frame_bgr`` in Python and ``FramePreprocessor::prepare_frame_bgr``
in C++ (``fineparser_tool prepare --timing``) over the same frames, decoding excluded, and reports
medians, p90 and how many output bytes differ. Needs the C++ tool built (``make cpp``).

    .venv/bin/python bench/bench_cpp_preprocess.py [--frames 20] [--repeat 10] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fineparser.preprocess import prepare_frame_bgr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_cpp_demo import lossless_video, natural_frames, python_decode  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="distinct 1080p frames (default 20)")
    parser.add_argument("--repeat", type=int, default=10, help="passes over the frames (default 10)")
    parser.add_argument("--threads", type=int, default=0,
                        help="OpenCV threads on both sides (0: OpenCV's default, all cores)")
    parser.add_argument("--tool", type=Path, default=REPO / "build" / "cpp_demo" / "fineparser_tool")
    args = parser.parse_args()
    if not args.tool.is_file():
        sys.exit(f"error: {args.tool} does not exist: build it with `make cpp`")
    if args.threads:
        cv2.setNumThreads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        video = lossless_video(Path(tmp) / "programme_1080p.mkv", natural_frames(args.frames, 1080, 1920, seed=5))
        frames = python_decode(video)
        times = []
        outputs = [prepare_frame_bgr(frame) for frame in frames]  # warm-up (filter caches)
        for _ in range(args.repeat):
            for frame in frames:
                start = time.perf_counter()
                prepare_frame_bgr(frame)
                times.append((time.perf_counter() - start) * 1e3)
        command = [str(args.tool), "prepare", "--timing", "--repeat", str(args.repeat), "--out",
                   str(Path(tmp) / "cpp.bin"), *(["--threads", str(args.threads)] if args.threads else []), str(video)]
        cpp = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        got = np.fromfile(Path(tmp) / "cpp.bin", np.uint8).reshape(-1, 112, 112, 3)
    diff = np.abs(got.astype(np.int16) - np.stack(outputs).astype(np.int16))

    python = {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90))}
    print(f"per-frame prepare_frame_bgr, 1920x1080 -> 112x112, {len(frames)} frames x {args.repeat} passes, "
          f"OpenCV threads: Python {cv2.getNumThreads()}, C++ {cpp['opencv_threads']} ({cv2.__version__} / C++ "
          "build's OpenCV)")
    print(f"{'implementation':<34} {'median ms':>10} {'p90 ms':>8}")
    print(f"{'Python fineparser.preprocess':<34} {python['median_ms']:>10.3f} {python['p90_ms']:>8.3f}")
    print(f"{'C++ fineparser_core':<34} {cpp['median_ms']:>10.3f} {cpp['p90_ms']:>8.3f}")
    print(f"C++ is {python['median_ms'] / cpp['median_ms']:.1f}x faster (median); outputs: "
          f"{int(np.count_nonzero(diff))} of {diff.size} bytes differ, max {int(diff.max())} level(s)")


if __name__ == "__main__":
    main()
