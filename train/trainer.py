"""The training loop: one process per worker (DDP when there are several), top to bottom.

config -> data -> model -> optimizer/schedule -> (resume) -> loop with accumulation -> last.pt ->
eval -> best.pt/last.pt.  Distributed settings come from the environment torchrun sets (RANK,
LOCAL_RANK, WORLD_SIZE); a single process without them trains without DDP.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torchvision.ops import sigmoid_focal_loss
from tqdm import tqdm

from fineparser.checkpoint import (
    load_checkpoint,
    load_imagenet_resnet,
    load_kinetics_i3d,
    load_model,
    save_checkpoint,
)
from fineparser.data import DataPaths, FineDivingIndex, PairDataset, TestDataset
from fineparser.model import FineParser, PairForward, split_windows
from fineparser.preprocess import normalize_clip
from fineparser.spec import NUM_FRAMES, WINDOW_LENGTH, WINDOW_STARTS, target_transitions
from train.config import TrainConfig, config_changes
from train.evaluate import eval_due, evaluate, format_best_table, update_best
from train.tasks import Autocast, SpotterTask, Task

log = logging.getLogger("train")


class TrainingError(RuntimeError):
    """A run that cannot go on (bad data, non-finite loss, missing resume state)."""


@dataclass
class Worker:
    """Where this process sits in the job."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_worker(device_kind: str) -> Worker:
    """Join the process group torchrun describes (if any) and pick this worker's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "auto":
        device_kind = "cuda" if torch.cuda.is_available() else "cpu"
    if device_kind == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("device cuda requested but torch.cuda.is_available() is False; "
                                "train on CPU workers with --nproc N instead of --gpus N")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Worker(rank, world, local_rank, device)


class ResumableSampler(Sampler[int]):
    """A DistributedSampler's indices for one epoch, starting `skip` indices in (sampler position)."""

    def __init__(self, sampler: DistributedSampler, skip: int = 0) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.sampler)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class StopRequest:
    """Records SIGTERM/SIGINT so the loop can write last.pt at the next optimizer step and exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("received %s: finishing this step, writing last.pt, then stopping",
                    signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGINT to the main process, which finishes its step, writes last.pt and then
    shuts them down. A signal sent to the whole process group (Ctrl-C in a terminal, a scheduler, `pkill -f`) would
    otherwise kill a worker first, and the main process with it, before it saved."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def any_rank(flags: torch.Tensor, worker: Worker) -> list[bool]:
    """Per flag, True on every rank when any rank says True (keeps ranks stepping together).

    One host sync (and one all_reduce) for all flags: the loop calls it once per optimizer step.
    """
    flags = flags.float()
    if worker.world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [v > 0 for v in flags.tolist()]


def record_config(cfg: TrainConfig, run_dir: Path, invocation: str) -> Path:
    """Write the config this invocation runs with; a run's own config.yaml is never overwritten.

    A new run writes config.yaml; `--resume` and `--eval-only` write config.resume-<n>.yaml and
    config.eval-<n>.yaml (n = 1, 2, ... in invocation order) next to it.
    """
    if invocation == "train":
        path = run_dir / "config.yaml"
        header = ""
    else:
        n = 1
        while (run_dir / f"config.{invocation}-{n}.yaml").exists():
            n += 1
        path = run_dir / f"config.{invocation}-{n}.yaml"
        flag = {"resume": "--resume", "eval": "--eval-only"}[invocation]
        header = (f"# python -m train {flag} at {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}; "
                  "the run's own config is config.yaml\n")
    path.write_text(header + cfg.to_yaml())
    return path


def build_index(cfg: TrainConfig, voter_number: int) -> FineDivingIndex:
    """The dataset index from the config's data section, with clear errors for missing paths.

    `voter_number` is the model config's: evaluation scores the way the exported package will.
    """
    d = cfg.data
    if d.root is None and d.frames_root is None:
        raise TrainingError("no data: pass --data-root DIR (FineDiving layout, or a fineparser-synth output) "
                            "or set data.root in the config")
    if d.root is not None and not Path(d.root).is_dir():
        raise TrainingError(f"data root {d.root} does not exist")
    if d.frames_root is not None:
        paths = DataPaths(frames_root=Path(d.frames_root), mask_root=Path(d.mask_root) if d.mask_root else None,
                          annotation=Path(d.annotation), train_split=Path(d.train_split),
                          test_split=Path(d.test_split))
    else:
        paths = DataPaths.discover(d.root, mask_root=d.mask_root)
    return FineDivingIndex(paths, voter_number=voter_number, skip_bad=d.skip_bad)


EVALUATED_CHECKPOINT = "eval-{step}.pt"
"""With ``keep_evaluated``, the weights of every evaluation (``python -m train.average`` averages the last ones)."""

PRETRAINED_WEIGHTS = {
    "i3d_weights": "Kinetics I3D model_rgb.pth for both I3D trunks, from github.com/hassony2/kinetics_i3d_pytorch",
    "resnet_weights": "ImageNet ResNet-34 for the static encoder: torchvision's resnet34-b627a593.pth from "
                      "download.pytorch.org/models/",
}
"""The files the paper's training starts from, and where they come from."""


