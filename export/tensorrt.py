"""TensorRT engines from the package's ONNX files (TensorRT 10.x and 11.x Python API).

Thin on purpose: every precision decision already lives in the ONNX (fp32 here; fp16/int8
variants carry their own casts and Q/DQ nodes), so the build is strongly typed and sets no
precision flags (TensorRT 11 removed them; on 10.x the STRONGLY_TYPED creation flag opts in, on
11.x it is the default).  What to build is decided without TensorRT by ``export.engine_plan``
(one engine per graph and per precision variant); this module builds that plan.  Engines are a
per-GPU cache under ``PKG/engines/`` keyed by GPU name, compute capability, TensorRT version and
the ONNX file's sha256; the timing cache persists next to them so rebuilding after a package
change reuses kernel timings.

Public entry point for the tools (``fineparser-export --engine``, ``fineparser-calibrate --engine``):
:func:`run_engine_step`.  ``tensorrt`` is imported inside functions: this module imports on
machines without it.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from export import log_saved
from export.engine_plan import (
    BUILDER_FLAGS,
    K_PROFILE,
    NETWORK_FLAGS,
    WORKSPACE_BYTES,
    DeviceIdentity,
    PlannedEngine,
    format_plan,
    plan_engines,
    profile_shapes,
    prospective_manifest,
)
from fineparser.package import (
    ENGINES_DIR,
    EXEMPLAR_DIM,
    PackageError,
    device_key,
    engine_key,
    engine_record_problem,
    read_manifest,
    sha256_file,
    write_manifest,
)

log = logging.getLogger(__name__)

MISSING_MESSAGE = ("error: --engine needs TensorRT (python package 'tensorrt' not importable); "
                   "the package without engines is in {package}")

__all__ = ["K_PROFILE", "MISSING_MESSAGE", "WORKSPACE_BYTES", "EngineRecord", "TensorRTUnavailable",
           "build_engine", "build_package_engines", "build_planned_engines", "current_device", "device_key",
           "engine_key", "gpu_identity", "import_tensorrt", "run_engine_step", "tensorrt_available"]


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA GPU for it) is not available on this machine."""


@dataclass
class EngineRecord:
    """One built (or reused) engine, as recorded in the manifest's ``engines``."""

    graph: str
    precision: str
    onnx: str
    onnx_sha256: str
    engine: str
    layers: str
    key: str
    gpu: str
    compute_capability: str
    tensorrt: str
    size: int
    seconds: float
    reused: bool
    profile: dict[str, list[list[int]]] = field(default_factory=dict)
    network_flags: list[str] = field(default_factory=lambda: list(NETWORK_FLAGS))
    builder_flags: list[str] = field(default_factory=lambda: list(BUILDER_FLAGS))

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


def current_device(device: int = 0) -> DeviceIdentity | None:
    """This machine's GPU and TensorRT, or None when either is missing (a dry run prints placeholders then)."""
    try:
        trt = import_tensorrt()
        gpu, capability = gpu_identity(device)
    except TensorRTUnavailable:
        return None
    return DeviceIdentity(gpu, capability, str(trt.__version__))


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
                 dynamic_inputs: Mapping[str, Sequence[Sequence[int]]] | None = None,
                 workspace_bytes: int = WORKSPACE_BYTES, network_flags: Sequence[str] = NETWORK_FLAGS,
                 builder_flags: Sequence[str] = BUILDER_FLAGS) -> Path:
    """Build a strongly typed engine from ONNX; writes the engine and its per-layer report (.layers.json).

    dynamic_inputs: {input: (min, opt, max) shape} of one optimisation profile (None: static shapes).
    network_flags / builder_flags: names in trt.NetworkDefinitionCreationFlag / trt.BuilderFlag; a
    network flag this TensorRT no longer has (STRONGLY_TYPED on a release where it is the only mode)
    is skipped, a builder flag it lacks is an error.
    """
    trt = import_tensorrt()
    engine_path, logger = Path(engine_path), trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    creation = 0
    for name in network_flags:
        flag = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        creation |= 0 if flag is None else 1 << int(flag)
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for name in builder_flags:
        if not hasattr(trt.BuilderFlag, name):
            raise RuntimeError(f"TensorRT {trt.__version__} has no builder flag {name}")
        config.set_flag(getattr(trt.BuilderFlag, name))
    # DETAILED keeps layer parameters and tactics in the engine, for the inspector report.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if dynamic_inputs:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in dynamic_inputs.items():
            profile.set_shape(name, tuple(low), tuple(opt), tuple(high))
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


