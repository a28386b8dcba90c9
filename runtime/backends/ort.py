"""onnxruntime backend: TensorRT EP, CUDA EP, CPU, whichever this onnxruntime build offers, in that order.

Each provider gets the options of the precision it runs (:func:`provider_options`): the TensorRT
EP its fp16 / int8 switches, the package's device and an engine and timing cache inside the
package (``PKG/engines/onnxruntime/``); the CUDA EP its device.  With ``--precision auto`` the CPU
runs fp32, the TensorRT EP the package's recommended variant, the CUDA EP at most fp16 (its int8
Q/DQ kernels are no faster than fp16).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fineparser.onnx_session import (
    CPU_PROVIDERS,
    GPU_PROVIDERS,
    OnnxSessionError,
    onnx_session,
    usable_providers,
)
from fineparser.package import ENCODER_OUTPUTS, ENGINES_DIR, MASK_OUTPUT, ModelPackage
from fineparser.precision import AUTO, PRECISIONS, resolve_precision

log = logging.getLogger(__name__)

__all__ = ["OnnxRuntimeBackend", "provider_options", "runnable_precisions", "usable_providers"]

ORT_CACHE_DIR = f"{ENGINES_DIR}/onnxruntime"
"""onnxruntime TensorRT EP engine and timing caches, inside the package (a per-GPU cache like engines/)."""
TRT_EP_WORKSPACE_BYTES = 4 << 30
TRT_EP, CUDA_EP = GPU_PROVIDERS


def runnable_precisions(providers: Sequence[str], present: Sequence[str]) -> list[str]:
    """The precisions `--precision auto` may pick with these providers (best first) among the variants present."""
    if providers and providers[0] == TRT_EP:
        allowed = PRECISIONS
    elif providers and providers[0] == CUDA_EP:
        allowed = ("fp32", "fp16")
    else:
        allowed = ("fp32",)
    return [p for p in PRECISIONS if p in allowed and p in present]


def provider_options(providers: Sequence[str], precision: str, cache_dir: Path | None = None,
                     device_index: int = 0) -> list[str | tuple[str, dict[str, Any]]]:
    """The providers argument of an InferenceSession: each GPU provider with the options of `precision`.

    TensorRT EP: ``trt_fp16_enable`` for the fp16 variant, ``trt_int8_enable`` for the int8 one
    (its explicit Q/DQ nodes carry the scales: no calibration table), the engine and timing caches
    in `cache_dir` (None: no cache), the device. CUDA EP: the device. CPU: as is.
    """
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    for provider in providers:
        if provider == TRT_EP:
            options: dict[str, Any] = {"device_id": device_index, "trt_fp16_enable": precision == "fp16",
                                       "trt_int8_enable": precision == "int8",
                                       "trt_max_workspace_size": TRT_EP_WORKSPACE_BYTES}
            if precision == "int8":
                options["trt_int8_use_native_calibration_table"] = False
            if cache_dir is not None:
                options.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
                                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir)})
            chosen.append((provider, options))
        elif provider == CUDA_EP:
            chosen.append((provider, {"device_id": device_index}))
        else:
            chosen.append(provider)
    return chosen


def _present(package: ModelPackage) -> list[str]:
    names = {str(v.get("name")) for v in package.variants}
    return ["fp32", *[p for p in PRECISIONS[1:] if p in names]]


class OnnxRuntimeBackend:
    """encoder.onnx / encoder_masks.onnx / pair_head.onnx (or a precision variant) in onnxruntime sessions."""

    name = "onnxruntime"

    def __init__(self, package: ModelPackage, providers: list[str] | None = None, precision: str = AUTO,
                 device: str = "auto") -> None:
        from fineparser.package import PackageError
        from fineparser.precision import PrecisionError
        from runtime.backends import BackendError, parse_device

        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"onnxruntime is not importable ({exc})") from None
        kind, self.device_index = parse_device(device)
        available = ort.get_available_providers()
        if providers is None:
            providers = list(CPU_PROVIDERS) if kind == "cpu" else usable_providers(available)
            if kind == "cuda" and providers[0] not in GPU_PROVIDERS:
                raise BackendError(f"--device {device}: this onnxruntime ({ort.__version__}, providers "
                                   f"{', '.join(available)}) has no usable CUDA or TensorRT provider here")
        self.providers = list(providers)
        self._package = package
        if precision == "bf16":
            raise BackendError("--precision bf16 is torch autocast: use --backend torch --device cuda")
        try:
            choice = resolve_precision(precision, package.manifest, backend=f"onnxruntime {self.providers[0]}",
                                       on_gpu=self.providers[0] in GPU_PROVIDERS,
                                       runnable=runnable_precisions(self.providers, _present(package)))
        except PrecisionError as exc:
            raise BackendError(str(exc)) from None
        try:
            files = package.variant_files(choice.precision)
        except PackageError as exc:
            raise BackendError(str(exc)) from None
        self.precision, self.precision_reason = choice.precision, choice.reason
        self.encoder = self._session(files["encoder"])
        if self.providers == list(CPU_PROVIDERS) and choice.requested == AUTO and choice.precision != "fp32":
            # The GPU providers failed on this box: auto means fp32 on the CPU.
            self.precision, self.precision_reason = "fp32", "--precision auto: the GPU providers failed, CPU fp32"
            files = package.variant_files("fp32")
            self.encoder = self._session(files["encoder"])
        self.pair = self._session(files["pair_head"])
        self._masks = None
        used = self.encoder.get_providers()[0]
        self.description = f"onnxruntime {ort.__version__} {used} {self.precision}"

    def _cache_dir(self) -> Path | None:
        """The TensorRT EP cache inside the package, or None (logged) where the package is read-only."""
        path = self._package.path(ORT_CACHE_DIR)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("no onnxruntime TensorRT engine cache (cannot create %s: %s): engines are rebuilt per run",
                        path, exc)
            return None
        return path

    def _session(self, path: Path, precision: str | None = None) -> Any:
        from runtime.backends import BackendError

        cache = self._cache_dir() if TRT_EP in self.providers else None
        options = provider_options(self.providers, precision or self.precision, cache, self.device_index)
        try:
            session = onnx_session(path, providers=options)
        except OnnxSessionError as exc:
            raise BackendError(str(exc)) from None
        if session.get_providers() == list(CPU_PROVIDERS):
            # The GPU providers failed once (or were dropped): later graphs go straight to the CPU.
            self.providers = list(CPU_PROVIDERS)
        return session

    @property
    def has_masks(self) -> bool:
        """Whether the package carries encoder_masks.onnx (fp32; a variant's encoder has no masks)."""
        return self._package.encoder_masks_path is not None

    def encode(self, frames: np.ndarray, with_masks: bool = False) -> dict[str, np.ndarray]:
        """Run the encoder (the masks graph when asked and present)."""
        if with_masks and self.has_masks:
            if self._masks is None:
                self._masks = self._session(self._package.encoder_masks_path, "fp32")
            names = [*ENCODER_OUTPUTS, MASK_OUTPUT]
            return dict(zip(names, self._masks.run(names, {"frames": frames})))
        return dict(zip(ENCODER_OUTPUTS, self.encoder.run(list(ENCODER_OUTPUTS), {"frames": frames})))

    def pair_head(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """delta [K], step_deltas [K, 3]."""
        delta, steps = self.pair.run(["delta", "step_deltas"], feeds)
        return delta, steps

    def close(self) -> None:
        """Drop the sessions."""
        self.encoder = self.pair = self._masks = None
