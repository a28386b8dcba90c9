"""TensorRT readiness of exported graphs, checked without TensorRT.

Two properties make ``trtexec``/the builder accept a graph with nothing left to refuse:

1. every operator is one the TensorRT ONNX parser supports (list in ``trt_onnx_ops.json``, with the
   document and version it was taken from), in the default ONNX domain, at an opset the parser reads;
2. no tensor dimension anywhere in the graph is symbolic except the declared dynamic ones (K of the
   pair head), so one optimisation profile over K covers every shape.  Intermediate shapes come from
   onnxruntime's symbolic shape inference, which follows shape arithmetic (Shape -> Gather -> Concat
   -> Reshape/Pad) that the plain ONNX shape inference gives up on.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

log = logging.getLogger(__name__)

SUPPORTED_OPS_FILE = Path(__file__).with_name("trt_onnx_ops.json")
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class AuditResult:
    """Outcome of auditing one graph."""

    graph: str
    passed: bool
    op_types: dict[str, int]
    opset: int | None
    unsupported_ops: list[str] = field(default_factory=list)
    symbolic_dims: dict[str, str] = field(default_factory=dict)  # offending dim -> first tensor having it
    unresolved: list[str] = field(default_factory=list)  # tensors whose shape could not be inferred
    problems: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # parser restrictions of the ops used
    shape_check: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest."""
        return asdict(self)


def load_supported_ops(path: str | Path | None = None) -> dict[str, Any]:
    """The recorded TensorRT ONNX parser operator list (source, version, supported, restrictions)."""
    return json.loads(Path(path or SUPPORTED_OPS_FILE).read_text(encoding="utf-8"))


def _symbolic_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model with inferred value_info, and which inference produced it."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.graph.value_info[:]
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        inferred = onnx.shape_inference.infer_shapes(stripped, data_prop=True)
        return inferred, "onnx shape inference (onnxruntime not installed: intermediate dims may stay unknown)"
    return SymbolicShapeInference.infer_shapes(stripped, auto_merge=False), "onnxruntime symbolic shape inference"


def audit_graph(model_or_path: onnx.ModelProto | str | Path, supported: Mapping[str, Any] | None = None,
                dynamic_dims: Iterable[str] = (), name: str | None = None) -> AuditResult:
    """Audit one ONNX graph: supported operators, opset in range, only `dynamic_dims` symbolic."""
    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path))
    name = name or (Path(model_or_path).name if not isinstance(model_or_path, onnx.ModelProto) else model.graph.name)
    supported = supported or load_supported_ops()
    allowed_ops = set(supported["supported"])
    allowed_dims = set(dynamic_dims)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node)
    result = AuditResult(graph=name, passed=True, op_types=dict(sorted(ops.items())), opset=opset)
    result.unsupported_ops = sorted(op for op in ops if op not in allowed_ops)
    if result.unsupported_ops:
        result.problems.append("operators the TensorRT ONNX parser does not support: "
                               + ", ".join(result.unsupported_ops))
    low, high = supported.get("opset_range", [None, None])
    if opset is not None and low is not None and not low <= opset <= high:
        result.problems.append(f"opset {opset} is outside the parser's range {low}..{high}")
    restrictions = supported.get("restrictions", {})
    result.notes = {op: restrictions[op] for op in result.op_types if op in restrictions}

    try:
        inferred, result.shape_check = _symbolic_shapes(model)
    except Exception as exc:  # any inference failure means the shapes are not provably static
        result.shape_check = "failed"
        result.problems.append(f"shape inference failed ({type(exc).__name__}: {exc})")
        inferred = model
    graph = inferred.graph
    initializers = {i.name for i in graph.initializer}
    values = [v for v in (*graph.input, *graph.value_info, *graph.output) if v.name not in initializers]
    typed = {v.name for v in values}
    for value in values:
        ttype = value.type.tensor_type
        if not ttype.HasField("shape"):
            result.unresolved.append(value.name)
            continue
        for dim in ttype.shape.dim:
            if dim.HasField("dim_value"):
                continue
            symbols = set(_SYMBOL.findall(dim.dim_param)) if dim.dim_param else {"?"}
            if not symbols <= allowed_dims:
                result.symbolic_dims.setdefault(dim.dim_param or "?", value.name)
    # Outputs of nodes the inference never reached have no value_info at all.
    result.unresolved += [o for n in graph.node for o in n.output if o and o not in typed and o not in initializers]
    if result.symbolic_dims:
        listing = ", ".join(f"{d} (e.g. {t})" for d, t in list(result.symbolic_dims.items())[:5])
        result.problems.append(f"{len(result.symbolic_dims)} symbolic dimension(s) besides "
                               f"{', '.join(sorted(allowed_dims)) or 'none'}: {listing}")
    if result.unresolved:
        result.problems.append(f"{len(result.unresolved)} tensor(s) of unknown shape, e.g. {result.unresolved[0]}")
    result.passed = not result.problems
    return result


def audit_files(files: Mapping[str, tuple[str | Path, Iterable[str]]],
                supported: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Audit several graphs ({name: (path, dynamic dims)}); the manifest's `audit` section."""
    supported = supported or load_supported_ops()
    log.info("auditing %d graph(s) for TensorRT readiness (operator list of TensorRT %s, %s)", len(files),
             str(supported.get("tensorrt", "?")).split(" ")[0], supported.get("source"))
    graphs = {}
    for name, (path, dynamic) in files.items():
        dynamic = list(dynamic)
        result = audit_graph(path, supported, dynamic, name=name)
        graphs[name] = result.to_dict()
        if result.passed:
            log.info("audit %s: %d op types, all supported by the TensorRT ONNX parser; %s", name,
                     len(result.op_types), f"only {', '.join(dynamic)} dynamic" if dynamic else "static shapes")
        else:
            log.warning("audit %s FAILED: %s", name, "; ".join(result.problems))
    return {"passed": all(g["passed"] for g in graphs.values()), "op_list_source": supported.get("source"),
            "op_list_tensorrt": supported.get("tensorrt"), "graphs": graphs}
