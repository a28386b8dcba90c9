"""Tiny fake FineDiving / FineDiving-HM datasets in the real on-disk layouts, for data tests.

Records are those of the real ``fine-grained_annotation_aqa.pkl``: lists [dive_number, final_score,
difficulty, steps_transit_frames, frames_labels], keys (competition, clip_id).  Frames are small
uniform colours that encode their position in the clip (see :func:`position_colour` /
:func:`decode_position`) so a test can tell which frames were sampled; masks are a left-hand
block, so a horizontal flip shows.  ``layout`` picks the folder names: "config" (the paper's
config: FINADiving_MTL_256s, diving_mask_annotation, Annotations inside the root) or "readme"
(the READMEs: FineDiving, FineDiving_HM, Annotations beside the root).
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
    mask_hw: tuple[int, int] | None = None,
    mask_colour: tuple[int, int, int] | None = None,
    layout: str = "config",
) -> DataPaths:
    """Write clips, masks, annotation and splits under ``root``; returns ``DataPaths.discover(root)``.

    ``mask_hw`` writes masks of another size than the frames; ``mask_colour`` writes the diver in
    that RGB colour on black as a 3-channel JPEG (FineDiving-HM does not promise grey masks).
    """
    height, width = frame_hw
    mask_height, mask_width = mask_hw or frame_hw
    frames_dir, masks_dir, annotations = {
        "config": (FRAMES_DIR, MASKS_DIR, root / ANNOTATIONS_DIR),
        "readme": ("FineDiving", "FineDiving_HM", root.parent / ANNOTATIONS_DIR),
    }[layout]
    annotation = {}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for clip in clips:
        folder = root / frames_dir / clip.competition / str(clip.clip_id)
        folder.mkdir(parents=True, exist_ok=True)
        mask_folder = root / masks_dir / clip.competition / str(clip.clip_id)
        if with_masks:
            mask_folder.mkdir(parents=True, exist_ok=True)
        mask = mask_image(mask_height, mask_width)
        if mask_colour is not None:
            mask = (mask[:, :, None] // 255) * np.asarray(mask_colour, dtype=np.uint8)
        for position in range(len(clip.frame_labels)):
            name = f"{clip.first_frame + position:05d}.jpg"
            frame = np.empty((height, width, 3), dtype=np.uint8)
            frame[:] = position_colour(position % 256)
            write_jpeg(folder / name, frame)
            if with_masks:
                write_jpeg(mask_folder / name, mask)
        labels = np.asarray(clip.frame_labels, dtype=np.int64)
        annotation[clip.key] = [
            clip.dive_number,
            clip.final_score,
            clip.difficulty,
            np.flatnonzero(np.diff(labels) != 0).astype(np.int64),  # steps_transit_frames, unused
            labels,
        ]
        splits[clip.split].append(clip.key)
    annotations.mkdir(parents=True, exist_ok=True)
    (annotations / ANNOTATION_FILE).write_bytes(pickle.dumps(annotation))
    (annotations / TRAIN_SPLIT_FILE).write_bytes(pickle.dumps(splits["train"]))
    (annotations / TEST_SPLIT_FILE).write_bytes(pickle.dumps(splits["test"]))
    return DataPaths.discover(root)


def standard_clips() -> list[FakeClip]:
    """Two dive numbers: 107b (3 train, 1 test) and 5253b (2 train, 1 test); 20-40 frames each.

    Dive numbers are lower case and step labels use the real table's ids (1 Forward, 15 '2.5
    Soms.Pike', 36 Entry), as the real annotation writes them.
    """

    def labels(n: int) -> list[int]:
        return step_labels(n, [0, n // 4, 3 * n // 4], [1, 15, 36])

    return [
        FakeClip("WorldCup2021_M3m", 0, "107b", 80.5, 3.0, labels(30), first_frame=0),
        FakeClip("WorldCup2021_M3m", 1, "107b", 60.0, 3.0, labels(24), first_frame=5),
        FakeClip("WorldCup2021_M3m", 2, "107b", 70.0, 3.0, labels(40), first_frame=120),
        FakeClip("WorldCup2021_M3m", 3, "5253b", 66.0, 3.2, labels(28), first_frame=99990),
        FakeClip("Olympics2020_W10m", 0, "5253b", 71.0, 3.2, labels(22)),
        FakeClip("Olympics2020_W10m", 1, "107b", 75.0, 3.0, labels(26), split="test"),
        FakeClip("Olympics2020_W10m", 2, "5253b", 55.5, 3.2, labels(20), split="test"),
    ]
