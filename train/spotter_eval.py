"""Per-frame evaluation of the spotter over whole test broadcasts, run causally as the runtime runs it.

Each video is fed from its first frame to its last in chunks, the recurrent state carried across
chunks (``Spotter.forward(chunk, state)``), so every output has seen exactly the frames a live
runtime would have.  Output ``t`` is the label of frame ``t - lookahead``; the last ``lookahead``
frames of a video are never labelled (the stream ends first) and are not scored, nor are frames
whose phase the annotation leaves open.

Metrics: per-frame accuracy, per-class F1, macro-F1 (mean over the classes the test frames
contain), the confusion matrix (rows: true class, columns: predicted, in ``CLASS_NAMES`` order),
and the same figures for two trivial guesses: always `idle`, and a random class drawn from the
training frames' class prior (expected values).

Dive level: the same outputs, as probabilities, go through the runtime's state machine with the default
thresholds and durations (:mod:`calibration.segmenter`'s ``match``, the rule that ``fineparser-calibrate
--segmenter`` tunes with), and the dives found are matched to the annotated ones at temporal IoU >= 0.5:
dive F1, missed, false dives (and those on a replay), median start and end error in frames, and the
tuning's cost.  These are figures before tuning and from a zero state (a package's streams start from the
tuned settled-idle state), so they rank checkpoints of one run rather than predict the package's figures;
``bench/bench_spotter.py`` measures those.  The trivial guess, always idle, finds no dive (F1 0).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from calibration.segmenter import DURATION_NAMES, match, matched_figures, merged, recording
from fineparser.dive_state import SPOTTER_DURATIONS_S
from fineparser.spotter import Spotter
from fineparser.spotter_spec import CLASS_NAMES, DEFAULT_THRESHOLDS, IDLE
from train.spotter_data import Broadcast

NUM_CLASSES = len(CLASS_NAMES)


@torch.no_grad()
def predict_probs(model: Spotter, frames: np.ndarray, device: torch.device, chunk: int = 256) -> np.ndarray:
    """Frames uint8 [N, h, w, 3] -> class probabilities after each frame, float32 [N, C].

    Row t is the output after frame t, the classes of frame t - lookahead (the runtime's convention)."""
    state = None
    outputs = []
    for start in range(0, len(frames), chunk):
        batch = torch.from_numpy(np.array(frames[start:start + chunk]))[None].to(device)  # a copy: maps are read-only
        logits, state = model(batch, state)
        outputs.append(logits[0].float().softmax(-1).cpu())
    return torch.cat(outputs).numpy().astype(np.float32)


DIVE_SETTINGS = {**DEFAULT_THRESHOLDS, **{k: SPOTTER_DURATIONS_S[k] for k in DURATION_NAMES}}
"""The state machine's settings for the dive-level figures: the defaults a package has before tuning."""


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """int64 [C, C] counts, rows true class and columns predicted; truth < 0 (open phase) is skipped."""
    keep = truth >= 0
    return np.bincount(truth[keep] * NUM_CLASSES + predicted[keep],
                       minlength=NUM_CLASSES * NUM_CLASSES).reshape(NUM_CLASSES, NUM_CLASSES)


def f1_scores(confusion: np.ndarray) -> np.ndarray:
    """Per-class F1 from a (possibly expected, fractional) confusion matrix; NaN for a class never true."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    support, predicted = confusion.sum(1), confusion.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * tp / (support + predicted)
    return np.where(support > 0, f1, np.nan)


def frame_metrics(confusion: np.ndarray, prior: np.ndarray | None = None) -> dict:
    """Accuracy, per-class F1, macro-F1 and confusion; beside them the trivial guesses' accuracy and macro-F1.

    prior: the training frames' class shares (the prior guess draws from it); default: the test frames'.
    """
    confusion = np.asarray(confusion, np.int64)
    support = confusion.sum(1).astype(np.float64)
    total = support.sum()
    truth_share = support / total if total else support
    prior = truth_share if prior is None else np.asarray(prior, np.float64) / np.sum(prior)
    f1 = f1_scores(confusion)
    guesses = {
        "idle": np.outer(support, np.eye(NUM_CLASSES)[IDLE]),  # every frame called idle
        "prior": np.outer(support, prior),  # expected counts of a random draw from the prior
    }
    metrics = {"accuracy": float(np.trace(confusion) / total) if total else float("nan"),
               "macro_f1": float(np.nanmean(f1)) if total else float("nan")}
    for name, expected in guesses.items():
        metrics[f"trivial_{name}_accuracy"] = float(np.trace(expected) / total) if total else float("nan")
        metrics[f"trivial_{name}_macro_f1"] = float(np.nanmean(f1_scores(expected))) if total else float("nan")
    metrics.update({f"f1_{name}": float(v) for name, v in zip(CLASS_NAMES, f1)})
    metrics.update({"eval_frames": int(total), "confusion": confusion.tolist()})
    return metrics


@torch.no_grad()
def evaluate_spotter(model: Spotter, broadcasts: list[Broadcast], device: torch.device, *, rank: int = 0,
                     world: int = 1, chunk: int = 256, prior: np.ndarray | None = None,
                     progress: bool = True) -> dict:
    """Per-frame metrics over `broadcasts` (sharded over ranks, summed; see :func:`frame_metrics`) and the
    dive-level ones, ``dive_`` + the names of :func:`calibration.segmenter.figures` (default state machine
    settings, :data:`DIVE_SETTINGS`; matched over all ranks' videos)."""
    was_training = model.training
    model.eval()
    lookahead = model.config.lookahead
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    recordings = []
    mine = broadcasts[rank::world]
    for b in tqdm(mine, desc="eval", unit="video", disable=not progress, leave=False):
        probs = predict_probs(model, b.frames, device, chunk)
        predicted = probs.argmax(-1).astype(np.int64)[lookahead:]
        confusion += confusion_matrix(b.targets[:len(b.targets) - lookahead], predicted)
        recordings.append(recording(b, probs))
    matched = match(recordings, lookahead, DIVE_SETTINGS)
    if world > 1:
        summed = torch.from_numpy(confusion).to(device)
        dist.all_reduce(summed)
        confusion = summed.cpu().numpy()
        shards: list = [None] * world
        dist.all_gather_object(shards, matched)
        matched = merged(shards)
    model.train(was_training)
    dives = {f"dive_{name}": value for name, value in matched_figures(matched).items()}
    return {**frame_metrics(confusion, prior), **dives, "eval_videos": len(broadcasts)}
