"""The synthetic diving world (``fineparser-synth``): rendered dives in the FineDiving layout.

numpy + OpenCV only.  Public entry points:

- :func:`generate_dataset` writes frames, exact diver masks, annotations, splits and ``synth.json``;
- :func:`generate_broadcasts` writes untrimmed broadcast-like MP4s (cutaways, follow camera, slow replays,
  any frame rate) with per-frame ground truth and start lists (read back by
  :func:`fineparser.broadcast_labels.read_broadcast_labels`);
- :func:`render_synthetic_dive` renders one dive in memory (frames, masks, step labels);
- :mod:`synth.dives` holds the dive table and the judging rules;
- :mod:`synth.finediving_facts` holds the facts of the real annotations the world reproduces.
"""

from synth.broadcast import BroadcastSettings, BroadcastSummary, find_ffmpeg, frame_rate, generate_broadcasts
from synth.dataset import (
    DatasetSummary,
    SynthDive,
    generate_dataset,
    make_splits,
    render_synthetic_dive,
    synth_dive,
)
from synth.dives import (
    DIVE_FREQUENCY,
    DIVE_TABLE,
    STEP_TYPES,
    Quality,
    difficulty,
    expected_judge_award,
    final_score,
    parse_dive_number,
    sample_judge_scores,
)
from synth.render import RenderedDive, render_dive

__all__ = [
    "DIVE_FREQUENCY",
    "DIVE_TABLE",
    "STEP_TYPES",
    "BroadcastSettings",
    "BroadcastSummary",
    "DatasetSummary",
    "Quality",
    "RenderedDive",
    "SynthDive",
    "difficulty",
    "expected_judge_award",
    "final_score",
    "find_ffmpeg",
    "frame_rate",
    "generate_broadcasts",
    "generate_dataset",
    "make_splits",
    "parse_dive_number",
    "render_dive",
    "render_synthetic_dive",
    "sample_judge_scores",
    "synth_dive",
]