def check_pretrained_weights(cfg: TrainConfig) -> None:
    """Refuse a new run without the paper's starting weights, unless `from_scratch` says so on purpose."""
    missing = [name for name in PRETRAINED_WEIGHTS if not getattr(cfg, name)]
    if not missing:
        return
    if not cfg.from_scratch:
        raise TrainingError("the paper starts from pretrained weights: set "
                            + " and ".join(f"{name}=PATH ({PRETRAINED_WEIGHTS[name]})" for name in missing)
                            + ", or from_scratch=true to train from random initialisation on purpose")
    log.info("from_scratch: no %s, those parts start from random initialisation (the paper's never do)",
             " and no ".join(missing))


def resolve_use_masks(cfg: TrainConfig, paths: DataPaths, training: bool) -> bool:
    """Whether the run uses FineDiving-HM masks; training that asks for them refuses to start without them."""
    if not cfg.data.use_masks or paths.has_masks:
        return cfg.data.use_masks
    where = paths.masks_note or "no mask folder is configured (data.mask_root)"
    if training:
        raise TrainingError(f"data.use_masks is true but {where}; set data.mask_root=DIR, or data.use_masks=false "
                            "to train without the mask loss")
    log.warning("evaluating without mask metrics: %s", where)
    return False


def convert_sync_batchnorm(model: FineParser, cfg: TrainConfig, worker: Worker) -> FineParser:
    """Every BatchNorm as SyncBatchNorm when `sync_bn` and several CUDA workers (the paper's multi-GPU runs)."""
    if not cfg.sync_bn:
        return model
    if worker.world == 1:
        log.info("sync_bn: one worker, BatchNorm left as it is (nothing to synchronise)")
        return model
    if worker.device.type != "cuda":
        raise TrainingError("sync_bn needs CUDA workers (SyncBatchNorm over NCCL); set sync_bn=false for CPU "
                            "workers")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def training_transitions(batch: dict) -> int:
    """Move a pair batch's reader transitions to the paper's training convention, in place; returns how many clamped.

    `fineparser.spec.target_transitions` states the convention (the first frame of the second and last steps).
    Called on the loader's CPU batch, before the copy to the device, so counting costs no device sync.
    """
    clamped = 0
    for side in ("query", "exemplar"):
        target = target_transitions(batch[side]["transitions"].long())
        # A reader transition on the clip's last frame would become frame 96, one past the transition maps and
        # the static encoder's frames: clamp it to 95 (never let it index out of range or wrap) and say so.
        inside = target.clamp(0, NUM_FRAMES - 1)
        moved = (inside != target).any(1)
        if bool(moved.any()):
            keys = [k for k, m in zip(batch[side]["key"], moved.tolist()) if m]
            log.warning("transition target(s) of %s outside frames 0..%d: clamped", ", ".join(map(str, keys)),
                        NUM_FRAMES - 1)
            clamped += int(moved.sum())
        batch[side]["transitions"] = inside
    return clamped


def transition_loss(probs: torch.Tensor, transitions: torch.Tensor, form: str = "listwise") -> torch.Tensor:
    """Loss of the temporal parser's probabilities [N, 96, 2] against target frames [N, 2].

    ``paper``: the per-frame BCE of the reference code (one positive among 96 per column).
    ``listwise``: that BCE plus, per transition, the cross-entropy of the probabilities normalised
    over the half of the clip that `transitions_from_probs` reads (rows 0..47, 48..95), so the loss
    is about which frame wins the argmax.  With one positive among 96, BCE alone is lowest when every
    probability is near 1/96 and teaches little more than the prior (docs/train.md, "Temporal parser").
    """
    probs = probs.float().clamp(1e-7, 1 - 1e-7)
    target = torch.zeros_like(probs)
    rows = torch.arange(probs.shape[0], device=probs.device)
    target[rows, transitions[:, 0], 0] = 1.0
    target[rows, transitions[:, 1], 1] = 1.0
    bce = F.binary_cross_entropy(probs, target)
    if form == "paper":
        return bce
    if form != "listwise":
        raise ValueError(f"unknown transition loss form {form!r}; known: paper, listwise")
    half = probs.shape[1] // 2
    first = probs[:, :half, 0]
    second = probs[:, half:, 1]
    ce_1 = -(first[rows, transitions[:, 0].clamp(0, half - 1)].log() - first.sum(1).log())
    ce_2 = -(second[rows, (transitions[:, 1] - half).clamp(0, half - 1)].log() - second.sum(1).log())
    return bce + (ce_1 + ce_2).mean() / 2


