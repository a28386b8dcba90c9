"""Runtime benchmark: ingest rate of a 1080p50 H.264 broadcast, per-frame cost, dive-end-to-score latency.

    python bench/bench_runtime.py [--package PKG] [--backends onnxruntime,torch] [--full] [--seconds 8]

Ingest = decode (OpenCV FFmpeg) + ``prepare_frame_bgr`` + ring-buffer append on the capture thread,
with a consumer draining the buffer; the goal is >= 100 frames/s.  Latency = the scorer's work
after a dive ends (sample 96 frames, encode, pair head against K exemplars).  Without --package a
tiny package with random weights is exported into a cache folder (numbers then measure speed
only).  It reports; it never fails on a slow machine.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineparser.package import load_package  # noqa: E402
from fineparser.preprocess import prepare_frame_bgr  # noqa: E402
from fineparser.scoring import EdgeOffsets  # noqa: E402
from runtime.backends import load_backend, warm_up  # noqa: E402
from runtime.scorer import DiveScorer  # noqa: E402
from runtime.segments import Dive  # noqa: E402
from runtime.sources import CapturedFrame, CaptureThread, FrameBuffer, parse_source  # noqa: E402

log = logging.getLogger("bench_runtime")
CACHE = Path(tempfile.gettempdir()) / "fineparser-bench-runtime"


def broadcast_1080p50(seconds_idle: float) -> Path:
    """A one-dive 1920x1080 50 fps synthetic broadcast (cached)."""
    from synth import generate_broadcasts

    video = CACHE / "broadcasts" / "broadcast_000.mp4"
    if not video.is_file():
        generate_broadcasts(CACHE, 1, seed=5, size=(1920, 1080), fps=50.0, dives_per_broadcast=1,
                            idle_seconds=(seconds_idle, seconds_idle), score_seconds=1.0, replay_probability=0.0,
                            overwrite=True, progress=False)
    return video


def build_package(preset: str) -> Path:
    """Export a random-weight package of a preset with a bank from a tiny synthetic set (cached)."""
    out = CACHE / f"pkg_{preset}"
    if (out / "manifest.json").is_file():
        return out
    import torch

    from export.cli import main as export_main
    from fineparser.checkpoint import save_checkpoint
    from fineparser.config import FineParserConfig
    from fineparser.model import FineParser
    from synth import generate_dataset

    data = CACHE / "synth"
    if not (data / "synth.json").is_file():
        generate_dataset(data, 12, seed=3, dive_pool=2, progress=False, overwrite=True)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(CACHE / f"{preset}.pt", FineParser(FineParserConfig.from_preset(preset)).eval())
    rc = export_main([str(checkpoint), "--out", str(out), "--data-root", str(data), "--exemplars-per-dive", "10",
                      "--parity-clips", "1", "--no-masks-graph"])
    if rc != 0:
        raise SystemExit(f"export of the {preset} package failed (exit {rc})")
    return out


def per_frame_cost(video: Path, limit: int) -> tuple[list[float], list[float]]:
    """Decode and preprocess seconds of each frame, measured separately on this thread."""
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    decode, prepare = [], []
    while len(decode) < limit:
        t0 = time.perf_counter()
        ok, frame = capture.read()
        t1 = time.perf_counter()
        if not ok:
            break
        prepare_frame_bgr(frame)
        decode.append(t1 - t0)
        prepare.append(time.perf_counter() - t1)
    capture.release()
    return decode, prepare


def ingest_rate(video: Path) -> tuple[int, float]:
    """Frames and seconds for the capture thread to ingest the whole file while a consumer drains it."""
    buffer = FrameBuffer(100_000)
    thread = CaptureThread(parse_source(str(video)), buffer, lambda *a, **k: None)
    start = time.monotonic()
    thread.start()
    while buffer.read_next(0.5) is not None or not buffer.drained:
        pass
    thread.join()
    return thread.stats.frames, (thread.stats.finished_at or time.monotonic()) - start


def pct(values: list[float], q: float) -> float:
    """q-th percentile in milliseconds."""
    return float(np.percentile(values, q)) * 1000.0


def latency(package_dir: Path, backend_name: str, repeats: int) -> tuple[str, dict[int, list[float]]]:
    """Dive-end-to-score milliseconds of one backend on a 240-frame dive (96 sampled), by segments scored: the
    one segment as found, and the mean over the package's scoring.edge_offsets_s (when it names more than one)."""
    package = load_package(package_dir)
    bank = package.bank()
    backend = load_backend(backend_name, package)
    warm_up(backend, bank.pair_head_inputs(bank.select("", k=1)[0]))
    voters = int(package.manifest.get("scoring", {}).get("voter_number", 10))
    rng = np.random.default_rng(0)
    frames = [CapturedFrame(i, i / 50.0, rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for i in range(250)]
    lead, dive = frames[:10], frames[10:]
    dive_number = str(bank.dive_number[0])
    times: dict[int, list[float]] = {}
    for offsets in dict.fromkeys([EdgeOffsets(), package.edge_offsets()]):
        scorer = DiveScorer(backend, bank, voters, edge_offsets=offsets)
        for _ in range(repeats):
            ended = time.perf_counter()
            result = scorer.score(Dive(1, 0.2, 5.0, dive_number), dive, ended, lead=lead)
            times.setdefault(result.event["segments"], []).append(result.event["latency_ms"])
    return backend.description, times


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, help="package to time (default: a random-weight tiny export)")
    parser.add_argument("--backends", default="onnxruntime,torch")
    parser.add_argument("--full", action="store_true", help="also time a random-weight full-preset package")
    parser.add_argument("--idle", type=float, default=3.0, help="idle seconds before the dive in the broadcast")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cv2.setNumThreads(max(cv2.getNumThreads(), 1))

    video = broadcast_1080p50(args.idle)
    frames, seconds = ingest_rate(video)
    decode, prepare = per_frame_cost(video, limit=400)
    rows = [("ingest 1080p50 H.264 (capture thread)", f"{frames / seconds:.1f} frames/s ({frames} frames, "
             f"{seconds:.2f} s; goal >= 100)")]
    total = [d + p for d, p in zip(decode, prepare)]
    for name, values in (("decode", decode), ("prepare_frame_bgr", prepare), ("decode + prepare", total)):
        rows.append((f"per-frame {name}", f"p50 {pct(values, 50):.2f} ms, p99 {pct(values, 99):.2f} ms"))
    packages = [("tiny", args.package or build_package("tiny"))]
    if args.full:
        packages.append(("full", build_package("full")))
    for label, package_dir in packages:
        for name in [b for b in args.backends.split(",") if b]:
            try:
                description, times = latency(package_dir, name, args.repeats)
            except Exception as exc:  # a backend missing here is a row, not a failure
                rows.append((f"latency {label} {name}", f"unavailable: {exc}"))
                continue
            for segments, values in times.items():
                rows.append((f"latency {label} {description}, {segments} segment(s)",
                             f"median {statistics.median(values):.0f} ms, min {min(values):.0f} ms, "
                             f"max {max(values):.0f} ms ({len(values)} dives)"))
    width = max(len(r[0]) for r in rows)
    print(f"\nruntime benchmark ({cv2.getNumThreads()} OpenCV threads)")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
