"""TensorRT engines from the package's ONNX files (TensorRT 10.x and 11.x Python API).

Thin on purpose: every precision decision already lives in the ONNX (fp32 here; fp16/int8
variants carry their own casts and Q/DQ nodes), so the build is strongly typed and sets no
precision flags (TensorRT 11 removed them; on 10.x the STRONGLY_TYPED creation flag opts in, on
11.x it is accepted and ignored).  Engines are a per-GPU cache under ``PKG/engines/`` keyed by GPU
name, compute capability, TensorRT version and the ONNX file's sha256; the timing cache persists
next to them so rebuilding after a package change reuses kernel timings.

``tensorrt`` is imported inside functions: this module imports on machines without it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from export import log_saved
from fineparser.package import ENGINES_DIR, EXEMPLAR_DIM, sha256_file

log = logging.getLogger(__name__)

K_PROFILE = (1, 10, 32)
"""Optimisation profile of the pair head's exemplar count K: (min, opt, max); opt = the paper's voters."""
WORKSPACE_BYTES = 4 << 30
"""Builder workspace pool limit (tactics needing more are skipped)."""
MISSING_MESSAGE = ("error: --engine needs TensorRT (python package 'tensorrt' not importable); "
                   "the package without engines is in {package}")


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA GPU for it) is not available on this machine."""


@dataclass
class EngineRecord:
    """One built (or reused) engine, as recorded in the manifest."""

    graph: str
    onnx: str
    onnx_sha256: str
    engine: str
    layers: str
    gpu: str
    compute_capability: str
    tensorrt: str
    size: int
    seconds: float
    reused: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest."""
        return asdict(self)


def import_tensorrt() -> Any:
    """The tensorrt module, or TensorRTUnavailable saying what is missing."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable("python package 'tensorrt' not importable") from exc
    return tensorrt


def tensorrt_available() -> bool:
    """Whether `import tensorrt` works here."""
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability as 'sm89') of a CUDA device, via torch or nvidia-smi."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return torch.cuda.get_device_name(device), f"sm{major}{minor}"
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader", f"--id={device}"],
                             capture_output=True, text=True, check=False, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            name, cap = (part.strip() for part in out.stdout.strip().splitlines()[0].rsplit(",", 1))
            return name, "sm" + cap.replace(".", "")
    raise TensorRTUnavailable("no CUDA GPU found (neither torch.cuda nor nvidia-smi sees one)")


def device_key(gpu_name: str, compute_capability: str, tensorrt_version: str) -> str:
    """What an engine or timing cache is only valid for: <gpu>_<sm>_trt<version>."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    return f"{gpu}_{compute_capability}_trt{tensorrt_version}"


def engine_key(gpu_name: str, compute_capability: str, tensorrt_version: str, onnx_sha256: str) -> str:
    """Cache key of an engine: <gpu>_<sm>_trt<version>_<onnx sha256 prefix>."""
    return f"{device_key(gpu_name, compute_capability, tensorrt_version)}_{onnx_sha256[:12]}"


@contextmanager
def _timing_cache(config: Any, path: Path) -> Iterator[None]:
    """Load the persistent timing cache into `config`, and write it back after the build."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    # ignore_mismatch=False: a cache from another GPU or TensorRT version is refused, not trusted.
    config.set_timing_cache(cache, False)
    yield
    path.write_bytes(memoryview(config.get_timing_cache().serialize()))


def build_engine(onnx_path: str | Path, engine_path: str | Path, timing_cache_path: str | Path,
                 dynamic_inputs: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None,
                 workspace_bytes: int = WORKSPACE_BYTES) -> Path:
    """Build a strongly typed engine from ONNX; writes the engine and its per-layer report (.layers.json)."""
    trt = import_tensorrt()
    engine_path, logger = Path(engine_path), trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Required to opt in on 10.x; deprecated and ignored on 11.x (always strongly typed), maybe gone later.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 0 if strongly_typed is None else 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    # DETAILED keeps layer parameters and tactics in the engine, for the inspector report.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if dynamic_inputs:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in dynamic_inputs.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    with _timing_cache(config, Path(timing_cache_path)):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path.write_bytes(memoryview(serialized))
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    inspector = engine.create_engine_inspector()
    report = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    engine_path.with_suffix(".layers.json").write_text(json.dumps(json.loads(report), indent=1) + "\n")
    return engine_path


def pair_head_profile(onnx_path: str | Path, k_profile: tuple[int, int, int] = K_PROFILE
                      ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes of every input with the dynamic K dimension."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    shapes = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if any(d.dim_param == EXEMPLAR_DIM for d in dims):
            shapes[value.name] = tuple(tuple(k if d.dim_param == EXEMPLAR_DIM else d.dim_value for d in dims)
                                       for k in k_profile)
    return shapes  # type: ignore[return-value]


def build_package_engines(package_dir: str | Path, graphs: Mapping[str, str]) -> list[EngineRecord]:
    """Build (or reuse from the cache) one engine per graph ({name: onnx file in the package})."""
    trt = import_tensorrt()
    gpu, sm = gpu_identity()
    root = Path(package_dir)
    engines = root / ENGINES_DIR
    engines.mkdir(exist_ok=True)
    timing_cache = engines / f"{device_key(gpu, sm, trt.__version__)}.timing.cache"
    records = []
    for name, relative in graphs.items():
        onnx_path = root / relative
        digest = sha256_file(onnx_path)
        engine_path = engines / f"{engine_key(gpu, sm, trt.__version__, digest)}.engine"
        start = time.perf_counter()
        reused = engine_path.is_file()
        if reused:
            log.info("engine for %s found in the cache: %s", relative, engine_path.name)
        else:
            log.info("building TensorRT %s engine for %s on %s (%s), strongly typed", trt.__version__, relative,
                     gpu, sm)
            dynamic = pair_head_profile(onnx_path) if name == "pair_head" else None
            build_engine(onnx_path, engine_path, timing_cache, dynamic)
            log_saved(log, engine_path, time.perf_counter() - start)
        records.append(EngineRecord(graph=name, onnx=relative, onnx_sha256=digest,
                                    engine=str(engine_path.relative_to(root)),
                                    layers=str(engine_path.with_suffix(".layers.json").relative_to(root)),
                                    gpu=gpu, compute_capability=sm, tensorrt=trt.__version__,
                                    size=engine_path.stat().st_size, seconds=round(time.perf_counter() - start, 2),
                                    reused=reused))
    return records
