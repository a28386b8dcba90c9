"""Input and layout facts shared by every stage (torch-free).

These are the paper's fixed numbers: the clip length, the model frame, the window layout of the
I3D trunks and the normalisation.  Training, export, calibration and the runtime all read them
from here so that no stage can drift from another.
"""

from __future__ import annotations

NUM_FRAMES = 96
"""Frames sampled from one dive (``linspace(first, last, 96)``)."""

FRAME_SIZE = 112
"""Model frames are FRAME_SIZE x FRAME_SIZE RGB."""

RESIZE_HW = (200, 112)
"""(height, width) every source frame is resized to before the 112x112 crop (aspect not kept)."""

WINDOW_LENGTH = 16
WINDOW_STRIDE = 10
WINDOW_STARTS = tuple(range(0, NUM_FRAMES - WINDOW_LENGTH + 1, WINDOW_STRIDE))
"""Nine I3D windows of 16 frames start at frames 0, 10, ..., 80."""
NUM_WINDOWS = len(WINDOW_STARTS)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

STEP_NAMES = ("approach/take-off", "flight", "entry")
"""The three steps a score is explained by, in order."""
STEP_WEIGHTS = (0.3, 0.5, 0.2)
"""The paper's weights of the three steps (3:5:2) when step deltas are combined."""

TRAIN_END_SHIFT = (-3, 0)
"""Training moves the last sampled frame by a random integer in this closed range."""

assert NUM_WINDOWS == 9 and WINDOW_STARTS[-1] + WINDOW_LENGTH <= NUM_FRAMES
