"""Metrics agree with their definitions on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fineparser.metrics import MaskStats, aiou, l2, relative_l2, score_metrics, spearman_rho, tiou


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


def test_mask_stats_threshold_is_probability_half():
    logits = np.array([[[2.0, -2.0], [0.1, -0.1]]])
    target = np.array([[[1, 1], [0, 0]]])
    s = MaskStats()
    s.update(logits, target)
    assert (s.tp, s.fp, s.fn, s.tn) == (1, 1, 1, 1)
    out = s.summary()
    assert out["mask_iou"] == pytest.approx(1 / 3)
    assert out["mask_f1"] == pytest.approx(0.5)
    assert out["mask_f2"] == pytest.approx(5 / (5 + 4 + 1))
    assert out["mask_accuracy"] == pytest.approx(0.5)
    assert out["mask_recall"] == pytest.approx(0.5)
