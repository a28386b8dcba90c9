"""onnxruntime backend: TensorRT EP, CUDA EP, CPU, whichever this onnxruntime build offers, in that order."""

from __future__ import annotations

import ctypes
import logging

import numpy as np

from fineparser.package import ENCODER_OUTPUTS, MASK_OUTPUT, ModelPackage

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


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


def usable_providers(available: list[str], gpus: int | None = None) -> list[str]:
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
    return chosen or ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """encoder.onnx / encoder_masks.onnx / pair_head.onnx in onnxruntime sessions."""

    name = "onnxruntime"

    def __init__(self, package: ModelPackage, providers: list[str] | None = None, precision: str = "fp32") -> None:
        from fineparser.package import PackageError
        from runtime.backends import BackendError

        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"onnxruntime is not importable ({exc})") from None
        self._ort = ort
        available = ort.get_available_providers()
        self.providers = providers or usable_providers(available)
        self._package = package
        try:
            files = package.variant_files(precision)
        except PackageError as exc:
            raise BackendError(str(exc)) from None
        self.precision = precision
        self.encoder = self._session(files["encoder"])
        self.pair = self._session(files["pair_head"])
        self._masks = None
        used = self.encoder.get_providers()[0]
        self.description = f"onnxruntime {ort.__version__} {used} {precision}"

    def _session(self, path):
        from runtime.backends import BackendError

        try:
            return self._ort.InferenceSession(str(path), providers=self.providers)
        except Exception as exc:
            if self.providers != ["CPUExecutionProvider"]:
                # A GPU provider listed but unusable (no device, missing libraries): fall back to the CPU.
                log.warning("onnxruntime providers %s failed for %s (%s): using CPUExecutionProvider",
                            self.providers, path.name, exc)
                self.providers = ["CPUExecutionProvider"]
                return self._session(path)
            raise BackendError(f"onnxruntime cannot load {path}: {exc}") from None

    @property
    def has_masks(self) -> bool:
        """Whether the package carries encoder_masks.onnx."""
        return self._package.encoder_masks_path is not None

    def encode(self, frames: np.ndarray, with_masks: bool = False) -> dict[str, np.ndarray]:
        """Run the encoder (the masks graph when asked and present)."""
        if with_masks and self.has_masks:
            if self._masks is None:
                self._masks = self._session(self._package.encoder_masks_path)
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
