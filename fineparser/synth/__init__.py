"""The synthetic diving world (``fineparser-synth``): rendered dives in the FineDiving layout.

numpy + OpenCV only.  Public entry points:

- :func:`generate_dataset` writes frames, exact diver masks, annotations, splits and ``synth.json``;
- :func:`generate_broadcasts` writes untrimmed broadcast-like MP4s with ground truth and start lists;
- :func:`render_synthetic_dive` renders one dive in memory (frames, masks, step labels);
- :mod:`fineparser.synth.dives` holds the dive table and the judging rules.
"""

from fineparser.synth.broadcast import BroadcastSummary, find_ffmpeg, generate_broadcasts
from fineparser.synth.dataset import (
    DatasetSummary,
    SynthDive,
    generate_dataset,
    make_splits,
    render_synthetic_dive,
    synth_dive,
)
from fineparser.synth.dives import (
    DIVE_TABLE,
    STEP_TYPES,
    Quality,
    difficulty,
    expected_judge_award,
    final_score,
    parse_dive_number,
    sample_judge_scores,
)
from fineparser.synth.render import RenderedDive, render_dive

__all__ = [
    "DIVE_TABLE",
    "STEP_TYPES",
    "BroadcastSummary",
    "DatasetSummary",
    "Quality",
    "RenderedDive",
    "SynthDive",
    "difficulty",
    "expected_judge_award",
    "final_score",
    "find_ffmpeg",
    "generate_broadcasts",
    "generate_dataset",
    "make_splits",
    "parse_dive_number",
    "render_dive",
    "render_synthetic_dive",
    "sample_judge_scores",
    "synth_dive",
]
