"""Score a finished dive: sample 96 frames, encode, pair head against K exemplars, explain.

The exemplars, the final score, the per-step deltas and the segments averaged (the package's
``scoring.edge_offsets_s``: each an encode and a pair head) follow ``fineparser.scoring``; the
exemplar fallback note is passed into the event.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fineparser import spec
from fineparser.package import FALLBACK_ORDER, ExemplarBank
from fineparser.preprocess import sample_frame_indices
from fineparser.scoring import EdgeOffsets, frame_interval, mean_pair_outputs, pair_feeds, score_dive, select_exemplars
from runtime.backends import Backend
from runtime.segments import Dive
from runtime.sources import CapturedFrame

log = logging.getLogger(__name__)


class ScoringError(RuntimeError):
    """A dive that cannot be scored (e.g. no frames left in the buffer)."""


@dataclass
class DiveResult:
    """Everything a score event says, plus arrays the overlay needs."""

    event: dict[str, Any]
    sampled: list[CapturedFrame]
    transitions: np.ndarray  # [2] indices into sampled
    mask_logits: np.ndarray | None = None  # [9, 16, 112, 112]


def sample_dive_frames(frames: list[CapturedFrame]) -> list[CapturedFrame]:
    """96 frames over the dive with training's linspace sampling (repeats when the dive is shorter)."""
    if not frames:
        raise ScoringError("no frames of the dive are in the buffer")
    indices = sample_frame_indices(0, len(frames) - 1, spec.NUM_FRAMES)
    return [frames[i] for i in indices]


class DiveScorer:
    """Holds the backend and the bank; one call per finished dive."""

    def __init__(self, backend: Backend, bank: ExemplarBank, voter_number: int = 10, with_masks: bool = False,
                 edge_offsets: EdgeOffsets | None = None) -> None:
        self.backend = backend
        self.bank = bank
        self.voter_number = voter_number
        self.with_masks = with_masks and backend.has_masks
        self.edge_offsets = edge_offsets or EdgeOffsets()

    def exemplars(self, dive_number: str | None) -> tuple[np.ndarray, str | None]:
        """Bank indices for a dive number and the fallback note (None when the dive number itself was found)."""
        return select_exemplars(self.bank, dive_number, self.voter_number)

    def score(self, dive: Dive, frames: list[CapturedFrame], ended_at: float,
              lead: list[CapturedFrame] | tuple = ()) -> DiveResult:
        """Score one dive from its buffered frames; `ended_at` (perf_counter) is when its end was seen.

        `lead`: the frames just before the dive's start (edge offsets that move the start earlier use them;
        without them those segments start at the dive's first frame)."""
        if not frames:
            raise ScoringError("no frames of the dive are in the buffer")
        both = list(lead) + list(frames)
        spans = self.edge_offsets.spans(len(lead), len(frames), frame_interval([f.time for f in both]))
        indices, note = self.exemplars(dive.dive_number)
        feeds = self.bank.pair_head_inputs(indices)
        outputs = []
        for n, (lo, hi) in enumerate(spans):
            segment = sample_dive_frames(both[lo:hi + 1])
            clip = np.stack([f.frame for f in segment])[None]
            encoded = self.backend.encode(clip, with_masks=self.with_masks and n == 0)
            if n == 0:  # the dive as found: what the explanation shows
                sampled, query = segment, encoded
            outputs.append(self.backend.pair_head(pair_feeds(encoded, feeds)))
        delta, step_deltas = mean_pair_outputs(outputs)
        scored = score_dive(self.bank.final_score[indices], delta, step_deltas)
        transitions = np.asarray(query["transitions"]).reshape(-1)[:2].astype(np.int64)
        transitions = np.clip(transitions, 0, len(sampled) - 1)
        latency_ms = (time.perf_counter() - ended_at) * 1000.0
        event = {
            "dive": dive.index,
            "dive_number": dive.dive_number,
            "score": round(scored.final, 4),
            "mean_delta": round(scored.mean_delta, 6),
            "step_deltas": {name: round(float(v), 6) for name, v in zip(spec.STEP_NAMES, scored.step_means)},
            "transitions_s": [round(sampled[int(t)].time, 4) for t in transitions],
            "transition_frames": transitions.tolist(),
            "start_s": round(dive.start, 4),
            "end_s": round(float(dive.end if dive.end is not None else sampled[-1].time), 4),
            "frames_in_dive": len(frames),
            "segments": len(spans),
            "exemplars": [{"clip_id": str(self.bank.clip_id[i]), "dive_number": str(self.bank.dive_number[i]),
                           "score": round(float(self.bank.final_score[i]), 4), "delta": round(float(d), 6)}
                          for i, d in zip(indices, scored.deltas)],
            "exemplar_fallback": note,
            "fallback_order": list(FALLBACK_ORDER),
            "backend": getattr(self.backend, "description", self.backend.name),
            "latency_ms": round(latency_ms, 2),
        }
        if dive.ground_truth_score is not None:
            event["ground_truth_score"] = dive.ground_truth_score
        masks = query.get("mask_logits")
        return DiveResult(event, sampled, transitions, None if masks is None else np.asarray(masks)[0])
