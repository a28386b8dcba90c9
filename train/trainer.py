"""The training loop: one process per worker (DDP when there are several), top to bottom.

config -> data -> model -> optimizer/schedule -> (resume) -> loop with accumulation -> eval ->
checkpoints.  Distributed settings come from the environment torchrun sets (RANK, LOCAL_RANK,
WORLD_SIZE); a single process without them trains without DDP.
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
from pathlib import Path
from typing import Any

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
from train.config import TrainConfig
from train.evaluate import evaluate

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


def any_rank(flag: bool, worker: Worker) -> bool:
    """True on every rank when any rank says True (keeps ranks stepping together)."""
    if worker.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=worker.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def build_index(cfg: TrainConfig) -> FineDivingIndex:
    """The dataset index from the config's data section, with clear errors for missing paths."""
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
        paths = DataPaths.discover(d.root)
    return FineDivingIndex(paths, voter_number=cfg.voter_number, skip_bad=d.skip_bad)


def compute_losses(out: PairForward, batch: dict, cfg: TrainConfig, use_masks: bool) -> dict[str, torch.Tensor]:
    """The paper's objective: score MSE both ways + transition BCE + focal loss on 5 mask maps."""
    q, e = batch["query"], batch["exemplar"]
    sq, se = q["score"].float(), e["score"].float()
    score = F.mse_loss(out.delta_12.float(), sq - se) + F.mse_loss(out.delta_21.float(), se - sq)
    transitions = torch.cat([q["transitions"], e["transitions"]]).long().clamp(0, out.transition_probs.shape[1] - 1)
    target = torch.zeros_like(out.transition_probs, dtype=torch.float32)
    rows = torch.arange(target.shape[0], device=target.device)
    target[rows, transitions[:, 0], 0] = 1.0
    target[rows, transitions[:, 1], 1] = 1.0
    transition = F.binary_cross_entropy(out.transition_probs.float().clamp(1e-7, 1 - 1e-7), target)
    losses = {"score": score, "transition": transition}
    total = cfg.loss.score * score + cfg.loss.transition * transition
    if use_masks and out.mask_logits is not None:
        masks = split_windows(torch.cat([q["mask"], e["mask"]]))[:, :, 0].round()  # [2B, 9, 16, H, W]
        logits = out.mask_logits.float()
        mask = sum(sigmoid_focal_loss(logits[:, :, i], masks, alpha=-1, gamma=2.0, reduction="mean")
                   for i in range(logits.shape[2]))
        losses["mask"] = mask
        total = total + cfg.loss.mask * mask
    losses["total"] = total
    return losses


