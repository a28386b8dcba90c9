"""Evaluation the paper's way (voter_number exemplars per test dive) through the decomposed path.

Each exemplar a rank needs is encoded once per evaluation and cached; every test query is encoded
once and scored against its exemplars with one batched pair head.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from fineparser.data import TestDataset, clip_item
from fineparser.metrics import MaskStats, aiou, score_metrics
from fineparser.model import FineParser, QueryFeatures, split_windows

log = logging.getLogger(__name__)


def _batch(item: dict, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(item["video"]).unsqueeze(0).to(device)


@torch.no_grad()
def evaluate(model: FineParser, dataset: TestDataset, device: torch.device, *, rank: int = 0, world: int = 1,
             max_queries: int = 0, with_masks: bool = False, amp_dtype: torch.dtype | None = None,
             progress: bool = True) -> dict[str, float]:
    """Score the test split; returns rho, L2, RL2x100, AIoU@0.5/0.75 and mask metrics (all ranks)."""
    model.eval()
    count = len(dataset) if max_queries <= 0 else min(max_queries, len(dataset))
    mine = list(range(rank, count, world))
    cache: dict[str, QueryFeatures] = {}
    preds, trues, pred_tr, true_tr = [], [], [], []
    masks = MaskStats()
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
                clip = clip_item(index.load_clip(key, train=False, with_masks=False), with_masks=False)
                with autocast():
                    cache[name] = _float(model.encode(_batch(clip, device)))
        sample = index.load_clip(dataset.keys[i], train=False, with_masks=with_masks)
        item = clip_item(sample, with_masks=with_masks)
        with autocast():
            query = _float(model.encode(_batch(item, device), with_masks=with_masks))
            bank = QueryFeatures.cat([cache[str(k)] for k in exemplar_keys])
            out = model.pair_head(query, bank)
        scores = torch.tensor([index.info(k).final_score for k in exemplar_keys], device=device)
        preds.append(float((scores + out.delta.float()).mean()))
        trues.append(float(sample.final_score))
        pred_tr.append(query.transitions[0].cpu().numpy())
        true_tr.append(sample.transitions)
        if with_masks:
            target = split_windows(torch.from_numpy(item["mask"])[None])[0, :, 0]  # [9, 16, H, W]
            masks.update(query.mask_logits[0].float().cpu().numpy(), target.numpy())
    stats = (preds, trues, pred_tr, true_tr, (masks.tp, masks.fp, masks.fn, masks.tn, masks.image_recalls))
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
    if with_masks:
        total = MaskStats()
        for g in gathered:
            tp, fp, fn, tn, recalls = g[4]
            total.tp += tp
            total.fp += fp
            total.fn += fn
            total.tn += tn
            total.image_recalls.extend(recalls)
        result.update(total.summary())
    return result


def _float(q: QueryFeatures) -> QueryFeatures:
    """Features back in float32 after autocast (the bank and pair head stay fp32)."""
    return QueryFeatures(q.window_features.float(), q.transitions, q.transition_probs.float(),
                         q.static_tokens.float(), None if q.mask_logits is None else q.mask_logits.float())

