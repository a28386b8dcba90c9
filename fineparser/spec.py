"""Input and layout facts shared by every stage (torch-free).

These are the paper's fixed numbers: the clip length, the model frame, the window layout of the
I3D trunks and the normalisation.  Training, export, calibration and the runtime all read them
from here so that no stage can drift from another.
"""

from __future__ import annotations

from typing import TypeVar

ArrayT = TypeVar("ArrayT")

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
TRAIN_START_SHIFT = (0, 0)
"""Training moves the first sampled frame by a random integer in this closed range (the paper: never)."""

TRANSITION_TARGET_OFFSET = 1
"""Frames from the data reader's transitions to the ones the network is trained and scored on.

The reader (``fineparser.data``, as the paper's dataset class) gives each transition as the last
of the 96 sampled frames before the second step and before the last step.  Both reference
training loops (FineParser and TSA, ``tools/runner.py``) add 1 before any use, so the paper's
network learns, and predicts, the first frame of the second step and of the last step.  This is
the one place the convention is stated: the trainer's transition-loss targets, the ground-truth
transitions fed to the static encoder and the pair head's windows ``(tQ + tE) // 20``, and the
reference of AIoU all go through :func:`target_transitions`.  Inference never uses it: it works
on predicted transitions, already in the target convention.
"""


def target_transitions(reader_transitions: ArrayT) -> ArrayT:
    """The reader's transitions [..., 2] (numpy or torch) in the paper's training convention (first frame of a step)."""
    return reader_transitions + TRANSITION_TARGET_OFFSET


def canonical_dive_number(dive_number: object) -> str:
    """The one spelling in which dive numbers are stored and compared: no whitespace, lower case.

    ``' 407C'``, ``'407 c'`` and ``'407c'`` are the same dive.  Lower case because the real
    FineDiving annotations write every dive number that way (all 3000 records of
    ``fine-grained_annotation_aqa.pkl``: '407c', '5237d'): a bank or index built from the real data
    is canonical as it is, and what people type (start lists, FINA tables, '407C') is folded onto it.
    """
    return "".join(str(dive_number).split()).lower()


assert NUM_WINDOWS == 9 and WINDOW_STARTS[-1] + WINDOW_LENGTH <= NUM_FRAMES
