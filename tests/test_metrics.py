"""Metrics agree with their definitions on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fineparser.metrics import (
    ConstantTransitionGuess,
    MaskCounts,
    aiou,
    l2,
    pairwise_mask_metrics,
    relative_l2,
    score_metrics,
    spearman_rho,
    tiou,
    transition_errors,
)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 10, 50).astype(float)
    true = pred + rng.normal(0, 3, 50)
    assert spearman_rho(pred, true) == pytest.approx(stats.spearmanr(pred, true)[0], abs=1e-12)
    assert spearman_rho([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_l2_and_relative_l2():
    assert l2([1, 2], [1, 4]) == pytest.approx(2.0)
    assert relative_l2([0, 10], [0, 20]) == pytest.approx(((10 / 20) ** 2) / 2)
    assert score_metrics([1, 2, 3], [1, 2, 3])["rl2_x100"] == 0


def test_tiou_and_aiou():
    assert tiou([10, 60], [10, 60]) == pytest.approx(1.0)
    assert tiou([0, 10], [20, 30]) == 0
    assert tiou([10, 50], [30, 70]) == pytest.approx(20 / 60)
    pred = np.array([[10, 60], [10, 50], [0, 10]])
    true = np.array([[10, 60], [30, 70], [20, 30]])
    assert aiou(pred, true, 0.5) == pytest.approx(1 / 3)
    assert aiou(pred, true, 0.3) == pytest.approx(2 / 3)


def test_transition_errors_pool_both_transitions_and_the_guess_is_the_train_median():
    pred = np.array([[10, 60], [12, 58], [20, 70]])
    true = np.array([[10, 61], [10, 60], [10, 60]])
    e = transition_errors(pred, true)  # errors 0, 1, 2, 2, 10, 10
    assert e["median"] == pytest.approx(2.0)
    assert e["within_1"] == pytest.approx(2 / 6) and e["within_2"] == pytest.approx(4 / 6)
    assert e["median_1"] == pytest.approx(2.0) and e["median_2"] == pytest.approx(2.0)
    guess = ConstantTransitionGuess.fit([[8, 60], [10, 64], [30, 61]])
    assert (guess.first, guess.second) == (10, 61)
    assert guess.predict(3).tolist() == [[10, 61]] * 3
    with pytest.raises(ValueError, match="N, 2"):
        transition_errors(pred[:, :1], true[:, :1])


def test_mask_stats_threshold_is_probability_half():
    logits = np.array([[[2.0, -2.0], [0.1, -0.1]]])
    target = np.array([[[1, 1], [0, 0]]])
    s = MaskCounts.of(logits, target)
    assert (s.tp, s.fp, s.fn, s.tn, s.images) == (1, 1, 1, 1, 1)
    out = s.summary()
    assert out["mask_iou"] == pytest.approx(1 / 3)
    assert out["mask_f1"] == pytest.approx(0.5)
    assert out["mask_f2"] == pytest.approx(5 / (5 + 4 + 1))
    assert out["mask_accuracy"] == pytest.approx(0.5)
    assert out["mask_recall"] == pytest.approx(0.5)


def test_mask_metrics_ours_pool_query_pixels_the_papers_average_pairs_over_both_clips():
    def clip(tp: int, fp: int, fn: int, tn: int) -> tuple[np.ndarray, np.ndarray]:
        """One 1 x 1 x N frame with the given pixel outcomes (logit +1/-1 against 0/1 targets)."""
        logits = np.array([1.0] * tp + [1.0] * fp + [-1.0] * fn + [-1.0] * tn)[None, None]
        target = np.array([1] * tp + [0] * fp + [1] * fn + [0] * tn)[None, None]
        return logits, target

    query_a, query_b, exemplar = MaskCounts.of(*clip(8, 2, 0, 10)), MaskCounts.of(*clip(1, 0, 9, 10)), \
        MaskCounts.of(*clip(5, 5, 0, 10))
    # Ours: every test query's pixels once, pooled: IoU = 9 / (9 + 2 + 9).
    assert (query_a + query_b).summary()["mask_iou"] == pytest.approx(9 / 20)
    # The paper's: per (query, exemplar) pair over both clips, then the mean over pairs.
    paper = pairwise_mask_metrics([query_a + exemplar, query_b + exemplar])
    assert paper["paper_mask_iou"] == pytest.approx(((8 + 5) / 20 + (1 + 5) / 20) / 2)
    assert paper["paper_mask_recall"] == pytest.approx(((1.0 + 1.0) / 2 + (0.1 + 1.0) / 2) / 2)
    assert set(paper) == {f"paper_{k}" for k in query_a.summary()}
    assert np.isnan(pairwise_mask_metrics([])["paper_mask_iou"])
