"""Evaluation the paper's way (voter_number exemplars per test dive) through the decomposed path.

Each exemplar a rank needs is encoded once per evaluation and cached; every test query is encoded
once and scored against its exemplars with one batched pair head.  Also here: when the trainer
evaluates (`eval_due`) and each metric's own best over a run (`update_best`), as the paper reports.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from fineparser.data import FineDivingIndex, TestDataset, clip_item
from fineparser.metrics import (
    ConstantTransitionGuess,
    MaskCounts,
    aiou,
    pairwise_mask_metrics,
    score_metrics,
    spearman_rho,
    transition_errors,
)
from fineparser.model import FineParser, QueryFeatures, split_windows
from fineparser.scoring import final_score
from fineparser.spec import target_transitions
from train.config import PAPER_SCHEDULE

log = logging.getLogger(__name__)

LOWER_IS_BETTER = frozenset({"l2", "rl2_x100", "tr_median"})
RANKED_METRICS = ("rho", "l2", "rl2_x100", "aiou_50", "aiou_75", "tr_median", "tr_within_2", *MaskCounts().summary(),
                  *pairwise_mask_metrics([]))
"""The metrics whose own best a run keeps (all higher-is-better except LOWER_IS_BETTER)."""


def eval_due(epochs_done: int, eval_every: int | str) -> bool:
    """Whether the trainer evaluates after `epochs_done` completed epochs (1, 2, ...).

    `eval_every` N: after every N-th epoch.  `paper`: the paper's schedule (its 0-based epoch e is
    evaluated when e < 50 and (e+1) % 4 == 0, or e >= 50 and (e+1) % 2 == 0): epochs 4, 8, ..., 48,
    then 52, 54, 56, ...
    """
    if eval_every == PAPER_SCHEDULE:
        return epochs_done % 4 == 0 if epochs_done <= 50 else epochs_done % 2 == 0
    return epochs_done % int(eval_every) == 0


def update_best(best: dict[str, dict[str, Any]], metrics: dict[str, float], epoch: int,
                step: int) -> dict[str, dict[str, Any]]:
    """Each metric's own best so far, `{metric: {value, epoch, step}}`, after one evaluation (a new dict).

    The paper's table reports every metric at its own best epoch; a non-finite value never counts.
    """
    out = dict(best)
    for name in RANKED_METRICS:
        value = metrics.get(name)
        if value is None or not math.isfinite(value):
            continue
        old = out.get(name)
        better = old is None or (value < old["value"] if name in LOWER_IS_BETTER else value > old["value"])
        if better:
            out[name] = {"value": float(value), "epoch": epoch, "step": step}
    return out


def format_best_table(best_rho_metrics: dict[str, float], best_rho_epoch: int | None,
                      best: dict[str, dict[str, Any]]) -> str:
    """The run's results both ways: every metric at the best-rho epoch, and at its own best epoch."""
    head = f"at best rho (epoch {best_rho_epoch})"
    lines = ["best of the run (the paper's tables report each metric at its own best epoch)",
             f"{'metric':<20}  {head:>26}  {'own best':>10}  epoch"]
    for name in RANKED_METRICS:
        if name not in best and name not in best_rho_metrics:
            continue
        at_rho = best_rho_metrics.get(name, float("nan"))
        own = best.get(name)
        own_text = f"{own['value']:>10.4f}  {own['epoch']}" if own else f"{'-':>10}  -"
        lines.append(f"{name:<20}  {at_rho:>26.4f}  {own_text}")
    return "\n".join(lines)


