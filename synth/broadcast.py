"""Untrimmed broadcast-like videos: several dives with idle time, cutaways, replays, graphics and ground truth.

A programme is a sequence of shots at the programme frame rate (any positive rate; 29.97 and 59.94
are the NTSC rates 30000/1001 and 60000/1001).  Around every dive: optional cutaways (the crowd, a
close-up of the diver waiting, a full-screen scoreboard), the diver waiting on the board with a
lower-third, the live dive (static camera, or a camera that pans and zooms to follow the diver),
the camera staying on the pool, zero or more slow-motion replays (0.25-0.5x, tighter framing, cut
or wipe in, a REPLAY banner on some only) and the score graphic.  A channel logo is on every frame.

Every frame's class (:data:`fineparser.spotter_spec.CLASS_NAMES`: idle, approach, flight, entry,
replay; cutaways and graphics are idle) is recorded as the frame is written and goes into the JSON
as run-length spans, which :mod:`fineparser.broadcast_labels` reads back.  The live phases follow
the dataset's step labels (synth.render.frame_labels): a frame at clip time ``t`` is approach while
``t <= takeoff_end``, entry from ``entry_start`` on, flight in between.

The dives come from the same renderer as the dataset, rendered directly at the programme size;
camera moves are a window on that frame (a sub-pixel crop resized: a digital zoom of at most 2x, which the
spotter's 160x90 input cannot tell from an optical one at 320x180 and above).  Frames are piped as raw
RGB into ffmpeg (H.264); only when no ffmpeg binary exists does OpenCV's ``mp4v`` writer take over.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np
from tqdm import tqdm

from fineparser.broadcast_labels import class_spans, frame_rate
from fineparser.spotter_spec import APPROACH, CLASS_NAMES, ENTRY, FLIGHT, IDLE, REPLAY
from synth.dataset import SYNTH_VERSION, Competition, SynthDive, prepare_out_dir, synth_dive
from synth.dives import HEIGHTS
from synth.render import HAIR, SKIN, STRIPE, SUIT, DivePlan, Scene, camera_offsets, pose_at, render_frames

log = logging.getLogger(__name__)

BROADCASTS_DIR = "broadcasts"
CLIP_FPS = 25.0
"""Frame rate of the dive plans (dataset clips); broadcasts at other rates resample plan time."""
SIZES = MappingProxyType({"720p": (1280, 720), "1080p": (1920, 1080)})
MAX_ZOOM = 2.0
"""Largest digital zoom of a camera window (follow camera, replays)."""


def _rate_text(rate: Fraction) -> str:
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


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

    def __init__(self, path: Path, size: tuple[int, int], fps: float | Fraction, crf: int = 23) -> None:
        rate = frame_rate(fps)
        self.path, self.size, self.fps = Path(path), size, float(rate)
        self.frames = 0
        width, height = size
        exe = find_ffmpeg()
        self._proc: subprocess.Popen | None = None
        self._writer = None
        if exe:
            cmd = [
                exe, "-y", "-loglevel", "error",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", _rate_text(rate), "-i", "-",
                "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
                "-g", str(max(1, int(round(float(rate) * 2)))), "-movflags", "+faststart",
                "-fflags", "+bitexact", "-map_metadata", "-1", str(self.path),
            ]  # fmt: skip
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            self.encoder = f"ffmpeg libx264 ({exe})"
        else:
            self._writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), float(rate), (width, height)
            )
            if not self._writer.isOpened():
                raise RuntimeError(f"no ffmpeg binary and OpenCV cannot write {self.path}")
            self.encoder = "opencv mp4v"
        log.info("encoding %s with %s", self.path.name, self.encoder)

    def write(self, frame: np.ndarray, copies: int = 1) -> None:
        """Append a uint8 RGB frame of the sink's size (``copies`` times: a held picture)."""
        if frame.shape != (self.size[1], self.size[0], 3):
            raise ValueError(f"frame {frame.shape} does not match the video size {self.size}")
        if self._proc is not None:
            data = np.ascontiguousarray(frame).data
            try:
                for _ in range(copies):
                    self._proc.stdin.write(data)
            except BrokenPipeError:
                raise RuntimeError(
                    f"ffmpeg stopped: {self._proc.stderr.read().decode(errors='replace')}"
                ) from None
        else:
            bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            for _ in range(copies):
                self._writer.write(bgr)
        self.frames += copies

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


# ----------------------------------------------------------------------------- settings


def _span(value: float | Sequence[float], name: str) -> tuple[float, float]:
    """A (low, high) range from a number or a pair."""
    if isinstance(value, (int, float)):
        return float(value), float(value)
    low, high = (float(v) for v in value)
    if high < low:
        raise ValueError(f"{name} range ({low}, {high}) is reversed")
    return low, high


