"""Model configuration: one dataclass, three presets, YAML round trip (torch-free)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

# Inception-I3D channel plan (kinetics_i3d_pytorch layout): stem widths and the six branch widths of
# each Mixed block [b0, b1a, b1b, b2a, b2b, b3].  Presets scale these by `i3d_width`.
I3D_STEM = {"conv3d_1a_7x7": 64, "conv3d_2b_1x1": 64, "conv3d_2c_3x3": 192}
I3D_MIXED = {
    "mixed_3b": (64, 96, 128, 16, 32, 32),
    "mixed_3c": (128, 128, 192, 32, 96, 64),
    "mixed_4b": (192, 96, 208, 16, 48, 64),
    "mixed_4c": (160, 112, 224, 24, 64, 64),
    "mixed_4d": (128, 128, 256, 24, 64, 64),
    "mixed_4e": (112, 144, 288, 32, 64, 64),
    "mixed_4f": (256, 160, 320, 32, 128, 128),
    "mixed_5b": (256, 160, 320, 32, 128, 128),
    "mixed_5c": (384, 192, 384, 48, 128, 128),
}


PAIR_STATIC_BATCH_MODES = ("separate", "joint")
"""Values of `FineParserConfig.pair_static_batch`; the first is the paper's."""


class ConfigError(ValueError):
    """A configuration that cannot describe a FineParser model."""


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


@dataclass
class FineParserConfig:
    """Architecture of one FineParser model; `full` is the paper's network exactly."""

    preset: str = "full"
    i3d_width: float = 1.0
    side_channels: int = 16
    sve_layers: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    sve_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    token_dim: int = 64
    decoder_heads: int = 8
    decoder_depth: int = 3
    decoder_mlp_ratio: float = 4.0
    regressor_hidden: list[int] = field(default_factory=lambda: [256, 64])
    voter_number: int = 10
    """Exemplars of the same dive number a query is scored against (mean of exemplar score + delta; 10
    in the paper).  The one place it is set: the trainer evaluates with it and it travels with the
    checkpoint into the package's `scoring.voter_number`, so reported and shipped scores agree."""
    score_scale: float = 1.0
    """Multiplies the pair head's deltas (1.0 in the paper).  Small models trained briefly reach the
    tens-of-points scale of diving scores sooner with a larger value; it is part of the model."""
    pair_static_batch: str = "separate"
    """How the training forward runs the static encoder and the dim reducers over a pair: `separate`
    (the paper: query, then exemplar, so training-mode BN normalises each clip by its own batch
    statistics) or `joint` (both clips as one batch: one set of statistics for the pair).  Eval-mode
    results are the same; inference (`encode`, `pair_head`) never depends on it."""

    # ---- derived widths -------------------------------------------------------------------
    def i3d_stem(self) -> dict[str, int]:
        """Output channels of the three stem convolutions."""
        return {k: _scaled(v, self.i3d_width) for k, v in I3D_STEM.items()}

    def i3d_mixed(self) -> dict[str, tuple[int, ...]]:
        """Branch widths of every Mixed block."""
        return {k: tuple(_scaled(c, self.i3d_width) for c in v) for k, v in I3D_MIXED.items()}

    @staticmethod
    def mixed_out(branches: tuple[int, ...]) -> int:
        """Output channels of a Mixed block (concatenation of its four branches)."""
        return branches[0] + branches[2] + branches[4] + branches[5]

    @property
    def feature_dim(self) -> int:
        """Width of one window feature (1024 in the paper)."""
        return self.mixed_out(self.i3d_mixed()["mixed_5c"])

    @property
    def tas_dim(self) -> int:
        """Length left after the temporal parser's four poolings (64 in the paper)."""
        return self.feature_dim // 16

    @property
    def sve_dim(self) -> int:
        """Per-frame width of the static encoder (512 for ResNet-34)."""
        return self.sve_channels[-1]

    # ---- validation and I/O ---------------------------------------------------------------
    def validate(self) -> FineParserConfig:
        """Check that every width is consistent; raise ConfigError saying which is not."""
        problems = []
        if self.feature_dim % 16:
            problems.append(f"feature_dim {self.feature_dim} (from i3d_width {self.i3d_width}) "
                            "must be divisible by 16 for the temporal parser's four poolings")
        if self.sve_dim != 8 * self.token_dim:
            problems.append(f"sve_channels[-1] ({self.sve_dim}) must be 8 x token_dim ({self.token_dim}): "
                            "the static towers halve the width three times down to token_dim")
        if self.token_dim % self.decoder_heads:
            problems.append(f"token_dim {self.token_dim} is not divisible by decoder_heads {self.decoder_heads}")
        if len(self.sve_layers) != 4 or len(self.sve_channels) != 4:
            problems.append("sve_layers and sve_channels need 4 entries (ResNet stages)")
        if len(self.regressor_hidden) != 2:
            problems.append("regressor_hidden needs 2 entries")
        if not self.score_scale > 0:
            problems.append("score_scale must be > 0")
        if self.voter_number < 1:
            problems.append("voter_number must be >= 1")
        if self.side_channels < 1 or self.decoder_depth < 1:
            problems.append("side_channels and decoder_depth must be >= 1")
        if self.pair_static_batch not in PAIR_STATIC_BATCH_MODES:
            problems.append(f"pair_static_batch must be one of {', '.join(PAIR_STATIC_BATCH_MODES)}, "
                            f"got {self.pair_static_batch!r}")
        if problems:
            raise ConfigError("invalid FineParser config: " + "; ".join(problems))
        return self

    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        """Names accepted by `from_preset`."""
        return tuple(_PRESETS)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> FineParserConfig:
        """The named preset (`full`, `small`, `tiny`), optionally with fields overridden."""
        if name not in _PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(_PRESETS)}")
        return cls.from_dict({**overrides, "preset": name})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON/checkpoint friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FineParserConfig:
        """Build from a dict; unknown keys are an error that lists the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown model config key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
        if values.get("preset") in _PRESETS:
            # A preset name plus some fields means "that preset with these changes".
            values = {**_PRESETS[values["preset"]], **values}
        return cls(**values).validate()

    def to_yaml(self) -> str:
        """YAML text of this config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> FineParserConfig:
        """Load from YAML text or a .yaml file."""
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or (text.endswith((".yaml", ".yml")) and "\n" not in text):
            text = Path(text_or_path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"model config must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data)


_PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "small": dict(i3d_width=0.5, side_channels=8, sve_layers=[2, 2, 2, 2], sve_channels=[32, 64, 128, 256],
                  token_dim=32, decoder_heads=4, regressor_hidden=[128, 32]),
    "tiny": dict(i3d_width=0.125, side_channels=4, sve_layers=[1, 1, 1, 1], sve_channels=[16, 32, 64, 128],
                 token_dim=16, decoder_heads=2, decoder_depth=2, regressor_hidden=[64, 16]),
}
