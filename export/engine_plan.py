"""The TensorRT engine plan of a package: what a GPU box builds, computed without TensorRT (pure functions).

One engine per graph and per precision variant present: fp32 builds every graph of the package
(encoder, encoder_masks, pair_head, and the spotter when the package has one); fp16 and int8
build the graphs their variant lists (``manifest["variants"][i]["files"]``).  A variant that
shares a file with another (int8 keeps the fp32 pair head) shares its engine: the cache key is
the GPU, compute capability, TensorRT version and the ONNX file's sha256, so equal bytes give
one engine file.  Every engine is strongly typed (the network flag STRONGLY_TYPED on TensorRT
10, the default on 11) with no precision builder flags: precision comes from the ONNX itself.

:func:`plan_engines` computes the plan from a manifest (or the manifest a run is about to write,
:func:`prospective_manifest`); :func:`format_plan` prints it for ``--engine --dry-run``;
``export.tensorrt.build_planned_engines`` builds it.  Nothing here imports tensorrt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fineparser import spec
from fineparser.package import (
    ENCODER_FILE,
    ENCODER_INPUT,
    ENCODER_MASKS_FILE,
    ENGINES_DIR,
    EXEMPLAR_DIM,
    PAIR_HEAD_FILE,
    PAIR_HEAD_INPUTS,
    device_key,
    engine_key,
    onnx_sha256,
)
from fineparser.precision import PRECISIONS, VARIANT_FILES

K_PROFILE = (1, 10, 32)
"""Optimisation profile of the pair head's exemplar count K: (min, opt, max); opt = the paper's voters."""
WORKSPACE_BYTES = 4 << 30
"""Builder workspace pool limit (tactics needing more are skipped)."""
NETWORK_FLAGS = ("STRONGLY_TYPED",)
"""Network creation flags: STRONGLY_TYPED opts in on TensorRT 10.x; 11.x is always strongly typed."""
BUILDER_FLAGS: tuple[str, ...] = ()
"""Builder flags: none. TensorRT 11 removed FP16/INT8; the ONNX variants carry their own precision."""
SPOTTER_GRAPH = "spotter"
"""The spotter's graph name in the plan (manifest key "spotter", file spotter.onnx)."""
UNKNOWN_DEVICE = "<gpu>_<sm>_trt<version>"
"""Device part of a key computed where no GPU or TensorRT is visible (filled in on the GPU box)."""
PENDING_SHA = "<sha256>"
"""ONNX hash part of a key whose ONNX file is not written yet (export or calibration still to run)."""

Shape = tuple[int, ...]


@dataclass(frozen=True)
class DeviceIdentity:
    """What an engine is built for: GPU name, compute capability ('sm90'), TensorRT version."""

    gpu: str
    compute_capability: str
    tensorrt: str

    @property
    def key(self) -> str:
        """<gpu>_<sm>_trt<version>, the device part of every cache key."""
        return device_key(self.gpu, self.compute_capability, self.tensorrt)

    def as_tuple(self) -> tuple[str, str, str]:
        """(gpu, compute capability, TensorRT version), as fineparser.package.engine_record_problem takes it."""
        return self.gpu, self.compute_capability, self.tensorrt


@dataclass(frozen=True)
class PlannedEngine:
    """One engine of the plan: which ONNX, which profile, which flags, which output file."""

    graph: str  # encoder | encoder_masks | pair_head | spotter
    precision: str  # fp32 | fp16 | int8
    onnx: str  # file in the package
    onnx_sha256: str | None  # None: the file is not written yet
    inputs: dict[str, list[int | str]]  # name -> shape as exported ("K" for the dynamic dim)
    profile: dict[str, tuple[Shape, Shape, Shape]]  # name -> (min, opt, max); empty: static shapes
    key: str
    engine: str  # engines/<key>.engine
    layers: str  # engines/<key>.layers.json (the engine inspector's report)
    shared_with: str | None = None  # "fp32 pair_head": the same ONNX bytes, so the same engine
    network_flags: tuple[str, ...] = NETWORK_FLAGS
    builder_flags: tuple[str, ...] = BUILDER_FLAGS
    workspace_bytes: int = WORKSPACE_BYTES
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def static(self) -> bool:
        """Whether every input has a fixed shape (no optimisation profile needed)."""
        return not self.profile

    @property
    def buildable(self) -> bool:
        """Whether the key is final (device known and ONNX written)."""
        return self.onnx_sha256 is not None and not self.key.startswith(UNKNOWN_DEVICE)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON friendly)."""
        out = asdict(self)
        out["profile"] = {name: [list(s) for s in shapes] for name, shapes in self.profile.items()}
        out["network_flags"], out["builder_flags"] = list(self.network_flags), list(self.builder_flags)
        out["notes"] = list(self.notes)
        return out


def _inputs(section: Mapping[str, Any] | None) -> dict[str, list[int | str]]:
    return {str(i["name"]): list(i["shape"]) for i in (section or {}).get("inputs", []) or []}


def profile_shapes(inputs: Mapping[str, Sequence[int | str]], k_profile: tuple[int, int, int] = K_PROFILE,
                   dynamic_dim: str = EXEMPLAR_DIM) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shapes of every input with the dynamic dim; {} for a graph with static shapes."""
    shapes = {}
    for name, dims in inputs.items():
        if dynamic_dim in dims:
            shapes[name] = tuple(tuple(k if d == dynamic_dim else int(d) for d in dims) for k in k_profile)
    return shapes  # type: ignore[return-value]


