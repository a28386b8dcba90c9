"""Evaluation metrics of the paper (numpy only).

Score metrics: Spearman's rho, L2 (mean squared error) and relative L2 (squared error over the
squared range of the true scores; the paper reports it x100).  Temporal parsing: tIoU between the
predicted and true [transition 1, transition 2] segments and AIoU@threshold, the fraction of dives
whose tIoU reaches the threshold.  Masks: pixel statistics with a pixel counted as diver when
sigmoid(logit) >= 0.5, i.e. logit >= 0 (the paper's code compares the raw logit with 0.5; we state
the threshold on the probability instead), pooled over the test queries; `pairwise_mask_metrics`
gives the paper's aggregation (per query/exemplar pair over both clips, mean over pairs) beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MASK_PROBABILITY_THRESHOLD = 0.5


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):  # average ranks over ties
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman_rho(pred, true) -> float:
    """Spearman rank correlation (ties get average ranks); nan when either side is constant."""
    pred, true = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(true, dtype=np.float64).ravel()
    if pred.shape != true.shape or len(pred) < 2:
        raise ValueError(f"spearman_rho needs two equal-length sequences of >= 2 values, got {pred.shape}, "
                         f"{true.shape}")
    rp, rt = _ranks(pred), _ranks(true)
    rp, rt = rp - rp.mean(), rt - rt.mean()
    denom = np.sqrt((rp ** 2).sum() * (rt ** 2).sum())
    return float((rp * rt).sum() / denom) if denom > 0 else float("nan")


def l2(pred, true) -> float:
    """Mean squared error."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    return float(np.mean((pred - true) ** 2))


