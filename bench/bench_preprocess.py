"""Preprocessing: closeness to the paper's PIL resize, and the per-frame cost the runtime pays.

Prints, for a synthetic natural-looking frame, the absolute difference (uint8 levels) between
``fineparser.preprocess.resize_frame`` and PIL's ``Image.resize((112, 200), BILINEAR)`` (what
the paper's torchvision Resize runs) at the dataset's 455x256 and at 1920x1080, with OpenCV's
INTER_AREA for reference, and the median cost of ``prepare_frame`` on a 1920x1080 frame.

    .venv/bin/python bench/bench_preprocess.py [--runs 200]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from PIL import Image

from fineparser import preprocess


def natural_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients + blotchy texture + noise + hard-edged blocks, as uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        image[..., c] = (
            128 + 60 * np.sin(x / (17 + 5 * c) + y / (23 + 3 * c)) + 30 * np.cos(x * y / (4000 + 500 * c))
        )
    blobs = rng.normal(0, 1, (height // 4 + 1, width // 4 + 1, 3)).astype(np.float32)
    image += 25 * cv2.resize(blobs, (width, height)) + rng.normal(0, 8, (height, width, 3))
    for _ in range(8):
        top, left = rng.integers(0, height - 20), rng.integers(0, width - 20)
        image[top : top + rng.integers(5, 60), left : left + rng.integers(3, 40)] = rng.integers(0, 255, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def median_ms(call, runs: int) -> float:
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    print("resize to 112x200 vs PIL BILINEAR (uint8 levels)")
    print(f"{'frame':>10}  {'method':<24} {'max':>4} {'mean':>7}")
    for height, width in ((256, 455), (1080, 1920)):
        frame = natural_frame(height, width)
        reference = np.asarray(Image.fromarray(frame).resize((112, 200), Image.BILINEAR)).astype(np.int32)
        for name, resized in (
            ("fineparser.resize_frame", preprocess.resize_frame(frame)),
            ("cv2 INTER_AREA", cv2.resize(frame, (112, 200), interpolation=cv2.INTER_AREA)),
        ):
            diff = np.abs(resized.astype(np.int32) - reference)
            print(f"{width:>5}x{height:<4}  {name:<24} {diff.max():>4d} {diff.mean():>7.3f}")

    big = natural_frame(1080, 1920, seed=1)
    big_bgr = np.ascontiguousarray(big[:, :, ::-1])
    print(f"\nper-frame cost on 1920x1080, median of {args.runs} runs (cv2 threads: {cv2.getNumThreads()})")
    rows = (
        ("prepare_frame (RGB in)", lambda: preprocess.prepare_frame(big)),
        ("prepare_frame_bgr", lambda: preprocess.prepare_frame_bgr(big_bgr)),
        ("cv2 INTER_AREA resize", lambda: cv2.resize(big, (112, 200), interpolation=cv2.INTER_AREA)),
        ("PIL BILINEAR resize", lambda: Image.fromarray(big).resize((112, 200), Image.BILINEAR)),
    )
    for name, call in rows:
        print(f"  {name:<24} {median_ms(call, args.runs):7.3f} ms")


if __name__ == "__main__":
    main()
