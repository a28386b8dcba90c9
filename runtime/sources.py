"""Capture: decode a source on its own thread, stamp stream time, preprocess, keep a bounded ring buffer.

Per frame the capture thread does a constant amount of work: decode, one integer box average
(:func:`fineparser.preprocess.box_reduce_frame`) that both the model frame
(:func:`fineparser.preprocess.prepare_frame_bgr`: resize to 200x112 + centre crop) and the spotter's
input (:func:`fineparser.spotter_spec.spotter_frame`, with ``--segment auto``) start from, an optional
downscaled copy for the overlay, and one append.  It never waits for the consumer.

Drop policy: the :class:`FrameBuffer` holds at most ``capacity`` frames.  When full, the oldest
frame is evicted; if the consumer had not read it yet it is counted as **dropped** (and the
consumer skips to the oldest frame still held).  Frames already read stay in the buffer until
evicted so that the scorer can sample a finished dive from them.

Reconnect policy (live network sources only): on a read failure the source is reopened after
``backoff_start`` s, doubling up to ``backoff_max`` s, until a frame arrives or ``give_up_after``
seconds passed without one.  Stream time stays continuous across the gap: the gap's wall-clock
length is added, and reported in the ``reconnected`` event.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fineparser.preprocess import box_reduce_frame, prepare_frame_bgr
from fineparser.spotter_spec import spotter_frame

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "srt://", "udp://", "rtp://", "tcp://",
                   "http://", "https://")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_FOLDER_FPS = 25.0


class SourceError(RuntimeError):
    """A source that cannot be opened or read (the message names it)."""


@dataclass
class SourceSpec:
    """What SOURCE on the command line is."""

    text: str
    kind: str  # "file" | "folder" | "network" | "webcam"
    live: bool

    @property
    def paced_by_clock(self) -> bool:
        """Whether frames arrive at their own pace (live), so --realtime pacing does not apply."""
        return self.live


def parse_source(text: str) -> SourceSpec:
    """Classify SOURCE: webcam index, network URL, frames folder or video/GIF file (must exist)."""
    if text.isdigit():
        return SourceSpec(text, "webcam", live=True)
    if text.lower().startswith(NETWORK_SCHEMES):
        return SourceSpec(text, "network", live=True)
    path = Path(text)
    if path.is_dir():
        return SourceSpec(text, "folder", live=False)
    if path.is_file():
        return SourceSpec(text, "file", live=False)
    raise SourceError(f"cannot open source {text}: no such file, folder, URL (rtsp/rtmp/srt/udp/http) or webcam index")


@dataclass
class CapturedFrame:
    """One frame in the buffer."""

    seq: int  # 0, 1, ... in capture order
    time: float  # stream time in seconds
    frame: np.ndarray  # uint8 [112, 112, 3] RGB model frame
    preview: np.ndarray | None = None  # downscaled BGR programme frame (overlay only)
    spotter: np.ndarray | None = None  # BGR spotter input (--segment auto only; the consumer frees it once read)


class FrameBuffer:
    """Bounded ring buffer between the capture thread and the consumer (see the module's drop policy)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError(f"buffer capacity must be at least 2 frames, got {capacity}")
        self.capacity = capacity
        self._frames: deque[CapturedFrame] = deque()
        self._cond = threading.Condition()
        self._next_read = 0
        self.dropped = 0
        self.appended = 0
        self.max_length = 0
        self.closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)

    def append(self, item: CapturedFrame) -> None:
        """Add a frame, evicting (and counting as dropped if unread) the oldest when full; never blocks long."""
        with self._cond:
            if len(self._frames) >= self.capacity:
                evicted = self._frames.popleft()
                if evicted.seq >= self._next_read:
                    self.dropped += 1
                    self._next_read = evicted.seq + 1
            self._frames.append(item)
            self.appended += 1
            self.max_length = max(self.max_length, len(self._frames))
            self._cond.notify_all()

    def close(self) -> None:
        """No more frames will come (end of stream); wakes the consumer."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def read_next(self, timeout: float = 0.5) -> CapturedFrame | None:
        """The next unread frame, waiting up to `timeout`; None on timeout or when closed and drained."""
        with self._cond:
            deadline = time.monotonic() + timeout
            while True:
                if self._frames and self._frames[-1].seq >= self._next_read:
                    oldest = self._frames[0].seq
                    item = self._frames[max(self._next_read - oldest, 0)]
                    self._next_read = item.seq + 1
                    return item
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    return None
                self._cond.wait(remaining)

    @property
    def drained(self) -> bool:
        """Closed and every held frame read."""
        with self._cond:
            return self.closed and (not self._frames or self._frames[-1].seq < self._next_read)

    def frames_between(self, start: float, end: float) -> list[CapturedFrame]:
        """Frames still held whose time t satisfies start <= t < end, in order."""
        with self._cond:
            return [f for f in self._frames if start <= f.time < end]

    def oldest_time(self) -> float | None:
        """Time of the oldest frame held (None when empty)."""
        with self._cond:
            return self._frames[0].time if self._frames else None


@dataclass
class CaptureStats:
    """Counters the capture thread keeps (read by /health and the final log line)."""

    frames: int = 0
    corrupt: int = 0
    reconnects: int = 0
    gap_seconds: float = 0.0
    size: tuple[int, int] | None = None
    fps: float = 0.0
    decode_seconds: float = 0.0
    finished_at: float | None = None  # monotonic time of the end of the stream
    extra: dict[str, Any] = field(default_factory=dict)


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class CaptureThread(threading.Thread):
    """Decodes one source into a FrameBuffer; publishes stream and warning events through `publish`."""

    def __init__(self, spec: SourceSpec, buffer: FrameBuffer, publish: Callable[..., Any], *,
                 realtime: bool = False, preview_width: int | None = None,
                 spotter_hw: tuple[int, int] | None = None, folder_fps: float = DEFAULT_FOLDER_FPS,
                 backoff_start: float = 0.5, backoff_max: float = 8.0, give_up_after: float = 30.0,
                 open_timeout_s: float = 10.0, read_timeout_s: float = 5.0) -> None:
        super().__init__(name=f"capture {spec.text}", daemon=True)
        self.spec = spec
        self.buffer = buffer
        self.publish = publish
        self.realtime = realtime and not spec.live
        self.preview_width = preview_width
        self.spotter_hw = spotter_hw
        self.folder_fps = folder_fps
        self.backoff_start, self.backoff_max, self.give_up_after = backoff_start, backoff_max, give_up_after
        self.open_timeout_s = min(open_timeout_s, give_up_after)
        self.read_timeout_s = read_timeout_s
        self.stats = CaptureStats()
        self.error: str | None = None
        self.opened = threading.Event()
        self._stop_event = threading.Event()
        self._resuming = False  # the next frame is the first after a reconnect
        self._last_time: float | None = None
        self._last_frame_wall: float | None = None

    def stop(self) -> None:
        """Ask the thread to end at the next frame."""
        self._stop_event.set()

    # ------------------------------------------------------------------ opening

    def _open_capture(self) -> cv2.VideoCapture:
        source: Any = int(self.spec.text) if self.spec.kind == "webcam" else self.spec.text
        if self.spec.kind == "webcam":
            return cv2.VideoCapture(source)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000)]
        return cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)

    def _video_frames(self, capture: cv2.VideoCapture, fps: float) -> Iterator[tuple[float, np.ndarray | None]]:
        """(container time, BGR frame) until the stream ends; frame None marks an undecodable frame."""
        index = 0
        shift = 0.0
        last_t = 0.0
        while not self._stop_event.is_set():
            ok, frame = capture.read()
            if not ok:
                return
            # Container timestamps when the backend has them, else frame index / fps.
            raw = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if index > 0 and raw <= 0:
                raw = index / fps
            t = raw + shift
            if index > 0 and t <= last_t:
                # Timestamps jumped back (a restarted sender on the same UDP port, a wrap): stay monotonic.
                log.info("%s: timestamps jumped back at %.2f s; continuing at frame rate", self.spec.text, last_t)
                shift += last_t + 1.0 / fps - t
                t = last_t + 1.0 / fps
            last_t = t
            index += 1
            yield t, frame

    def _folder_frames(self, folder: Path) -> Iterator[tuple[float, np.ndarray | None]]:
        for index, path in enumerate(_folder_images(folder)):
            if self._stop_event.is_set():
                return
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                self.publish("warning", kind="corrupt_frame", message=f"cannot decode {path}: frame skipped",
                             path=str(path))
            yield index / self.folder_fps, frame

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        """Capture until the end of the source, a stop request, or an unrecoverable error."""
        try:
            self._run()
        except Exception as exc:  # reported by the CLI as one line; the thread must end cleanly
            log.debug("capture failed", exc_info=True)
            self.error = str(exc) if isinstance(exc, SourceError) else f"{self.spec.text}: {exc}"
        finally:
            self.stats.finished_at = time.monotonic()
            self.buffer.close()
            self.opened.set()
            self.publish("stream", status="ended", source=self.spec.text, frames=self.stats.frames,
                         dropped=self.buffer.dropped, corrupt=self.stats.corrupt, reconnects=self.stats.reconnects,
                         gap_s=round(self.stats.gap_seconds, 3), error=self.error)

    def _run(self) -> None:
        if self.spec.kind == "folder":
            folder = Path(self.spec.text)
            if not _folder_images(folder):
                raise SourceError(f"cannot open source {folder}: folder has no JPEG/PNG frames")
            self.stats.fps = self.folder_fps
            self._consume(self._folder_frames(folder))
            if self.stats.frames == 0 and not self._stop_event.is_set():
                raise SourceError(f"cannot read source {folder}: none of its frames could be decoded")
            return
        capture = self._open_capture()
        if not capture.isOpened():
            if self.spec.kind != "network":
                raise SourceError(f"cannot open source {self.spec.text}: not a readable video, GIF or camera")
            capture = self._reconnect(None, time.monotonic())
            if capture is None:
                raise SourceError(f"cannot open source {self.spec.text}: no stream within {self.give_up_after:.0f} s")
        while True:
            fps = capture.get(cv2.CAP_PROP_FPS)
            self.stats.fps = fps if 0 < fps < 1000 else 25.0
            last_time = self._consume(self._video_frames(capture, self.stats.fps))
            capture.release()
            if not self.spec.live or self._stop_event.is_set():
                if self.stats.frames == 0 and not self._stop_event.is_set():
                    raise SourceError(f"cannot read source {self.spec.text}: no frame could be decoded")
                return
            lost_at = time.monotonic()
            self.publish("stream", status="reconnecting", source=self.spec.text, at_s=last_time)
            capture = self._reconnect(last_time, lost_at)
            if capture is None:
                self.publish("warning", kind="source_lost",
                             message=f"{self.spec.text}: no frames for {self.give_up_after:.0f} s, giving up",
                             at_s=last_time)
                return
            self.stats.reconnects += 1
            self._resuming = True

    def _announce_open(self) -> None:
        self.opened.set()
        self.publish("stream", status="opened", source=self.spec.text, kind=self.spec.kind,
                     fps=round(self.stats.fps, 3), size=list(self.stats.size) if self.stats.size else None)

    def _reconnect(self, last_time: float | None, lost_at: float) -> cv2.VideoCapture | None:
        """Reopen a live source with exponential backoff; None after give_up_after seconds."""
        delay = self.backoff_start
        attempt = 0
        while not self._stop_event.is_set() and time.monotonic() - lost_at < self.give_up_after:
            attempt += 1
            log.info("reconnecting to %s (attempt %d, next wait %.1f s)", self.spec.text, attempt, delay)
            capture = self._open_capture()
            if capture.isOpened():
                return capture
            capture.release()
            self._stop_event.wait(delay)
            delay = min(delay * 2.0, self.backoff_max)
        return None

    def _consume(self, frames: Iterator[tuple[float, np.ndarray | None]]) -> float | None:
        """Preprocess and buffer frames; returns the stream time of the last frame."""
        wall_start = time.monotonic()
        first_t: float | None = None
        offset = 0.0
        last_time = self._last_time
        gap: float | None = None
        for t, frame in frames:
            started = time.perf_counter()
            if first_t is None:
                first_t = t
                if self._resuming:
                    # A new connection's clock restarts: continue from the last frame plus the wall-clock gap.
                    self._resuming = False
                    gap = time.monotonic() - (self._last_frame_wall or time.monotonic())
                    self.stats.gap_seconds += gap
                    offset = (self._last_time or 0.0) + gap - t
            stream_t = offset + t
            if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
                self.stats.corrupt += 1
                continue
            size = (int(frame.shape[1]), int(frame.shape[0]))
            if self.stats.size is not None and size != self.stats.size:
                # Preprocessing is per frame, so a new resolution needs nothing but a note.
                log.info("%s: resolution changed from %dx%d to %dx%d at %.2f s", self.spec.text,
                         *self.stats.size, *size, stream_t)
            self.stats.size = size
            if self.stats.frames == 0:
                self._announce_open()
            if self.realtime:
                wait = wall_start + (t - first_t) - time.monotonic()
                if wait > 0:
                    self._stop_event.wait(wait)
            reduced = box_reduce_frame(frame)
            model_frame = prepare_frame_bgr(reduced)  # reducing is idempotent: the full frame's model frame
            spotter = spotter_frame(frame, self.spotter_hw, reduced=reduced) if self.spotter_hw else None
            preview = None
            if self.preview_width:
                height = max(2, int(round(frame.shape[0] * self.preview_width / frame.shape[1] / 2)) * 2)
                preview = cv2.resize(frame, (self.preview_width, height), interpolation=cv2.INTER_AREA)
            self.buffer.append(CapturedFrame(self.stats.frames, stream_t, model_frame, preview, spotter))
            if gap is not None:
                before = self._last_time or 0.0
                self.publish("stream", status="reconnected", source=self.spec.text, at_s=round(stream_t, 3),
                             gap_s=round(gap, 3))
                self.publish("warning", kind="gap", message=f"{self.spec.text}: stream gap of {gap:.2f} s "
                             f"after {before:.2f} s (reconnected)", gap_s=round(gap, 3), at_s=round(before, 3))
                gap = None
            self.stats.frames += 1
            self.stats.decode_seconds += time.perf_counter() - started
            last_time = stream_t
            self._last_time = stream_t
            self._last_frame_wall = time.monotonic()
        return last_time


def environment_summary() -> dict[str, Any]:
    """OpenCV facts worth logging once (backend availability)."""
    return {"opencv": cv2.__version__, "threads": cv2.getNumThreads(), "pid": os.getpid()}