def graph_files(manifest: Mapping[str, Any], precision: str) -> dict[str, str]:
    """{graph: ONNX file} a precision builds: fp32 every graph (and the spotter); a variant its own files, and the
    spotter's variant of that precision when ``manifest["spotter"]["variants"]`` records one."""
    if precision == "fp32":
        files = {name: str(g["file"]) for name, g in (manifest.get("graphs") or {}).items()}
        spotter = manifest.get(SPOTTER_GRAPH)
        if isinstance(spotter, Mapping) and spotter.get("file"):
            files[SPOTTER_GRAPH] = str(spotter["file"])
        return files
    files = {}
    for variant in manifest.get("variants", []) or []:
        if variant.get("name") == precision:
            files = {str(g): str(f) for g, f in (variant.get("files") or {}).items()}
    spotter = manifest.get(SPOTTER_GRAPH)
    recorded = (spotter.get("variants") or {}).get(precision) if isinstance(spotter, Mapping) else None
    if files and isinstance(recorded, Mapping) and recorded.get("file"):
        files[SPOTTER_GRAPH] = str(recorded["file"])  # fineparser-calibrate --spotter
    return files


def present_precisions(manifest: Mapping[str, Any]) -> list[str]:
    """fp32 and every variant the manifest records, least to most compressed."""
    names = {str(v.get("name")) for v in manifest.get("variants", []) or []}
    return ["fp32", *[p for p in PRECISIONS[1:] if p in names]]


def plan_engines(manifest: Mapping[str, Any], *, precisions: Iterable[str] | None = None,
                 device: DeviceIdentity | None = None,
                 k_profile: tuple[int, int, int] = K_PROFILE) -> list[PlannedEngine]:
    """The engines to build for a package: one per graph and per precision variant present.

    manifest: a package manifest (or :func:`prospective_manifest`); ONNX hashes come from its
    ``files`` (a file not listed is not written yet: its key says so).
    precisions: which variants (default: every one present; one not present plans nothing).
    device: the GPU and TensorRT the engines are for (None: unknown here, the keys say so).
    Graph inputs come from the manifest (``graphs[name].inputs``, ``spotter.graph.inputs``); the
    pair head gets one profile of K = k_profile on every input with the dynamic dim; the spotter and
    the encoders have static shapes (batch 1).
    """
    wanted = present_precisions(manifest) if precisions is None else [p for p in PRECISIONS if p in set(precisions)]
    graphs = manifest.get("graphs") or {}
    spotter = manifest.get(SPOTTER_GRAPH) if isinstance(manifest.get(SPOTTER_GRAPH), Mapping) else None
    plan: list[PlannedEngine] = []
    seen: dict[str, str] = {}
    for precision in wanted:
        for graph, onnx in graph_files(manifest, precision).items():
            if graph == SPOTTER_GRAPH:
                inputs = _inputs((spotter or {}).get("graph"))
            else:
                inputs = _inputs(graphs.get(graph))
            digest = onnx_sha256(manifest, onnx)
            key = (engine_key(device.gpu, device.compute_capability, device.tensorrt, digest) if device and digest
                   else f"{device.key if device else UNKNOWN_DEVICE}_{digest[:12] if digest else PENDING_SHA}")
            # Pending files of different names must not look shared: the name stands in for the hash.
            identity = key if digest else f"{key}:{onnx}"
            shared = seen.get(identity)
            seen.setdefault(identity, f"{precision} {graph}")
            notes = []
            if not inputs:
                notes.append("input shapes not recorded in the manifest: taken from the ONNX at build time")
            plan.append(PlannedEngine(
                graph=graph, precision=precision, onnx=onnx, onnx_sha256=digest, inputs=inputs,
                profile=profile_shapes(inputs, k_profile), key=key, engine=f"{ENGINES_DIR}/{key}.engine",
                layers=f"{ENGINES_DIR}/{key}.layers.json", shared_with=shared, notes=tuple(notes)))
    return plan


