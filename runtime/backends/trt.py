"""TensorRT backend (10.x / 11.x): the package's engines of one precision, written the way NVIDIA's samples are.

- Engines are chosen by precision from ``manifest["engines"]``; a record whose ONNX changed since
  the build (a re-calibrated variant), or that was built for another GPU or TensorRT version, is
  refused with one line saying which and how to rebuild.
- Buffers are allocated once per engine at the optimisation profile's maximum shapes: device
  memory (``cuda.mem_alloc``) and page-locked host memory (``cuda.pagelocked_empty``), bound by
  tensor name (``set_tensor_address``) and reused by every call; ``set_input_shape`` is checked
  and refused with the profile's range; K beyond the profile's maximum runs in chunks.
- An explicit CUDA context (the device's primary context, not ``pycuda.autoinit``) is pushed and
  popped around every call, so the backend scores from whichever thread calls it; calls are
  serialised by a lock (one execution context and stream per engine).
- The encoder (static shapes) is optionally replayed from a CUDA graph captured after its first run.
- ``close()`` releases in order: graphs, buffers, execution contexts, engines, runtime, stream, context.

tensorrt and pycuda are imported inside functions so that importing this module never needs them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from fineparser.package import ENCODER_OUTPUTS, MASK_OUTPUT, ModelPackage
from fineparser.precision import AUTO, PRECISIONS, resolve_precision

log = logging.getLogger(__name__)

REQUIRED_GRAPHS = ("encoder", "pair_head")
REBUILD = ("rebuild the engines on this machine: `fineparser-calibrate PKG --engine` (every precision present) "
           "or `fineparser-export CKPT --out PKG --engine`")

Shape = tuple[int, ...]


def volume(shape: Sequence[int]) -> int:
    """Number of elements of a shape."""
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def chunk_ranges(count: int, max_chunk: int) -> list[tuple[int, int]]:
    """[begin, end) ranges covering `count` items in chunks of at most `max_chunk` (the profile's max K)."""
    if max_chunk < 1:
        raise ValueError(f"chunk size must be >= 1, got {max_chunk}")
    return [(begin, min(count, begin + max_chunk)) for begin in range(0, count, max_chunk)]


def shape_problem(name: str, shape: Sequence[int], profile: tuple[Shape, Shape, Shape] | None,
                  static_shape: Sequence[int]) -> str | None:
    """Why an input shape does not fit the engine (None: it fits): the static shape, or the profile's range."""
    shape = tuple(int(d) for d in shape)
    if profile is None:
        if shape != tuple(static_shape):
            return f"input {name} has shape {list(shape)}, the engine takes {list(static_shape)}"
        return None
    low, _, high = profile
    if len(shape) != len(low) or any(d < lo or d > hi for d, lo, hi in zip(shape, low, high)):
        return (f"input {name} has shape {list(shape)}, outside the engine's optimisation profile "
                f"{list(low)} .. {list(high)}")
    return None


def select_engines(package: ModelPackage, precision: str, device: tuple[str, str, str] | None = None,
                   graphs: Sequence[str] = REQUIRED_GRAPHS) -> dict[str, dict[str, Any]]:
    """The usable engine record of each graph for a precision; BackendError names what is missing or stale.

    device: (GPU name, compute capability, TensorRT version) of this machine (None: not checked).
    Of several records of one graph (other GPUs), the first usable one is taken.
    """
    from runtime.backends import BackendError

    chosen, problems = {}, []
    for graph in graphs:
        records = [r for r in package.engine_records(precision) if r.get("graph") == graph]
        if not records:
            problems.append(f"no {precision} engine for {graph}")
            continue
        reasons = [package.engine_problem(r, device) for r in records]
        usable = [r for r, why in zip(records, reasons) if why is None]
        if usable:
            chosen[graph] = usable[0]
        else:
            problems.append(str(reasons[0]))
    if problems:
        raise BackendError(f"{package.root}: " + "; ".join(problems) + f"; {REBUILD}")
    return chosen


def engine_precisions(package: ModelPackage, device: tuple[str, str, str] | None = None) -> list[str]:
    """Precisions whose encoder and pair-head engines are recorded, present and built from the current ONNX."""
    from runtime.backends import BackendError

    usable = []
    for precision in PRECISIONS:
        try:
            select_engines(package, precision, device)
        except BackendError:
            continue
        usable.append(precision)
    return usable


def _import() -> tuple[Any, Any]:
    """tensorrt and pycuda's driver module (initialised, no context made), or BackendError naming what is missing."""
    from runtime.backends import BackendError

    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(f"python package 'tensorrt' is not importable ({exc})") from None
    try:
        import pycuda.driver as cuda

        cuda.init()
    except Exception as exc:  # ImportError, or a CUDA driver error without a GPU
        raise BackendError(f"pycuda is not usable ({exc})") from None
    return trt, cuda


class CudaContext:
    """The device's primary context, made current around each call (any thread may call; one at a time)."""

    def __init__(self, cuda: Any, index: int) -> None:
        from runtime.backends import BackendError

        count = cuda.Device.count()
        if not 0 <= index < count:
            raise BackendError(f"CUDA device {index} does not exist ({count} device(s))")
        self.cuda = cuda
        self.device = cuda.Device(index)
        # The primary context is the one the CUDA runtime (and torch, onnxruntime) use: sharing it
        # lets device pointers pass between them. retain_primary_context does not make it current.
        self.context = self.device.retain_primary_context()
        self._lock = threading.RLock()

    @property
    def identity(self) -> tuple[str, str]:
        """(GPU name, compute capability 'sm90')."""
        major, minor = self.device.compute_capability()
        return str(self.device.name()), f"sm{major}{minor}"

    @contextmanager
    def active(self) -> Iterator[None]:
        """Push the context for the calling thread, pop it after (the lock serialises callers)."""
        with self._lock:
            self.context.push()
            try:
                yield
            finally:
                self.cuda.Context.pop()

    def release(self) -> None:
        """Drop our reference on the primary context (after everything allocated in it is freed)."""
        if self.context is not None:
            self.context.detach()
            self.context = None


@dataclass
class _Binding:
    """One I/O tensor: its page-locked host buffer and device buffer, both of the maximum shape."""

    name: str
    is_input: bool
    dtype: np.dtype
    max_shape: Shape
    static_shape: Shape
    profile: tuple[Shape, Shape, Shape] | None
    host: np.ndarray  # page-locked, flat
    device: Any  # pycuda DeviceAllocation


class _Engine:
    """One deserialized engine with its execution context, stream and buffers (allocate_buffers, once)."""

    def __init__(self, trt: Any, cuda: Any, path: str, context: CudaContext, logger: Any,
                 cuda_graph: bool = False) -> None:
        from runtime.backends import BackendError

        self.trt, self.cuda, self.path, self.ctx = trt, cuda, path, context
        with context.active():
            # The runtime must outlive the engines it deserialized, so it is kept with them.
            self.runtime = trt.Runtime(logger)
            with open(path, "rb") as handle:
                self.engine = self.runtime.deserialize_cuda_engine(handle.read())
            if self.engine is None:
                raise BackendError(f"TensorRT {trt.__version__} cannot deserialize {path} (built for another GPU "
                                   f"or TensorRT version?): {REBUILD}")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise BackendError(f"{path}: create_execution_context failed (out of GPU memory?)")
            self.stream = cuda.Stream()
            self.bindings = self._allocate()
        self.use_graph = cuda_graph and all(b.profile is None for b in self.bindings.values())
        self._graph_exec: Any = None
        self._runs = 0

    def _allocate(self) -> dict[str, _Binding]:
        """Host and device buffers of every I/O tensor at the profile's maximum shapes, bound once."""
        trt, cuda, engine = self.trt, self.cuda, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        profiles, max_shapes = {}, {}
        for name in inputs:
            shape = tuple(engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                low, opt, high = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
                profiles[name], max_shapes[name] = (low, opt, high), high
            else:
                max_shapes[name] = shape
            if not self.context.set_input_shape(name, max_shapes[name]):
                raise RuntimeError(f"{self.path}: set_input_shape({name}, {list(max_shapes[name])}) refused")
        for name in names:
            if name not in max_shapes:
                max_shapes[name] = tuple(self.context.get_tensor_shape(name))
        bindings = {}
        for name in names:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            host = cuda.pagelocked_empty(volume(max_shapes[name]), dtype)
            device = cuda.mem_alloc(max(host.nbytes, 1))
            self.context.set_tensor_address(name, int(device))
            bindings[name] = _Binding(name, name in inputs, dtype, max_shapes[name],
                                      tuple(engine.get_tensor_shape(name)), profiles.get(name), host, device)
        return bindings

    @property
    def max_batch(self) -> int:
        """The largest first dimension the profile allows on a dynamic input (1 for static engines)."""
        highs = [b.profile[2][0] for b in self.bindings.values() if b.profile is not None]
        return min(highs) if highs else 1

    def _enqueue(self) -> None:
        from runtime.backends import BackendError

        if self._graph_exec is not None:
            self._graph_exec.launch(self.stream)
            return
        if not self.context.execute_async_v3(self.stream.handle):
            raise BackendError(f"{self.path}: execute_async_v3 failed (see the TensorRT log above)")
        if self.use_graph and self._runs >= 1:
            self._capture_graph()

    def _capture_graph(self) -> None:
        """Capture execute_async_v3 into a CUDA graph (static shapes only; TensorRT needs one run before)."""
        self.use_graph = False  # one attempt
        begin = getattr(self.stream, "begin_capture", None)
        if begin is None:
            log.info("%s: this pycuda has no stream capture: running without a CUDA graph", self.path)
            return
        try:
            self.stream.synchronize()
            begin()
            ok = self.context.execute_async_v3(self.stream.handle)
            graph = self.stream.end_capture()
            if not ok:
                raise RuntimeError("execute_async_v3 failed during capture")
            self._graph_exec = graph.instance() if hasattr(graph, "instance") else graph.instantiate()
            log.info("%s: captured in a CUDA graph", self.path)
        except Exception as exc:  # a capture TensorRT or the driver refuses: the plain path still works
            self._graph_exec = None
            log.warning("%s: CUDA graph capture failed (%s): running without", self.path, exc)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Copy feeds into the pinned buffers and to the device, enqueue, copy the outputs back."""
        from runtime.backends import BackendError

        cuda = self.cuda
        with self.ctx.active():
            for name, array in feeds.items():
                binding = self.bindings.get(name)
                if binding is None or not binding.is_input:
                    raise BackendError(f"{self.path}: the engine has no input {name}")
                array = np.asarray(array)
                problem = shape_problem(name, array.shape, binding.profile, binding.static_shape)
                if problem:
                    raise BackendError(f"{self.path}: {problem}")
                if not self.context.set_input_shape(name, tuple(array.shape)):
                    raise BackendError(f"{self.path}: set_input_shape({name}, {list(array.shape)}) refused by "
                                       "TensorRT")
                host = binding.host[:array.size].reshape(array.shape)
                np.copyto(host, array, casting="same_kind")
                cuda.memcpy_htod_async(binding.device, host, self.stream)
            missing = self.context.infer_shapes()
            if missing:
                raise BackendError(f"{self.path}: inputs without a shape: {', '.join(missing)}")
            self._enqueue()
            results = {}
            for name in outputs:
                binding = self.bindings[name]
                shape = tuple(self.context.get_tensor_shape(name))
                host = binding.host[:volume(shape)].reshape(shape)
                cuda.memcpy_dtoh_async(host, binding.device, self.stream)
                results[name] = host
            self.stream.synchronize()
            self._runs += 1
            # The pinned buffers are reused by the next call: hand out copies.
            return {name: np.array(host) for name, host in results.items()}

    def close(self) -> None:
        """Release graph, buffers, execution context, engine, runtime and stream, in that order."""
        with self.ctx.active():
            self._graph_exec = None
            for binding in self.bindings.values():
                binding.device.free()
                base = getattr(binding.host, "base", None)
                if base is not None and hasattr(base, "free"):
                    base.free()
            self.bindings = {}
            self.context = None
            self.engine = None
            self.runtime = None
            self.stream = None


class TensorRTBackend:
    """The engines recorded in manifest["engines"] for one precision: encoder (and encoder_masks), pair_head."""

    name = "tensorrt"

    def __init__(self, package: ModelPackage, precision: str = AUTO, device: str = "auto",
                 cuda_graph: bool = True) -> None:
        from fineparser.precision import PrecisionError
        from runtime.backends import BackendError, parse_device

        kind, index = parse_device(device)
        if kind == "cpu":
            raise BackendError("the tensorrt backend runs on a CUDA GPU, not --device cpu")
        if precision == "bf16":
            raise BackendError("--precision bf16 is torch autocast: use --backend torch --device cuda")
        try:
            choice = resolve_precision(precision, package.manifest, backend="tensorrt", on_gpu=True,
                                       runnable=engine_precisions(package))
        except PrecisionError as exc:
            raise BackendError(str(exc)) from None
        trt, cuda = _import()
        self._ctx = CudaContext(cuda, index)
        gpu, capability = self._ctx.identity
        device_id = (gpu, capability, str(trt.__version__))
        self._engines: list[_Engine] = []
        try:
            records = select_engines(package, choice.precision, device_id)
            masks = [r for r in package.engine_records("fp32") if r.get("graph") == "encoder_masks"
                     and package.engine_problem(r, device_id) is None]
            self.logger = trt.Logger(trt.Logger.WARNING)
            self.encoder = self._load(trt, cuda, package.path(records["encoder"]["engine"]), cuda_graph)
            self.pair = self._load(trt, cuda, package.path(records["pair_head"]["engine"]), False)
            self._masks = self._load(trt, cuda, package.path(masks[0]["engine"]), False) if masks else None
        except BaseException:
            self.close()
            raise
        self.precision, self.precision_reason = choice.precision, choice.reason
        self.max_k = self.pair.max_batch
        self.description = f"tensorrt {trt.__version__} {gpu} {capability} {choice.precision}"

    def _load(self, trt: Any, cuda: Any, path: Any, cuda_graph: bool) -> _Engine:
        engine = _Engine(trt, cuda, str(path), self._ctx, self.logger, cuda_graph)
        self._engines.append(engine)
        return engine

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def has_masks(self) -> bool:
        """Whether a masks engine (fp32) was built."""
        return self._masks is not None

    def encode(self, frames: np.ndarray, with_masks: bool = False) -> dict[str, np.ndarray]:
        """Run the encoder engine (the masks engine when asked and built)."""
        if with_masks and self._masks is not None:
            out = self._masks.run({"frames": frames}, [*ENCODER_OUTPUTS, MASK_OUTPUT])
        else:
            out = self.encoder.run({"frames": frames}, list(ENCODER_OUTPUTS))
        out["transitions"] = out["transitions"].astype(np.int64, copy=False)
        return out

    def pair_head(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """delta [K], step_deltas [K, 3]; K beyond the profile's maximum runs in chunks."""
        k = len(feeds["exemplar_window_features"])
        deltas, steps = [], []
        for begin, end in chunk_ranges(k, self.max_k):
            chunk = {name: (value[begin:end] if name.startswith("exemplar_") else value)
                     for name, value in feeds.items()}
            out = self.pair.run(chunk, ["delta", "step_deltas"])
            deltas.append(out["delta"])
            steps.append(out["step_deltas"])
        return np.concatenate(deltas), np.concatenate(steps)

    def close(self) -> None:
        """Release every engine (last loaded first), then the CUDA context."""
        for engine in reversed(getattr(self, "_engines", [])):
            engine.close()
        self._engines = []
        self.encoder = self.pair = self._masks = None
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            ctx.release()
            self._ctx = None
