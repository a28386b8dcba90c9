"""Tiny fake FineDiving / FineDiving-HM datasets in the real on-disk layout, for data tests.

Frames are small uniform colours that encode their position in the clip (see
:func:`position_colour` / :func:`decode_position`) so a test can tell which frames were sampled;
masks are a left-hand block, so a horizontal flip shows.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fineparser.data import (
    ANNOTATION_FILE,
    ANNOTATIONS_DIR,
    FRAMES_DIR,
    MASKS_DIR,
    TEST_SPLIT_FILE,
    TRAIN_SPLIT_FILE,
    DataPaths,
)

FRAME_HW = (32, 48)
"""Height and width of fake frames (the real ones are 256 px high; tiny keeps tests fast)."""


@dataclass
class FakeClip:
    """One fake dive: its key, annotation and split."""

    competition: str
    clip_id: int
    dive_number: str
    final_score: float
    difficulty: float
    frame_labels: Sequence[int]
    first_frame: int = 0
    split: str = "train"

    @property
    def key(self) -> tuple[str, int]:
        return (self.competition, self.clip_id)


def step_labels(num_frames: int, starts: Sequence[int], steps: Sequence[int]) -> list[int]:
    """Per-frame labels: ``steps[k]`` from frame ``starts[k]`` (starts[0] must be 0)."""
    labels = np.empty(num_frames, dtype=np.int64)
    bounds = [*starts, num_frames]
    for step, begin, end in zip(steps, bounds[:-1], bounds[1:], strict=True):
        labels[begin:end] = step
    return labels.tolist()


def position_colour(position: int) -> tuple[int, int, int]:
    """RGB colour of the frame at a clip position (0..255): 16 coarse levels in R and G survive JPEG."""
    return ((position // 16) * 16 + 8, (position % 16) * 16 + 8, 64)


def decode_position(rgb: np.ndarray) -> int:
    """Inverse of :func:`position_colour` from a (mean) RGB value."""
    red, green = float(rgb[0]), float(rgb[1])
    return int(red // 16) * 16 + int(green // 16)


def write_jpeg(path: Path, image_rgb_or_gray: np.ndarray) -> None:
    """Write RGB (or grey) uint8 as a JPEG the way the dataset ships them."""
    image = image_rgb_or_gray
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    path.write_bytes(data.tobytes())


def mask_image(height: int, width: int) -> np.ndarray:
    """The fake diver: 255 on the left third of the frame, 0 elsewhere."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, : width // 3] = 255
    return mask


def write_dataset(
    root: Path,
    clips: Sequence[FakeClip],
    *,
    with_masks: bool = True,
    frame_hw: tuple[int, int] = FRAME_HW,
) -> DataPaths:
    """Write clips, masks, annotation and splits under ``root`` in the standard layout."""
    height, width = frame_hw
    annotation = {}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for clip in clips:
        folder = root / FRAMES_DIR / clip.competition / str(clip.clip_id)
        folder.mkdir(parents=True, exist_ok=True)
        mask_folder = root / MASKS_DIR / clip.competition / str(clip.clip_id)
        if with_masks:
            mask_folder.mkdir(parents=True, exist_ok=True)
        for position in range(len(clip.frame_labels)):
            name = f"{clip.first_frame + position:05d}.jpg"
            frame = np.empty((height, width, 3), dtype=np.uint8)
            frame[:] = position_colour(position % 256)
            write_jpeg(folder / name, frame)
            if with_masks:
                write_jpeg(mask_folder / name, mask_image(height, width))
        annotation[clip.key] = (
            clip.dive_number,
            clip.final_score,
            clip.difficulty,
            {"judges": [7.0, 7.5]},  # index 3: other info the loader ignores
            np.asarray(clip.frame_labels, dtype=np.int64),
        )
        splits[clip.split].append(clip.key)
    annotations = root / ANNOTATIONS_DIR
    annotations.mkdir(parents=True, exist_ok=True)
    (annotations / ANNOTATION_FILE).write_bytes(pickle.dumps(annotation))
    (annotations / TRAIN_SPLIT_FILE).write_bytes(pickle.dumps(splits["train"]))
    (annotations / TEST_SPLIT_FILE).write_bytes(pickle.dumps(splits["test"]))
    return DataPaths.discover(root)


def standard_clips() -> list[FakeClip]:
    """Two dive numbers: 107B (3 train, 1 test) and 5253B (2 train, 1 test); 20-40 frames each."""

    def labels(n: int) -> list[int]:
        return step_labels(n, [0, n // 4, 3 * n // 4], [0, 3, 7])

    return [
        FakeClip("WorldCup2021_M3m", 0, "107B", 80.5, 3.0, labels(30), first_frame=0),
        FakeClip("WorldCup2021_M3m", 1, "107B", 60.0, 3.0, labels(24), first_frame=5),
        FakeClip("WorldCup2021_M3m", 2, "107B", 70.0, 3.0, labels(40), first_frame=120),
        FakeClip("WorldCup2021_M3m", 3, "5253B", 66.0, 3.2, labels(28)),
        FakeClip("Olympics2020_W10m", 0, "5253B", 71.0, 3.2, labels(22)),
        FakeClip("Olympics2020_W10m", 1, "107B", 75.0, 3.0, labels(26), split="test"),
        FakeClip("Olympics2020_W10m", 2, "5253B", 55.5, 3.2, labels(20), split="test"),
    ]
