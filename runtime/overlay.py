"""Overlay video: the programme with the diver's mask tinted, a phase bar and a score card after each dive.

Frames outside dives are written as they arrive; a dive's frames are held (they are in the ring
buffer anyway) until it is scored, then written with its mask and phases, so the file stays in
stream order.  OpenCV's mp4v writer: no extra dependency.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fineparser import spec
from fineparser.preprocess import RESIZE_HEIGHT, center_crop_top
from runtime.sources import CapturedFrame

log = logging.getLogger(__name__)

PHASE_COLOURS = ((60, 160, 240), (80, 200, 80), (220, 120, 60))  # BGR: approach, flight, entry
MASK_TINT = np.array((255, 180, 60), dtype=np.float32)  # BGR light blue
CARD_SECONDS = 3.0


def mask_for_frame(mask_logits: np.ndarray, sample: int) -> np.ndarray:
    """Boolean 112x112 diver mask of sampled frame `sample` from the 9 overlapping 16-frame windows."""
    window = min(sample // spec.WINDOW_STRIDE, spec.NUM_WINDOWS - 1)
    offset = min(sample - spec.WINDOW_STARTS[window], spec.WINDOW_LENGTH - 1)
    return mask_logits[window, offset] > 0


class OverlayWriter:
    """Writes the overlay MP4; the capture thread keeps a `width`-pixel-wide copy of each frame for it."""

    def __init__(self, path: str | Path, width: int = 480, fps: float = 25.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width = width
        self.fps = fps
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._card: tuple[dict[str, Any], float] | None = None
        self.frames_written = 0

    def _write(self, image: np.ndarray, time: float) -> None:
        if self._writer is None:
            self._size = (image.shape[1], image.shape[0])
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                raise OSError(f"cannot write overlay video {self.path}")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        if self._card is not None and time - self._card[1] <= CARD_SECONDS:
            image = image.copy()
            self._draw_card(image, self._card[0])
        self._writer.write(image)
        self.frames_written += 1

    def frame(self, item: CapturedFrame, in_dive: bool) -> None:
        """A frame as the consumer reads it; frames of an open dive wait for its score."""
        if not in_dive and item.preview is not None:
            self._write(item.preview, item.time)

    def dive_scored(self, result: Any, frames: list[CapturedFrame]) -> None:
        """Write the dive's frames with mask tint and phase bar, then show the score card."""
        sampled_times = np.array([f.time for f in result.sampled])
        t1, t2 = (float(t) for t in result.event["transitions_s"])
        for item in frames:
            if item.preview is None:
                continue
            image = item.preview.copy()
            if result.mask_logits is not None:
                sample = int(np.argmin(np.abs(sampled_times - item.time)))
                self._tint(image, mask_for_frame(result.mask_logits, sample))
            phase = 0 if item.time <= t1 else 1 if item.time <= t2 else 2
            self._phase_bar(image, phase, result.event)
            self._write(image, item.time)
        self._card = (result.event, frames[-1].time if frames else 0.0)

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
    def _phase_bar(image: np.ndarray, phase: int, event: dict[str, Any]) -> None:
        height, width = image.shape[:2]
        bar = max(height // 24, 6)
        start, end = event["start_s"], max(event["end_s"], event["start_s"] + 1e-6)
        edges = [start, *event["transitions_s"], end]
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
        """Finish the file."""
        if self._writer is not None:
            self._writer.release()
            log.info("saved overlay %s (%d frames)", self.path, self.frames_written)
