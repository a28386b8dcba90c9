"""The one way the toolkit opens an ONNX graph in onnxruntime: providers, threads, graph optimisation, errors.

onnxruntime is imported inside ``onnx_session`` only, so that ``import fineparser`` stays light.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDERS = ("CPUExecutionProvider",)
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
"""Names of onnxruntime's GraphOptimizationLevel values; "all" is onnxruntime's own default."""


class OnnxSessionError(RuntimeError):
    """An ONNX graph onnxruntime cannot open; the message names the file."""


def cuda_device_count() -> int:
    """CUDA devices the driver reports (0 without a driver or device); no CUDA toolkit needed."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def _loadable(*names: str) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def usable_providers(available: Sequence[str], gpus: int | None = None) -> list[str]:
    """The preferred providers this machine can really run, best first.

    onnxruntime-gpu lists its CUDA and TensorRT providers whether or not a GPU (or TensorRT) is
    present; asking for them on a CPU-only box costs a failed load and a page of errors.  So GPU
    providers are kept only when the driver reports a device, TensorRT's only when libnvinfer loads.
    """
    gpus = cuda_device_count() if gpus is None else gpus
    chosen = []
    for provider in PREFERRED_PROVIDERS:
        if provider not in available:
            continue
        if provider in GPU_PROVIDERS and gpus == 0:
            continue
        if provider == "TensorrtExecutionProvider" and not _loadable("libnvinfer.so.10", "libnvinfer.so.11"):
            continue
        chosen.append(provider)
    return chosen or list(CPU_PROVIDERS)


def onnx_session(path: str | os.PathLike, *, providers: Sequence[str] | None = None, threads: int | None = None,
                 optimization: str = "all") -> Any:
    """An onnxruntime InferenceSession for one graph; OnnxSessionError names the file it cannot open.

    providers: best first; None takes ``usable_providers`` of this onnxruntime build and machine.
    When GPU providers fail on the graph, the CPU provider is used with a warning.
    threads: intra-op threads (None: onnxruntime's default).
    optimization: one of GRAPH_OPTIMIZATION_LEVELS.
    """
    path = Path(path)
    if optimization not in GRAPH_OPTIMIZATION_LEVELS:
        raise ValueError(f"unknown graph optimisation {optimization!r}; known: {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise OnnxSessionError(f"cannot open {path}: onnxruntime is not importable ({exc}); "
                               "install onnxruntime (or onnxruntime-gpu)") from None
    if not path.is_file():
        raise OnnxSessionError(f"no ONNX graph at {path}: check the path, or export the model package again")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    options.graph_optimization_level = levels[optimization]
    chosen = list(providers) if providers is not None else usable_providers(ort.get_available_providers())
    try:
        return ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as exc:
        if chosen != list(CPU_PROVIDERS):
            # A GPU provider listed but unusable (missing libraries, out of memory): the CPU still scores.
            log.warning("onnxruntime providers %s failed for %s (%s): using CPUExecutionProvider",
                        chosen, path.name, exc)
            return onnx_session(path, providers=CPU_PROVIDERS, threads=threads, optimization=optimization)
        raise OnnxSessionError(f"onnxruntime cannot load {path}: {' '.join(str(exc).split())}") from None