class WindowTimingTraining(torch.nn.Module):
    """FineParser plus a training-only linear read-out of within-window timing from each window feature.

    The temporal parser reads nine window features, each pooled over 16 frames; a transition frame can only
    be read from them if the features say where in a window the step changes.  The score loss does not ask
    for that, and the parser's gradient reaches the encoder weakly (docs/train.md, "Temporal parser").  This
    head asks each window feature, through one linear layer, for every one of its 16 frames: is it at or
    after the first transition, at or after the second.  It is not part of the network: checkpoints keep
    FineParser's weights only (the head's travel in the trainer state), and export never sees it.
    """

    def __init__(self, model: FineParser) -> None:
        super().__init__()
        self.model = model
        self.timing_head = torch.nn.Linear(model.config.feature_dim, WINDOW_LENGTH * 2)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[PairForward, torch.Tensor]:
        out = self.model(*args, **kwargs)
        return out, self.timing_head(out.window_features)  # [2B, 9, 32] logits


def window_timing_targets(transitions: torch.Tensor) -> torch.Tensor:
    """[N, 9, 16, 2]: 1 where frame WINDOW_STARTS[k] + j is at or after transition c (target convention)."""
    frames = (torch.tensor(WINDOW_STARTS, device=transitions.device)[:, None]
              + torch.arange(WINDOW_LENGTH, device=transitions.device))  # [9, 16]
    return (frames[None, :, :, None] >= transitions[:, None, None, :]).float()


