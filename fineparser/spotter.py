"""The spotter: a small causal network that labels every broadcast frame (idle, approach, flight, entry, replay).

It is not part of FineParser; it finds the dives FineParser scores (DESIGN.md section 8).  Per frame
a timm 2D CNN trunk (MobileNetV3-small class by default, RegNetY-200MF allowed) turns the downscaled
frame into a pooled feature, a linear projection shrinks it, and a hand-written GRU cell carries a
recurrent state from frame to frame; a linear classifier reads the state.  Nothing looks at a later
frame, so the output after frame ``t`` depends on frames ``0..t`` only.  The look-ahead is a delay:
that output is trained to be the label of frame ``t - lookahead`` (:func:`step_targets`).

The GRU cell is written with Linear, Sigmoid, Tanh and elementwise ops rather than ``nn.GRU`` so
that its one-frame step exports to plain ONNX ops that onnxruntime, TensorRT and C++ all compute
the same way; the state is an explicit input and output of that graph (``export/spotter.py``).

Shapes: frames uint8 (or float on the same 0..255 scale) channels last ``[B, T, H, W, 3]``; logits
``[B, T, C]``; state ``[B, hidden_size]``.  ImageNet normalisation happens inside the model.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fineparser import spotter_spec
from fineparser.spotter_spec import SpotterSpec

log = logging.getLogger(__name__)

TRUNKS = ("mobilenetv3_small_050", "mobilenetv3_small_075", "mobilenetv3_small_100", "regnety_002")
"""timm trunks the spotter is built and exported with (the first is the default)."""
DEFAULT_TRUNK = TRUNKS[0]
IGNORE_INDEX = -100
"""Target value of steps that have no label yet (the first `lookahead` steps): skipped by the loss."""


class SpotterConfigError(ValueError):
    """A spotter configuration with a bad or unknown value."""


@dataclass
class SpotterConfig:
    """Architecture of a spotter; travels in its checkpoint like FineParserConfig does."""

    trunk: str = DEFAULT_TRUNK  # a timm model name from TRUNKS
    input_height: int = spotter_spec.INPUT_HW[0]
    input_width: int = spotter_spec.INPUT_HW[1]
    feature_dim: int = 128  # projection of the trunk's pooled feature, the GRU's input
    hidden_size: int = 128  # GRU state length
    lookahead: int = spotter_spec.DEFAULT_LOOKAHEAD  # frames of delay, 0..MAX_LOOKAHEAD
    dropout: float = 0.1  # before the classifier, training only

    def validate(self) -> SpotterConfig:
        """Check the values; raises SpotterConfigError naming the bad one."""
        if self.trunk not in TRUNKS:
            raise SpotterConfigError(f"unknown spotter trunk {self.trunk!r}; known: {', '.join(TRUNKS)}")
        if not 0 <= self.lookahead <= spotter_spec.MAX_LOOKAHEAD:
            raise SpotterConfigError(f"spotter lookahead {self.lookahead} is outside "
                                     f"0..{spotter_spec.MAX_LOOKAHEAD} frames")
        if min(self.input_height, self.input_width) < 32:
            raise SpotterConfigError(f"spotter input {self.input_height}x{self.input_width} is below 32x32")
        if min(self.feature_dim, self.hidden_size) < 1:
            raise SpotterConfigError("spotter feature_dim and hidden_size must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise SpotterConfigError(f"spotter dropout {self.dropout} is outside [0, 1)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON/checkpoint friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SpotterConfig:
        """Build from a dict; unknown keys are an error that lists the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SpotterConfigError(f"unknown spotter config key(s) {', '.join(unknown)}; "
                                     f"known keys: {', '.join(known)}")
        return cls(**values).validate()

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the input frames."""
        return self.input_height, self.input_width

    def to_spec(self, thresholds: dict[str, float] | None = None) -> SpotterSpec:
        """The torch-free description a runtime needs (classes, input, look-ahead, state, thresholds)."""
        values = {"input_height": self.input_height, "input_width": self.input_width, "lookahead": self.lookahead,
                  "hidden_size": self.hidden_size}
        if thresholds is not None:
            values["thresholds"] = dict(thresholds)
        return SpotterSpec.from_dict(values)


class CausalGRUCell(nn.Module):
    """A GRU cell (PyTorch's gate equations) from two Linear layers: plain ops in any export.

    r = sigmoid(x_r + h_r), z = sigmoid(x_z + h_z), n = tanh(x_n + r * h_n), h' = n + z * (h - n),
    where [x_r, x_z, x_n] = input_gates(x) and [h_r, h_z, h_n] = hidden_gates(h).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input_gates = nn.Linear(input_size, 3 * hidden_size)
        self.hidden_gates = nn.Linear(hidden_size, 3 * hidden_size)
        bound = hidden_size ** -0.5  # nn.GRU's initialisation
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def forward(self, input_gates: Tensor, state: Tensor) -> Tensor:
        """One step: input_gates [B, 3H] (already `self.input_gates(x)`), state [B, H] -> new state [B, H]."""
        x_r, x_z, x_n = input_gates.chunk(3, dim=-1)
        h_r, h_z, h_n = self.hidden_gates(state).chunk(3, dim=-1)
        reset = torch.sigmoid(x_r + h_r)
        update = torch.sigmoid(x_z + h_z)
        candidate = torch.tanh(x_n + reset * h_n)
        return candidate + update * (state - candidate)


class Spotter(nn.Module):
    """Per-frame timm trunk + projection + causal GRU + classifier over :data:`spotter_spec.CLASS_NAMES`."""

    def __init__(self, config: SpotterConfig | None = None) -> None:
        super().__init__()
        import timm  # imported here so that `import fineparser.spotter` stays cheap for the CLI's --help

        self.config = (config or SpotterConfig()).validate()
        self.classes = spotter_spec.CLASS_NAMES
        self.trunk = timm.create_model(self.config.trunk, pretrained=False, num_classes=0)
        trunk_dim = getattr(self.trunk, "head_hidden_size", None) or self.trunk.num_features
        self.projection = nn.Sequential(nn.Linear(trunk_dim, self.config.feature_dim), nn.ReLU())
        self.head = CausalGRUCell(self.config.feature_dim, self.config.hidden_size)
        self.dropout = nn.Dropout(self.config.dropout)
        self.classifier = nn.Linear(self.config.hidden_size, len(self.classes))
        # (x / 255 - mean) / std == (x - 255 mean) * (1 / (255 std)), as the FineParser encoder graph does.
        spec = self.config.to_spec()
        mean = torch.tensor(spec.mean, dtype=torch.float32) * 255.0
        inv_std = 1.0 / (torch.tensor(spec.std, dtype=torch.float32) * 255.0)
        self.register_buffer("mean_255", mean.reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std_255", inv_std.reshape(1, 3, 1, 1), persistent=False)

    @property
    def hidden_size(self) -> int:
        """Length of the recurrent state vector."""
        return self.config.hidden_size

    def initial_state(self, batch: int = 1, device: torch.device | str | None = None) -> Tensor:
        """The state before the first frame: zeros [batch, hidden_size]."""
        device = device if device is not None else self.classifier.weight.device
        return torch.zeros(batch, self.config.hidden_size, device=device)

    def frame_features(self, frames: Tensor) -> Tensor:
        """frames uint8/float 0..255 [N, H, W, 3] -> projected per-frame features [N, feature_dim]."""
        if tuple(frames.shape[-3:]) != (*self.config.input_hw, 3):
            raise ValueError(f"spotter frames must be [..., {self.config.input_height}, {self.config.input_width}, 3] "
                             f"channels-last RGB, got {list(frames.shape)}: prepare them with "
                             "fineparser.spotter_spec.spotter_frame")
        x = frames.to(torch.float32).permute(0, 3, 1, 2)
        x = (x - self.mean_255) * self.inv_std_255
        return self.projection(self.trunk(x))

    def forward(self, frames: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """frames [B, T, H, W, 3] -> (logits [B, T, C], state after the last frame [B, hidden]).

        logits[:, t] is the model's belief about frame t - lookahead; train it with `step_targets`.
        `state` continues a sequence (None: `initial_state`).
        """
        if frames.dim() != 5:
            raise ValueError(f"spotter forward expects frames [B, T, H, W, 3], got {list(frames.shape)}")
        batch, steps = frames.shape[:2]
        features = self.frame_features(frames.reshape(batch * steps, *frames.shape[2:]))
        # Input gates of all frames in one product; only the recurrence is sequential.
        input_gates = self.head.input_gates(features).reshape(batch, steps, -1)
        state = self.initial_state(batch, frames.device) if state is None else state
        states = []
        for t in range(steps):
            state = self.head(input_gates[:, t], state)
            states.append(state)
        logits = self.classifier(self.dropout(torch.stack(states, dim=1)))
        return logits, state

    def step(self, frame: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One frame: frame [B, H, W, 3], state [B, hidden] -> (logits [B, C], probs [B, C], new state)."""
        state = self.head(self.head.input_gates(self.frame_features(frame)), state)
        logits = self.classifier(self.dropout(state))
        return logits, torch.softmax(logits, dim=-1), state


def step_targets(labels: Tensor, lookahead: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-frame labels [B, T] -> targets of the spotter's outputs [B, T]: label of frame t - lookahead.

    The first `lookahead` steps have no frame to label yet and get `ignore_index`, so
    ``F.cross_entropy(logits.flatten(0, 1), step_targets(labels, L).flatten(), ignore_index=IGNORE_INDEX)``
    is the training loss.
    """
    targets = torch.full_like(labels, ignore_index)
    if lookahead < labels.shape[1]:
        targets[:, lookahead:] = labels[:, :labels.shape[1] - lookahead]
    return targets


def frame_logits(logits: Tensor, lookahead: int) -> Tensor:
    """Step outputs [B, T, C] -> logits of frames 0 .. T - 1 - lookahead [B, T - lookahead, C]."""
    return logits[:, lookahead:]


# --------------------------------------------------------------------------- trunk weights


def trunk_checkpoint_filter(state: dict[str, Any], trunk: nn.Module) -> dict[str, Tensor]:
    """timm/ImageNet state dict -> trunk keys: unwrap `state_dict`/`model`, strip `module.`, drop the classifier."""
    from fineparser.checkpoint import _strip_module_prefix

    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    state = _strip_module_prefix(state)
    classifier = getattr(trunk, "pretrained_cfg", {}).get("classifier") or "classifier"
    return {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}


def load_trunk_weights(model: Spotter, path: str | Path) -> None:
    """Load ImageNet weights for the spotter's trunk (timm key layout, classifier ignored) from `path`."""
    from fineparser.checkpoint import CheckpointError, _load_into, _torch_load

    data = _torch_load(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a state dict of timm {model.config.trunk}, got {type(data).__name__}")
    state = trunk_checkpoint_filter(data, model.trunk)
    _load_into(model.trunk, state, f"{path} -> spotter trunk (needs timm {model.config.trunk} ImageNet weights)")
    log.info("loaded ImageNet %s weights from %s into the spotter trunk (%d tensors)", model.config.trunk, path,
             len(state))


# --------------------------------------------------------------------------- checkpoints

CHECKPOINT_FORMAT = "fineparser-spotter-checkpoint"
CHECKPOINT_VERSION = 1


def save_spotter(path: str | Path, model: Spotter, trainer: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Save config + weights (+ optional trainer state, metrics...) atomically: fineparser.checkpoint's plain dict."""
    from fineparser.checkpoint import write_model_checkpoint

    return write_model_checkpoint(path, model, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "spotter_config", trainer,
                                  **extra)


def read_spotter_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (weights_only); a file of another kind gets an error that says what it is."""
    from fineparser.checkpoint import FORMAT, CheckpointError, _torch_load

    data = _torch_load(path)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        if isinstance(data, dict) and data.get("format") == FORMAT:
            raise CheckpointError(f"{path} is a FineParser checkpoint, not a spotter's (train one with "
                                  "`python -m train` and `task: spotter`, docs/spotter.md)")
        keys = ", ".join(list(data)[:6]) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not a spotter checkpoint (no format={CHECKPOINT_FORMAT!r}; found {keys})")
    if data.get("format_version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has spotter checkpoint version {data['format_version']}, this toolkit "
                              f"reads up to {CHECKPOINT_VERSION}: upgrade fineparser")
    return data


def load_spotter(path: str | Path) -> tuple[Spotter, dict[str, Any]]:
    """Build the spotter a checkpoint describes and load its weights (eval mode); returns (model, checkpoint)."""
    from fineparser.checkpoint import _load_strict

    data = read_spotter_checkpoint(path)
    model = Spotter(SpotterConfig.from_dict(data["spotter_config"]))
    _load_strict(model, data["model"], str(path))
    return model.eval(), data


# --------------------------------------------------------------------------- summary


def summarise_spotter(model_or_config: Spotter | SpotterConfig | None = None) -> dict[str, Any]:
    """Parameters per part, FLOPs of one frame's step (FlopCounterMode: 2 per multiply-add), input size.

    Only convolutions and matrix products are counted (elementwise ops are a rounding error here).
    """
    from torch.utils.flop_counter import FlopCounterMode

    if isinstance(model_or_config, Spotter):
        model = model_or_config
    else:
        model = Spotter(model_or_config or SpotterConfig())
    config = model.config
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}
    frame = torch.zeros(1, *config.input_hw, 3, dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    with counter, torch.no_grad():
        model.eval().step(frame.to(model.classifier.weight.device), model.initial_state(1))
    model.train(was_training)
    return {"config": config.to_dict(), "params": params, "params_total": sum(params.values()),
            "flops_per_frame": counter.get_total_flops(), "input_hw": list(config.input_hw),
            "lookahead": config.lookahead, "state": [1, config.hidden_size], "classes": list(model.classes)}


def format_spotter_summary(s: dict[str, Any]) -> str:
    """A readable table of `summarise_spotter` output."""
    height, width = s["input_hw"]
    lines = [f"Spotter (trunk {s['config']['trunk']}, input {height}x{width} RGB uint8, look-ahead "
             f"{s['lookahead']} frames, state {s['state']})", "", f"{'part':<16}{'params':>12}"]
    lines += [f"{name:<16}{count:>12,}" for name, count in s["params"].items() if count]
    lines += [f"{'total':<16}{s['params_total']:>12,}", "",
              f"FLOPs per frame (one step): {s['flops_per_frame'] / 1e6:.1f} M",
              f"classes: {', '.join(s['classes'])}"]
    return "\n".join(lines)

