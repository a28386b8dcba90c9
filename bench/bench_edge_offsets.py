"""How much a dive's score moves with its boundaries, and how much averaging over moved boundaries helps.

    python bench/bench_edge_offsets.py --package demo/package --out runs/edge/grid.json \
        runs/bench_spotter2/*/broadcasts/broadcast_*.mp4 [--radius 4]

For every true dive of the given bench broadcasts (their `.json` ground truth beside them), the scorer's own
path (96 frames sampled over the segment, encoder, pair head against the dive number's exemplars,
`fineparser.scoring`) scores the segment with its start moved by each of -R..R frames and its end by each of
-R..R frames ((2R + 1)^2 scores a dive, cached in --out; a rerun with the same --out only reads them). Then,
for each averaging kernel (a set of (start, end) offsets in frames, as `scoring.edge_offsets_s` makes them
at 25 fps), it reports the median over dives of |A(s, e) - A(0, 0)|, A the kernel's mean score around the
boundaries moved by (s, e): what a segmenter off by (s, e) frames changes in the score, and Spearman rho of
A(0, 0) against the judges, and the one segment's median signed change when one boundary moves (the trend
under the noise). Numbers, never pass/fail; one run is deterministic (onnxruntime on the CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineparser import spec  # noqa: E402
from fineparser.package import load_package  # noqa: E402
from fineparser.preprocess import box_reduce_frame, prepare_frame_bgr, sample_frame_indices  # noqa: E402
from fineparser.scoring import pair_feeds, score_dive, select_exemplars  # noqa: E402
from runtime.backends import load_backend  # noqa: E402

KERNELS = {
    "one segment (as found)": [(0, 0)],
    "start {-2,0,2} x end {-2,0} (--edge-average)": [(a, b) for a in (-2, 0, 2) for b in (-2, 0)],
    "start {-2,2} x end {-2,0}": [(a, b) for a in (-2, 2) for b in (-2, 0)],
    "start {-2,0,2} x end {0}": [(a, 0) for a in (-2, 0, 2)],
    "start {0} x end {-2,0}": [(0, b) for b in (-2, 0)],
    "start {-1,0,1} x end {-1,0}": [(a, b) for a in (-1, 0, 1) for b in (-1, 0)],
    "start {-2,0,2} x end {-2,0,2}": [(a, b) for a in (-2, 0, 2) for b in (-2, 0, 2)],
    "start {-2..2} x end {-2..2}": [(a, b) for a in range(-2, 3) for b in range(-2, 3)],
}
SHIFTS = [(2, -2), (1, -1), (-1, 1), (2, 0), (0, -2), (2, 2), (-2, -2)]


def score_grid(package: Path, videos: list[Path], radius: int) -> list[dict]:
    """Scores of every true dive of `videos` with start and end each moved by -radius..radius frames."""
    loaded = load_package(package)
    backend = load_backend("onnxruntime", loaded)
    bank = loaded.bank()
    voters = int(loaded.manifest.get("scoring", {}).get("voter_number", 10))
    records, started = [], time.perf_counter()
    for video in videos:
        truth = json.loads(video.with_suffix(".json").read_text())
        capture, frames = cv2.VideoCapture(str(video)), []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(prepare_frame_bgr(box_reduce_frame(frame)))
        capture.release()
        for dive in truth["dives"]:
            first, last = dive["start_frame"], dive["end_frame"]
            indices, _ = select_exemplars(bank, dive["dive_number"], voters)
            feeds = bank.pair_head_inputs(indices)
            grid = {}
            for ds in range(-radius, radius + 1):
                for de in range(-radius, radius + 1):
                    lo, hi = max(0, first + ds), min(len(frames) - 1, last + de)
                    clip = np.stack([frames[lo + i] for i in sample_frame_indices(0, hi - lo, spec.NUM_FRAMES)])
                    query = backend.encode(clip[None])
                    grid[f"{ds},{de}"] = score_dive(bank.final_score[indices],
                                                    *backend.pair_head(pair_feeds(query, feeds))).final
            records.append({"video": str(video), "dive": dive["order"], "judges": dive["final_score"], "grid": grid})
            print(f"{video.parent.parent.name}/{video.name} dive {dive['order']}: {grid['0,0']:.2f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    return records


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def report(records: list[dict]) -> dict:
    """Per kernel: median |A(shift) - A(0, 0)| for each shift the grid can hold, and rho of A(0, 0) vs judges."""
    radius = max(int(key.split(",")[0]) for key in records[0]["grid"])
    judges = [r["judges"] for r in records]
    out = {}
    for name, kernel in KERNELS.items():
        def mean(r: dict, ds: int, de: int, kernel: list = kernel) -> float | None:
            keys = [f"{ds + a},{de + b}" for a, b in kernel]
            return float(np.mean([r["grid"][k] for k in keys])) if all(k in r["grid"] for k in keys) else None

        found = [mean(r, 0, 0) for r in records]
        row = {"rho_vs_judges": _spearman(found, judges), "segments": len(kernel)}
        for ds, de in SHIFTS:
            moved = [mean(r, ds, de) for r in records]
            if all(m is not None for m in moved):
                row[f"shift {ds:+d},{de:+d}"] = float(np.median(np.abs(np.subtract(moved, found))))
        span = radius - max(max(abs(a), abs(b)) for a, b in kernel)
        every = [abs(mean(r, ds, de) - f) for r, f in zip(records, found)
                 for ds in range(-span, span + 1) for de in range(-span, span + 1)]
        row[f"every shift within {span}"] = float(np.median(every))
        out[name] = row
    # The trend under the noise: the median signed change of the one segment when one boundary moves.
    trend = {}
    for ds, de in [(0, -radius), (0, -2), (0, 2), (-2, 0), (2, 0)]:
        changes = [r["grid"][f"{ds},{de}"] - r["grid"]["0,0"] for r in records]
        trend[f"shift {ds:+d},{de:+d}"] = float(np.median(changes))
    return {"dives": len(records), "radius": radius, "kernels": out, "one_segment_signed_median": trend}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="+", type=Path, help="bench broadcasts (.mp4 with their .json beside them)")
    parser.add_argument("--package", type=Path, default=Path("demo/package"))
    parser.add_argument("--out", type=Path, required=True, help="grid cache (JSON); the report goes beside it")
    parser.add_argument("--radius", type=int, default=4, help="frames each boundary is moved either way")
    args = parser.parse_args(argv)
    if args.out.is_file():
        records = json.loads(args.out.read_text())
    else:
        records = score_grid(args.package, args.videos, args.radius)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records))
    result = report(records)
    args.out.with_suffix(".report.json").write_text(json.dumps(result, indent=2))
    print(f"{result['dives']} dives, boundaries moved by up to {result['radius']} frames; median |score change|:")
    for name, row in result["kernels"].items():
        figures = "  ".join(f"{k}: {v:.2f}" for k, v in row.items() if k.startswith(("shift", "every")))
        print(f"  {name:<44} ({row['segments']} segments)  rho {row['rho_vs_judges']:.3f}  {figures}")
    print("  one segment, median signed change: " + "  ".join(
        f"{k}: {v:+.2f}" for k, v in result["one_segment_signed_median"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
