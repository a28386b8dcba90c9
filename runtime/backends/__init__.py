"""Inference backends: one interface (encode a clip, run the pair head over K exemplars), three engines.

``auto`` tries, in order: ``tensorrt`` (only when the package holds engines), ``onnxruntime``,
``torch``; the first that loads is warmed up and used.

Every backend takes a ``precision`` (``auto`` by default) and a ``device`` (``auto``, ``cpu``,
``cuda``, ``cuda:N``) and resolves the precision with the one rule of
:func:`fineparser.precision.resolve_precision`: ``auto`` is fp32 on the CPU and the package's
recommended precision (what calibration measured) on a GPU backend, stepping down to what the
backend can run there.  Each backend keeps the choice in ``precision`` and the reason in
``precision_reason``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

import numpy as np

from fineparser import scoring
from fineparser.package import ModelPackage
from fineparser.precision import AUTO

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt", "torch")
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")
DEVICE_HELP = "auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"


class BackendError(RuntimeError):
    """A backend that cannot run here (missing library, engine or checkpoint); the message says which."""


class Backend(Protocol):
    """What the scorer needs from an inference engine (numpy in, numpy out)."""

    name: str
    description: str
    precision: str
    precision_reason: str

    def encode(self, frames: np.ndarray, with_masks: bool = False) -> dict[str, np.ndarray]:
        """uint8 [1, 96, 112, 112, 3] RGB -> window_features, transitions, transition_probs, static_tokens
        (+ mask_logits when asked and available)."""

    def pair_head(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """pair_head.onnx feeds -> (delta [K], step_deltas [K, 3])."""

    @property
    def has_masks(self) -> bool:
        """Whether encode(with_masks=True) returns mask_logits."""

    def close(self) -> None:
        """Free sessions / device memory."""


def parse_device(text: str | None) -> tuple[str, int]:
    """A --device value as (kind, index): ('auto', 0), ('cpu', 0) or ('cuda', N); BackendError if malformed."""
    value = (text or "auto").strip().lower()
    if value in ("auto", "cpu", "cuda"):
        return value, 0
    match = re.fullmatch(r"cuda:(\d+)", value)
    if match:
        return "cuda", int(match.group(1))
    raise BackendError(f"--device {text}: unknown; known: {DEVICE_HELP}")


def warm_up(backend: Backend, bank_feeds: dict[str, np.ndarray], with_masks: bool = False) -> None:
    """One dummy encode (of the graph the dives will use) and pair head, so the first dive pays no lazy setup."""
    frames = np.zeros((1, 96, 112, 112, 3), dtype=np.uint8)
    query = backend.encode(frames, with_masks=with_masks and backend.has_masks)
    backend.pair_head(scoring.pair_feeds(query, bank_feeds))


def has_engines(package: ModelPackage, precision: str | None = None) -> bool:
    """Whether the package records TensorRT engines for encoder and pair head (of `precision`, or of any)."""
    from runtime.backends.trt import engine_precisions

    usable = engine_precisions(package)
    return bool(usable) if precision in (None, AUTO) else precision in usable


def load_backend(name: str, package: ModelPackage, checkpoint: str | None = None, precision: str = AUTO,
                 device: str = "auto") -> Backend:
    """Load one named backend; BackendError says why it cannot.

    ``precision``: ``auto`` (see the module docstring) or fp32/fp16/int8 (the package's variants:
    onnxruntime runs them from their ONNX files, tensorrt from their engines) or, for torch on CUDA,
    fp16/bf16 autocast.  ``device``: where it runs (:data:`DEVICE_HELP`).
    """
    parse_device(device)
    if name == "onnxruntime":
        from runtime.backends.ort import OnnxRuntimeBackend

        backend: Backend = OnnxRuntimeBackend(package, precision=precision, device=device)
    elif name == "tensorrt":
        from runtime.backends.trt import TensorRTBackend

        backend = TensorRTBackend(package, precision=precision, device=device)
    elif name == "torch":
        from runtime.backends.torch_backend import TorchBackend

        backend = TorchBackend(package, checkpoint, precision=precision, device=device)
    else:
        raise BackendError(f"unknown backend {name!r}; known: auto, {', '.join(BACKENDS)}")
    log.info("%s precision: %s", name, getattr(backend, "precision_reason", backend.precision))
    return backend


def choose_backend(name: str, package: ModelPackage, checkpoint: str | None = None, precision: str = AUTO,
                   device: str = "auto") -> tuple[Backend, list[str]]:
    """The requested backend, or with ``auto`` the first of AUTO_ORDER that loads, and why others were skipped."""
    if name != "auto":
        return load_backend(name, package, checkpoint, precision, device), []
    skipped: list[str] = []
    for candidate in AUTO_ORDER:
        if candidate == "tensorrt" and parse_device(device)[0] == "cpu":
            skipped.append("tensorrt: --device cpu")
            continue
        if candidate == "tensorrt" and not has_engines(package):
            skipped.append("tensorrt: the package has no engines (fineparser-export --engine builds them)")
            continue
        try:
            return load_backend(candidate, package, checkpoint, precision, device), skipped
        except BackendError as exc:
            skipped.append(f"{candidate}: {exc}")
            log.info("backend %s unavailable: %s", candidate, exc)
    raise BackendError("no backend could be loaded: " + "; ".join(skipped))


def describe(value: Any) -> str:
    """Short text of a backend for logs."""
    return getattr(value, "description", getattr(value, "name", str(value)))
