"""Overlay video: the programme with the diver's mask tinted, a phase bar and a score card after each dive.

Frames outside dives are written as they arrive (``delay_frames`` later with ``--segment auto``, whose
dive starts lie that far in the past when they are decided); a dive's frames are held until it is
scored, then written with its mask and phases, so the file stays in stream order and holds every
frame once.  The phase bar follows the spotter's phases when it runs (``phase``), else the encoder's
transition frames.  OpenCV's mp4v writer: no extra dependency.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fineparser import spec
from fineparser.preprocess import RESIZE_HEIGHT, center_crop_top
from runtime.sources import CapturedFrame

log = logging.getLogger(__name__)

PHASE_COLOURS = ((60, 160, 240), (80, 200, 80), (220, 120, 60))  # BGR: approach, flight, entry
OUTSIDE_COLOURS = {"idle": (110, 110, 110), "replay": (200, 90, 200)}  # BGR: spotter phases outside dives
LIVE_PHASES = ("approach", "flight", "entry")  # spotter phase names of spec.STEP_NAMES, same order
MASK_TINT = np.array((255, 180, 60), dtype=np.float32)  # BGR light blue
CARD_SECONDS = 3.0


def mask_for_frame(mask_logits: np.ndarray, sample: int) -> np.ndarray:
    """Boolean 112x112 diver mask of sampled frame `sample` from the 9 overlapping 16-frame windows."""
    window = min(sample // spec.WINDOW_STRIDE, spec.NUM_WINDOWS - 1)
    offset = min(sample - spec.WINDOW_STARTS[window], spec.WINDOW_LENGTH - 1)
    return mask_logits[window, offset] > 0


@dataclass
class _HeldDive:
    """A dive whose frames wait in the overlay for its score."""

    index: int
    start: float
    end: float | None = None
    result: Any = None  # DiveResult once scored
    done: bool = False  # ended and scored (or given up: written plain)


class OverlayWriter:
    """Writes the overlay MP4; the capture thread keeps a `width`-pixel-wide copy of each frame for it."""

    def __init__(self, path: str | Path, width: int = 480, fps: float = 25.0, delay_frames: int = 0,
                 max_held: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width = width
        self.fps = fps
        self.delay_frames = delay_frames  # frames held back so that a dive decided late still gets its frames
        self.max_held = max_held  # frames held at most (the ring buffer's capacity): older ones are written plain
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._card: tuple[dict[str, Any], float] | None = None
        self._pending_card: tuple[dict[str, Any], float] | None = None
        self._held: deque[CapturedFrame] = deque()
        self._dives: list[_HeldDive] = []
        self._phase_times: list[float] = []  # the spotter's phase changes, in time order
        self._phase_names: list[str] = []
        self._last_written: float | None = None
        self.frames_written = 0

    def _write(self, image: np.ndarray, time: float) -> None:
        if self._writer is None:
            self._size = (image.shape[1], image.shape[0])
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                raise OSError(f"cannot write overlay video {self.path}")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        if self._pending_card is not None and time >= self._pending_card[1]:
            self._card, self._pending_card = self._pending_card, None
        if self._card is not None and 0.0 <= time - self._card[1] <= CARD_SECONDS:
            image = image.copy()
            self._draw_card(image, self._card[0])
        self._writer.write(image)
        self._last_written = time
        self.frames_written += 1

    # ------------------------------------------------------------------ what the session tells it

    def frame(self, item: CapturedFrame, in_dive: bool = False) -> None:
        """A frame as the consumer reads it (after the segmenter saw it); written once nothing can claim it.

        `in_dive` is accepted for older callers and ignored: dive frames are known from ``dive_started``.
        """
        if item.preview is None:
            return
        self._held.append(item)
        self._release()

    def phase(self, time: float, phase: str) -> None:
        """The spotter's phase from stream time `time` on (phase events, in time order)."""
        self._phase_times.append(time)
        self._phase_names.append(phase)

    def dive_started(self, index: int, start: float) -> None:
        """Frames from `start` on wait for dive `index`'s score."""
        self._dives.append(_HeldDive(index, start))

    def dive_done(self, index: int, end: float, result: Any = None) -> None:
        """Dive `index` ended at `end` and was scored (`result`: a DiveResult) or not (None: written plain)."""
        dive = next((d for d in self._dives if d.index == index and not d.done), None)
        if dive is None:
            dive = _HeldDive(index, end)
            self._dives.append(dive)
        dive.end, dive.result, dive.done = end, result, True
        if result is not None:
            self._pending_card = (result.event, end)
        self._release()

    def dive_scored(self, result: Any, frames: list[CapturedFrame]) -> None:
        """Write a scored dive's `frames` with mask tint and phase bar, then show the score card (direct use)."""
        index = int(result.event["dive"])
        if any(d.index == index and not d.done for d in self._dives):
            self.dive_done(index, float(result.event["end_s"]), result)
            return
        for item in frames:
            if item.preview is not None:
                self._write(self._decorated(item, result), item.time)
        self._card = (result.event, frames[-1].time if frames else 0.0)

    # ------------------------------------------------------------------ writing

    def _dive_at(self, time: float) -> _HeldDive | None:
        for dive in self._dives:
            if dive.start <= time and (dive.end is None or time < dive.end):
                return dive
        return None

    def _release(self, flush: bool = False) -> None:
        """Write held frames in order while each is settled: outside any dive and old enough, or of a done dive."""
        while self._held:
            item = self._held[0]
            dive = self._dive_at(item.time)
            if dive is not None and not dive.done:
                if self.max_held is None or len(self._held) <= self.max_held:
                    break  # waits for the dive's score
                log.warning("overlay: dive %d is longer than the %d frames held: its frame at %.2f s is written "
                            "without its mask", dive.index, self.max_held, item.time)
                image = item.preview
            elif dive is not None and dive.result is not None:
                image = self._decorated(item, dive.result)
            elif dive is None and not flush and len(self._held) <= self.delay_frames:
                break  # a dive decided late may still claim it
            else:
                image = self._with_phase(item)
            self._held.popleft()
            self._write(image, item.time)
        if self._last_written is not None:
            self._dives = [d for d in self._dives if not (d.done and d.end is not None and d.end <= self._last_written)]
            # Phases before the oldest frame still to draw are no longer needed (a dive's bar needs its start's).
            oldest = min([self._last_written, *(d.start for d in self._dives)])
            keep = max(bisect.bisect_right(self._phase_times, oldest) - 1, 0)
            del self._phase_times[:keep], self._phase_names[:keep]

    def _phase_at(self, time: float) -> str | None:
        i = bisect.bisect_right(self._phase_times, time) - 1
        return self._phase_names[i] if i >= 0 else None

    def _with_phase(self, item: CapturedFrame) -> np.ndarray:
        """A frame outside dives: as it is, with the spotter's phase named when the spotter runs."""
        phase = self._phase_at(item.time)
        if phase is None:
            return item.preview
        image = item.preview.copy()
        height = image.shape[0]
        bar = max(height // 24, 6)
        colour = OUTSIDE_COLOURS.get(phase, (110, 110, 110))
        cv2.rectangle(image, (0, height - bar // 2), (image.shape[1] - 1, height - 1), colour, -1)
        cv2.putText(image, phase, (4, height - bar - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
        return image

    def _decorated(self, item: CapturedFrame, result: Any) -> np.ndarray:
        """A scored dive's frame: mask tint, phase bar (the spotter's phases when it ran, else the transitions)."""
        image = item.preview.copy()
        if result.mask_logits is not None:
            sampled_times = np.array([f.time for f in result.sampled])
            sample = int(np.argmin(np.abs(sampled_times - item.time)))
            self._tint(image, mask_for_frame(result.mask_logits, sample))
        event = result.event
        start, end = float(event["start_s"]), float(event["end_s"])
        edges = self._spotter_edges(start, end)
        if edges is None:
            t1, t2 = (float(t) for t in event["transitions_s"])
            edges = [start, t1, t2, end]
            phase = 0 if item.time <= t1 else 1 if item.time <= t2 else 2
        else:
            phase = max(i for i in range(3) if edges[i] <= item.time or i == 0)
        self._phase_bar(image, phase, edges)
        return image

    def _spotter_edges(self, start: float, end: float) -> list[float] | None:
        """[start, flight from, entry from, end] from the spotter's phases in the dive; None without them.

        Phases only move forward in a dive; one the spotter skipped gets no width.
        """
        i = bisect.bisect_right(self._phase_times, start + 1e-4) - 1  # event times are rounded to 0.1 ms
        if i < 0 or self._phase_names[i] not in LIVE_PHASES:
            return None
        begins = {self._phase_names[i]: start}
        for time, name in zip(self._phase_times[i + 1:], self._phase_names[i + 1:]):
            if time >= end or name not in LIVE_PHASES:
                break
            begins.setdefault(name, time)
        edges = [start, end, end, end]
        for k in (2, 1):  # entry from, then flight from (a skipped flight begins where entry does)
            name = LIVE_PHASES[k]
            edges[k] = begins.get(name, edges[k + 1])
        edges[1] = min(edges[1], edges[2])
        return edges

    @staticmethod
    def _tint(image: np.ndarray, mask: np.ndarray) -> None:
        """Blend the tint over the mask, mapped back from the 112x112 crop to the programme frame."""
        height, width = image.shape[:2]
        top = int(round(center_crop_top(RESIZE_HEIGHT) / RESIZE_HEIGHT * height))
        rows = int(round(spec.FRAME_SIZE / RESIZE_HEIGHT * height))
        big = cv2.resize(mask.astype(np.uint8), (width, rows), interpolation=cv2.INTER_NEAREST).astype(bool)
        region = image[top:top + rows]
        big = big[:region.shape[0]]
        region[big] = (0.5 * region[big] + 0.5 * MASK_TINT).astype(np.uint8)

    @staticmethod
    def _phase_bar(image: np.ndarray, phase: int, edges: list[float]) -> None:
        """Approach, flight and entry across the bottom, split at `edges` [start, t1, t2, end]; `phase` bright."""
        height, width = image.shape[:2]
        bar = max(height // 24, 6)
        start, end = edges[0], max(edges[-1], edges[0] + 1e-6)
        for i in range(3):
            x0 = int((edges[i] - start) / (end - start) * width)
            x1 = int((edges[i + 1] - start) / (end - start) * width)
            colour = PHASE_COLOURS[i] if i == phase else tuple(c // 3 for c in PHASE_COLOURS[i])
            cv2.rectangle(image, (x0, height - bar), (x1, height - 1), colour, -1)
        cv2.putText(image, spec.STEP_NAMES[phase], (4, height - bar - 4), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, PHASE_COLOURS[phase], 1, cv2.LINE_AA)

    @staticmethod
    def _draw_card(image: np.ndarray, event: dict[str, Any]) -> None:
        lines = [f"dive {event['dive']}  {event.get('dive_number') or ''}  score {event['score']:.2f}"]
        lines += [f"{name}: {value:+.2f}" for name, value in event["step_deltas"].items()]
        x, y = 8, 8
        cv2.rectangle(image, (x - 4, y - 4), (x + 230, y + 16 * len(lines) + 2), (30, 30, 30), -1)
        for i, line in enumerate(lines):
            cv2.putText(image, line, (x, y + 12 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1,
                        cv2.LINE_AA)

    def close(self) -> None:
        """Write what is still held (a dive never scored: plain) and finish the file."""
        for dive in self._dives:
            dive.done = True
        self._release(flush=True)
        if self._writer is not None:
            self._writer.release()
            log.info("saved overlay %s (%d frames)", self.path, self.frames_written)

