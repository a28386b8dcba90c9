"""TensorRT backend (10.x / 11.x): the package's engines, named tensor addresses, execute_async_v3, pycuda buffers.

Thin on purpose: deserialize, bind device buffers by tensor name, copy in, enqueue, copy out.
tensorrt and pycuda are imported inside functions so that importing this module never needs them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fineparser.package import ENCODER_OUTPUTS, ModelPackage

log = logging.getLogger(__name__)


def _import() -> tuple[Any, Any]:
    """tensorrt and pycuda (with a context on GPU 0), or BackendError naming what is missing."""
    from runtime.backends import BackendError

    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(f"python package 'tensorrt' is not importable ({exc})") from None
    try:
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
        import pycuda.driver as cuda
    except Exception as exc:  # ImportError or a CUDA driver error without a GPU
        raise BackendError(f"pycuda is not usable ({exc})") from None
    return trt, cuda


class _Engine:
    """One deserialized engine with its execution context and a stream."""

    def __init__(self, trt: Any, cuda: Any, path: str) -> None:
        self.trt, self.cuda = trt, cuda
        self.logger = trt.Logger(trt.Logger.WARNING)
        # The runtime must outlive the engines it deserialized, so it is kept with them.
        self.runtime = trt.Runtime(self.logger)
        with open(path, "rb") as handle:
            self.engine = self.runtime.deserialize_cuda_engine(handle.read())
        if self.engine is None:
            from runtime.backends import BackendError

            raise BackendError(f"TensorRT cannot deserialize {path} (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._buffers: dict[str, Any] = {}

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Copy feeds in, set shapes and addresses, enqueue with execute_async_v3, copy outputs out."""
        trt, cuda = self.trt, self.cuda
        keep = []
        for name, array in feeds.items():
            dtype = trt.nptype(self.engine.get_tensor_dtype(name))
            host = np.ascontiguousarray(array, dtype=dtype)
            self.context.set_input_shape(name, host.shape)
            device = cuda.mem_alloc(max(host.nbytes, 1))
            cuda.memcpy_htod_async(device, host, self.stream)
            self.context.set_tensor_address(name, int(device))
            keep.append((device, host))
        results = {}
        for name in outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            device = cuda.mem_alloc(max(host.nbytes, 1))
            self.context.set_tensor_address(name, int(device))
            results[name] = (host, device)
        if not self.context.execute_async_v3(self.stream.handle):
            from runtime.backends import BackendError

            raise BackendError("TensorRT execute_async_v3 failed")
        for host, device in results.values():
            cuda.memcpy_dtoh_async(host, device, self.stream)
        self.stream.synchronize()
        return {name: host for name, (host, _) in results.items()}


class TensorRTBackend:
    """Engines recorded in manifest["engines"] for encoder (and encoder_masks) and pair_head."""

    name = "tensorrt"

    def __init__(self, package: ModelPackage) -> None:
        from runtime.backends import BackendError

        trt, cuda = _import()
        records = {r.get("graph"): r for r in package.manifest.get("engines", []) or []}
        missing = [g for g in ("encoder", "pair_head") if g not in records
                   or not package.path(records[g]["engine"]).is_file()]
        if missing:
            raise BackendError(f"{package.root} has no TensorRT engine for {', '.join(missing)}; "
                               "build them with `fineparser-export CKPT --out PKG --engine`")
        self.encoder = _Engine(trt, cuda, str(package.path(records["encoder"]["engine"])))
        self.pair = _Engine(trt, cuda, str(package.path(records["pair_head"]["engine"])))
        masks = records.get("encoder_masks")
        self._masks = (_Engine(trt, cuda, str(package.path(masks["engine"])))
                       if masks and package.path(masks["engine"]).is_file() else None)
        self.description = f"tensorrt {trt.__version__}"

    @property
    def has_masks(self) -> bool:
        """Whether a masks engine was built."""
        return self._masks is not None

    def encode(self, frames: np.ndarray, with_masks: bool = False) -> dict[str, np.ndarray]:
        """Run the encoder engine."""
        if with_masks and self._masks is not None:
            return self._masks.run({"frames": frames}, [*ENCODER_OUTPUTS, "mask_logits"])
        return self.encoder.run({"frames": frames}, list(ENCODER_OUTPUTS))

    def pair_head(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """delta [K], step_deltas [K, 3]."""
        out = self.pair.run(feeds, ["delta", "step_deltas"])
        return out["delta"], out["step_deltas"]

    def close(self) -> None:
        """Release engines and contexts."""
        self.encoder = self.pair = self._masks = None