def planned_graphs(feature_dim: int, token_dim: int, static_tokens: int, with_masks: bool = True
                   ) -> dict[str, dict[str, Any]]:
    """The manifest's ``graphs`` inputs that an export of a model with these widths will write."""
    frames = [1, spec.NUM_FRAMES, spec.FRAME_SIZE, spec.FRAME_SIZE, 3]
    encoder = {"inputs": [{"name": ENCODER_INPUT, "dtype": "uint8", "shape": frames}]}
    window, transitions, tokens = [spec.NUM_WINDOWS, feature_dim], [2], [static_tokens, token_dim]
    shapes = {"query_window_features": [1, *window], "query_transitions": [1, *transitions],
              "query_static_tokens": [1, *tokens], "exemplar_window_features": [EXEMPLAR_DIM, *window],
              "exemplar_transitions": [EXEMPLAR_DIM, *transitions],
              "exemplar_static_tokens": [EXEMPLAR_DIM, *tokens]}
    pair_head = {"inputs": [{"name": name, "shape": shapes[name]} for name in PAIR_HEAD_INPUTS]}
    graphs = {"encoder": {"file": ENCODER_FILE, **encoder}}
    if with_masks:
        graphs["encoder_masks"] = {"file": ENCODER_MASKS_FILE, **encoder}
    graphs["pair_head"] = {"file": PAIR_HEAD_FILE, **pair_head}
    return graphs


def prospective_manifest(manifest: Mapping[str, Any] | None = None, *, graphs: Mapping[str, Any] | None = None,
                         precisions: Iterable[str] = ()) -> dict[str, Any]:
    """The manifest after an export or calibration that has not run: `precisions` variants (re)written.

    manifest: the package as it is (None: an export that has not run, with `graphs` from
    :func:`planned_graphs`). The files of the named variants are dropped from ``files`` unless
    fp32 shares them, so their keys show as pending: calibration rewrites them.
    """
    out = dict(manifest or {})
    if graphs is not None:
        out["graphs"] = dict(graphs)
    variants = {str(v.get("name")): dict(v) for v in out.get("variants", []) or []}
    variants.setdefault("fp32", {"name": "fp32", "precision": "fp32",
                                 "files": {g: str(s["file"]) for g, s in (out.get("graphs") or {}).items()}})
    rewritten: set[str] = set()
    for precision in precisions:
        if precision == "fp32":
            continue
        variants[precision] = {"name": precision, "precision": precision, "files": dict(VARIANT_FILES[precision]),
                               "planned": True}
        rewritten |= set(VARIANT_FILES[precision].values()) - set(VARIANT_FILES["fp32"].values())
    out["variants"] = [variants[p] for p in PRECISIONS if p in variants]
    files = dict(out.get("files") or {}) if manifest is not None else {}
    out["files"] = {name: entry for name, entry in files.items() if name not in rewritten}
    return out


def _shape(dims: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def format_plan(plan: Sequence[PlannedEngine], *, package: str, device: DeviceIdentity | None = None) -> str:
    """The plan as a person reads it (``--engine --dry-run`` prints this)."""
    engines = len([p for p in plan if not p.shared_with])
    lines = [f"TensorRT engine plan for {package}: {engines} engine(s), strongly typed (network flag "
             f"{', '.join(NETWORK_FLAGS)} on TensorRT 10.x, the default on 11.x), no precision builder flags "
             f"(precision comes from each ONNX), workspace {WORKSPACE_BYTES >> 30} GiB",
             "device: " + (f"{device.gpu} {device.compute_capability}, TensorRT {device.tensorrt}" if device else
                           f"none visible here ({UNKNOWN_DEVICE} in the keys is filled in on the GPU box)")]
    if not plan:
        return "\n".join([*lines, "(nothing to build: the package records no graphs)"])
    onnx = [entry.onnx + (f" {entry.onnx_sha256[:12]}" if entry.onnx_sha256 else " (to be written)") for entry in plan]
    graph_width, onnx_width = max(len(p.graph) for p in plan) + 2, max(map(len, onnx)) + 2
    lines.append(f"{'precision':<11}{'graph':<{graph_width}}{'onnx (sha256)':<{onnx_width}}shapes")
    for entry, source in zip(plan, onnx):
        if entry.profile:
            first = next(iter(entry.profile))
            axis = [i for i, d in enumerate(entry.inputs[first]) if d == EXEMPLAR_DIM][0]
            k = " / ".join(str(shape[axis]) for shape in entry.profile[first])
            shapes = (f"profile {EXEMPLAR_DIM} = {k} (min / opt / max) on "
                      + ", ".join(f"{n} {_shape(entry.inputs[n])}" for n in entry.profile))
        elif entry.inputs:
            shapes = "static: " + ", ".join(f"{n} {_shape(s)}" for n, s in entry.inputs.items())
        else:
            shapes = "static (read from the ONNX at build time)"
        lines.append(f"{entry.precision:<11}{entry.graph:<{graph_width}}{source:<{onnx_width}}{shapes}")
        target = f"the same engine as {entry.shared_with}" if entry.shared_with else entry.engine
        lines.append(f"{'':<{11 + graph_width}}-> {target}")
    return "\n".join(lines)


__all__ = [
    "BUILDER_FLAGS",
    "K_PROFILE",
    "NETWORK_FLAGS",
    "PENDING_SHA",
    "SPOTTER_GRAPH",
    "UNKNOWN_DEVICE",
    "WORKSPACE_BYTES",
    "DeviceIdentity",
    "PlannedEngine",
    "format_plan",
    "graph_files",
    "plan_engines",
    "planned_graphs",
    "present_precisions",
    "profile_shapes",
    "prospective_manifest",
]
