"""Checkpoint I/O: our format, the paper's `best.pth`, Kinetics I3D and ImageNet ResNet weights.

Every file is read with `torch.load(weights_only=True)`: a checkpoint is data, never code.  Foreign
layouts are adapted by one explicit filter each (rename, drop), not by bending the model to fit.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fineparser.config import FineParserConfig
from fineparser.model import FineParser

log = logging.getLogger(__name__)

FORMAT = "fineparser-checkpoint"
FORMAT_VERSION = 1

OFFICIAL_MODULES = ("base_model", "segmenter", "psnet_model", "video_encoder", "dim_reducer1", "dim_reducer2",
                    "dim_reducer3", "decoder1", "decoder2", "decoder3", "decoder4", "regressor_delta1",
                    "regressor_delta2")
"""Module entries of an official checkpoint that the model uses."""
OFFICIAL_UNUSED = ("regressor_delta3",)
"""Official entries trained and used by nobody: dropped on import."""


class CheckpointError(ValueError):
    """A weights file that cannot be read as what it was given as."""


def _torch_load(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    # The paper's checkpoints store metrics as numpy scalars; allow exactly those, nothing else.
    numpy_scalars = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32))]
    multiarray = getattr(np, "_core", np).multiarray if hasattr(np, "_core") else np.core.multiarray
    numpy_scalars.append(multiarray.scalar)
    try:
        with torch.serialization.safe_globals(numpy_scalars):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"{path}: cannot be loaded as weights ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]}); refusing anything that is not plain data") from exc


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write with torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_model_checkpoint(path: str | Path, model: Any, kind: str, version: int, config_key: str,
                           trainer: Mapping[str, Any] | None = None, /, **extra: Any) -> Path:
    """The plain dict every model of the toolkit is saved as (format, version, config, weights, trainer
    state, extras), written atomically; `kind` and `config_key` tell the models apart."""
    model = getattr(model, "module", model)  # unwrap DDP
    payload = {"format": kind, "format_version": version, config_key: model.config.to_dict(),
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if trainer is not None:
        payload["trainer"] = dict(trainer)
    payload.update(extra)
    atomic_torch_save(payload, path)
    return Path(path)


def save_checkpoint(path: str | Path, model: FineParser, trainer: Mapping[str, Any] | None = None,
                    **extra: Any) -> Path:
    """Save model config + weights (+ optional trainer state) atomically in our format."""
    return write_model_checkpoint(path, model, FORMAT, FORMAT_VERSION, "config", trainer, **extra)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read our checkpoint format (weights_only); a foreign file gets an error that says what to do."""
    data = _torch_load(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        if isinstance(data, dict) and "base_model" in data and "psnet_model" in data:
            raise CheckpointError(f"{path} is an official FineParser checkpoint, not ours: convert it with "
                                  f"`python -m fineparser.convert {path} OUT.pt` (or export with --official)")
        keys = ", ".join(list(data)[:6]) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not a FineParser checkpoint (no format={FORMAT!r}; found {keys})")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {data['format_version']}, this toolkit "
                              f"reads up to {FORMAT_VERSION}: upgrade fineparser")
    return data


def load_model(path: str | Path) -> tuple[FineParser, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights (eval mode)."""
    data = load_checkpoint(path)
    model = FineParser(FineParserConfig.from_dict(data["config"]))
    _load_strict(model, data["model"], f"{path}")
    return model.eval(), data


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing key(s) {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected key(s) {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    for key in sorted(set(expected) & set(state)):
        if tuple(expected[key].shape) != tuple(state[key].shape):
            problems.append(f"{key} has shape {list(state[key].shape)}, the model needs {list(expected[key].shape)}")
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def _strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def official_checkpoint_filter(checkpoint: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """The paper's best.pth -> {module name: state dict}: strip `module.`, drop unused entries."""
    missing = [name for name in OFFICIAL_MODULES if name not in checkpoint]
    if missing:
        raise CheckpointError(f"official checkpoint lacks module entr{'y' if len(missing) == 1 else 'ies'} "
                              f"{', '.join(missing)} (has {', '.join(k for k in checkpoint if not k.startswith('_'))})")
    out = {}
    for name in OFFICIAL_MODULES:
        state = _strip_module_prefix(checkpoint[name])
        if name == "video_encoder":
            state = {k: v for k, v in state.items() if not k.startswith("backbone.fc.")}
        out[name] = state
    return out


def import_official(path: str | Path, config: FineParserConfig | None = None) -> FineParser:
    """Build a FineParser from an official `best.pth` (the `full` preset unless told otherwise)."""
    checkpoint = _torch_load(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a dict of module state dicts, got {type(checkpoint).__name__}")
    modules = official_checkpoint_filter(checkpoint)
    model = FineParser(config or FineParserConfig.from_preset("full"))
    for name, state in modules.items():
        _load_strict(getattr(model, name), state, f"{path} [{name}]")
    log.info("imported official checkpoint %s (epoch %s, rho_best %s)", path, checkpoint.get("epoch"),
             checkpoint.get("rho_best"))
    return model.eval()


def _load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str,
               optional_suffixes: tuple[str, ...] = ("num_batches_tracked",)) -> None:
    """Strict load into `module`, tolerating only absent BN step counters (old PyTorch files)."""
    full = dict(module.state_dict())
    state = dict(state)
    for key in full:
        if key not in state and key.endswith(optional_suffixes):
            state[key] = full[key]
    _load_strict(module, state, where)


def load_kinetics_i3d(model: FineParser, path: str | Path) -> None:
    """Load kinetics_i3d_pytorch `model_rgb.pth` (minus its logits) into both I3D trunks."""
    state = _strip_module_prefix(_torch_load(path))
    state = {k: v for k, v in state.items() if not k.startswith("conv3d_0c_1x1.")}
    _load_into(model.base_model.backbone, state, f"{path} -> base_model.backbone")
    trunk_keys = set(model.base_model.backbone.state_dict())
    segmenter_state = {k: v for k, v in model.segmenter.state_dict().items() if k not in trunk_keys}
    _load_into(model.segmenter, {**segmenter_state, **state}, f"{path} -> segmenter")
    log.info("loaded Kinetics I3D weights from %s into both I3D trunks (%d tensors)", path, len(state))


def load_imagenet_resnet(model: FineParser, path: str | Path) -> None:
    """Load an ImageNet ResNet (torchvision/timm key layout, `fc` ignored) into the static encoder."""
    state = _strip_module_prefix(_torch_load(path))
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = _strip_module_prefix(state["state_dict"])
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _load_into(model.video_encoder.backbone, state, f"{path} -> video_encoder.backbone")
    log.info("loaded ImageNet ResNet weights from %s into the static encoder", path)