def freeze_i3d_batchnorm(model: FineParser) -> None:
    """Keep the I3D backbone's BN statistics fixed (the paper's fix_bn)."""
    for module in model.base_model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


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
          eval_only: Path | None = None) -> dict[str, Any]:
    """Train (or evaluate) as configured; returns the final summary (on every rank)."""
    worker = init_worker(device_kind)
    try:
        return _train(cfg, run_dir, worker, resume=resume, eval_only=eval_only)
    finally:
        if worker.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, run_dir: Path, worker: Worker, *, resume: bool, eval_only: Path | None) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    if worker.main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(cfg.seed)
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
    if amp_dtype is not None and worker.device.type != "cuda":
        log.warning("amp=%s asked for on %s: AMP is for GPUs, training in fp32", cfg.amp, worker.device)
        amp_dtype = None

    # ---- data ------------------------------------------------------------------------------
    index = build_index(cfg)
    use_masks = cfg.data.use_masks and index.paths.has_masks
    if cfg.data.use_masks and not use_masks and worker.main:
        log.warning("no FineDiving-HM mask folder: training without the mask loss")
    test_set = TestDataset(index, seed=cfg.seed, with_masks=False)

    # ---- model -----------------------------------------------------------------------------
    if eval_only is not None:
        model, _ = load_model(eval_only)
        model = model.to(worker.device)
        metrics = evaluate(model, test_set, worker.device, rank=worker.rank, world=worker.world,
                           max_queries=cfg.eval_max_queries, with_masks=use_masks, amp_dtype=amp_dtype,
                           progress=worker.main)
        if worker.main:
            runlog = RunLog(run_dir, True)
            runlog.write({"event": "eval", "checkpoint": str(eval_only), **metrics}, 0)
            runlog.close()
            print(format_table("evaluation of " + str(eval_only), metrics))
        return metrics

    model = FineParser(cfg.model_config())
    if cfg.i3d_weights:
        load_kinetics_i3d(model, cfg.i3d_weights)
    if cfg.resnet_weights:
        load_imagenet_resnet(model, cfg.resnet_weights)
    if cfg.sync_bn:
        if worker.device.type != "cuda":
            raise TrainingError("sync_bn needs CUDA workers (NCCL); set sync_bn=false for CPU training")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(worker.device)

    train_set = PairDataset(index, seed=cfg.seed, with_masks=use_masks)
    sampler = DistributedSampler(train_set, num_replicas=worker.world, rank=worker.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    batches_per_epoch = len(sampler) // cfg.batch_size
    if batches_per_epoch == 0:
        raise TrainingError(f"{len(train_set)} training pairs cannot fill one batch of {cfg.batch_size} on each "
                            f"of {worker.world} workers: lower batch_size or add data")
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accumulation)
    # The schedule is defined by the epochs; max_steps only stops early (so a resumed run with another
    # max_steps follows the same learning-rate curve).
    schedule_steps = cfg.epochs * steps_per_epoch
    total_steps = schedule_steps if cfg.max_steps <= 0 else min(cfg.max_steps, schedule_steps)

    # ---- optimizer and schedule ------------------------------------------------------------
    backbone = list(model.base_model.parameters())
    backbone_ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in backbone_ids]
    o = cfg.optim
    optimizer = torch.optim.Adam([{"params": backbone, "lr": o.lr * o.lr_factor}, {"params": rest, "lr": o.lr}],
                                 lr=o.lr, weight_decay=o.weight_decay)
    from timm.scheduler.cosine_lr import CosineLRScheduler

    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, schedule_steps), lr_min=o.lr * o.lr_factor,
                                  warmup_lr_init=o.lr * o.lr_factor,
                                  warmup_t=int(round(o.warmup_epochs * steps_per_epoch)), t_in_epochs=False)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    # ---- resume ----------------------------------------------------------------------------
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_rho": -math.inf, "best_step": None}
    if resume:
        last = run_dir / "last.pt"
        if not last.is_file():
            raise TrainingError(f"--resume: {last} does not exist (nothing to resume in {run_dir})")
        data = load_checkpoint(last)
        model.load_state_dict(data["model"])
        trainer = data["trainer"]
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        scaler.load_state_dict(trainer["scaler"])
        torch.set_rng_state(trainer["rng_cpu"])
        if worker.device.type == "cuda" and trainer.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(trainer["rng_cuda"], worker.device)
        state.update({k: trainer[k] for k in state})
        if worker.main:
            log.info("resumed %s at step %d (epoch %d, batch %d of the epoch)", last, state["step"],
                     state["epoch"], state["batch_in_epoch"])

    ddp = model
    if worker.world > 1:
        ddp = DistributedDataParallel(model, device_ids=[worker.local_rank] if worker.device.type == "cuda" else None,
                                      find_unused_parameters=not use_masks)
    runlog = RunLog(run_dir, worker.main)
    if worker.main:
        n_params = sum(p.numel() for p in model.parameters())
        log.info("training %s (%s params) on %d %s worker(s): %d pairs, %d test dives, %d steps/epoch, %d steps",
                 cfg.model.get("preset"), f"{n_params:,}", worker.world, worker.device.type, len(train_set),
                 len(test_set), steps_per_epoch, total_steps)
        runlog.write({"event": "start", "world": worker.world, "device": worker.device.type,
                      "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "masks": use_masks},
                     state["step"])

    def save(path_name: str, extra: dict | None = None) -> None:
        if not worker.main:
            return
        trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
                   "rng_cuda": torch.cuda.get_rng_state(worker.device) if worker.device.type == "cuda" else None,
                   "train_config": cfg.to_dict(), **state}
        save_checkpoint(run_dir / path_name, model, trainer=trainer, **(extra or {}))

    def run_eval() -> dict[str, float]:
        metrics = evaluate(model, test_set, worker.device, rank=worker.rank, world=worker.world,
                           max_queries=cfg.eval_max_queries, with_masks=use_masks, amp_dtype=amp_dtype,
                           progress=worker.main)
        runlog.write({"event": "eval", "epoch": state["epoch"], **metrics}, state["step"])
        if worker.main:
            log.info("eval at step %d: rho %.4f  L2 %.3f  RL2x100 %.3f  AIoU@0.5 %.3f  AIoU@0.75 %.3f",
                     state["step"], metrics["rho"], metrics["l2"], metrics["rl2_x100"], metrics["aiou_50"],
                     metrics["aiou_75"])
        rho = metrics["rho"] if math.isfinite(metrics["rho"]) else -math.inf
        if rho > state["best_rho"]:
            state["best_rho"], state["best_step"] = rho, state["step"]
            save("best.pt", {"metrics": metrics})
        return metrics

    # ---- loop ------------------------------------------------------------------------------
    started = time.perf_counter()
    samples = 0
    last_metrics: dict[str, float] = {}
    last_losses: dict[str, float] = {}
    stopped_by: int | None = None
    micro_since_step = 0
    with StopRequest() as stop:
        while state["epoch"] < cfg.epochs and state["step"] < total_steps and stopped_by is None:
            epoch = state["epoch"]
            train_set.set_epoch(epoch)
            sampler.set_epoch(epoch)
            loader = DataLoader(train_set, batch_size=cfg.batch_size, drop_last=True,
                                sampler=ResumableSampler(sampler, state["batch_in_epoch"] * cfg.batch_size),
                                num_workers=cfg.data.num_workers, pin_memory=worker.device.type == "cuda",
                                persistent_workers=False)
            model.train()
            if cfg.freeze_i3d_bn:
                freeze_i3d_batchnorm(model)
            bar = tqdm(total=batches_per_epoch, initial=state["batch_in_epoch"], desc=f"epoch {epoch}",
                       unit="batch", disable=not worker.main, leave=False)
            for batch in loader:
                micro = state["batch_in_epoch"]
                last_micro = micro + 1 == batches_per_epoch
                sync_now = micro_since_step + 1 == cfg.accumulation or last_micro
                batch = _to_device(batch, worker.device)
                ctx = ddp.no_sync() if (worker.world > 1 and not sync_now) else contextlib.nullcontext()
                with ctx:
                    with (torch.autocast(worker.device.type, dtype=amp_dtype) if amp_dtype else
                          contextlib.nullcontext()):
                        out = ddp(batch["query"]["video"], batch["exemplar"]["video"],
                                  batch["query"]["transitions"], batch["exemplar"]["transitions"],
                                  with_masks=use_masks)
                    losses = compute_losses(out, batch, cfg, use_masks)
                    bad = not bool(torch.isfinite(losses["total"]))
                    if any_rank(bad, worker):
                        values = {k: round(float(v.detach()), 4) for k, v in losses.items()}
                        raise TrainingError(
                            f"non-finite loss at step {state['step']} (epoch {epoch}, batch {micro}) on rank "
                            f"{worker.rank if bad else '?'}: query {', '.join(batch['query']['key'])}, exemplar "
                            f"{', '.join(batch['exemplar']['key'])} (losses {values}); "
                            f"last good checkpoint: {run_dir / 'last.pt'}")
                    scaler.scale(losses["total"] / cfg.accumulation).backward()
                samples += cfg.batch_size * worker.world
                micro_since_step += 1
                state["batch_in_epoch"] = micro + 1
                bar.update(1)
                if not sync_now:
                    continue
                # ---- optimizer step ----
                if o.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                micro_since_step = 0
                state["step"] += 1
                scheduler.step_update(state["step"])
                last_losses = {k: float(v.detach()) for k, v in losses.items()}
                if worker.main:
                    bar.set_postfix(loss=f"{last_losses['total']:.3f}", lr=f"{optimizer.param_groups[1]['lr']:.2e}")
                if state["step"] % cfg.log_every == 0 or state["step"] == 1:
                    runlog.write({"event": "train", "epoch": epoch, **{f"loss_{k}": v for k, v in last_losses.items()},
                                  "lr": optimizer.param_groups[1]["lr"],
                                  "samples_per_s": samples / (time.perf_counter() - started)}, state["step"])
                if any_rank(stop.signal is not None, worker):
                    stopped_by = stop.signal or signal.SIGTERM
                    break
                if state["step"] >= total_steps:
                    break
            bar.close()
            if state["batch_in_epoch"] >= batches_per_epoch:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
                if stopped_by is None and state["epoch"] % cfg.eval_every == 0:
                    last_metrics = run_eval()
            save("last.pt")
        if stopped_by is None and not last_metrics and cfg.eval_at_end:
            last_metrics = run_eval()
            save("last.pt")

    elapsed = time.perf_counter() - started
    digest = weights_digest(model)
    digests = [digest]
    if worker.world > 1:
        digests = [None] * worker.world
        dist.all_gather_object(digests, digest)
    summary = {"steps": state["step"], "epochs_done": state["epoch"], "minutes": elapsed / 60,
               "samples_per_s": samples / elapsed if elapsed > 0 else float("nan"),
               "s_per_step": elapsed / max(1, state["step"]), "best_rho": state["best_rho"],
               "best_step": state["best_step"], "stopped_by_signal": stopped_by is not None,
               "weights_identical_across_ranks": len(set(digests)) == 1, "rank_weight_digests": digests,
               **{f"loss_{k}": v for k, v in last_losses.items()}, **last_metrics}
    runlog.write({"event": "end", **summary}, state["step"])
    runlog.close()
    if worker.main:
        print(format_table(f"run {run_dir}", summary))
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
    rows = [(k, v) for k, v in values.items() if k != "rank_weight_digests"]
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
