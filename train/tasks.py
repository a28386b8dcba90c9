"""What the training loop trains: a Task gives it model, data, loss, evaluation and checkpoint format.

The loop in train/trainer.py is the same for every task (DDP, accumulation, exact resume, SIGTERM,
metrics.jsonl, TensorBoard, best.pt).  ``task:`` in the training config picks one:

- ``fineparser`` (default): the scorer, trained on FineDiving-layout pairs (``train.trainer.FineParserTask``);
- ``spotter``: the per-frame broadcast labeller of the `auto` segmenter (:class:`SpotterTask`, docs/spotter.md).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fineparser.spotter import (
    IGNORE_INDEX,
    Spotter,
    load_spotter,
    read_spotter_checkpoint,
    save_spotter,
    step_targets,
)
from fineparser.spotter_spec import CLASS_NAMES
from train.spotter_data import SpotterDataError, SpotterWindows, class_counts, load_broadcasts, split_broadcasts
from train.spotter_eval import evaluate_spotter

if TYPE_CHECKING:
    from train.config import TrainConfig
    from train.trainer import Worker

log = logging.getLogger("train")

Autocast = Callable[[], contextlib.AbstractContextManager]


class Task:
    """The loop's view of what it trains.  A task is built once per run, after the worker joined the job.

    Subclasses set `name`, `metric` (higher is better; best.pt keeps its best), `eval_model` (the model
    of `--eval-only CKPT`, else None) and implement the methods below.
    """

    name: str
    metric: str
    find_unused_parameters = False  # DDP: parameters a forward may leave without gradient
    eval_model: nn.Module | None = None
    counters: tuple[str, ...] = ()  # counts kept in the trainer state (checkpointed) and the run's summary

    def build_model(self) -> nn.Module:
        """A fresh model to train (with any configured pretrained weights), on the CPU."""
        raise NotImplementedError

    def training_module(self, model: nn.Module) -> nn.Module:
        """What the loop's DDP wraps, the optimizer steps and gradient clipping sees.

        The model itself, or a module holding it as ``.model`` beside training-only heads: their weights
        travel in the trainer state of a checkpoint (for exact resume), never in the model's weights.
        """
        return model

    def train_set(self) -> Any:
        """The training dataset: indexable, with set_epoch(epoch) choosing the epoch's random draws."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimizer parameter groups (the last one is the group whose lr the log shows)."""
        raise NotImplementedError

    def train_mode(self, model: nn.Module) -> None:
        """Put the model in training mode (and keep whatever must stay frozen frozen)."""
        model.train()

    def prepare(self, batch: dict) -> dict[str, int]:
        """Adjust a loader batch in place before it goes to the device; returns increments of `counters`."""
        return {}

    def losses(self, ddp: nn.Module, batch: dict, autocast: Autocast) -> dict[str, torch.Tensor]:
        """Forward one batch (on the device) through `ddp` under `autocast()`; the losses, "total" included."""
        raise NotImplementedError

    def batch_keys(self, batch: dict) -> str:
        """The samples of a batch, for an error message."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, amp_dtype: torch.dtype | None, progress: bool) -> dict[str, Any]:
        """Metrics on the test data (every rank returns the same), `self.metric` among them."""
        raise NotImplementedError

    def eval_line(self, metrics: dict[str, Any]) -> str:
        """One log line of an evaluation's main figures."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The run's data and model in a few numbers (the `start` record and the log)."""
        raise NotImplementedError

    def save(self, path: Path, model: nn.Module, trainer: dict[str, Any] | None = None, **extra: Any) -> Path:
        """Write a checkpoint of this task's format (model config, weights, trainer state, extras)."""
        raise NotImplementedError

    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        """Read a checkpoint of this task's format: a dict with "model" (state dict) and "trainer"."""
        raise NotImplementedError