@dataclass(frozen=True)
class BroadcastSettings:
    """How broadcasts are made; written to every broadcast's JSON as ``settings``."""

    width: int
    height: int
    frame_rate: str  # exact, "25" or "30000/1001"
    fps: float
    dives_per_broadcast: int
    idle_seconds: tuple[float, float]  # diver waiting on the board; every cutaway lasts as long
    score_seconds: float
    camera_follow_probability: float  # share of live dives shot by a camera that pans and zooms with the diver
    follow_zoom: tuple[float, float]  # zoom on the waiting diver; in flight it widens to 70-85 % of it (>= 1)
    cutaway_probability: float  # chance of each cutaway (close-up before a dive, scoreboard after; crowd less)
    replay_probability: float  # chance that a dive is replayed at all
    max_replays: int  # a replayed dive gets 1..max_replays replays
    replay_speed: tuple[float, float]  # slow-motion factor range
    replay_zoom: tuple[float, float]  # replay framing (zoom on the live frame)
    replay_banner_probability: float  # share of replays with a REPLAY banner
    num_judges: int
    seed: int
    world_version: str = SYNTH_VERSION

    def validate(self) -> BroadcastSettings:
        """Check the values; ValueError names the one that is wrong."""
        if self.width % 2 or self.height % 2 or self.width < 64 or self.height < 36:
            raise ValueError(f"broadcast size must be even and at least 64x36, got {self.width}x{self.height}")
        if self.dives_per_broadcast < 1:
            raise ValueError("dives_per_broadcast must be positive")
        for name in ("camera_follow_probability", "cutaway_probability", "replay_probability",
                     "replay_banner_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.replay_speed[0] <= self.replay_speed[1] <= 1.0:
            raise ValueError(f"replay_speed must lie in (0, 1], got {self.replay_speed}")
        for name in ("follow_zoom", "replay_zoom"):
            low, high = getattr(self, name)
            if not 1.0 <= low <= high <= MAX_ZOOM:
                raise ValueError(f"{name} must lie in [1, {MAX_ZOOM}], got {(low, high)}")
        if self.max_replays < 1:
            raise ValueError(f"max_replays must be at least 1, got {self.max_replays}")
        if not 0.0 < self.idle_seconds[0] <= self.idle_seconds[1] or self.score_seconds <= 0:
            raise ValueError("idle_seconds and score_seconds must be positive")
        return self


# ----------------------------------------------------------------------------- graphics


@dataclass(frozen=True)
class _Overlay:
    """A semi-transparent graphic at a fixed place: frame = frame * keep + paint."""

    x: int
    y: int
    keep: np.ndarray  # float32 [h, w, 1]: 1 - alpha
    paint: np.ndarray  # float32 [h, w, 3]: colour * alpha

    def apply(self, frame: np.ndarray) -> None:
        """Draw onto the frame in place."""
        h, w = self.keep.shape[:2]
        roi = frame[self.y : self.y + h, self.x : self.x + w]
        roi[:] = (roi * self.keep + self.paint).astype(np.uint8)


def _overlay(size: tuple[int, int], box: tuple[float, float, float, float], colour: Sequence[int], alpha: float,
             texts: Sequence[tuple[str, tuple[float, float], float]]) -> _Overlay:
    """A panel (frame coordinates x0, y0, x1, y1) with white anti-aliased text lines [(text, origin, scale)]."""
    width, height = size
    x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
    x1, y1 = max(min(int(box[2]), width), x0 + 1), max(min(int(box[3]), height), y0 + 1)
    patch = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    patch[:] = colour
    ink = np.zeros(patch.shape[:2], np.uint8)
    for text, (tx, ty), scale in texts:
        thick = max(1, int(round(scale * 2)))
        org = (int(tx) - x0, int(ty) - y0)
        cv2.putText(patch, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
        cv2.putText(ink, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
    a = np.maximum(np.float32(alpha), ink.astype(np.float32) / 255.0)[..., None]
    return _Overlay(x0, y0, 1.0 - a, patch.astype(np.float32) * a)


def _logo(size: tuple[int, int]) -> _Overlay:
    w, h = size
    u = h / 720.0
    return _overlay(size, (w - 190 * u, 24 * u, w - 24 * u, 78 * u), (10, 40, 120), 0.8,
                    [("FPX SPORT", (w - 180 * u, 62 * u), 0.9 * u)])


def _lower_third(size: tuple[int, int], lines: list[str], colour=(20, 20, 60)) -> _Overlay:
    w, h = size
    u = h / 720.0
    box = (60 * u, h - (60 + 44 * len(lines)) * u, w * 0.62, h - 40 * u)
    texts = [(line, (76 * u, h - (60 + 44 * (len(lines) - 1 - i)) * u - 12 * u), 0.85 * u)
             for i, line in enumerate(lines)]
    return _overlay(size, box, colour, 0.75, texts)


def _replay_banner(size: tuple[int, int]) -> _Overlay:
    w, h = size
    u = h / 720.0
    return _overlay(size, (24 * u, 24 * u, 230 * u, 78 * u), (170, 20, 20), 0.85,
                    [("REPLAY", (40 * u, 64 * u), 1.0 * u)])


def _score_lines(dive: SynthDive) -> list[str]:
    judges = "  ".join(f"{s:.1f}" for s in dive.judge_scores)
    return [
        f"{dive.diver}   {dive.dive_number}   DD {dive.difficulty:.1f}",
        f"J: {judges}",
        f"SCORE {dive.final_score:.2f}",
    ]


# ----------------------------------------------------------------------------- cutaways (drawn once, then moved)


def _crowd_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Spectators in the stands, 1.5 frames wide (a cutaway pans across it)."""
    width, height = size
    w = int(width * 1.5)
    top, bottom = rng.uniform(15, 60, size=3), rng.uniform(40, 110, size=3)
    col = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    img = np.repeat((top * (1 - col) + bottom * col).astype(np.uint8), w, axis=1)
    rows = 5
    for r in range(rows):  # back rows first: the front rows hide them
        head = height * 0.04 * (0.7 + 0.22 * r)
        y = height * (0.12 + 0.2 * r)
        cv2.rectangle(img, (0, int(y + 2.6 * head)), (w, int(y + 3.2 * head)),
                      tuple(float(c) for c in rng.uniform(30, 90, size=3)), -1)
        x = rng.uniform(0.0, 2.0 * head)
        while x < w + head:
            shirt = tuple(float(c) for c in rng.uniform(20, 240, size=3))
            skin = (float(rng.uniform(150, 240)), float(rng.uniform(100, 190)), float(rng.uniform(70, 150)))
            yy = y + rng.uniform(-0.3, 0.3) * head
            cv2.ellipse(img, (int(x), int(yy + 2.2 * head)), (int(1.5 * head), int(1.6 * head)), 0, 180, 360,
                        shirt, -1, cv2.LINE_AA)
            cv2.circle(img, (int(x), int(yy)), max(1, int(head)), skin, -1, cv2.LINE_AA)
            if rng.random() < 0.08:  # a flag
                flag = tuple(float(c) for c in rng.uniform(0, 255, size=3))
                cv2.rectangle(img, (int(x + head), int(yy - 3 * head)), (int(x + 3.5 * head), int(yy - 1.4 * head)),
                              flag, -1)
            x += head * rng.uniform(2.5, 3.3)
    return cv2.GaussianBlur(img, (0, 0), max(0.6, height / 400))


def _closeup_image(scene: Scene, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Head and shoulders of the diver waiting, the venue out of focus behind."""
    width, height = size
    g, bg = scene.geometry, scene.background
    cw, ch = max(8, int(g.width / 2.5)), max(8, int(g.height / 2.5))
    x0 = int(np.clip(g.board_end + g.pan_margin - cw * rng.uniform(0.3, 0.7), 0, bg.shape[1] - cw))
    y0 = int(np.clip(g.board_top - ch * rng.uniform(0.6, 0.9), 0, bg.shape[0] - ch))
    img = cv2.resize(np.ascontiguousarray(bg[y0 : y0 + ch, x0 : x0 + cw]), (width, height),
                     interpolation=cv2.INTER_LINEAR)
    img = cv2.GaussianBlur(img, (0, 0), height / 60)
    colour = {name: tuple(float(c) for c in scene.palette[pid]) for name, pid in
              (("skin", SKIN), ("hair", HAIR), ("suit", SUIT), ("stripe", STRIPE))}
    cx, cy, r = width * rng.uniform(0.38, 0.62), height * rng.uniform(0.34, 0.44), height * rng.uniform(0.13, 0.17)
    aa = cv2.LINE_AA

    def pt(dx: float, dy: float) -> tuple[int, int]:
        return int(cx + dx * r), int(cy + dy * r)

    def ax(a: float, b: float) -> tuple[int, int]:
        return max(1, int(a * r)), max(1, int(b * r))

    cv2.ellipse(img, pt(0, 3.3), ax(2.4, 2.0), 0, 0, 360, colour["skin"], -1, aa)  # shoulders
    cv2.ellipse(img, pt(0, 4.6), ax(1.9, 1.9), 0, 0, 360, colour["suit"], -1, aa)  # swimsuit
    cv2.line(img, pt(0, 3.1), pt(0, 5.5), colour["stripe"], max(1, int(0.25 * r)), aa)
    cv2.rectangle(img, pt(-0.42, 0.5), pt(0.42, 1.7), colour["skin"], -1, aa)  # neck
    cv2.ellipse(img, pt(0, 0), ax(0.82, 1.05), 0, 0, 360, colour["skin"], -1, aa)
    cv2.ellipse(img, pt(0, -0.3), ax(0.9, 0.85), 0, 180, 360, colour["hair"], -1, aa)
    for side in (-1, 1):
        cv2.circle(img, pt(0.32 * side, 0.08), max(1, int(0.08 * r)), (20, 20, 20), -1, aa)
    if rng.random() < 0.5:  # the towel divers carry
        towel = tuple(float(c) for c in rng.uniform(60, 255, size=3))
        side = float(rng.choice([-1.0, 1.0]))
        cv2.line(img, pt(1.6 * side, 2.3), pt(1.1 * side, 5.5), towel, max(2, int(0.7 * r)), aa)
    return img


def _scoreboard_images(size: tuple[int, int], rng: np.random.Generator, title: str,
                       rows: list[tuple[str, float]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Full-screen standings: (background with title, full board, y where each row ends)."""
    width, height = size
    u = height / 720.0
    top = rng.uniform([5, 10, 40], [30, 40, 90])
    col = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    base = np.repeat((top * (1 - col) + top * 0.4 * col).astype(np.uint8), width, axis=1)
    accent = tuple(float(c) for c in rng.uniform([150, 100, 0], [255, 200, 60]))
    cv2.rectangle(base, (int(80 * u), int(60 * u)), (width - int(80 * u), int(140 * u)), accent, -1)
    cv2.putText(base, title, (int(110 * u), int(118 * u)), cv2.FONT_HERSHEY_SIMPLEX, 1.3 * u, (15, 15, 30),
                max(1, int(round(2.6 * u))), cv2.LINE_AA)
    full = base.copy()
    ends = []
    row_h = 58 * u
    for i, (name, score) in enumerate(rows[:8]):
        y0 = 170 * u + i * row_h
        shade = (255, 255, 255) if i % 2 else (200, 210, 235)
        cv2.rectangle(full, (int(80 * u), int(y0)), (width - int(80 * u), int(y0 + row_h - 6 * u)),
                      tuple(c * 0.25 for c in shade), -1)
        for text, x in ((str(i + 1), 100 * u), (name, 180 * u), (f"{score:.2f}", width - 260 * u)):
            cv2.putText(full, text, (int(x), int(y0 + row_h * 0.68)), cv2.FONT_HERSHEY_SIMPLEX, 0.95 * u, shade,
                        max(1, int(round(1.9 * u))), cv2.LINE_AA)
        ends.append(int(y0 + row_h))
    return base, full, ends


# ----------------------------------------------------------------------------- camera


def _view(frame: np.ndarray, zoom: float, cx: float, cy: float) -> np.ndarray:
    """The frame seen through a 1/zoom window centred near (cx, cy) (kept inside the frame), at full size.

    Sub-pixel crop (cv2.getRectSubPix) then resize: smooth pans, and 2-3x cheaper than cv2.warpAffine.
    """
    height, width = frame.shape[:2]
    crop_w, crop_h = max(2, int(round(width / zoom))), max(2, int(round(height / zoom)))
    if crop_w >= width and crop_h >= height:
        return frame
    # Pixel centres are integers, so the frame spans -0.5 .. width - 0.5.
    cx = min(max(cx, crop_w / 2.0 - 0.5), width - 0.5 - crop_w / 2.0)
    cy = min(max(cy, crop_h / 2.0 - 0.5), height - 0.5 - crop_h / 2.0)
    crop = cv2.getRectSubPix(frame, (crop_w, crop_h), (float(cx), float(cy)))
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)


def _diver_track(plan: DivePlan, times: np.ndarray) -> np.ndarray:
    """Where a camera operator aims, in frame pixels [N, 2]: the diver's hips, then the splash."""
    g = plan.geometry
    left = camera_offsets(plan, times) - g.pan_margin  # world x of each frame's left edge
    surface = g.water - 0.1 * g.height
    track = np.empty((len(times), 2))
    for i, t in enumerate(times):
        x, y = (plan.entry_x, surface) if t >= plan.entry_start else pose_at(plan, float(t)).hip
        track[i] = (x - left[i], min(y, surface))
    return track


def _lagged(track: np.ndarray, fps: float, lag_seconds: float) -> np.ndarray:
    """A camera that follows its target with a first-order lag (an operator reacts, never jumps)."""
    alpha = 1.0 - math.exp(-1.0 / max(lag_seconds * fps, 1e-6))
    out = np.empty_like(track)
    current = track[0].copy()
    for i, target in enumerate(track):
        current += alpha * (target - current)
        out[i] = current
    return out


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
    frame_rate: str = ""  # exact rate, "30000/1001"


class _Programme:
    """The frames written so far, their classes and the shot list."""

    def __init__(self, sink: VideoSink, rate: Fraction) -> None:
        self.sink, self.rate = sink, rate
        self.size = sink.size
        self.fps = float(rate)
        self.logo = _logo(sink.size)
        self.classes: list[int] = []
        self.shots: list[dict] = []
        self.last: np.ndarray | None = None  # last frame before overlays (a wipe starts from it)

    @property
    def frames(self) -> int:
        """Frames written so far (the index of the next one)."""
        return len(self.classes)

    def seconds(self, frame: int) -> float:
        """Timestamp of a frame index (exact for fractional rates, then rounded to a float)."""
        return float(Fraction(frame) / self.rate)

    def count(self, seconds: float) -> int:
        """Frames in a duration (at least one)."""
        return max(1, int(round(seconds * self.fps)))

    def emit(self, frame: np.ndarray, cls: int, overlays: Sequence[_Overlay] = (), copies: int = 1) -> None:
        """Write a frame (with overlays and the logo) ``copies`` times."""
        if copies < 1:
            return
        self.last = frame  # callers never change a frame after handing it over
        frame = frame.copy()
        for overlay in overlays:
            overlay.apply(frame)
        self.logo.apply(frame)
        self.sink.write(frame, copies)
        self.classes.extend([cls] * copies)

    def shot(self, kind: str, start: int, dive: int | None = None, **extra) -> None:
        """Record a shot from frame ``start`` to the last written frame."""
        if self.frames > start:
            self.shots.append({"kind": kind, "start_frame": start, "end_frame": self.frames - 1, "dive": dive,
                               **extra})


def _phase(plan: DivePlan, t: float) -> int:
    """Class of a live frame at clip time t (synth.render.frame_labels' steps); idle past the clip's end."""
    if t > plan.num_frames - 1 + 1e-9:
        return IDLE
    if t <= plan.takeoff_end + 1e-9:
        return APPROACH
    return FLIGHT if t < plan.entry_start - 1e-9 else ENTRY


@dataclass(frozen=True)
class _Show:
    """How one dive is shown: every random choice of its programme, drawn up front."""

    follow: bool  # camera follows the diver
    zoom_wait: float
    zoom_flight: float
    crowd_before: bool
    closeup: bool
    closeup_intro: bool  # the close-up carries the diver's lower-third
    scoreboard: bool
    crowd_after: bool
    cutaway_seconds: tuple[float, ...]  # crowd before, close-up, scoreboard, crowd after
    idle_seconds: float  # the diver waiting on the board
    intro_offset: float  # seconds from the dive's start to the lower-third leaving (may be negative)
    after_seconds: float  # the camera stays on the pool after the dive
    cutaway_rng: np.random.Generator  # drawing the cutaways
    replay_rng: np.random.Generator


def _show(s: BroadcastSettings, seed: int, broadcast: int, order: int) -> _Show:
    """The draws of dive ``order``: one stream per concern, so e.g. the camera option never moves the replays."""
    cam, cut, replay, timing = (np.random.default_rng([seed, broadcast, order, 0xB1, i]) for i in range(4))
    follow = cam.random() < s.camera_follow_probability
    zoom_wait = cam.uniform(*s.follow_zoom)
    zoom_flight = max(1.0, zoom_wait * cam.uniform(0.7, 0.85))
    u_crowd, u_close, u_board, u_crowd_after = cut.random(4)
    seconds = tuple(float(v) for v in cut.uniform(*s.idle_seconds, size=4))
    p = s.cutaway_probability
    idle_seconds = timing.uniform(*s.idle_seconds)
    # The lower-third leaves around the dive's start (so its leaving does not mark the start), after it
    # has been up for at least half of the wait.
    intro_offset = max(timing.uniform(-0.8, 0.6), -0.5 * idle_seconds)
    return _Show(
        follow=bool(follow), zoom_wait=zoom_wait, zoom_flight=zoom_flight, crowd_before=bool(u_crowd < 0.5 * p),
        closeup=bool(u_close < p), closeup_intro=bool(cut.random() < 0.5), scoreboard=bool(u_board < p),
        crowd_after=bool(u_crowd_after < 0.3 * p), cutaway_seconds=seconds,
        idle_seconds=idle_seconds, intro_offset=intro_offset,
        after_seconds=timing.uniform(0.4, 1.0), cutaway_rng=cut, replay_rng=replay,
    )


# ----------------------------------------------------------------------------- shots


def _crowd_shot(prog: _Programme, crowd: np.ndarray, seconds: float, rng: np.random.Generator, dive: int) -> None:
    """The stands, panning slowly."""
    (width, height), start, n = prog.size, prog.frames, prog.count(seconds)
    drift = rng.uniform(-0.1, 0.1) * width
    x0 = rng.uniform(max(0.0, -drift), crowd.shape[1] - width - max(drift, 0.0))
    for i in range(n):
        centre = (x0 + drift * i / max(n - 1, 1) + (width - 1) / 2.0, (height - 1) / 2.0)
        prog.emit(cv2.getRectSubPix(crowd, (width, height), centre), IDLE)
    prog.shot("crowd", start, dive)


def _closeup_shot(prog: _Programme, scene: Scene, seconds: float, rng: np.random.Generator, dive: int,
                  overlays: Sequence[_Overlay]) -> None:
    """The diver waiting, in close-up: a slow push in, the picture breathing a little."""
    (width, height), start, n = prog.size, prog.frames, prog.count(seconds)
    image = _closeup_image(scene, rng, prog.size)
    for i in range(n):
        zoom = 1.01 + 0.05 * i / max(n - 1, 1)
        cy = (height - 1) / 2.0 + 0.004 * height * math.sin(2 * math.pi * i / (3.0 * prog.fps))
        prog.emit(_view(image, zoom, (width - 1) / 2.0, cy), IDLE, overlays)
    prog.shot("closeup", start, dive)


def _scoreboard_shot(prog: _Programme, seconds: float, rng: np.random.Generator, dive: int,
                     standings: list[tuple[str, float]]) -> None:
    """Full-screen standings, the rows sliding in one after another."""
    base, full, ends = _scoreboard_images(prog.size, rng, f"STANDINGS AFTER DIVE {dive}", standings)
    start, n = prog.frames, prog.count(seconds)
    reveal = max(1, prog.count(0.08))
    for i in range(n):
        shown = min(len(ends), i // reveal + 1)
        if shown == len(ends):
            prog.emit(full, IDLE, copies=n - i)
            break
        frame = base.copy()
        frame[: ends[shown - 1]] = full[: ends[shown - 1]]
        prog.emit(frame, IDLE)
    prog.shot("scoreboard", start, dive)


def _board_and_live_shots(prog: _Programme, dive: SynthDive, show: _Show, intro: _Overlay, order: int) -> dict:
    """The diver waiting on the board, the live dive, the camera staying on the pool; the dive's timing record."""
    plan, scene = dive.plan, dive.scene
    step = CLIP_FPS / prog.fps  # plan frames per programme frame
    live_times = np.arange(0.0, plan.num_frames - 1 + 1e-9, step)
    times = np.concatenate([live_times, live_times[-1] + step * np.arange(1, prog.count(show.after_seconds) + 1)])
    if show.follow:  # tight on the waiting diver, wider in flight, trailing the diver by an operator's lag
        a, e = plan.takeoff_end, plan.entry_start
        zooms = show.zoom_wait + (show.zoom_flight - show.zoom_wait) * _ease(times, 0.7 * a, a + 0.35 * (e - a))
        aims = _lagged(_diver_track(plan, times), prog.fps, 0.12)
    camera = "follow" if show.follow else "static"
    idle_start = prog.frames
    n_idle = prog.count(show.idle_seconds)
    live_start = idle_start + n_idle
    intro_end = max(idle_start + 1, live_start + int(round(show.intro_offset * prog.fps)))
    first = next(render_frames(plan, scene, [0.0]))[0]
    if show.follow:  # the operator is already on the diver, closing in slowly
        for i in range(n_idle):
            zoom = show.zoom_wait * (0.94 + 0.06 * i / max(n_idle - 1, 1))
            prog.emit(_view(first, zoom, *aims[0]), IDLE, [intro] if prog.frames < intro_end else [])
    else:
        with_intro = min(intro_end - idle_start, n_idle)
        prog.emit(first, IDLE, [intro], copies=with_intro)
        prog.emit(first, IDLE, copies=n_idle - with_intro)
    prog.shot("board", idle_start, order, camera=camera)
    for i, (frame, _) in enumerate(render_frames(plan, scene, times)):
        if show.follow:
            frame = _view(frame, zooms[i], *aims[i])
        prog.emit(frame, _phase(plan, float(times[i])), [intro] if prog.frames < intro_end else [])
    prog.shot("live", live_start, order, camera=camera)
    live_end = live_start + len(live_times) - 1
    # The frames carry the step labels' definition (_phase); the record says where its boundaries fell.
    takeoff_end = live_start + int(np.flatnonzero(np.asarray(prog.classes[live_start : live_end + 1]) == APPROACH)[-1])
    entry_start = live_start + int(np.searchsorted(live_times, plan.entry_start - 1e-9))
    return {
        "camera": camera,
        "start_frame": live_start,
        "end_frame": live_end,
        "start_s": prog.seconds(live_start),
        "end_s": prog.seconds(live_end + 1),
        "takeoff_end_frame": takeoff_end,
        "entry_start_frame": entry_start,
        "takeoff_end_s": prog.seconds(takeoff_end),
        "entry_start_s": prog.seconds(entry_start),
        "clip": {"fps": CLIP_FPS, "num_frames": plan.num_frames, "takeoff_end": plan.takeoff_end,
                 "entry_start": plan.entry_start},
    }


def _render_broadcast(folder: Path, b: int, s: BroadcastSettings, rate: Fraction) -> tuple[dict, BroadcastSummary]:
    """Render broadcast ``b`` into folder; returns its ground truth and summary."""
    size = (s.width, s.height)
    rng = np.random.default_rng([s.seed, b, 0xB0])
    board = HEIGHTS[int(rng.integers(len(HEIGHTS)))]
    gender = ("Women", "Men")[int(rng.integers(2))]
    bias = tuple(round(float(v), 4) for v in rng.normal(0.0, 0.2, size=s.num_judges))
    event = Competition(b, f"SynthWorldChampionships2026_{gender}{board}_final", board, s.num_judges, bias)
    dives = [
        synth_dive(s.seed, d, num_judges=s.num_judges, frame_height=s.height, frame_width=s.width, event=event,
                   namespace=1000 + b)
        for d in range(s.dives_per_broadcast)
    ]
    crowd = _crowd_image(np.random.default_rng([s.seed, b, 0xC8]), size)
    stem = f"broadcast_{b:03d}"
    sink = VideoSink(folder / f"{stem}.mp4", size, rate)
    prog = _Programme(sink, rate)
    truth: list[dict] = []
    try:
        for order, dive in enumerate(dives, start=1):
            show = _show(s, s.seed, b, order)
            intro = _lower_third(size, [f"{order}. {dive.diver}", f"{dive.dive_number}   DD {dive.difficulty:.1f}"])
            if show.crowd_before:
                _crowd_shot(prog, crowd, show.cutaway_seconds[0], show.cutaway_rng, order)
            if show.closeup:
                _closeup_shot(prog, dive.scene, show.cutaway_seconds[1], show.cutaway_rng, order,
                              [intro] if show.closeup_intro else [])
            timing = _board_and_live_shots(prog, dive, show, intro, order)
            last = prog.last  # the pool after the dive, under the score graphic
            replays = _replays(prog, dive.plan, dive.scene, show.replay_rng, s, order)
            score_start = prog.frames
            prog.emit(last, IDLE, [_lower_third(size, _score_lines(dive), colour=(10, 60, 30))],
                      copies=prog.count(s.score_seconds))
            prog.shot("score", score_start, order)
            truth.append({
                "order": order,
                "diver": dive.diver,
                "dive_number": dive.dive_number,
                "difficulty": dive.difficulty,
                "judge_scores": list(dive.judge_scores),
                "final_score": dive.final_score,
                "expected_award": round(dive.expected_award, 4),
                "quality": dive.quality.as_dict(),
                **timing,
                "replays": replays,
                "score_graphic": {"start_frame": score_start, "end_frame": prog.frames - 1,
                                  "start_s": prog.seconds(score_start), "end_s": prog.seconds(prog.frames)},
            })
            if show.scoreboard:
                standings = sorted(((d["diver"], d["final_score"]) for d in truth), key=lambda x: -x[1])
                _scoreboard_shot(prog, show.cutaway_seconds[2], show.cutaway_rng, order, standings)
            if show.crowd_after:
                _crowd_shot(prog, crowd, show.cutaway_seconds[3], show.cutaway_rng, order)
        # A little idle time after the last score so the last dive is not at the very end.
        tail = prog.frames
        prog.emit(prog.last, IDLE, copies=prog.count(1.0))
        prog.shot("tail", tail)
    finally:
        sink.close()
    if sink.frames != prog.frames:
        raise RuntimeError(f"{stem}: {sink.frames} frames written but {prog.frames} labelled")
    meta = {
        "video": f"{stem}.mp4",
        "fps": prog.fps,
        "frame_rate": _rate_text(rate),
        "width": s.width,
        "height": s.height,
        "num_frames": prog.frames,
        "duration_s": prog.seconds(prog.frames),
        "encoder": sink.encoder,
        "seed": s.seed,
        "world_version": SYNTH_VERSION,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()},
        "competition": event.name,
        "board": board,
        "classes": list(CLASS_NAMES),
        "frame_spans": class_spans(np.asarray(prog.classes)),
        "shots": prog.shots,
        "dives": truth,
    }
    (folder / f"{stem}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    with open(folder / f"start_list_{b:03d}.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["order", "diver", "dive_number", "difficulty"])
        for d in truth:
            writer.writerow([d["order"], d["diver"], d["dive_number"], f"{d['difficulty']:.1f}"])
    summary = BroadcastSummary(str(folder / f"{stem}.mp4"), str(folder / f"{stem}.json"),
                               str(folder / f"start_list_{b:03d}.csv"), prog.frames, prog.fps, size, len(dives),
                               sink.encoder, _rate_text(rate))
    return meta, summary


def _ease(times: np.ndarray, t0: float, t1: float) -> np.ndarray:
    u = np.clip((np.asarray(times, np.float64) - t0) / max(t1 - t0, 1e-9), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _replays(prog: _Programme, plan: DivePlan, scene: Scene, r: np.random.Generator, s: BroadcastSettings,
             order: int) -> list[dict]:
    """Write the slow-motion replays of a dive; returns their records."""
    fps = prog.fps
    step = CLIP_FPS / fps
    g = plan.geometry
    a, e, last = plan.takeoff_end, plan.entry_start, plan.num_frames - 1
    replayed = r.random() < s.replay_probability
    count = int(r.integers(1, s.max_replays + 1))
    draws = [dict(entry_only=r.random() < 0.35, speed=r.uniform(*s.replay_speed), zoom=r.uniform(*s.replay_zoom),
                  wipe=r.random() < 0.5, banner=r.random() < s.replay_banner_probability,
                  lead=r.uniform(3.0, 12.0), tail=r.uniform(6.0, 16.0), direction=1 if r.random() < 0.5 else -1,
                  band=tuple(float(c) for c in r.uniform([0, 20, 90], [40, 90, 200])))
             for _ in range(s.max_replays)]
    if not replayed:
        return []
    banner = _replay_banner(prog.size)
    records = []
    for d in draws[:count]:
        if d["entry_only"]:  # a tight shot of the entry and the splash
            clip_start, clip_end = max(a + 1.0, e - d["lead"] * 0.8), e + d["tail"] + 4.0
        else:
            clip_start, clip_end = max(0.0, a - d["lead"]), min(last + 6.0, e + d["tail"])
        times = np.arange(clip_start, clip_end + 1e-9, step * d["speed"])
        zooms = d["zoom"] * (1.0 + 0.04 * np.linspace(0.0, 1.0, len(times)))
        zooms = np.minimum(zooms, MAX_ZOOM)
        if d["entry_only"]:
            left = camera_offsets(plan, times) - g.pan_margin
            aims = np.stack([plan.entry_x - left, np.full(len(times), g.water - 0.12 * g.height)], axis=1)
        else:
            aims = _lagged(_diver_track(plan, times), fps, 0.08)
        n_wipe = min(len(times), max(3, int(round(0.4 * fps)))) if d["wipe"] else 0
        previous = prog.last
        start = prog.frames
        overlays = [banner] if d["banner"] else []
        for i, (frame, _) in enumerate(render_frames(plan, scene, times)):
            frame = _view(frame, zooms[i], *aims[i])
            if i < n_wipe and previous is not None:
                frame = _wipe(previous, frame, (i + 1) / (n_wipe + 1), d["direction"], d["band"])
            prog.emit(frame, REPLAY, overlays)
        records.append({
            "start_frame": start,
            "end_frame": prog.frames - 1,
            "start_s": prog.seconds(start),
            "end_s": prog.seconds(prog.frames),
            "dive": order,
            "speed": round(d["speed"], 4),
            "zoom": round(d["zoom"], 4),
            "framing": "entry" if d["entry_only"] else "follow",
            "transition": "wipe" if d["wipe"] else "cut",
            "banner": bool(d["banner"]),
            "clip_start": round(float(clip_start), 4),
            "clip_end": round(float(times[-1]), 4),
        })
        prog.shot("replay", start, order)
    return records


def _wipe(previous: np.ndarray, new: np.ndarray, progress: float, direction: int,
          band: tuple[float, float, float]) -> np.ndarray:
    """The replay pushes in from one side behind a coloured band."""
    width = new.shape[1]
    edge = int(round(progress * width))
    out = previous.copy()
    half = max(1, int(0.025 * width))
    if direction > 0:
        out[:, :edge] = new[:, :edge]
        out[:, max(edge - half, 0) : edge + half] = band
    else:
        out[:, width - edge :] = new[:, width - edge :]
        out[:, max(width - edge - half, 0) : width - edge + half] = band
    return out


def generate_broadcasts(
    out_dir: str | os.PathLike,
    num_broadcasts: int,
    seed: int = 0,
    *,
    size: tuple[int, int] = (1280, 720),
    fps: float | Fraction | str = 25.0,
    dives_per_broadcast: int = 4,
    idle_seconds: tuple[float, float] = (2.0, 4.0),
    score_seconds: float = 3.0,
    replay_probability: float = 0.5,
    replay_speed: float | tuple[float, float] = (0.25, 0.5),
    max_replays: int = 2,
    replay_zoom: tuple[float, float] = (1.3, 2.0),
    replay_banner_probability: float = 0.5,
    camera_follow_probability: float = 0.5,
    follow_zoom: tuple[float, float] = (1.3, 1.8),
    cutaway_probability: float = 0.5,
    num_judges: int = 7,
    overwrite: bool = False,
    progress: bool = True,
) -> list[BroadcastSummary]:
    """Write ``broadcasts/broadcast_NNN.mp4`` with ground-truth JSON and start-list CSV under ``out_dir``.

    fps: any positive rate (29.97 and 59.94 are 30000/1001 and 60000/1001); replay_speed: a factor or a
    (low, high) range; the probabilities and ranges are described in docs/synthetic.md ("Broadcasts").
    """
    if num_broadcasts < 1:
        raise ValueError("num_broadcasts must be positive")
    rate = frame_rate(fps)
    settings = BroadcastSettings(
        width=int(size[0]), height=int(size[1]), frame_rate=_rate_text(rate), fps=float(rate),
        dives_per_broadcast=int(dives_per_broadcast), idle_seconds=_span(idle_seconds, "idle_seconds"),
        score_seconds=float(score_seconds), camera_follow_probability=float(camera_follow_probability),
        follow_zoom=_span(follow_zoom, "follow_zoom"), cutaway_probability=float(cutaway_probability),
        replay_probability=float(replay_probability), max_replays=int(max_replays),
        replay_speed=_span(replay_speed, "replay_speed"), replay_zoom=_span(replay_zoom, "replay_zoom"),
        replay_banner_probability=float(replay_banner_probability), num_judges=int(num_judges), seed=int(seed),
    ).validate()
    folder = Path(out_dir) / BROADCASTS_DIR
    prepare_out_dir(folder, [p.name for p in folder.glob("*")] if folder.exists() else [], overwrite)
    results = []
    for b in tqdm(range(num_broadcasts), unit="video", disable=not progress, desc="synth broadcasts"):
        start = time.perf_counter()
        meta, summary = _render_broadcast(folder, b, settings, rate)
        seconds = time.perf_counter() - start
        log.info("wrote %s: %d dives, %d frames (%.1f s of video) in %.1f s (%.0f frames/s)",
                 meta["video"], summary.num_dives, summary.num_frames, meta["duration_s"], seconds,
                 summary.num_frames / max(seconds, 1e-9))
        results.append(summary)
    return results