def window_timing_loss(logits: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
    """BCE of the timing read-out [N, 9, 32] against the frames' sides of the transitions [N, 2]."""
    target = window_timing_targets(transitions)
    return F.binary_cross_entropy_with_logits(logits.float().reshape(target.shape), target)


def training_head_state(module: torch.nn.Module, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a `Task.training_module` that are not the model's (its training-only heads)."""
    if module is model:
        return {}
    return {k: v for k, v in module.state_dict().items() if not k.startswith("model.")}


def load_training_heads(module: torch.nn.Module, model: torch.nn.Module, saved: dict[str, torch.Tensor],
                        path: Path) -> None:
    """Restore the training-only heads of `module` from a checkpoint's trainer state (exact resume)."""
    wanted = set(training_head_state(module, model))
    if set(saved) != wanted:
        raise TrainingError(f"--resume: {path} holds training heads {sorted(saved) or 'none'} but this config trains "
                            f"{sorted(wanted) or 'none'} (loss.window_timing); resume with the run's own config")
    if wanted:
        module.load_state_dict({**{f"model.{k}": v for k, v in model.state_dict().items()}, **saved})


def compute_losses(out: PairForward, batch: dict, cfg: TrainConfig, use_masks: bool,
                   timing_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The paper's objective: score MSE both ways + transition BCE + focal loss on 5 mask maps.

    With `timing_logits` (the `WindowTimingTraining` read-out), its BCE joins at weight `loss.window_timing`.
    """
    q, e = batch["query"], batch["exemplar"]
    sq, se = q["score"].float(), e["score"].float()
    score = F.mse_loss(out.delta_12.float(), sq - se) + F.mse_loss(out.delta_21.float(), se - sq)
    # Targets are in the paper's convention and inside the clip already (training_transitions).
    transitions = torch.cat([q["transitions"], e["transitions"]]).long()
    transition = transition_loss(out.transition_probs, transitions, cfg.loss.transition_form)
    losses = {"score": score, "transition": transition}
    total = cfg.loss.score * score + cfg.loss.transition * transition
    if timing_logits is not None:
        losses["window_timing"] = window_timing_loss(timing_logits, transitions)
        total = total + cfg.loss.window_timing * losses["window_timing"]
    if use_masks and out.mask_logits is not None:
        masks = split_windows(torch.cat([q["mask"], e["mask"]]))[:, :, 0].round()  # [2B, 9, 16, H, W]
        logits = out.mask_logits.float()
        mask = sum(sigmoid_focal_loss(logits[:, :, i], masks, alpha=-1, gamma=2.0, reduction="mean")
                   for i in range(logits.shape[2]))
        losses["mask"] = mask
        total = total + cfg.loss.mask * mask
    losses["total"] = total
    return losses


@dataclass
class MicroStep:
    """What the loop keeps of one micro-step until its optimizer step (losses detached, on the device)."""

    batch_in_epoch: int
    keys: str  # the batch's samples (Task.batch_keys)
    losses: dict[str, torch.Tensor]


def non_finite_error(group: list[MicroStep], step: int, epoch: int, worker: Worker, last: Path) -> TrainingError:
    """The error naming the first micro-step of `group` whose loss is not finite (or the rank that had it)."""
    bad = next((m for m in group if not bool(torch.isfinite(m.losses["total"]))), None)
    if bad is None:
        return TrainingError(f"non-finite loss at step {step} (epoch {epoch}) on a rank other than {worker.rank} "
                             f"(its message names the samples); last good checkpoint: {last}")
    values = {k: round(float(v), 4) for k, v in bad.losses.items()}
    return TrainingError(f"non-finite loss at step {step} (epoch {epoch}, batch {bad.batch_in_epoch}) on rank "
                         f"{worker.rank}: {bad.keys} (losses {values}); last good checkpoint: {last}")


def mean_losses(sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    """Each loss's mean over the `count` micro-steps summed into `sums` (one host sync)."""
    values = torch.stack(list(sums.values())).tolist()
    return {k: v / count for k, v in zip(sums, values)}


def freeze_i3d_batchnorm(model: FineParser) -> None:
    """Keep the I3D backbone's BN statistics fixed (the paper's fix_bn)."""
    for module in model.base_model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


class FineParserTask(Task):
    """The scorer: pairs of FineDiving-layout dives, the paper's objective, the paper's evaluation."""

    name = "fineparser"
    metric = "rho"
    counters = ("transition_targets_clamped",)

    def __init__(self, cfg: TrainConfig, worker: Worker, eval_only: Path | None = None, resume: bool = False) -> None:
        if eval_only is None and not resume:
            check_pretrained_weights(cfg)
        self.cfg, self.worker = cfg, worker
        # A checkpoint is evaluated with its own model config's voter_number (what its package scores with).
        self.config = cfg.model_config()
        if eval_only is not None:
            self.eval_model, _ = load_model(eval_only)
            if self.eval_model.config.voter_number != self.config.voter_number and worker.main:
                log.warning("%s was trained with model.voter_number=%d (the config says %d): evaluating with %d, "
                            "the value its exported package scores with", eval_only,
                            self.eval_model.config.voter_number, self.config.voter_number,
                            self.eval_model.config.voter_number)
            self.config = self.eval_model.config
        self.index = build_index(cfg, self.config.voter_number)
        self.use_masks = resolve_use_masks(cfg, self.index.paths, training=eval_only is None)
        self.test_set = TestDataset(self.index, seed=cfg.seed, with_masks=False)
        self.find_unused_parameters = not self.use_masks
        self.eval_only = eval_only is not None
        self._refit_clips: list[tuple[np.ndarray, np.ndarray]] | None = None  # train clips for refit_parser

    def build_model(self) -> FineParser:
        model = FineParser(self.config)
        if self.cfg.i3d_weights:
            load_kinetics_i3d(model, self.cfg.i3d_weights)
        if self.cfg.resnet_weights:
            load_imagenet_resnet(model, self.cfg.resnet_weights)
        return model

    def training_module(self, model: FineParser) -> torch.nn.Module:
        return WindowTimingTraining(model) if self.cfg.loss.window_timing > 0 else model

    def train_set(self) -> PairDataset:
        return PairDataset(self.index, seed=self.cfg.seed, with_masks=self.use_masks, shifts=self.cfg.data.shifts())

    def param_groups(self, module: torch.nn.Module) -> list[dict[str, Any]]:
        model = getattr(module, "model", module)
        backbone = list(model.base_model.parameters())
        parser = list(model.psnet_model.parameters())
        heads = [] if module is model else list(module.timing_head.parameters())  # training-only
        taken = {id(p) for p in backbone + parser}
        rest = [p for p in model.parameters() if id(p) not in taken]
        o = self.cfg.optim
        backbone_factor = o.lr_factor if o.backbone_lr_factor is None else o.backbone_lr_factor
        groups = [{"params": backbone, "lr": o.lr * backbone_factor},
                  {"params": parser, "lr": o.lr * o.parser_lr_factor}]
        if heads:
            groups.append({"params": heads, "lr": o.lr * o.window_timing_lr_factor})
        return [*groups, {"params": rest, "lr": o.lr}]

    def train_mode(self, module: torch.nn.Module) -> None:
        module.train()
        if self.cfg.freeze_i3d_bn:
            freeze_i3d_batchnorm(getattr(module, "model", module))

    def prepare(self, batch: dict) -> dict[str, int]:
        return {"transition_targets_clamped": training_transitions(batch)}

    def losses(self, ddp: torch.nn.Module, batch: dict, autocast: Autocast) -> dict[str, torch.Tensor]:
        with autocast():
            out = ddp(batch["query"]["video"], batch["exemplar"]["video"], batch["query"]["transitions"],
                      batch["exemplar"]["transitions"], with_masks=self.use_masks)
        timing = None
        if isinstance(out, tuple):  # WindowTimingTraining
            out, timing = out
        return compute_losses(out, batch, self.cfg, self.use_masks, timing)

    def batch_keys(self, batch: dict) -> str:
        return f"query {', '.join(batch['query']['key'])}, exemplar {', '.join(batch['exemplar']['key'])}"

    def evaluate(self, model: FineParser, amp_dtype: torch.dtype | None, progress: bool) -> dict[str, Any]:
        # The metrics say how many voters they were measured with (best.pt carries them to the package).
        w = self.worker
        refit = {}
        if self.cfg.optim.parser_refit_steps > 0 and not self.eval_only:
            refit = self.refit_parser(model, progress)
        return {**refit, **evaluate(model, self.test_set, w.device, rank=w.rank, world=w.world,
                           max_queries=self.cfg.eval_max_queries, with_masks=self.use_masks, amp_dtype=amp_dtype,
                           progress=progress), "voter_number": self.test_set.voter_number}

    def refit_parser(self, model: FineParser, progress: bool) -> dict[str, float]:
        """Fit a fresh temporal parser on the frozen encoder's window features of the training clips.

        The parser (112k parameters in `tiny`) needs thousands of steps to read transitions that the window
        features carry; a short joint run gives it a few hundred, so it learns little more than the prior
        (docs/train.md, "Temporal parser").  Here it gets `optim.parser_refit_steps` steps of 8 clips on
        cached features, which costs seconds once the clips are encoded.  Every rank computes the same fit;
        rank 0's result is broadcast so the replicas stay identical.  Returns the loss on those clips before and
        after (parser in eval mode both times).
        """
        o, device = self.cfg.optim, self.worker.device
        if self._refit_clips is None:
            keys = list(self.index.train_keys)
            bar = tqdm(keys, desc="parser refit: clips", unit="clip", disable=not progress, leave=False)
            self._refit_clips = [(self.index.load_clip(k, train=False).frames,
                                  np.minimum(target_transitions(self.index.test_transitions(k)), NUM_FRAMES - 1))
                                 for k in bar]
        model.eval()
        with torch.no_grad():
            features = torch.cat([model.window_features(
                torch.from_numpy(normalize_clip(frames)).unsqueeze(0).to(device))[0].float()
                for frames, _ in self._refit_clips])
        targets = torch.from_numpy(np.stack([t for _, t in self._refit_clips])).long().to(device)
        parser = model.psnet_model
        form = self.cfg.loss.transition_form
        parser.eval()
        with torch.no_grad():
            first = float(transition_loss(parser(features), targets, form))
        # A fresh parser, seeded without touching the global RNG (exact resume): joint training may have driven
        # its sigmoids into saturation, where the clamped probabilities pass no gradient and a fit would stall.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            for module in parser.modules():
                if module is not parser and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        parser.to(device)
        generator = torch.Generator().manual_seed(self.cfg.seed)
        optimizer = torch.optim.Adam(parser.parameters(), lr=o.parser_refit_lr)
        parser.train()
        with torch.enable_grad():
            for _ in range(o.parser_refit_steps):
                pick = torch.randperm(len(features), generator=generator)[:8].to(device)
                loss = transition_loss(parser(features[pick]), targets[pick], form)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        parser.eval()
        with torch.no_grad():
            last = float(transition_loss(parser(features), targets, form))
        if self.worker.world > 1:
            for tensor in [*parser.parameters(), *parser.buffers()]:
                dist.broadcast(tensor.data, 0)
        if self.worker.main:
            log.info("parser refit: %d steps on %d training clips, transition loss %.4f -> %.4f",
                     o.parser_refit_steps, len(features), first, last)
        return {"parser_refit_loss_before": first, "parser_refit_loss_after": last}

    def eval_line(self, m: dict[str, Any]) -> str:
        line = (f"({m['voter_number']} voters) rho {m['rho']:.4f} "
                f"(exemplar mean {m.get('baseline_rho', math.nan):.4f})  "
                f"L2 {m['l2']:.3f}  RL2x100 {m['rl2_x100']:.3f}  AIoU@0.5 {m['aiou_50']:.3f}  "
                f"AIoU@0.75 {m['aiou_75']:.3f} (constant guess {m.get('guess_aiou_75', math.nan):.3f})")
        if "tr_median" in m:
            line += (f"  transitions: median error {m['tr_median']:.1f} frames, {m['tr_within_2']:.0%} within 2 "
                     f"(constant guess {m.get('guess_tr_median', math.nan):.1f}, "
                     f"{m.get('guess_tr_within_2', math.nan):.0%})")
        return line

    def describe(self) -> dict[str, Any]:
        return {"model": f"FineParser {self.cfg.model.get('preset')}", "test_dives": len(self.test_set),
                "masks": self.use_masks}

    def save(self, path: Path, model: torch.nn.Module, trainer: dict[str, Any] | None = None, **extra: Any) -> Path:
        return save_checkpoint(path, model, trainer=trainer, **extra)

    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        return load_checkpoint(path)


def make_task(cfg: TrainConfig, worker: Worker, eval_only: Path | None = None, resume: bool = False) -> Task:
    """The Task that `cfg.task` names, its test data loaded (and the `--eval-only` checkpoint, if any)."""
    if cfg.task == "spotter":
        return SpotterTask(cfg, worker, eval_only)
    return FineParserTask(cfg, worker, eval_only, resume)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of all parameters, to prove ranks hold identical weights.

    BN running statistics are left out: DDP broadcasts them from rank 0 before each forward, so after
    the last forward every rank holds the statistics of its own last batch (rank 0's are saved).
    """
    h = hashlib.sha256()
    for name, t in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RunLog:
    """metrics.jsonl (flushed per line) and TensorBoard events, written by rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1) if enabled else None
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception as exc:  # tensorboard is optional at run time
                log.warning("TensorBoard events disabled (%s)", exc)

    def write(self, record: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"time": round(time.time(), 3), "step": step, **record}) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.tb.add_scalar(f"{record.get('event', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def train(cfg: TrainConfig, run_dir: Path, *, device_kind: str = "auto", resume: bool = False,
          eval_only: Path | None = None, allow_config_change: bool = False) -> dict[str, Any]:
    """Train (or evaluate) as configured; returns the final summary (on every rank).

    resume: continue from run_dir/last.pt, refused (TrainingError listing the settings) when `cfg` differs from the
    checkpoint's own settings beyond RESUME_FREE_KEYS, unless `allow_config_change` (then a warning lists them)."""
    worker = init_worker(device_kind)
    try:
        return _train(cfg, run_dir, worker, resume=resume, eval_only=eval_only,
                      allow_config_change=allow_config_change)
    finally:
        if worker.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def check_resume_config(cfg: TrainConfig, saved: dict[str, Any] | None, last: Path, allow: bool,
                        main: bool = True) -> None:
    """Refuse (or, allowed, warn about) a resume whose settings differ from those `last` was trained with."""
    changes = config_changes(saved or {}, cfg.to_dict()) if saved is not None else []
    if not changes:
        return
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
    if not allow:
        raise TrainingError(
            f"--resume: this invocation's settings differ from those {last} was trained with ({listed}); the run "
            f"would go on as another recipe. Resume with the run's own settings (`python -m train --resume --out "
            f"{last.parent}` reads its config.yaml, overrides included), or pass "
            "--allow-config-change to go on with the new ones on purpose")
    if main:
        log.warning("--resume with changed settings (--allow-config-change; the run is no longer exact): %s", listed)


def _train(cfg: TrainConfig, run_dir: Path, worker: Worker, *, resume: bool, eval_only: Path | None,
           allow_config_change: bool = False) -> dict:
    # ---- task: what is trained, its test data (and the --eval-only checkpoint) -------------------
    task = make_task(cfg, worker, eval_only, resume)
    last = run_dir / "last.pt"
    resumed = None
    if resume:  # checked before anything is written into the run directory
        if not last.is_file():
            raise TrainingError(f"--resume: {last} does not exist (nothing to resume in {run_dir})")
        resumed = task.read_checkpoint(last)
        check_resume_config(cfg, resumed["trainer"].get("train_config"), last, allow_config_change, worker.main)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = None
    if worker.main:
        config_file = record_config(cfg, run_dir, "eval" if eval_only else "resume" if resume else "train")
    torch.manual_seed(cfg.seed)
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
    if amp_dtype is not None and worker.device.type != "cuda":
        log.warning("amp=%s asked for on %s: AMP is for GPUs, training in fp32", cfg.amp, worker.device)
        amp_dtype = None

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(worker.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    # ---- model -----------------------------------------------------------------------------
    if eval_only is not None:
        model = task.eval_model.to(worker.device)
        metrics = task.evaluate(model, amp_dtype, progress=worker.main)
        if worker.main:
            runlog = RunLog(run_dir, True)
            runlog.write({"event": "eval", "checkpoint": str(eval_only), "config": config_file.name, **metrics}, 0)
            runlog.close()
            print(format_table("evaluation of " + str(eval_only), metrics))
        return metrics

    model = convert_sync_batchnorm(task.build_model(), cfg, worker)
    module = task.training_module(model)  # the model, or the model plus training-only heads
    module.to(worker.device)

    # ---- data ------------------------------------------------------------------------------
    train_set = task.train_set()
    sampler = DistributedSampler(train_set, num_replicas=worker.world, rank=worker.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    batches_per_epoch = len(sampler) // cfg.batch_size
    if batches_per_epoch == 0:
        raise TrainingError(f"{len(train_set)} training samples cannot fill one batch of {cfg.batch_size} on each "
                            f"of {worker.world} workers: lower batch_size or add data")
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accumulation)
    # The schedule is defined by the epochs; max_steps only stops early (so a resumed run with another
    # max_steps follows the same learning-rate curve).
    schedule_steps = cfg.epochs * steps_per_epoch
    total_steps = schedule_steps if cfg.max_steps <= 0 else min(cfg.max_steps, schedule_steps)

    # ---- optimizer and schedule ------------------------------------------------------------
    o = cfg.optim
    optimizer = torch.optim.Adam(task.param_groups(module), lr=o.lr, weight_decay=o.weight_decay)
    from timm.scheduler.cosine_lr import CosineLRScheduler

    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, schedule_steps), lr_min=o.lr * o.lr_factor,
                                  warmup_lr_init=o.lr * o.lr_factor,
                                  warmup_t=int(round(o.warmup_epochs * steps_per_epoch)), t_in_epochs=False)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    # ---- resume ----------------------------------------------------------------------------
    # eval_pending: state["epoch"] ended and was saved, and its evaluation has not finished yet.
    # best: the best value of the task's metric (rho, macro_f1), best_metrics: all metrics of that evaluation;
    # best_each: every metric's own best {value, epoch, step}; then the task's own counters.
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": -math.inf, "best_step": None,
             "best_epoch": None, "best_metrics": {}, "best_each": {}, "eval_pending": False,
             **dict.fromkeys(task.counters, 0)}
    if resumed is not None:
        trainer = resumed["trainer"]
        model.load_state_dict(resumed["model"])
        load_training_heads(module, model, trainer.get("training_heads", {}), last)
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        scaler.load_state_dict(trainer["scaler"])
        torch.set_rng_state(trainer["rng_cpu"])
        if worker.device.type == "cuda" and trainer.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(trainer["rng_cuda"], worker.device)
        state.update({k: trainer[k] for k in state if k in trainer})  # older checkpoints lack the newer keys
        state["best"] = trainer.get("best", trainer.get("best_rho", -math.inf))  # best_rho before the tasks
        state["eval_pending"] = bool(state["eval_pending"])
        if worker.main:
            log.info("resumed %s at step %d (epoch %d, batch %d of the epoch)", last, state["step"],
                     state["epoch"], state["batch_in_epoch"])

    ddp = module
    if worker.world > 1:
        ddp = DistributedDataParallel(module, device_ids=[worker.local_rank] if worker.device.type == "cuda" else None,
                                      find_unused_parameters=task.find_unused_parameters)
    runlog = RunLog(run_dir, worker.main)
    if worker.main:
        n_params = sum(p.numel() for p in model.parameters())
        about = task.describe()
        log.info("training %s (%s params) on %d %s worker(s): %d training samples per epoch, %s; %d steps/epoch, "
                 "%d steps", about["model"], f"{n_params:,}", worker.world, worker.device.type, len(train_set),
                 ", ".join(f"{k} {v}" for k, v in about.items() if k != "model"), steps_per_epoch, total_steps)
        runlog.write({"event": "start", "task": task.name, "world": worker.world, "device": worker.device.type,
                      "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, **about,
                      "config": config_file.name}, state["step"])

    def save(path_name: str, extra: dict | None = None) -> None:
        if not worker.main:
            return
        trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
                   "rng_cuda": torch.cuda.get_rng_state(worker.device) if worker.device.type == "cuda" else None,
                   "train_config": cfg.to_dict(), "training_heads": training_head_state(module, model), **state}
        task.save(run_dir / path_name, model, trainer, **(extra or {}))

    def run_eval() -> dict[str, float]:
        metrics = task.evaluate(model, amp_dtype, progress=worker.main)
        state["eval_pending"] = False
        runlog.write({"event": "eval", "epoch": state["epoch"], **metrics}, state["step"])
        if worker.main:
            log.info("eval at step %d: %s", state["step"], task.eval_line(metrics))
        state["best_each"] = update_best(state["best_each"], metrics, state["epoch"], state["step"])
        if cfg.keep_evaluated:
            save(EVALUATED_CHECKPOINT.format(step=state["step"]), {"metrics": metrics})
        value = metrics[task.metric] if math.isfinite(metrics[task.metric]) else -math.inf
        if value > state["best"]:
            state["best"], state["best_step"], state["best_epoch"] = value, state["step"], state["epoch"]
            state["best_metrics"] = metrics
            save("best.pt", {"metrics": metrics})
        return metrics

    # ---- loop ------------------------------------------------------------------------------
    started = time.perf_counter()
    samples = 0
    last_metrics: dict[str, float] = {}
    last_losses: dict[str, float] = {}
    # Losses stay on the device, summed per micro-step; they are read once per train record.
    loss_sums: dict[str, torch.Tensor] = {}
    loss_count = 0
    stopped_by: int | None = None
    with StopRequest() as stop:
        if state["eval_pending"]:
            if worker.main:
                log.warning("epoch %d was saved but its evaluation did not finish: evaluating it now", state["epoch"])
            last_metrics = run_eval()
            save("last.pt", {"metrics": last_metrics})
        while state["epoch"] < cfg.epochs and state["step"] < total_steps and stopped_by is None:
            epoch = state["epoch"]
            train_set.set_epoch(epoch)
            sampler.set_epoch(epoch)
            # The loader's own generator: starting its iterator draws a seed, which from the global RNG would shift
            # the dropout draws of a resumed epoch (the spotter's) away from those of an uninterrupted one.
            loader = DataLoader(train_set, batch_size=cfg.batch_size, drop_last=True,
                                sampler=ResumableSampler(sampler, state["batch_in_epoch"] * cfg.batch_size),
                                num_workers=cfg.data.num_workers, pin_memory=worker.device.type == "cuda",
                                persistent_workers=False, generator=torch.Generator().manual_seed(cfg.seed + epoch),
                                worker_init_fn=ignore_stop_signals)
            task.train_mode(module)
            bar = tqdm(total=batches_per_epoch, initial=state["batch_in_epoch"], desc=f"epoch {epoch}",
                       unit="batch", disable=not worker.main, leave=False)
            group: list[MicroStep] = []  # the micro-steps of the coming optimizer step
            for batch in loader:
                micro = state["batch_in_epoch"]
                # An optimizer step takes `accumulation` micro-steps; the epoch's last group may be shorter, and
                # its losses are divided by its real size so that every step's gradient is a mean.
                group_start = micro - micro % cfg.accumulation
                group_size = min(cfg.accumulation, batches_per_epoch - group_start)
                sync_now = micro + 1 == group_start + group_size
                for name, count in task.prepare(batch).items():  # on the CPU batch: no device sync
                    state[name] += count
                batch = _to_device(batch, worker.device)
                ctx = ddp.no_sync() if (worker.world > 1 and not sync_now) else contextlib.nullcontext()
                with ctx:
                    losses = task.losses(ddp, batch, autocast)
                    scaler.scale(losses["total"] / group_size).backward()
                losses = {k: v.detach() for k, v in losses.items()}
                group.append(MicroStep(micro, task.batch_keys(batch), losses))
                for k, v in losses.items():
                    loss_sums[k] = loss_sums[k] + v if k in loss_sums else v
                loss_count += 1
                samples += cfg.batch_size * worker.world
                state["batch_in_epoch"] = micro + 1
                bar.update(1)
                if not sync_now:
                    continue
                # ---- optimizer step: one host sync (non-finite loss on any rank, stop request) ----
                group_total = torch.stack([m.losses["total"] for m in group]).sum()
                stop_flag = torch.tensor(stop.signal is not None, device=worker.device)
                bad, stop_asked = any_rank(torch.stack([~torch.isfinite(group_total), stop_flag]), worker)
                if bad:
                    raise non_finite_error(group, state["step"], epoch, worker, run_dir / "last.pt")
                group = []
                if o.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(module.parameters(), o.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                scheduler.step_update(state["step"])
                if state["step"] % cfg.log_every == 0 or state["step"] == 1:
                    last_losses = mean_losses(loss_sums, loss_count)
                    loss_sums, loss_count = {}, 0
                    lr = optimizer.param_groups[-1]["lr"]
                    if worker.main:
                        bar.set_postfix(loss=f"{last_losses['total']:.3f}", lr=f"{lr:.2e}")
                    runlog.write({"event": "train", "epoch": epoch, **{f"loss_{k}": v for k, v in last_losses.items()},
                                  "lr": lr, "samples_per_s": samples / (time.perf_counter() - started)}, state["step"])
                if stop_asked:
                    stopped_by = stop.signal or signal.SIGTERM
                    break
                if state["step"] >= total_steps:
                    break
            bar.close()
            if state["batch_in_epoch"] >= batches_per_epoch:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
                state["eval_pending"] = eval_due(state["epoch"], cfg.eval_every)
            # The epoch's training reaches disk before its evaluation starts (long, and may be killed): a
            # resume from this last.pt keeps the epoch and evaluates it first (eval_pending).
            save("last.pt")
            if state["eval_pending"] and stopped_by is None:
                last_metrics = run_eval()
                save("last.pt", {"metrics": last_metrics})
        if stopped_by is None and not last_metrics and cfg.eval_at_end:
            last_metrics = run_eval()
            save("last.pt", {"metrics": last_metrics})
    if loss_count:
        last_losses = mean_losses(loss_sums, loss_count)

    elapsed = time.perf_counter() - started
    digest = weights_digest(model)
    digests = [digest]
    if worker.world > 1:
        digests = [None] * worker.world
        dist.all_gather_object(digests, digest)
    summary = {"steps": state["step"], "epochs_done": state["epoch"], "minutes": elapsed / 60,
               "samples_per_s": samples / elapsed if elapsed > 0 else float("nan"),
               "s_per_step": elapsed / max(1, state["step"]), f"best_{task.metric}": state["best"],
               "best_step": state["best_step"], "best_epoch": state["best_epoch"],
               **{name: state[name] for name in task.counters}, "stopped_by_signal": stopped_by is not None,
               "weights_identical_across_ranks": len(set(digests)) == 1, "rank_weight_digests": digests,
               **{f"loss_{k}": v for k, v in last_losses.items()}, **last_metrics,
               f"best_{task.metric}_metrics": state["best_metrics"], "best_each": state["best_each"]}
    runlog.write({"event": "end", **summary}, state["step"])
    runlog.close()
    if worker.main:
        print(format_table(f"run {run_dir}", summary))
        if state["best_each"]:
            print(format_best_table(state["best_metrics"], state["best_epoch"], state["best_each"]))
        if stopped_by is not None:
            log.warning("stopped by %s; continue with --resume --out %s", signal.Signals(stopped_by).name, run_dir)
    if stopped_by is not None:
        raise SystemExit(128 + int(stopped_by))
    return summary


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def format_table(title: str, values: dict[str, Any]) -> str:
    """A two-column summary table."""
    rows = [(k, v) for k, v in values.items() if k != "rank_weight_digests" and not isinstance(v, dict)]
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * (width + 16)]
    for k, v in rows:
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        lines.append(f"{k:<{width}}  {text}")
    return "\n".join(lines)


def setup_logging(run_dir: Path | None, main: bool) -> list[logging.Handler]:
    """Log to stderr (rank 0 at INFO, others at WARNING) and to run_dir/train.log on rank 0.

    Returns the handlers it installed, for :func:`close_logging` (``main()`` called in-process, e.g. by
    tests or notebooks, must not leave a handler on a closed stream or an open train.log behind).
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None and main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return handlers


def close_logging(handlers: list[logging.Handler]) -> None:
    """Remove and close the handlers that :func:`setup_logging` installed."""
    root = logging.getLogger()
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
