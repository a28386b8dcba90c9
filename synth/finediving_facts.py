"""Facts and figures of the real FineDiving annotations that the synthetic world reproduces.

Source of every number here: the FineDiving repository's public history, xujinglin/FineDiving at
commit 806717b, ``Annotations/`` (``fine-grained_annotation_aqa.pkl``,
``FineDiving_coarse_annotation.pkl``, ``FineDiving_fine-grained_annotation.pkl``,
``Sub_action_Types_Table.pkl``, ``train_split.pkl``, ``test_split.pkl``), read with a numpy-only
restricted unpickler.  Only counts, quantiles and field names were taken; no file is copied.
``bench/check_real_annotations.py`` recomputes the headline counts from the files and says where
they disagree.

Quantile tables hold 21 points (0, 5, ..., 100 %); the world samples them by linear interpolation
of the inverse CDF (:func:`from_quantiles`), which keeps spikes such as the 101-frame clips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

# ----------------------------------------------------------------------------- the files

NUM_CLIPS = 3000
NUM_TRAIN = 2251
NUM_TEST = 749
NUM_DIVE_NUMBERS = 52
NUM_STEP_TYPES_USED = 29
NUM_DIFFICULTIES = 23
NUM_COMPETITIONS = 135  # folders (one untrimmed video each)

AQA_RECORD_LAYOUT = ("dive_number", "final_score", "difficulty", "steps_transit_frames", "frames_labels")
"""``fine-grained_annotation_aqa.pkl``: {(competition: str, clip_id: int): list of these five}, types
str (lower case, e.g. '407c'), float, float, int64 array [steps - 1], int64 array [frames]."""

COARSE_FIELDS = MappingProxyType(
    {
        "action_type": str,  # the dive number, as in the AQA record
        "start_frame": int,  # first frame of the trimmed dive in the untrimmed video (= first JPEG's number)
        "end_frame": int,  # last frame, inclusive (end - start + 1 == number of frame labels, all 3000)
        "dive_score": float,
        "difficulty": float,
        "judge_scores": list,  # of float (np.float64 in 1369 records)
    }
)
"""``FineDiving_coarse_annotation.pkl``: {(competition, clip_id): dict with these fields, in this order}."""

FINE_GRAINED_FIELDS = (
    "action_type",
    "dive_score",
    "difficulty",
    "steps_transit_frames",
    "frames_labels",
    "sub-action_types",  # {np.int64 step type id: name} of the types in the clip, in order of appearance
)
"""``FineDiving_fine-grained_annotation.pkl``: {(competition, clip_id): dict with these fields}."""

STEPS_TRANSIT_RULE = "np.flatnonzero(np.diff(frames_labels) != 0)"
"""``steps_transit_frames`` is the last frame of every step but the last (2993 of 3000 records)."""

CLIP_IDS_FROM = 0
"""Clip ids count from 0 in the 120 round videos; the 15 whole-session videos ('01'..'26') start at 1
with gaps.  Clips are numbered in the order of their start frames in all 135 videos."""

FRAME_NAME = "{:05d}.jpg"
"""Frames are named by their frame number in the untrimmed video (ffmpeg's %05d: six digits past 99999)."""

# ----------------------------------------------------------------------------- step types

SUB_ACTION_TYPES: Mapping[int, str] = MappingProxyType(
    {
        1: "Forward",
        2: "Back",
        3: "Reverse",
        4: "Inward",
        5: "Arm.Forward",
        6: "Arm.Back",
        7: "Arm.Reverse",
        8: "1 Som.Straight",
        9: "1.5 Soms.Straight",
        10: "2 Soms.Straight",
        11: "2.5 Soms.Straight",
        12: "1 Som.Pike",
        13: "1.5 Soms.Pike",
        14: "2 Soms.Pike",
        15: "2.5 Soms.Pike",
        16: "3 Soms.Pike",
        17: "3.5 Soms.Pike",
        18: "4 Soms.Pike",
        19: "4.5 Soms.Pike",
        20: "1 Som.Tuck",
        21: "1.5 Soms.Tuck",
        22: "2 Soms.Tuck",
        23: "2.5 Soms.Tuck",
        24: "3 Soms.Tuck",
        25: "3.5 Soms.Tuck",
        26: "4 Soms.Tuck",
        27: "4.5 Soms.Tuck",
        28: "5.5 Soms.Tuck",
        29: "0.5 Twist",
        30: "1 Twist",
        31: "1.5 Twists",
        32: "2 Twists",
        33: "2.5 Twists",
        34: "3 Twists",
        35: "3.5 Twists",
        36: "Entry",
        37: "0.5 Som.Pike",
        38: "Background",
        39: "0.5 Som.Straight",
        40: "0.5 Som.Tuck",
        41: "4 Twists",
        42: "4.5 Twists",
    }
)
"""``Sub_action_Types_Table.pkl``: step type id -> name (42 ids, 29 of them used in the labels)."""

# How the annotators labelled a dive (from the most common label sequence of every dive number):
# take-off by group, somersaults by the dive's total count with free ('d') written as pike and every
# half somersault ('x01x') as '0.5 Som.Pike', twists by the dive's total count, then 'Entry'.  Forward
# twisters read somersault, twist, somersault (e.g. 5154b); the others twist first (5253b).

# ----------------------------------------------------------------------------- dives

DIVES: Mapping[str, Mapping[str, tuple[int, float]]] = MappingProxyType(
    {
        # board -> dive number -> (clips, degree of difficulty).  The board is the one in the video's
        # name (1631 clips), else the session's (14 of 15 sessions: the board whose DDs its dives
        # carry), else the dive's own DD (session '26'); 3 clips stay undecided.  DD is the most common
        # one in individual events.  Marked 'sync': seen only in synchronised events, whose first two
        # rounds are scored at a fixed DD 2.0.  636c (armstand reverse, 5 clips) is left out: the
        # renderer has no armstand reverse take-off.
        "10m": MappingProxyType(
            {
                "407c": (250, 3.2),
                "107b": (207, 3.0),
                "5253b": (201, 3.2),
                "307c": (140, 3.4),
                "207c": (132, 3.3),
                "6243d": (107, 3.2),
                "109c": (80, 3.7),
                "5255b": (79, 3.6),
                "207b": (72, 3.6),
                "205b": (63, 2.9),
                "301b": (56, 1.9),
                "626c": (53, 3.3),
                "305c": (46, 2.8),
                "405b": (45, 2.8),
                "201b": (34, 1.8),
                "6245d": (32, 3.6),
                "103b": (28, 1.6),
                "626b": (25, 3.5),
                "403b": (24, 2.0),
                "401b": (15, 2.0),  # sync
                "5152b": (12, 2.9),
                "101b": (11, 1.5),
                "5231d": (10, 2.0),
                "6142d": (10, 3.1),
                "107c": (9, 2.7),
                "5132d": (9, 2.1),
                "5156b": (8, 3.8),
                "5251b": (8, 2.6),
                "305b": (7, 3.0),
                "5235d": (7, 2.8),
                "407b": (6, 3.5),
                "409c": (6, 4.1),
                "612b": (5, 1.9),
                "6241b": (5, 2.7),
                "5172b": (3, 3.6),
                "614b": (3, 2.4),
                "105b": (2, 2.3),
                "5154b": (2, 3.3),
                "5237d": (2, 3.3),
                "5331d": (2, 2.1),
                "109b": (1, 4.1),
            }
        ),
        "3m": MappingProxyType(
            {
                "205b": (141, 3.0),
                "107b": (117, 3.1),
                "5154b": (112, 3.4),
                "407c": (97, 3.4),
                "307c": (93, 3.5),
                "405b": (88, 3.0),
                "5152b": (82, 3.0),
                "109c": (78, 3.8),
                "305b": (77, 3.0),
                "201b": (34, 2.0),  # sync
                "301b": (31, 2.0),  # sync
                "5353b": (31, 3.3),
                "5156b": (30, 3.9),
                "207c": (27, 3.6),
                "5337d": (23, 3.5),
                "401b": (21, 2.0),  # sync
                "205c": (16, 2.8),
                "405c": (16, 2.7),
                "101b": (11, 2.0),  # sync
                "103b": (8, 2.0),  # sync
                "305c": (8, 2.8),
                "5253b": (8, 3.4),
                "107c": (7, 2.8),
                "105b": (4, 2.4),
                "5233d": (3, 2.4),
                "5355b": (3, 3.7),
                "5231d": (2, 2.0),  # sync
                "5331d": (2, 2.0),  # sync
                "201a": (1, 2.0),  # sync
                "201c": (1, 2.0),  # sync
                "303c": (1, 2.0),  # sync
                "407b": (1, 3.7),
                "5335d": (1, 2.9),
            }
        ),
    }
)

# ----------------------------------------------------------------------------- clips and timing

CLIP_LENGTH_QUANTILES = (
    63, 84, 90, 94, 97, 100, 101, 101, 101, 101, 101, 101, 103, 104, 106, 107, 110, 112, 118.1, 132, 273,
)  # fmt: skip
"""Frames per clip (= frame labels); 868 of 3000 clips have exactly 101, 489 have fewer than 96."""

TAKEOFF_END_QUANTILES = (
    0.0, 0.0941, 0.1429, 0.1724, 0.1941, 0.21, 0.2234, 0.24, 0.2548, 0.27, 0.2878,
    0.301, 0.32, 0.3362, 0.3483, 0.36, 0.38, 0.4042, 0.43, 0.4712, 0.5979,
)  # fmt: skip
"""Last frame of the take-off step (first appearance of the second label, minus one) / (frames - 1)."""

ENTRY_END_QUANTILES = (
    0.3529, 0.5, 0.5294, 0.55, 0.5669, 0.5789, 0.59, 0.6, 0.6139, 0.6238, 0.6351,
    0.6489, 0.66, 0.67, 0.6863, 0.7, 0.7176, 0.7369, 0.7596, 0.7953, 0.9121,
)  # fmt: skip
"""Last frame before the last step (first appearance of the last label, minus one) / (frames - 1)."""

TRANSITION_RANK_CORRELATION = 0.861
"""Correlation of the two positions' normal scores (a clip with a late take-off has a late entry)."""

OUT_OF_HALVES = (73, 135)
"""Real clips whose sampled transition 1 is past frame 47, and whose transition 2 is before frame 48
(of 96, no end shift): the paper's TAP, which looks for them in rows 0..47 and 48..95, cannot place them."""

START_FRAME_QUANTILES = (
    95, 2394, 4060, 5913, 7778, 9498, 11161, 12848, 14565, 16358, 18300,
    21014, 26290, 40447, 56806, 73255, 90477, 112205, 139633, 187470, 290352,
)  # fmt: skip
"""start_frame of all 3000 clips (531 past 99999, so their JPEG names have six digits)."""

GAP_QUANTILES = (
    208, 972, 1060, 1117, 1156, 1197, 1235, 1266, 1298, 1325, 1357,
    1389, 1428, 1463, 1506, 1560, 1619, 1702, 1835, 2188, 51233,
)  # fmt: skip
"""Frames between one clip's end_frame and the next clip's start_frame in the same video."""

# ----------------------------------------------------------------------------- judging

JUDGE_PANELS = MappingProxyType({7: 1369, 3: 1024, 5: 607})
"""Length of ``judge_scores``: 7 in the sessions (final = middle three x DD: holds for 1270), 3 in
the round videos (the three counting awards: final = sum x DD, 1011), 5 in synchronised Tokyo 2020
(final = sum x DD x 0.6, 599).  The world judges with 7 (or 5) and the middle three."""

JUDGE_AWARD_QUANTILES_7 = (0.0, 4.0, 6.5, 7.5, 8.0, 9.0)
"""Awards of 7-judge panels at 0, 5, 25, 50, 75, 95 %: mean 7.13, sd 1.48 (the maximum is a typo,
45.0; another record holds 55.5).  Half points from 0 to 10 otherwise."""

FINAL_SCORE_RANGE = (0.0, 114.8)
"""Final scores: median 67.5, 5 % 40.85, 95 % 90.75."""


# ----------------------------------------------------------------------------- sampling


def from_quantiles(quantiles: Sequence[float], u: float | np.ndarray) -> float | np.ndarray:
    """Inverse CDF of an evenly spaced quantile table at u in [0, 1] (linear between the points)."""
    grid = np.linspace(0.0, 1.0, len(quantiles))
    return np.interp(u, grid, np.asarray(quantiles, dtype=np.float64))


__all__ = [
    "AQA_RECORD_LAYOUT",
    "CLIP_LENGTH_QUANTILES",
    "COARSE_FIELDS",
    "DIVES",
    "ENTRY_END_QUANTILES",
    "FINE_GRAINED_FIELDS",
    "GAP_QUANTILES",
    "JUDGE_PANELS",
    "NUM_CLIPS",
    "START_FRAME_QUANTILES",
    "SUB_ACTION_TYPES",
    "TAKEOFF_END_QUANTILES",
    "TRANSITION_RANK_CORRELATION",
    "from_quantiles",
]
