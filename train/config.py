"""Trainer configuration: dataclasses loaded from YAML plus `key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from fineparser import spec
from fineparser.config import ConfigError, FineParserConfig
from fineparser.data import TrainShifts
from fineparser.spotter import SpotterConfig, SpotterConfigError
from fineparser.spotter_spec import CLASS_NAMES

TASKS = ("fineparser", "spotter")
"""What `python -m train` can train (`task:`): the scorer, or the broadcast spotter (docs/spotter.md)."""
PAPER_SCHEDULE = "paper"
"""`eval_every: paper`: after every 4th epoch up to epoch 50, then after every 2nd (the paper's runner)."""


@dataclass
class DataConfig:
    """Where the dives are (FineDiving layout); `root` is enough for the standard folder names."""

    root: str | None = None
    frames_root: str | None = None
    mask_root: str | None = None
    annotation: str | None = None
    train_split: str | None = None
    test_split: str | None = None
    use_masks: bool = True
    skip_bad: bool = False
    num_workers: int = 2
    train_start_shift: list[int] = field(default_factory=lambda: list(spec.TRAIN_START_SHIFT))
    """Training clips start a random number of frames in this closed range later (the paper: [0, 0])."""
    train_end_shift: list[int] = field(default_factory=lambda: list(spec.TRAIN_END_SHIFT))
    """Training clips end a random number of frames in this closed range earlier (the paper: [-3, 0])."""

    def shifts(self) -> TrainShifts:
        """The training clips' edge shifts (fineparser.data.TrainShifts); ValueError says what is wrong."""
        return TrainShifts(self.train_start_shift, self.train_end_shift)


@dataclass
class OptimConfig:
    """Adam with the I3D backbone at lr x lr_factor; timm cosine schedule with warm-up."""

    lr: float = 1e-3
    lr_factor: float = 0.1
    backbone_lr_factor: float | None = None
    """The I3D backbone at lr x this; None: lr x lr_factor (the paper's, for Kinetics weights).  A trunk trained
    from scratch at a tenth of the rate hardly moves from its random init in a short run (docs/train.md)."""
    parser_lr_factor: float = 1.0
    """The temporal parser (psnet_model) at lr x parser_lr_factor (1: the paper's single rate)."""
    parser_refit_steps: int = 0
    """Before each evaluation in training, fit the temporal parser for this many steps on the window features of
    the training clips (encoder frozen, test-mode clips); 0: never (the paper)."""
    parser_refit_lr: float = 1e-3
    window_timing_lr_factor: float = 30.0
    """The training-only window-timing head (loss.window_timing) at lr x this: at the encoder's rate, a fresh linear
    read-out needs more steps than a `tiny` run has to reach even the frames' prior, and tells the encoder little."""
    weight_decay: float = 0.0
    warmup_epochs: float = 5.0
    grad_clip: float = 0.0


@dataclass
class LossConfig:
    """Weights of FineParser's three losses (the paper sums them); the spotter's class weights."""

    score: float = 1.0
    transition: float = 1.0
    mask: float = 1.0
    transition_form: str = "listwise"
    """Temporal parser loss: "paper" (per-frame BCE only) or "listwise" (BCE + argmax cross-entropy)."""
    window_timing: float = 0.0
    """Weight of the training-only window-timing read-out (0: the paper's objective; docs/train.md)."""
    class_weights: str | list[float] | None = None
    """Spotter cross-entropy weight per class (idle, approach, flight, entry, replay), or "balanced"."""


@dataclass
class SpotterDataConfig:
    """How annotated broadcasts become the spotter's training windows (train/spotter_data.py)."""

    window: int = 64  # consecutive frames per training window
    windows_per_epoch: int = 512  # windows drawn per epoch
    live_fraction: float = 0.5  # share of windows placed around a live frame
    replay_fraction: float = 0.0  # share placed around a replay frame (the rest anywhere)
    test_videos: list[str] = field(default_factory=list)  # held-out broadcasts (path below the folder, no suffix)
    test_fraction: float = 0.2  # without test_videos: this share of the videos, drawn with `seed`
    augment: bool = True  # per window: one brightness/contrast change and one small crop
    brightness: float = 0.15  # offset up to +-brightness x 255
    contrast: float = 0.2  # gain in 1 +- contrast around the window's mean
    crop: float = 0.1  # up to this share of the height and width cut off, resized back
    cache_dir: str | None = None  # decoded-frame caches (default: .spotter_cache beside each video)
    eval_chunk: int = 256  # frames per forward when a test video is run causally

    def problems(self, lookahead: int) -> list[str]:
        """What is inconsistent (empty when fine)."""
        out = []
        if self.window <= lookahead:
            out.append(f"spotter_data.window {self.window} must exceed spotter.lookahead {lookahead}")
        if self.windows_per_epoch < 1 or self.eval_chunk < 1:
            out.append("spotter_data.windows_per_epoch and spotter_data.eval_chunk must be >= 1")
        if not 0.0 <= self.live_fraction <= 1.0:
            out.append(f"spotter_data.live_fraction {self.live_fraction} is outside [0, 1]")
        if not 0.0 <= self.replay_fraction <= 1.0 - self.live_fraction:
            out.append(f"spotter_data.replay_fraction {self.replay_fraction} is outside [0, 1 - live_fraction "
                       f"{self.live_fraction}]")
        if not self.test_videos and not 0.0 < self.test_fraction < 1.0:
            out.append(f"spotter_data.test_fraction {self.test_fraction} is outside (0, 1) and no test_videos "
                       "are named: the spotter needs test broadcasts to evaluate on")
        if not (0 <= self.brightness <= 1 and 0 <= self.contrast < 1 and 0 <= self.crop < 0.5):
            out.append("spotter_data: brightness must be in [0, 1], contrast in [0, 1), crop in [0, 0.5)")
        return out


@dataclass
class TrainConfig:
    """Everything a training run needs; written resolved into the run directory."""

    task: str = "fineparser"
    """What is trained: `fineparser` (the scorer, `model:`) or `spotter` (`spotter:`, `spotter_data:`)."""
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "full"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 400
    max_steps: int = 0
    batch_size: int = 2
    accumulation: int = 2
    eval_every: int | str = 1
    """Evaluate after every N-th epoch, or `paper`: every 4th up to epoch 50, then every 2nd."""
    eval_max_queries: int = 0
    eval_at_end: bool = True
    keep_evaluated: bool = False
    """Also keep every evaluated checkpoint as `eval-<step>.pt` (with its metrics), to choose one afterwards by
    another figure than best.pt's; off by default (a FineParser checkpoint is 13 MB at `tiny`, 0.4 GB at full)."""
    seed: int = 10086
    amp: str = "off"
    sync_bn: bool = False
    """Every BatchNorm becomes SyncBatchNorm when the job has several CUDA workers (the paper's multi-GPU
    setting); one worker is left as it is, several CPU workers are refused (SyncBatchNorm is CUDA only)."""
    freeze_i3d_bn: bool = True
    log_every: int = 10
    i3d_weights: str | None = None
    """kinetics_i3d_pytorch `model_rgb.pth`, loaded into both I3D trunks before training."""
    resnet_weights: str | None = None
    """ImageNet ResNet-34 (torchvision/timm layout), loaded into the static encoder before training."""
    from_scratch: bool = False
    """A new run without i3d_weights and resnet_weights is refused unless this says so on purpose (the
    paper always starts from Kinetics I3D and ImageNet ResNet-34); weights that are given still load."""
    spotter: dict[str, Any] = field(default_factory=dict)
    """task spotter: SpotterConfig fields (fineparser.spotter); travels with the checkpoint."""
    spotter_data: SpotterDataConfig = field(default_factory=SpotterDataConfig)

    def model_config(self) -> FineParserConfig:
        """The network's config (preset plus overrides)."""
        return FineParserConfig.from_dict(dict(self.model))

    def spotter_config(self) -> SpotterConfig:
        """The spotter's config (defaults plus `spotter:`); ConfigError on an unknown key or bad value."""
        try:
            return SpotterConfig.from_dict(dict(self.spotter))
        except (SpotterConfigError, TypeError) as exc:
            raise ConfigError(str(exc)) from None

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming every inconsistent value."""
        problems = []
        if self.amp not in ("off", "bf16", "fp16"):
            problems.append(f"amp must be off, bf16 or fp16, got {self.amp!r}")
        for name in ("batch_size", "accumulation", "epochs"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        every_n = isinstance(self.eval_every, int) and not isinstance(self.eval_every, bool) and self.eval_every >= 1
        if self.eval_every != PAPER_SCHEDULE and not every_n:
            problems.append(f"eval_every must be an integer >= 1 or 'paper', got {self.eval_every!r}")
        if self.max_steps < 0:
            problems.append("max_steps must be >= 0 (0: no limit)")
        o = self.optim
        if o.parser_refit_steps < 0 or o.parser_refit_lr <= 0 or o.parser_lr_factor <= 0:
            problems.append("optim.parser_refit_steps must be >= 0, optim.parser_refit_lr and "
                            "optim.parser_lr_factor > 0")
        if not self.loss.window_timing >= 0:
            problems.append(f"loss.window_timing must be >= 0, got {self.loss.window_timing}")
        if not (o.backbone_lr_factor is None or o.backbone_lr_factor > 0) or not o.window_timing_lr_factor > 0:
            problems.append("optim.backbone_lr_factor must be null or > 0, optim.window_timing_lr_factor > 0")
        try:
            self.data.shifts()
        except ValueError as exc:
            problems.append(f"data.train_{exc}")
        if self.loss.transition_form not in ("paper", "listwise"):
            problems.append(f"loss.transition_form must be 'paper' or 'listwise', got {self.loss.transition_form!r}")
        if self.task not in TASKS:
            problems.append(f"task must be {' or '.join(TASKS)}, got {self.task!r}")
        elif self.task == "spotter":
            problems += self.spotter_data.problems(self.spotter_config().lookahead)
            weights = self.loss.class_weights
            if weights is not None and weights != "balanced" and not (
                    isinstance(weights, list) and len(weights) == len(CLASS_NAMES) and all(
                        isinstance(w, (int, float)) and w >= 0 for w in weights)):
                problems.append(f"loss.class_weights must be null, 'balanced' or one weight >= 0 per class "
                                f"({', '.join(CLASS_NAMES)}), got {weights!r}")
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))
        if self.task == "fineparser":
            self.model_config()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """YAML text (what the run directory keeps as config.yaml)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


RESUME_FREE_KEYS = frozenset({
    "data.root", "data.frames_root", "data.mask_root", "data.annotation", "data.num_workers",
    "spotter_data.cache_dir", "i3d_weights", "resnet_weights", "from_scratch",
    "max_steps", "log_every", "eval_every", "eval_max_queries", "eval_at_end", "keep_evaluated",
})
"""Settings that `--resume` may change without changing what the resumed run learns: where the data and the
start-up weights are (moved files), how many loader workers, when to stop early, and what is logged or
evaluated.  Any other difference from the checkpoint's own settings (seed, data shifts, schedule, model,
loss...) makes the run neither exact nor the recipe it records, and is refused unless asked for."""


def config_changes(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) for every setting that differs, RESUME_FREE_KEYS left out.

    Only settings both sides know are compared: a checkpoint older than a setting trained with its default."""
    changes = []
    for key in sorted(set(saved) & set(current)):
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes.extend(config_changes(old, new, f"{name}."))
        elif name not in RESUME_FREE_KEYS and old != new:
            changes.append((name, old, new))
    return changes


# Keys that left the training config, and where they live now.
MOVED_KEYS = {
    "voter_number": "model.voter_number: it is part of the model config, which travels with the checkpoint into "
                    "the exported package, so the trainer evaluates with the value the package scores with "
                    "(write `voter_number: N` under `model:` or override model.voter_number=N)",
}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    moved = sorted(k for k in values if where + k in MOVED_KEYS)
    if moved:
        raise ConfigError("; ".join(f"{where + k} is no longer a training setting, it moved to "
                                    f"{MOVED_KEYS[where + k]}" for k in moved))
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; known keys"
                          f"{' under ' + where.rstrip('.') if where else ''}: {', '.join(known)}")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING \
            else known[name].default
        if is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{name} must be a mapping, got {value!r}")
            kwargs[name] = _build(type(default), value, f"{where}{name}.")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=1e-4` -> (["optim", "lr"], 0.0001); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. optim.lr=1e-4)")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Load a YAML config (or the defaults) and apply `key=value` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a training config must be a mapping")
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return _build(TrainConfig, values, "").validate()