class SpotterTask(Task):
    """The spotter: windows of annotated broadcasts, cross-entropy on look-ahead-shifted per-frame targets."""

    name = "spotter"
    metric = "macro_f1"

    def __init__(self, cfg: TrainConfig, worker: Worker, eval_only: Path | None = None) -> None:
        self.cfg, self.worker = cfg, worker
        if eval_only is not None:
            self.eval_model, _ = load_spotter(eval_only)
            self.config = self.eval_model.config  # its input size decides the frame cache
        else:
            self.config = cfg.spotter_config()
        if cfg.data.root is None:
            raise SpotterDataError("no data: pass --data-root DIR (a fineparser-synth output with broadcasts/, or a "
                                   "folder of videos with annotations, docs/data.md) or set data.root in the config")
        d = cfg.spotter_data
        # Rank 0 decodes the videos missing from the frame cache; the others then read the cache.
        broadcasts = None
        if worker.main:
            broadcasts = load_broadcasts(cfg.data.root, self.config.input_hw, d.cache_dir)
        if worker.world > 1:
            dist.barrier()
        if broadcasts is None:
            broadcasts = load_broadcasts(cfg.data.root, self.config.input_hw, d.cache_dir, progress=False)
        self.train_broadcasts, self.test_broadcasts = split_broadcasts(broadcasts, d.test_videos, d.test_fraction,
                                                                       cfg.seed)
        counts = class_counts(self.train_broadcasts)
        self.prior = counts / max(1, counts.sum())
        self.class_weights = class_weights(cfg.loss.class_weights, counts)

    def build_model(self) -> nn.Module:
        return Spotter(self.config)

    def train_set(self) -> SpotterWindows:
        return SpotterWindows(self.train_broadcasts, self.cfg.spotter_data, seed=self.cfg.seed)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        # One group: a trunk trained from scratch learns at the full rate (lr_factor is the schedule's floor).
        return [{"params": list(model.parameters()), "lr": self.cfg.optim.lr}]

    def losses(self, ddp: nn.Module, batch: dict, autocast: Autocast) -> dict[str, torch.Tensor]:
        with autocast():
            logits, _ = ddp(batch["frames"])
        targets = step_targets(batch["labels"], self.config.lookahead).flatten()
        weights = None if self.class_weights is None else self.class_weights.to(logits.device)
        summed = F.cross_entropy(logits.float().flatten(0, 1), targets, weight=weights, ignore_index=IGNORE_INDEX,
                                 reduction="sum")
        # The mean over labelled steps (weighted as F.cross_entropy does); a window with none gives 0, not NaN.
        valid = targets != IGNORE_INDEX
        norm = valid.sum() if weights is None else weights[targets[valid]].sum()
        loss = summed / norm.clamp_min(1e-12)
        return {"cross_entropy": loss, "total": loss}

    def batch_keys(self, batch: dict) -> str:
        return "windows " + ", ".join(batch["key"])

    def evaluate(self, model: nn.Module, amp_dtype: torch.dtype | None, progress: bool) -> dict[str, Any]:
        return evaluate_spotter(model, self.test_broadcasts, self.worker.device, rank=self.worker.rank,
                                world=self.worker.world, chunk=self.cfg.spotter_data.eval_chunk, prior=self.prior,
                                progress=progress)

    def eval_line(self, metrics: dict[str, Any]) -> str:
        return (f"per-frame macro-F1 {metrics['macro_f1']:.4f} (trivial: always idle "
                f"{metrics['trivial_idle_macro_f1']:.4f}, class prior {metrics['trivial_prior_macro_f1']:.4f})  "
                f"accuracy {metrics['accuracy']:.4f} (always idle {metrics['trivial_idle_accuracy']:.4f}) on "
                f"{metrics['eval_frames']} frames of {metrics['eval_videos']} videos;  dives at default settings: "
                f"F1 {metrics['dive_f1']:.3f} (always idle 0), {metrics['dive_missed']} missed and "
                f"{metrics['dive_false_dives']} false ({metrics['dive_false_on_replay']} on replays) of "
                f"{metrics['dive_dives']}, start / end error median {metrics['dive_start_err_median']:.1f} / "
                f"{metrics['dive_end_err_median']:.1f} frames")

    def describe(self) -> dict[str, Any]:
        frames = sum(b.num_frames for b in self.train_broadcasts)
        return {"model": f"spotter {self.config.trunk} {self.config.input_height}x{self.config.input_width}",
                "train_videos": len(self.train_broadcasts), "train_frames": frames,
                "test_videos": len(self.test_broadcasts),
                "windows_per_epoch": self.cfg.spotter_data.windows_per_epoch,
                "class_prior": {n: round(float(p), 4) for n, p in zip(CLASS_NAMES, self.prior)}}

    def save(self, path: Path, model: nn.Module, trainer: dict[str, Any] | None = None, **extra: Any) -> Path:
        return save_spotter(path, model, trainer, **extra)

    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        return read_spotter_checkpoint(path)


def class_weights(setting: str | list[float] | None, counts: np.ndarray) -> torch.Tensor | None:
    """Cross-entropy class weights: None, a list (one per class), or "balanced" (frames / (classes x count))."""
    if setting is None:
        return None
    if setting == "balanced":
        with np.errstate(divide="ignore"):
            weights = np.where(counts > 0, counts.sum() / (len(counts) * counts), 0.0)
        return torch.tensor(weights, dtype=torch.float32)
    return torch.tensor([float(w) for w in setting], dtype=torch.float32)
