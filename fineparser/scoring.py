"""The one scoring rule: pair-head feeds, exemplar choice, mean over exemplars of (score + delta), step means.

numpy only (no torch): the model, evaluation, export parity, calibration and the runtime all call
it.  ``final_score`` and ``step_means`` are plain arithmetic, so they take numpy arrays and torch
tensors alike and keep the dtype their arguments promote to; ``score_dive`` is the float64 numpy
path the onnxruntime and TensorRT users share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from fineparser.spec import STEP_NAMES

if TYPE_CHECKING:
    from fineparser.package import ExemplarBank

Values = TypeVar("Values")
"""A numpy array or a torch tensor."""

NO_DIVE_NUMBER_NOTE = ("no dive number known for this dive (no start list, timecodes without dive numbers): "
                       "using exemplars of any dive")


@dataclass(frozen=True)
class DiveScore:
    """One query scored against K exemplars (float64), with its per-step explanation."""

    final: float  # mean over exemplars of (exemplar score + delta)
    mean_delta: float
    deltas: np.ndarray  # [K] per exemplar
    step_means: np.ndarray | None  # [3] approach/take-off, flight, entry; they sum to mean_delta


def pair_feeds(query: Mapping[str, np.ndarray], exemplar_feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """pair_head inputs from an encoder output and ExemplarBank.pair_head_inputs()."""
    return {"query_window_features": np.ascontiguousarray(query["window_features"], dtype=np.float32),
            "query_transitions": np.ascontiguousarray(query["transitions"], dtype=np.int64),
            "query_static_tokens": np.ascontiguousarray(query["static_tokens"], dtype=np.float32),
            **exemplar_feeds}


def select_exemplars(bank: ExemplarBank, dive_number: str | None, voter_number: int) -> tuple[np.ndarray, str | None]:
    """Bank indices of at most `voter_number` exemplars for a dive, and the fallback note (None: none used)."""
    if not dive_number:
        # bank.select would name the empty dive number in its note; say instead why there is none.
        indices, _ = bank.select("", k=voter_number)
        return indices, NO_DIVE_NUMBER_NOTE
    return bank.select(dive_number, k=voter_number)


def final_score(exemplar_scores: Values, delta: Values) -> Values:
    """The paper's test-time prediction: mean over exemplars of (exemplar score + delta), both [K]."""
    return (exemplar_scores + delta).mean()


def step_means(step_deltas: Values) -> Values:
    """Mean over exemplars of the per-step deltas, [K, 3] -> [3]; they sum to the mean delta."""
    return step_deltas.mean(0)


def score_dive(exemplar_scores: np.ndarray, deltas: np.ndarray, step_deltas: np.ndarray | None = None) -> DiveScore:
    """Score pair-head outputs (delta [K], step_deltas [K, 3]) against their exemplars' scores [K], in float64."""
    scores = np.asarray(exemplar_scores, dtype=np.float64).reshape(-1)
    deltas = np.asarray(deltas, dtype=np.float64).reshape(-1)
    if scores.shape != deltas.shape:
        raise ValueError(f"{scores.size} exemplar scores but {deltas.size} pair-head deltas")
    steps = None
    if step_deltas is not None:
        steps = step_means(np.asarray(step_deltas, dtype=np.float64).reshape(-1, len(STEP_NAMES)))
    return DiveScore(final=float(final_score(scores, deltas)), mean_delta=float(deltas.mean()), deltas=deltas,
                     step_means=steps)


# --------------------------------------------------------------------------- edge-averaged scoring

EDGE_OFFSETS_KEY = "edge_offsets_s"
"""manifest["scoring"][EDGE_OFFSETS_KEY] = {"start": [seconds...], "end": [seconds...]}; absent: one segment."""

MAX_EDGE_OFFSET_S = 1.0
"""Offsets further than this from a boundary are refused: they would score another stretch of the programme."""


