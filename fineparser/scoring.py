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
