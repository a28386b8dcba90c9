"""Untrimmed broadcast-like videos: several dives with idle time, replays, graphics and ground truth.

A programme is a sequence of segments at the programme frame rate: idle (diver on the board,
lower-third with name and dive), the live dive, an optional slow-motion replay, and the score
graphic.  A channel logo is on every frame.  The dives come from the same renderer as the dataset,
rendered directly at the programme size.  Frames are piped as raw RGB into ffmpeg (H.264); only
when no ffmpeg binary exists does OpenCV's ``mp4v`` writer take over.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np
from tqdm import tqdm

from fineparser.synth.dataset import Competition, SynthDive, prepare_out_dir, synth_dive
from fineparser.synth.dives import HEIGHTS
from fineparser.synth.render import render_frames

log = logging.getLogger(__name__)

BROADCASTS_DIR = "broadcasts"
CLIP_FPS = 25.0
"""Frame rate of the dive plans (dataset clips); broadcasts at other rates resample plan time."""
SIZES = MappingProxyType({"720p": (1280, 720), "1080p": (1920, 1080)})


def find_ffmpeg() -> str | None:
    """The system ``ffmpeg`` if on PATH, else imageio-ffmpeg's bundled binary, else None."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError, OSError):
        return None
    return exe if exe and os.path.exists(exe) else None


