"""``fineparser-synth``: write a synthetic FineDiving-layout dataset and/or broadcast videos."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from fineparser.synth.broadcast import BROADCASTS_DIR, SIZES, generate_broadcasts
from fineparser.synth.dataset import GENERATED, generate_dataset, prepare_out_dir

log = logging.getLogger("fineparser.synth")


def _size(text: str) -> tuple[int, int]:
    if text in SIZES:
        return SIZES[text]
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must be WxH (e.g. 1280x720) or one of {sorted(SIZES)}")
    return int(match.group(1)), int(match.group(2))


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="fineparser-synth",
        description="Render synthetic dives in the FineDiving / FineDiving-HM layout "
        "(frames, diver masks, annotations, splits) and optional untrimmed broadcast videos.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (must be empty unless --overwrite)")
    p.add_argument(
        "--dives", type=int, default=300, help="number of dive clips to write (0: broadcasts only)"
    )
    p.add_argument("--seed", type=int, default=0, help="world seed; the same seed writes the same bytes")
    p.add_argument("--judges", type=int, choices=(5, 7), default=7, help="judges per panel")
    p.add_argument("--frame-height", type=int, default=256, help="clip frame height (16:9 width)")
    p.add_argument(
        "--jpeg-quality", type=int, default=90, help="JPEG quality of the RGB frames (masks use 100)"
    )
    p.add_argument("--dives-per-competition", type=int, default=24)
    p.add_argument("--dive-pool", type=int, default=None, metavar="N",
                        help="use only the first N dive numbers of each board (small sets with repeats)")
    p.add_argument("--workers", type=int, default=1, help="processes rendering dives in parallel")
    p.add_argument("--broadcasts", type=int, default=0, metavar="M", help="also write M broadcast videos")
    p.add_argument(
        "--broadcast-size",
        type=_size,
        default=(1280, 720),
        help="broadcast frame size: 720p, 1080p or WxH (even), default 1280x720",
    )
    p.add_argument("--broadcast-fps", type=float, default=25.0, help="broadcast frame rate (25 or 50)")
    p.add_argument("--broadcast-dives", type=int, default=4, help="dives per broadcast")
    p.add_argument(
        "--broadcast-short",
        action="store_true",
        help="short test programmes: idle 0.5-1 s, score graphic 1 s",
    )
    p.add_argument(
        "--replay-probability", type=float, default=0.5, help="chance of a slow-motion replay per dive"
    )
    p.add_argument("--overwrite", action="store_true", help="replace what an earlier run wrote in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the generator; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if args.dives < 0 or args.broadcasts < 0:
        log.error("--dives and --broadcasts must not be negative")
        return 2
    if args.dives == 0 and args.broadcasts == 0:
        log.error("nothing to do: --dives 0 and no --broadcasts")
        return 2
    try:
        prepare_out_dir(args.out, GENERATED + (BROADCASTS_DIR,), args.overwrite)
        lines = []
        if args.dives:
            summary = generate_dataset(
                args.out,
                args.dives,
                args.seed,
                num_judges=args.judges,
                frame_height=args.frame_height,
                jpeg_quality=args.jpeg_quality,
                dives_per_competition=args.dives_per_competition,
                workers=args.workers,
                dive_pool=args.dive_pool,
                overwrite=True,
                progress=not args.quiet,
            )
            lines.append(
                f"dataset: {summary.num_dives} dives, {summary.num_frames} frames, "
                f"{summary.bytes_written / 1e6:.1f} MB, train/test {summary.num_train}/{summary.num_test}, "
                f"{summary.frames_per_second:.0f} frames/s -> {args.out}"
            )
        if args.broadcasts:
            short = args.broadcast_short
            videos = generate_broadcasts(
                args.out,
                args.broadcasts,
                args.seed,
                size=args.broadcast_size,
                fps=args.broadcast_fps,
                dives_per_broadcast=args.broadcast_dives,
                idle_seconds=(0.5, 1.0) if short else (2.0, 4.0),
                score_seconds=1.0 if short else 3.0,
                replay_probability=args.replay_probability,
                num_judges=args.judges,
                overwrite=True,
                progress=not args.quiet,
            )
            for v in videos:
                lines.append(
                    f"broadcast: {v.video} ({v.num_dives} dives, {v.num_frames} frames at {v.fps:g} fps, "
                    f"{v.size[0]}x{v.size[1]}, {v.encoder})"
                )
    except (FileExistsError, NotADirectoryError, ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
