"""Trainer configuration: dataclasses loaded from YAML plus `key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from fineparser.config import ConfigError, FineParserConfig


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


@dataclass
class OptimConfig:
    """Adam with the I3D backbone at lr x lr_factor; timm cosine schedule with warm-up."""

    lr: float = 1e-3
    lr_factor: float = 0.1
    weight_decay: float = 0.0
    warmup_epochs: float = 5.0
    grad_clip: float = 0.0


@dataclass
class LossConfig:
    """Weights of the three losses (the paper sums them)."""

    score: float = 1.0
    transition: float = 1.0
    mask: float = 1.0


@dataclass
class TrainConfig:
    """Everything a training run needs; written resolved into the run directory."""

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "full"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 400
    max_steps: int = 0
    batch_size: int = 2
    accumulation: int = 2
    voter_number: int = 10
    eval_every: int = 1
    eval_max_queries: int = 0
    eval_at_end: bool = True
    seed: int = 10086
    amp: str = "off"
    sync_bn: bool = False
    freeze_i3d_bn: bool = True
    log_every: int = 10
    i3d_weights: str | None = None
    resnet_weights: str | None = None

    def model_config(self) -> FineParserConfig:
        """The network's config (preset plus overrides)."""
        return FineParserConfig.from_dict(dict(self.model))

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming every inconsistent value."""
        problems = []
        if self.amp not in ("off", "bf16", "fp16"):
            problems.append(f"amp must be off, bf16 or fp16, got {self.amp!r}")
        for name in ("batch_size", "accumulation", "voter_number", "eval_every", "epochs"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0:
            problems.append("max_steps must be >= 0 (0: no limit)")
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))
        self.model_config()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """YAML text (what the run directory keeps as config.yaml)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
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
