"""onnxruntime backend: TensorRT EP, CUDA EP, CPU, whichever this onnxruntime build offers, in that order."""

from __future__ import annotations

import logging

import numpy as np

from fineparser.package import ENCODER_OUTPUTS, MASK_OUTPUT, ModelPackage

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeBackend:
    """encoder.onnx / encoder_masks.onnx / pair_head.onnx in onnxruntime sessions."""

    name = "onnxruntime"

    def __init__(self, package: ModelPackage, providers: list[str] | None = None) -> None:
        from runtime.backends import BackendError

        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"onnxruntime is not importable ({exc})") from None
        self._ort = ort
        available = ort.get_available_providers()
        self.providers = providers or [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]
        self._package = package
        self.encoder = self._session(package.encoder_path)
        self.pair = self._session(package.pair_head_path)
        self._masks = None
        used = self.encoder.get_providers()[0]
        self.description = f"onnxruntime {ort.__version__} {used}"

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