def onnx_profile(onnx_path: str | Path, k_profile: tuple[int, int, int] = K_PROFILE
                 ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes of every input with the dynamic K dimension, read from the ONNX file itself."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inputs = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    return profile_shapes(inputs, k_profile, EXEMPLAR_DIM)


def build_planned_engines(package_dir: str | Path, plan: Sequence[PlannedEngine],
                          device: DeviceIdentity) -> list[EngineRecord]:
    """Build (or reuse from the cache) every engine of a plan made for `device`; one record per plan entry."""
    trt = import_tensorrt()
    root = Path(package_dir)
    (root / ENGINES_DIR).mkdir(exist_ok=True)
    timing_cache = root / ENGINES_DIR / f"{device.key}.timing.cache"
    records, built = [], {}
    for entry in plan:
        onnx_path = root / entry.onnx
        if entry.onnx_sha256 is None or not onnx_path.is_file():
            raise RuntimeError(f"{onnx_path}: the plan names it but the package has no such file "
                               "(re-export or re-calibrate the package)")
        digest = sha256_file(onnx_path)
        if digest != entry.onnx_sha256:
            raise RuntimeError(f"{onnx_path}: sha256 {digest[:12]} is not the manifest's {entry.onnx_sha256[:12]}: "
                               "the file changed after the manifest was written; re-export the package")
        engine_path = root / entry.engine
        start = time.perf_counter()
        reused = entry.engine in built or engine_path.is_file()
        if entry.engine in built:
            log.info("engine for %s %s: the same as %s (%s)", entry.precision, entry.graph, entry.shared_with,
                     engine_path.name)
        elif reused:
            log.info("engine for %s %s found in the cache: %s", entry.precision, entry.graph, engine_path.name)
        else:
            log.info("building TensorRT %s engine for %s %s (%s) on %s %s, strongly typed%s", trt.__version__,
                     entry.precision, entry.graph, entry.onnx, device.gpu, device.compute_capability,
                     ", profile K = " + "/".join(str(k) for k in K_PROFILE) if entry.profile else "")
            profile = entry.profile or (onnx_profile(onnx_path) if not entry.inputs else {})
            build_engine(onnx_path, engine_path, timing_cache, profile, entry.workspace_bytes, entry.network_flags,
                         entry.builder_flags)
            log_saved(log, engine_path, time.perf_counter() - start)
        built[entry.engine] = True
        records.append(EngineRecord(
            graph=entry.graph, precision=entry.precision, onnx=entry.onnx, onnx_sha256=digest, engine=entry.engine,
            layers=entry.layers, key=entry.key, gpu=device.gpu, compute_capability=device.compute_capability,
            tensorrt=device.tensorrt, size=engine_path.stat().st_size, seconds=round(time.perf_counter() - start, 2),
            reused=reused, profile={n: [list(s) for s in shapes] for n, shapes in entry.profile.items()},
            network_flags=list(entry.network_flags), builder_flags=list(entry.builder_flags)))
    return records


def build_package_engines(package_dir: str | Path, graphs: Mapping[str, str] | None = None,
                          precisions: Iterable[str] | None = None) -> list[EngineRecord]:
    """Build (or reuse) the engines of a package on this machine: the planned ones, restricted to `graphs` if given.

    graphs: {name: onnx file} to keep from the plan (None: every graph); precisions: which variants
    (None: every one present).  The manifest is not changed (see :func:`run_engine_step`).
    """
    device = current_device()
    if device is None:
        raise TensorRTUnavailable("TensorRT or a CUDA GPU is missing on this machine")
    plan = plan_engines(read_manifest(package_dir), precisions=precisions, device=device)
    if graphs is not None:
        plan = [p for p in plan if graphs.get(p.graph) == p.onnx]
    return build_planned_engines(package_dir, plan, device)


def _stale_lines(root: Path, manifest: Mapping[str, Any], plan: Sequence[PlannedEngine],
                 device: DeviceIdentity) -> list[str]:
    """One line per recorded engine of this device that the plan replaces because its key no longer matches."""
    planned = {(p.precision, p.graph): p for p in plan}
    lines = []
    for record in manifest.get("engines", []) or []:
        entry = planned.get((record.get("precision", "fp32"), record.get("graph")))
        if entry is None or device_key(str(record.get("gpu")), str(record.get("compute_capability")),
                                       str(record.get("tensorrt"))) != device.key:
            continue
        if record.get("engine") != entry.engine:
            problem = engine_record_problem(root, manifest, record, device.as_tuple()) or (
                f"engine {record.get('engine')} ({entry.precision} {entry.graph}) has key "
                f"{record.get('key', '?')}, the plan's is {entry.key}")
            lines.append(f"{problem}: rebuilding as {entry.engine}")
    return lines


def run_engine_step(package_dir: str | Path, *, precisions: Iterable[str] | None = None, dry_run: bool = False,
                    pending: Iterable[str] = (), stream: TextIO | None = None) -> int:
    """Plan, print and (unless `dry_run`) build the engines of a package and record them in its manifest.

    The tools' shared `--engine` step; returns an exit status: 0 done (or planned), 1 a build
    failed, 2 the package cannot be read, 3 TensorRT or a GPU is missing (one ``error:`` line).
    pending: precisions whose variant files a run still has to (re)write (dry runs of
    fineparser-calibrate): their keys are shown as pending.
    Records of other GPUs / TensorRT versions stay in the manifest (their engines stay cached).
    """
    root, stream = Path(package_dir), stream or sys.stdout
    try:
        manifest = read_manifest(root)
    except PackageError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    device = current_device()
    pending = list(pending)
    planned_manifest = prospective_manifest(manifest, precisions=pending) if pending else manifest
    plan = plan_engines(planned_manifest, precisions=precisions, device=device)
    print(format_plan(plan, package=str(root), device=device), file=stream, flush=True)
    if dry_run:
        print("dry run: nothing was built", file=stream, flush=True)
        return 0
    if device is None:
        if tensorrt_available():
            print(f"error: --engine: no CUDA GPU found (neither torch.cuda nor nvidia-smi sees one); the package "
                  f"without engines is in {root}", file=sys.stderr)
        else:
            print(MISSING_MESSAGE.format(package=root), file=sys.stderr)
        return 3
    for line in _stale_lines(root, manifest, plan, device):
        log.warning("%s", line)
    try:
        records = build_planned_engines(root, plan, device)
    except TensorRTUnavailable as exc:
        print(f"error: --engine: {' '.join(str(exc).split())}; the package without engines is in {root}",
              file=sys.stderr)
        return 3
    except RuntimeError as exc:
        print(f"error: --engine: {' '.join(str(exc).split())}; the package without engines is in {root}",
              file=sys.stderr)
        return 1
    others = [r for r in manifest.get("engines", []) or []
              if device_key(str(r.get("gpu")), str(r.get("compute_capability")), str(r.get("tensorrt"))) != device.key
              and (root / str(r.get("engine"))).is_file()]
    manifest = read_manifest(root)
    manifest["engines"] = [*others, *(r.to_dict() for r in records)]
    # Engines are a per-GPU cache (checked by their key), not package content: not hashed.
    write_manifest(root, manifest)
    log.info("%d engine record(s) for %s %s, TensorRT %s, in %s", len(records), device.gpu,
             device.compute_capability, device.tensorrt, root / "manifest.json")
    return 0