class VideoSink:
    """Write RGB frames to an MP4: H.264 through an ffmpeg pipe, else OpenCV's mp4v writer."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, crf: int = 23) -> None:
        self.path, self.size, self.fps = Path(path), size, fps
        self.frames = 0
        width, height = size
        exe = find_ffmpeg()
        self._proc: subprocess.Popen | None = None
        self._writer = None
        if exe:
            cmd = [
                exe,
                "-y",
                "-loglevel",
                "error",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-s",
                f"{width}x{height}",
                "-r",
                f"{fps:g}",
                "-i",
                "-",
                "-an",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-crf",
                str(crf),
                "-pix_fmt",
                "yuv420p",
                "-g",
                str(int(round(fps * 2))),
                "-movflags",
                "+faststart",
                "-fflags",
                "+bitexact",
                "-map_metadata",
                "-1",
                str(self.path),
            ]
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            self.encoder = f"ffmpeg libx264 ({exe})"
        else:
            self._writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
            )
            if not self._writer.isOpened():
                raise RuntimeError(f"no ffmpeg binary and OpenCV cannot write {self.path}")
            self.encoder = "opencv mp4v"
        log.info("encoding %s with %s", self.path.name, self.encoder)

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 RGB frame of the sink's size."""
        if frame.shape != (self.size[1], self.size[0], 3):
            raise ValueError(f"frame {frame.shape} does not match the video size {self.size}")
        if self._proc is not None:
            try:
                self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
            except BrokenPipeError:
                raise RuntimeError(
                    f"ffmpeg stopped: {self._proc.stderr.read().decode(errors='replace')}"
                ) from None
        else:
            self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Finish the file; raises if the encoder failed."""
        if self._proc is not None:
            self._proc.stdin.close()
            err = self._proc.stderr.read().decode(errors="replace")
            if self._proc.wait() != 0:
                raise RuntimeError(f"ffmpeg failed writing {self.path}: {err.strip()}")
            self._proc = None
        elif self._writer is not None:
            self._writer.release()
            self._writer = None


# ----------------------------------------------------------------------------- graphics


def _panel(
    frame: np.ndarray, x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int], alpha: float
) -> None:
    roi = frame[max(y0, 0) : y1, max(x0, 0) : x1]
    roi[:] = (roi * (1.0 - alpha) + np.array(colour, np.float32) * alpha).astype(np.uint8)


def _text(frame: np.ndarray, text: str, org: tuple[int, int], scale: float, colour=(255, 255, 255)) -> None:
    thick = max(1, int(round(scale * 2)))
    cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def _logo(frame: np.ndarray) -> None:
    h, w = frame.shape[:2]
    u = h / 720.0
    _panel(frame, int(w - 190 * u), int(24 * u), int(w - 24 * u), int(78 * u), (10, 40, 120), 0.8)
    _text(frame, "FPX SPORT", (int(w - 180 * u), int(62 * u)), 0.9 * u)


def _lower_third(frame: np.ndarray, lines: list[str], colour=(20, 20, 60)) -> None:
    h, w = frame.shape[:2]
    u = h / 720.0
    _panel(
        frame, int(60 * u), int(h - (60 + 44 * len(lines)) * u), int(w * 0.62), int(h - 40 * u), colour, 0.75
    )
    for i, line in enumerate(lines):
        _text(frame, line, (int(76 * u), int(h - (60 + 44 * (len(lines) - 1 - i)) * u - 12 * u)), 0.85 * u)


def _replay_banner(frame: np.ndarray) -> None:
    h, w = frame.shape[:2]
    u = h / 720.0
    _panel(frame, int(24 * u), int(24 * u), int(230 * u), int(78 * u), (170, 20, 20), 0.85)
    _text(frame, "REPLAY", (int(40 * u), int(64 * u)), 1.0 * u)


def _score_lines(dive: SynthDive) -> list[str]:
    judges = "  ".join(f"{s:.1f}" for s in dive.judge_scores)
    return [
        f"{dive.diver}   {dive.dive_number}   DD {dive.difficulty:.1f}",
        f"J: {judges}",
        f"SCORE {dive.final_score:.2f}",
    ]


# ----------------------------------------------------------------------------- programme


@dataclass(frozen=True)
class BroadcastSummary:
    """Files and facts of one written broadcast."""

    video: str
    ground_truth: str
    start_list: str
    num_frames: int
    fps: float
    size: tuple[int, int]
    num_dives: int
    encoder: str


def _emit(sink: VideoSink, frame: np.ndarray) -> None:
    """Write one programme frame with the channel logo on it."""
    frame = frame.copy()
    _logo(frame)
    sink.write(frame)


def _hold(frame: np.ndarray, count: int) -> Iterator[np.ndarray]:
    for _ in range(count):
        yield frame


def generate_broadcasts(
    out_dir: str | os.PathLike,
    num_broadcasts: int,
    seed: int = 0,
    *,
    size: tuple[int, int] = (1280, 720),
    fps: float = 25.0,
    dives_per_broadcast: int = 4,
    idle_seconds: tuple[float, float] = (2.0, 4.0),
    score_seconds: float = 3.0,
    replay_probability: float = 0.5,
    replay_speed: float = 0.4,
    num_judges: int = 7,
    overwrite: bool = False,
    progress: bool = True,
) -> list[BroadcastSummary]:
    """Write ``broadcasts/broadcast_NNN.mp4`` with ground-truth JSON and start-list CSV under ``out_dir``."""
    width, height = size
    if width % 2 or height % 2 or width < 64 or height < 36:
        raise ValueError(f"broadcast size must be even and at least 64x36, got {width}x{height}")
    if fps <= 0 or dives_per_broadcast < 1 or num_broadcasts < 1:
        raise ValueError("fps, dives_per_broadcast and num_broadcasts must be positive")
    if not 0.0 < replay_speed <= 1.0:
        raise ValueError("replay_speed must be in (0, 1]")
    folder = Path(out_dir) / BROADCASTS_DIR
    prepare_out_dir(folder, [p.name for p in folder.glob("*")] if folder.exists() else [], overwrite)
    step = CLIP_FPS / fps  # plan frames per programme frame
    results = []
    for b in tqdm(range(num_broadcasts), unit="video", disable=not progress, desc="synth broadcasts"):
        start = time.perf_counter()
        rng = np.random.default_rng([seed, b, 0xB0])
        board = HEIGHTS[int(rng.integers(len(HEIGHTS)))]
        gender = ("Women", "Men")[int(rng.integers(2))]
        bias = tuple(round(float(v), 4) for v in rng.normal(0.0, 0.2, size=num_judges))
        event = Competition(b, f"SynthWorldChampionships2026_{gender}{board}_final", board, num_judges, bias)
        dives = [
            synth_dive(
                seed,
                d,
                num_judges=num_judges,
                frame_height=height,
                frame_width=width,
                event=event,
                namespace=1000 + b,
            )
            for d in range(dives_per_broadcast)
        ]
        stem = f"broadcast_{b:03d}"
        sink = VideoSink(folder / f"{stem}.mp4", size, fps)
        truth = []

        try:
            for order, dive in enumerate(dives, start=1):
                plan, scene = dive.plan, dive.scene
                intro = [f"{order}. {dive.diver}", f"{dive.dive_number}   DD {dive.difficulty:.1f}"]
                first_frame = next(render_frames(plan, scene, [0.0]))[0]
                for frame in _hold(first_frame, int(round(rng.uniform(*idle_seconds) * fps))):
                    shown = frame.copy()
                    _lower_third(shown, intro)
                    _emit(sink, shown)
                times = np.arange(0.0, plan.num_frames - 1 + 1e-9, step)
                start_frame = sink.frames
                last = first_frame
                for frame, _ in render_frames(plan, scene, times):
                    _emit(sink, frame)
                    last = frame
                end_frame = sink.frames - 1
                replay = None
                if rng.random() < replay_probability:
                    r0 = max(plan.takeoff_end - 6.0, 0.0)
                    r1 = min(plan.entry_start + 12.0, plan.num_frames - 1.0)
                    replay_start = sink.frames
                    for frame, _ in render_frames(plan, scene, np.arange(r0, r1 + 1e-9, step * replay_speed)):
                        frame = frame.copy()
                        _replay_banner(frame)
                        _emit(sink, frame)
                    replay = {
                        "start_s": replay_start / fps,
                        "end_s": sink.frames / fps,
                        "start_frame": replay_start,
                        "end_frame": sink.frames - 1,
                    }
                score_start = sink.frames
                for frame in _hold(last, max(1, int(round(score_seconds * fps)))):
                    shown = frame.copy()
                    _lower_third(shown, _score_lines(dive), colour=(10, 60, 30))
                    _emit(sink, shown)
                truth.append(
                    {
                        "order": order,
                        "diver": dive.diver,
                        "dive_number": dive.dive_number,
                        "difficulty": dive.difficulty,
                        "judge_scores": list(dive.judge_scores),
                        "final_score": dive.final_score,
                        "expected_award": round(dive.expected_award, 4),
                        "quality": dive.quality.as_dict(),
                        "start_frame": start_frame,
                        "end_frame": end_frame,
                        "start_s": start_frame / fps,
                        "end_s": (end_frame + 1) / fps,
                        "takeoff_end_s": start_frame / fps + plan.takeoff_end / CLIP_FPS,
                        "entry_start_s": start_frame / fps + plan.entry_start / CLIP_FPS,
                        "replay": replay,
                        "score_graphic": {"start_s": score_start / fps, "end_s": sink.frames / fps},
                    }
                )
            # A little idle time after the last score so the last dive is not at the very end.
            for frame in _hold(last, int(round(1.0 * fps))):
                _emit(sink, frame)
        finally:
            sink.close()
        meta = {
            "video": f"{stem}.mp4",
            "fps": fps,
            "width": width,
            "height": height,
            "num_frames": sink.frames,
            "duration_s": sink.frames / fps,
            "encoder": sink.encoder,
            "seed": seed,
            "competition": event.name,
            "board": board,
            "dives": truth,
        }
        (folder / f"{stem}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        with open(folder / f"start_list_{b:03d}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["order", "diver", "dive_number", "difficulty"])
            for d in truth:
                writer.writerow([d["order"], d["diver"], d["dive_number"], f"{d['difficulty']:.1f}"])
        log.info(
            "wrote %s: %d dives, %d frames (%.1f s of video) in %.1f s",
            stem,
            len(dives),
            sink.frames,
            sink.frames / fps,
            time.perf_counter() - start,
        )
        results.append(
            BroadcastSummary(
                str(folder / f"{stem}.mp4"),
                str(folder / f"{stem}.json"),
                str(folder / f"start_list_{b:03d}.csv"),
                sink.frames,
                fps,
                size,
                len(dives),
                sink.encoder,
            )
        )
    return results