@dataclass(frozen=True)
class EdgeOffsets:
    """Where a dive's boundaries are moved to score it several times; the score is the mean over those segments.

    A dive's score moves with its boundaries by more than a segmenter's error (a few frames at 25 fps move
    the demo model's score by over a point, docs/runtime.md "Edge-averaged scores"), and most of that is
    noise of the one 96-frame sampling rather than a trend: averaging the pair head's deltas over a few
    segments with the start moved by each of ``start`` and the end by each of ``end`` (seconds, 0 included
    in both; end offsets are <= 0, since nothing after a dive's end is waited for) halves how much 2-frame
    boundary errors move it.  The segment of offsets (0, 0) is scored first; it gives the transitions, the
    sampled frames and the masks that the explanation shows."""

    start: tuple[float, ...] = (0.0,)
    end: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        for name, values in (("start", self.start), ("end", self.end)):
            if not values or any(not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v)
                                 for v in values):
                raise ValueError(f"{EDGE_OFFSETS_KEY}.{name} must be a non-empty list of finite seconds, "
                                 f"got {list(values)!r}")
            if 0.0 not in values:
                raise ValueError(f"{EDGE_OFFSETS_KEY}.{name} must contain 0 (the segment as found), "
                                 f"got {list(values)!r}")
            if any(abs(v) > MAX_EDGE_OFFSET_S for v in values):
                raise ValueError(f"{EDGE_OFFSETS_KEY}.{name} offsets must be within {MAX_EDGE_OFFSET_S} s of the "
                                 f"boundary, got {list(values)!r}")
        if any(v > 0 for v in self.end):
            raise ValueError(f"{EDGE_OFFSETS_KEY}.end offsets must be <= 0 (frames after a dive's end are not "
                             f"waited for), got {list(self.end)!r}")

    @classmethod
    def from_scoring(cls, scoring: Mapping | None) -> EdgeOffsets:
        """The offsets of a manifest's ``scoring`` section (one segment when it has none); ValueError if malformed."""
        raw = (scoring or {}).get(EDGE_OFFSETS_KEY)
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping) or set(raw) != {"start", "end"} or not all(
                isinstance(raw[k], list) for k in ("start", "end")):
            raise ValueError(f"scoring.{EDGE_OFFSETS_KEY} must be {{\"start\": [seconds...], \"end\": [seconds...]}}, "
                             f"got {raw!r}")
        return cls(tuple(raw["start"]), tuple(raw["end"]))

    def to_scoring(self) -> dict[str, list[float]]:
        return {"start": [float(v) for v in self.start], "end": [float(v) for v in self.end]}

    @property
    def lead_s(self) -> float:
        """How long before a dive's start the scorer needs frames (the earliest start offset)."""
        return max(0.0, -min(self.start))

    def spans(self, lead: int, count: int, interval: float) -> list[tuple[int, int]]:
        """Index spans [lo, hi] (inclusive) into `lead` frames before the dive followed by its `count` frames.

        Offsets become whole frames at `interval` seconds per frame (rounded half to even); spans are clipped
        to the frames given and kept at least one frame long, and spans that coincide after that count once.
        The dive as found, (lead, lead + count - 1), comes first, then start x end offsets in order."""
        if count < 1:
            raise ValueError("a dive needs at least one frame to be scored")
        first, last = lead, lead + count - 1
        spans = [(first, last)]
        if not interval > 0:
            return spans
        for a in self.start:
            for b in self.end:
                lo = min(max(0, first + int(np.rint(a / interval))), last)
                hi = max(min(last, last + int(np.rint(b / interval))), lo)
                if (lo, hi) not in spans:
                    spans.append((lo, hi))
        return spans


EDGE_AVERAGE_OFFSETS = EdgeOffsets(start=(-0.08, 0.0, 0.08), end=(-0.08, 0.0))
"""What `fineparser-export --edge-average` writes: the start 2 frames (at 25 fps) either way, the end 2 frames
earlier; 6 segments.  Not the default: it halves what 2-frame boundary errors do to a score but did not make
scores rank dives better, for 6 times the scoring work (docs/runtime.md, "Edge-averaged scores")."""


def frame_interval(times: np.ndarray | list[float]) -> float:
    """Seconds per frame of a run of stream times: the median step (0 when fewer than two frames)."""
    times = np.asarray(times, dtype=np.float64)
    return float(np.median(np.diff(times))) if times.size >= 2 else 0.0


def mean_pair_outputs(outputs: list[tuple[np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-exemplar mean over segments of the pair head's (delta [K], step_deltas [K, 3]), in float64."""
    deltas = np.mean([np.asarray(d, dtype=np.float64).reshape(-1) for d, _ in outputs], axis=0)
    if any(s is None for _, s in outputs):
        return deltas, None
    steps = np.mean([np.asarray(s, dtype=np.float64).reshape(-1, len(STEP_NAMES)) for _, s in outputs], axis=0)
    return deltas, steps
