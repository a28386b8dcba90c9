"""Inference backends: one interface (encode a clip, run the pair head over K exemplars), three engines.

``auto`` tries, in order: ``tensorrt`` (only when the package holds engines), ``onnxruntime``,
``torch``; the first that loads is warmed up and used.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from fineparser.package import ModelPackage

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt", "torch")
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")


class BackendError(RuntimeError):
    """A backend that cannot run here (missing library, engine or checkpoint); the message says which."""


class Backend(Protocol):
    """What the scorer needs from an inference engine (numpy in, numpy out)."""

    name: str
    description: str

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


def warm_up(backend: Backend, bank_feeds: dict[str, np.ndarray], with_masks: bool = False) -> None:
    """One dummy encode (of the graph the dives will use) and pair head, so the first dive pays no lazy setup."""
    frames = np.zeros((1, 96, 112, 112, 3), dtype=np.uint8)
    query = backend.encode(frames, with_masks=with_masks and backend.has_masks)
    backend.pair_head(pair_feeds(query, bank_feeds))


def pair_feeds(query: dict[str, np.ndarray], exemplar_feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """pair_head inputs from an encoder output and ExemplarBank.pair_head_inputs()."""
    return {"query_window_features": np.ascontiguousarray(query["window_features"], dtype=np.float32),
            "query_transitions": np.ascontiguousarray(query["transitions"], dtype=np.int64),
            "query_static_tokens": np.ascontiguousarray(query["static_tokens"], dtype=np.float32),
            **exemplar_feeds}


def has_engines(package: ModelPackage) -> bool:
    """Whether the package records TensorRT engines for the encoder and pair head that exist on disk."""
    graphs = {r.get("graph"): r for r in package.manifest.get("engines", []) or []}
    return all(g in graphs and package.path(graphs[g]["engine"]).is_file() for g in ("encoder", "pair_head"))


def load_backend(name: str, package: ModelPackage, checkpoint: str | None = None, precision: str = "fp32") -> Backend:
    """Load one named backend; BackendError says why it cannot.

    ``precision`` picks a variant of the package (fp32, or fp16/int8 made by fineparser-calibrate);
    the onnxruntime backend runs any of them, the tensorrt backend runs the engines the package
    records (built from the graphs that were chosen at build time), the torch backend fp32 only.
    """
    if name == "onnxruntime":
        from runtime.backends.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(package, precision=precision)
    if precision != "fp32" and name in ("tensorrt", "torch"):
        raise BackendError(f"--precision {precision} runs on the onnxruntime backend; the {name} backend runs "
                           + ("the package's engines" if name == "tensorrt" else "the fp32 checkpoint"))
    if name == "tensorrt":
        from runtime.backends.trt import TensorRTBackend

        return TensorRTBackend(package)
    if name == "torch":
        from runtime.backends.torch_backend import TorchBackend

        return TorchBackend(package, checkpoint)
    raise BackendError(f"unknown backend {name!r}; known: auto, {', '.join(BACKENDS)}")


def choose_backend(name: str, package: ModelPackage, checkpoint: str | None = None,
                   precision: str = "fp32") -> tuple[Backend, list[str]]:
    """The requested backend, or with ``auto`` the first of AUTO_ORDER that loads, and why others were skipped."""
    if name != "auto":
        return load_backend(name, package, checkpoint, precision), []
    skipped: list[str] = []
    for candidate in AUTO_ORDER:
        if candidate == "tensorrt" and not has_engines(package):
            skipped.append("tensorrt: the package has no engines (fineparser-export --engine builds them)")
            continue
        try:
            return load_backend(candidate, package, checkpoint, precision), skipped
        except BackendError as exc:
            skipped.append(f"{candidate}: {exc}")
            log.info("backend %s unavailable: %s", candidate, exc)
    raise BackendError("no backend could be loaded: " + "; ".join(skipped))


def describe(value: Any) -> str:
    """Short text of a backend for logs."""
    return getattr(value, "description", getattr(value, "name", str(value)))