def _batch(item: dict, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(item["video"]).unsqueeze(0).to(device)


def _mask_counts(features: QueryFeatures, item: dict) -> MaskCounts:
    """Counts of one encoded clip's fused mask logits against its masks (all 9 windows x 16 frames)."""
    target = split_windows(torch.from_numpy(item["mask"])[None])[0, :, 0]  # [9, 16, H, W]
    return MaskCounts.of(features.mask_logits[0].float().cpu().numpy(), target.numpy())


@torch.no_grad()
def evaluate(model: FineParser, dataset: TestDataset, device: torch.device, *, rank: int = 0, world: int = 1,
             max_queries: int = 0, with_masks: bool = False, amp_dtype: torch.dtype | None = None,
             progress: bool = True) -> dict[str, float]:
    """Score the test split; returns rho, L2, RL2x100, AIoU@0.5/0.75 and mask metrics (all ranks).

    AIoU compares the predicted transitions with the true ones in the convention the network is trained
    on (`fineparser.spec.target_transitions`).  Mask metrics come twice: `mask_*` pooled over the test
    queries' pixels (ours) and `paper_mask_*`, the paper's aggregation: per (query, exemplar) pair over
    both clips, averaged over the pairs.
    """
    model.eval()
    count = len(dataset) if max_queries <= 0 else min(max_queries, len(dataset))
    mine = list(range(rank, count, world))
    cache: dict[str, QueryFeatures] = {}
    exemplar_masks: dict[str, MaskCounts] = {}
    preds, trues, pred_tr, true_tr, means = [], [], [], [], []
    query_masks, pair_masks = MaskCounts(), []
    index = dataset.index

    def autocast() -> contextlib.AbstractContextManager:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    bar = tqdm(mine, desc="eval", unit="dive", disable=not progress, leave=False)
    for i in bar:
        exemplar_keys = dataset.exemplar_keys(i)
        for key in exemplar_keys:
            name = str(key)
            if name not in cache:
                clip = clip_item(index.load_clip(key, train=False, with_masks=with_masks), with_masks=with_masks)
                with autocast():
                    features = _float(model.encode(_batch(clip, device), with_masks=with_masks))
                if with_masks:  # only the counts are kept: the paper's pair metrics need the exemplar's side
                    exemplar_masks[name] = _mask_counts(features, clip)
                    features = replace(features, mask_logits=None)
                cache[name] = features
        sample = index.load_clip(dataset.keys[i], train=False, with_masks=with_masks)
        item = clip_item(sample, with_masks=with_masks)
        with autocast():
            query = _float(model.encode(_batch(item, device), with_masks=with_masks))
            bank = QueryFeatures.cat([cache[str(k)] for k in exemplar_keys])
            out = model.pair_head(replace(query, mask_logits=None), bank)
        scores = torch.tensor([index.info(k).final_score for k in exemplar_keys], device=device)
        preds.append(float(final_score(scores, out.delta.float())))
        trues.append(float(sample.final_score))
        means.append(float(scores.float().mean()))
        pred_tr.append(query.transitions[0].cpu().numpy())
        true_tr.append(target_transitions(sample.transitions))
        if with_masks:
            counts = _mask_counts(query, item)
            query_masks = query_masks + counts
            pair_masks.extend(counts + exemplar_masks[str(k)] for k in exemplar_keys)
    stats = (preds, trues, pred_tr, true_tr, query_masks, pair_masks, means)
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, stats)
    else:
        gathered = [stats]
    preds = [p for g in gathered for p in g[0]]
    trues = [t for g in gathered for t in g[1]]
    pred_tr = np.array([p for g in gathered for p in g[2]]).reshape(-1, 2)
    true_tr = np.array([t for g in gathered for t in g[3]]).reshape(-1, 2)
    result = score_metrics(preds, trues) if len(preds) >= 2 else {"rho": float("nan"), "l2": float("nan"),
                                                                   "rl2_x100": float("nan")}
    result.update({"aiou_50": aiou(pred_tr, true_tr, 0.5), "aiou_75": aiou(pred_tr, true_tr, 0.75),
                   "eval_dives": len(preds)})
    if len(preds) >= 2:
        means = [m for g in gathered for m in g[6]]
        result["baseline_rho"] = spearman_rho(means, trues)  # the exemplar-mean guess: rho must beat it
    result.update(transition_report(pred_tr, true_tr, index))
    if with_masks:
        pooled = MaskCounts()
        for g in gathered:
            pooled = pooled + g[4]
        result.update(pooled.summary())
        result.update(pairwise_mask_metrics([p for g in gathered for p in g[5]]))
    return result


TRANSITION_KEYS = ("median", "within_1", "within_2", "median_1", "median_2")
"""Figures of fineparser.metrics.transition_errors that evaluations report (as tr_* and guess_tr_*)."""


def transition_report(pred_tr: np.ndarray, true_tr: np.ndarray, index: FineDivingIndex) -> dict[str, float]:
    """Transition error of the predictions and of the constant guess fitted on the training split.

    Keys: tr_median, tr_within_1, tr_within_2 (frames of the 96, both transitions pooled), tr_median_1 and
    tr_median_2 (the take-off's end and the entry's start alone) and the same with guess_ for
    `ConstantTransitionGuess`, plus guess_aiou_75.  Empty without predictions.
    """
    if len(pred_tr) == 0:
        return {}
    result = {f"tr_{k}": v for k, v in transition_errors(pred_tr, true_tr).items() if k in TRANSITION_KEYS}
    train = [target_transitions(index.test_transitions(key)) for key in index.train_keys]
    if train:
        guess = ConstantTransitionGuess.fit(train).predict(len(true_tr))
        result.update({f"guess_tr_{k}": v for k, v in transition_errors(guess, true_tr).items()
                       if k in TRANSITION_KEYS})
        result["guess_aiou_75"] = aiou(guess, true_tr, 0.75)
    return result


def _float(q: QueryFeatures) -> QueryFeatures:
    """Features back in float32 after autocast (the bank and pair head stay fp32)."""
    return QueryFeatures(q.window_features.float(), q.transitions, q.transition_probs.float(),
                         q.static_tokens.float(), None if q.mask_logits is None else q.mask_logits.float())
