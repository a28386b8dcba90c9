"""``fineparser-synth``: write a synthetic FineDiving-layout dataset and/or broadcast videos."""

from __future__ import annotations

import argparse
import inspect
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from synth.broadcast import BROADCASTS_DIR, SIZES, frame_rate, generate_broadcasts
from synth.dataset import GENERATED, generate_dataset, prepare_out_dir

log = logging.getLogger("synth")
_BROADCAST_DEFAULTS = {name: p.default for name, p in inspect.signature(generate_broadcasts).parameters.items()}
"""generate_broadcasts' defaults: the CLI shows and uses the same ones."""


def _size(text: str) -> tuple[int, int]:
    if text in SIZES:
        return SIZES[text]
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must be WxH (e.g. 1280x720) or one of {sorted(SIZES)}")
    return int(match.group(1)), int(match.group(2))


def _rate(text: str) -> str:
    try:
        frame_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return value


def _range(text: str) -> tuple[float, float]:
    """'0.25-0.5' -> (0.25, 0.5); '0.4' -> (0.4, 0.4)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(?:[-:,]\s*([0-9.]+)\s*)?", text)
    try:
        low = float(match.group(1))
        high = float(match.group(2)) if match.group(2) else low
    except (AttributeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number or a range LOW-HIGH, got {text!r}") from None
    if high < low:
        raise argparse.ArgumentTypeError(f"range {text!r} is reversed")
    return low, high


def _shown(name: str) -> str:
    value = _BROADCAST_DEFAULTS[name]
    return "-".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"


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
                        help="use only the N most dived numbers of each board (small sets with repeats)")
    p.add_argument("--workers", type=int, default=1, help="processes rendering dives in parallel")
    p.add_argument("--broadcasts", type=int, default=0, metavar="M", help="also write M broadcast videos")
    p.add_argument(
        "--broadcast-size",
        type=_size,
        default=(1280, 720),
        help="broadcast frame size: 720p, 1080p or WxH (even), default 1280x720",
    )
    p.add_argument(
        "--broadcast-fps",
        type=_rate,
        default=str(_BROADCAST_DEFAULTS["fps"]),
        help="broadcast frame rate, any positive rate: 25, 29.97 (= 30000/1001), 50, 59.94, 30000/1001 ...",
    )
    p.add_argument("--broadcast-dives", type=int, default=_BROADCAST_DEFAULTS["dives_per_broadcast"],
                   help="dives per broadcast")
    p.add_argument(
        "--broadcast-short",
        action="store_true",
        help="short test programmes: idle and cutaways 0.5-1 s, score graphic 1 s",
    )
    p.add_argument(
        "--camera-follow-probability", type=_probability, default=_BROADCAST_DEFAULTS["camera_follow_probability"],
        help="share of live dives shot by a camera that pans and zooms with the diver "
        f"({_shown('camera_follow_probability')})",
    )
    p.add_argument(
        "--follow-zoom", type=_range, default=_BROADCAST_DEFAULTS["follow_zoom"], metavar="LOW-HIGH",
        help=f"follow camera's zoom on the waiting diver, 1-2 ({_shown('follow_zoom')}); it widens in flight",
    )
    p.add_argument(
        "--cutaway-probability", type=_probability, default=_BROADCAST_DEFAULTS["cutaway_probability"],
        help="chance of each cutaway around a dive: close-up of the diver waiting, full-screen scoreboard "
        f"(the crowd less often) ({_shown('cutaway_probability')})",
    )
    p.add_argument(
        "--replay-probability", type=_probability, default=_BROADCAST_DEFAULTS["replay_probability"],
        help=f"chance that a dive is replayed ({_shown('replay_probability')})",
    )
    p.add_argument(
        "--max-replays", type=int, default=_BROADCAST_DEFAULTS["max_replays"],
        help=f"a replayed dive gets 1..N replays ({_shown('max_replays')})",
    )
    p.add_argument(
        "--replay-speed", type=_range, default=_BROADCAST_DEFAULTS["replay_speed"], metavar="LOW-HIGH",
        help=f"slow-motion factor of replays, a number or a range ({_shown('replay_speed')})",
    )
    p.add_argument(
        "--replay-zoom", type=_range, default=_BROADCAST_DEFAULTS["replay_zoom"], metavar="LOW-HIGH",
        help=f"replays' tighter framing, zoom 1-2 ({_shown('replay_zoom')})",
    )
    p.add_argument(
        "--replay-banner-probability", type=_probability, default=_BROADCAST_DEFAULTS["replay_banner_probability"],
        help=f"share of replays that carry a REPLAY banner ({_shown('replay_banner_probability')})",
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
                idle_seconds=(0.5, 1.0) if short else _BROADCAST_DEFAULTS["idle_seconds"],
                score_seconds=1.0 if short else _BROADCAST_DEFAULTS["score_seconds"],
                camera_follow_probability=args.camera_follow_probability,
                follow_zoom=args.follow_zoom,
                cutaway_probability=args.cutaway_probability,
                replay_probability=args.replay_probability,
                max_replays=args.max_replays,
                replay_speed=args.replay_speed,
                replay_zoom=args.replay_zoom,
                replay_banner_probability=args.replay_banner_probability,
                num_judges=args.judges,
                overwrite=True,
                progress=not args.quiet,
            )
            for v in videos:
                lines.append(
                    f"broadcast: {v.video} ({v.num_dives} dives, {v.num_frames} frames at {v.frame_rate} fps, "
                    f"{v.size[0]}x{v.size[1]}, {v.encoder})"
                )
    except (FileExistsError, NotADirectoryError, ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