def relative_l2(pred, true) -> float:
    """Mean of ((pred - true) / (max(true) - min(true)))^2 (the paper prints it x100)."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    span = true.max() - true.min()
    if span <= 0:
        return float("nan")
    return float(np.mean(((pred - true) / span) ** 2))


def tiou(pred_segment, true_segment) -> np.ndarray:
    """Temporal IoU of [start, end] segments; arrays [..., 2] give one value per row."""
    p, t = np.asarray(pred_segment, dtype=np.float64), np.asarray(true_segment, dtype=np.float64)
    inter = np.clip(np.minimum(p[..., 1], t[..., 1]) - np.maximum(p[..., 0], t[..., 0]), 0, None)
    union = (p[..., 1] - p[..., 0]) + (t[..., 1] - t[..., 0]) - inter
    return inter / (union + np.finfo(np.float64).eps)


DETECTION_TIOU = 0.5
"""Temporal IoU at which a detected dive counts as finding a true one (bench_spotter, segmenter tuning)."""


def match_detections(truth, detected, min_tiou: float = DETECTION_TIOU) -> dict[int, int]:
    """One-to-one matching of detected [start, end] spans to true ones: {true index: detected index}.

    In order of the true spans, each takes the not yet matched detection of highest temporal IoU,
    when that IoU reaches `min_tiou`.  Unmatched true spans are missed dives, unmatched detections false ones.
    """
    matched: dict[int, int] = {}
    for i, span in enumerate(truth):
        free = [j for j in range(len(detected)) if j not in matched.values()]
        if not free:
            break
        overlaps = tiou(np.asarray([detected[j] for j in free], dtype=np.float64), np.asarray(span, dtype=np.float64))
        best = int(np.argmax(overlaps))
        if overlaps[best] >= min_tiou:
            matched[i] = free[best]
    return matched


def aiou(pred_transitions, true_transitions, threshold: float) -> float:
    """Fraction of dives whose transition segment has tIoU >= threshold (AIoU@threshold)."""
    values = tiou(pred_transitions, true_transitions)
    return float(np.mean(values >= threshold))


def transition_errors(pred_transitions, true_transitions) -> dict[str, float]:
    """Frame error of predicted transitions [N, 2] against true ones, both transitions pooled.

    Keys: ``median`` (frames), ``within_1`` and ``within_2`` (share of transitions off by at most
    1 and 2 frames), and per transition ``median_1`` / ``median_2``.  AIoU@0.5 is met by a fixed
    guess on dives of similar shape; these figures are not.
    """
    p, t = np.asarray(pred_transitions, dtype=np.int64), np.asarray(true_transitions, dtype=np.int64)
    if p.shape != t.shape or p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        raise ValueError(f"transition_errors needs two equal [N, 2] arrays with N >= 1, got {p.shape}, {t.shape}")
    err = np.abs(p - t)
    return {"median": float(np.median(err)), "within_1": float(np.mean(err <= 1)),
            "within_2": float(np.mean(err <= 2)), "median_1": float(np.median(err[:, 0])),
            "median_2": float(np.median(err[:, 1]))}


@dataclass(frozen=True)
class ConstantTransitionGuess:
    """The trivial temporal parser: each transition at its median frame over a training split.

    A clip is the whole dive resampled to 96 frames, so the median frame is the median relative
    position in the dive.  A learned parser is judged against this, never against nothing.
    """

    first: int
    second: int

    @classmethod
    def fit(cls, true_transitions) -> ConstantTransitionGuess:
        t = np.asarray(true_transitions, dtype=np.float64).reshape(-1, 2)
        if len(t) == 0:
            raise ValueError("ConstantTransitionGuess.fit needs at least one clip's transitions")
        first, second = np.median(t, axis=0)
        return cls(int(np.rint(first)), int(np.rint(second)))

    def predict(self, count: int) -> np.ndarray:
        """[count, 2] int64: the same two frames for every clip."""
        return np.tile(np.array([self.first, self.second], dtype=np.int64), (count, 1))


@dataclass(frozen=True)
class MaskCounts:
    """Pixel counts of some mask frames, and the sum of their per-frame recalls; `+` pools two sets."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    recall_sum: float = 0.0  # per frame tp / (tp + fn); 1 for a frame without diver pixels (nothing to miss)
    images: int = 0

    @classmethod
    def of(cls, logits: np.ndarray, target: np.ndarray) -> MaskCounts:
        """Counts of logits against 0/1 targets of the same shape [..., H, W] (each [H, W] one frame)."""
        logits, target = np.asarray(logits), np.asarray(target)
        if logits.shape != target.shape:
            raise ValueError(f"mask logits {logits.shape} and targets {target.shape} differ in shape")
        pred = logits.reshape(-1, *logits.shape[-2:]) >= 0.0  # sigmoid(logit) >= 0.5
        true = target.reshape(-1, *target.shape[-2:]) >= 0.5
        tp = (pred & true).sum(axis=(1, 2))
        fn = (~pred & true).sum(axis=(1, 2))
        positives = tp + fn
        recalls = np.where(positives > 0, tp / np.maximum(positives, 1), 1.0)
        return cls(tp=int(tp.sum()), fp=int((pred & ~true).sum()), fn=int(fn.sum()), tn=int((~pred & ~true).sum()),
                   recall_sum=float(recalls.sum()), images=len(recalls))

    def __add__(self, other: MaskCounts) -> MaskCounts:
        return MaskCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn,
                          self.recall_sum + other.recall_sum, self.images + other.images)

    def summary(self) -> dict[str, float]:
        """IoU, F1, F2, accuracy (micro over pixels) and recall (mean over frames)."""
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn

        def ratio(a: float, b: float) -> float:
            return float(a / b) if b else float("nan")

        return {
            "mask_iou": ratio(tp, tp + fp + fn),
            "mask_f1": ratio(2 * tp, 2 * tp + fp + fn),
            "mask_f2": ratio(5 * tp, 5 * tp + 4 * fn + fp),
            "mask_accuracy": ratio(tp + tn, tp + fp + fn + tn),
            "mask_recall": ratio(self.recall_sum, self.images),
        }


def pairwise_mask_metrics(pairs: Sequence[MaskCounts]) -> dict[str, float]:
    """The paper's aggregation: each (query, exemplar) pair's metrics over both clips, then their mean.

    `pairs` holds one `query_counts + exemplar_counts` per scored pair; keys are `paper_mask_*`.
    (Ours, `MaskCounts.summary` of the test queries' pooled counts, weighs every pixel once.)
    """
    if not pairs:
        return {f"paper_{k}": float("nan") for k in MaskCounts().summary()}
    summaries = [p.summary() for p in pairs]
    result = {}
    for key in summaries[0]:
        values = [s[key] for s in summaries if np.isfinite(s[key])]  # a pair with no diver pixel at all: 0/0
        result[f"paper_{key}"] = float(np.mean(values)) if values else float("nan")
    return result


def score_metrics(pred, true) -> dict[str, float]:
    """rho, L2 and relative L2 x100 of predicted against true final scores."""
    return {"rho": spearman_rho(pred, true), "l2": l2(pred, true), "rl2_x100": 100 * relative_l2(pred, true)}
