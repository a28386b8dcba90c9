"""Write FP16 and INT8 ONNX variants with NVIDIA ModelOpt.

- FP16: ModelOpt AutoCast (``modelopt.onnx.autocast.convert_to_mixed_precision``) with the graph's
  inputs and outputs kept in their types (uint8 frames in, fp32 features out), nodes whose values
  exceed fp16's range kept in fp32 by AutoCast's own reference run on a real clip, and optionally
  whole op types (normalisations, softmax) kept in fp32 when the drift report demands it.
- INT8: ModelOpt ONNX post-training quantization (``modelopt.onnx.quantization.quantize``), which
  inserts explicit QuantizeLinear/DequantizeLinear pairs following TensorRT's rules, calibrated on
  prepared clips.  ModelOpt calibrates with ``entropy`` or ``max``; ``percentile`` ranges are
  computed with onnxruntime's percentile calibrator and handed to ModelOpt as a TensorRT-format
  calibration cache.

Both produce graphs whose precision is in the graph itself, as TensorRT's strongly typed networks
need (no builder precision flags).
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("entropy", "percentile", "max")
FP32_OP_TYPES = ("LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
                 "Softmax", "ReduceMean", "Pow", "Sqrt", "Reciprocal", "Div", "Exp", "Sigmoid")
"""Op types kept in fp32 by the second FP16 attempt (norms, softmax and their pieces)."""
INT8_EXCLUDE = (
    "/psnet_model/.*",
    r"/(base_model/backbone|segmenter)/(conv3d_2b_1x1|conv3d_2c_3x3|mixed_\w+)/.*",
    r"/[A-Za-z]+(_\d+)?$",
    r"/video_encoder/[A-Za-z]+(_\d+)?$",
    r".*/maxPool3d_[^/]+/.*",
    r".*/avg_pool/.*",
    r"/video_encoder/backbone/(maxpool|global_pool|act1)/.*",
)
"""Node-name patterns INT8 leaves in fp32 by default (found with ``bench/int8_sensitivity.py``; figures in
docs/calibration.md): the temporal parser's head, whose argmax picks the transition frames; the blocks of
both I3Ds after their stem (conv3d_2b onwards: the late blocks brought most of the score error, conv3d_2c
and mixed_3c moved transitions); and the nodes between blocks (pools, pads, the video encoder's mask
resampling arithmetic: no multiply-adds, a third of the error).  What stays INT8: the I3D stems
(ModelOpt itself skips a stem of fewer than 16 output channels, as in the ``tiny`` preset) and the ResNet
video encoder.  ``int8_macs_share`` in the variant's record says how much of the encoder that is."""
INT8_DEFAULT_METHOD = "max"
"""Activation ranges of the encoder's INT8 by default: entropy (and percentile) clipping moved the demo
model's scores 5-12 points on a held-out world, max 0.7 (docs/calibration.md)."""
QUANTIZABLE_OPS = ("Conv", "MatMul", "Gemm")
INSTALL_HINT = "pip install 'fineparser[calib]' (nvidia-modelopt[onnx])"


class CalibrationError(RuntimeError):
    """A variant that cannot be made; the message says why and what to do."""


def _private_copy(src: Path, work: Path) -> Path:
    """A copy of `src` for ModelOpt to read: its INT8 path rewrites the file it is given in place
    (seen with 0.47), and a package's graphs must keep the bytes their manifest hashes."""
    copy = work / f"source-{src.name}"
    shutil.copyfile(src, copy)
    return copy


def modelopt_version() -> str:
    """The installed nvidia-modelopt version, or a CalibrationError saying how to install it."""
    try:
        import modelopt
    except ImportError as exc:
        raise CalibrationError(f"NVIDIA ModelOpt is not installed ({exc}): {INSTALL_HINT}") from None
    return str(getattr(modelopt, "__version__", "unknown"))


def _quiet_modelopt() -> None:
    """ModelOpt logs every pass at INFO to stdout and again through the root logger; our own log
    says what happened, so keep its warnings only, printed once."""
    from modelopt.onnx.logging_config import configure_logging

    configure_logging(logging.WARNING)
    logging.getLogger("modelopt.onnx").propagate = False


def make_fp16(src: Path, dst: Path, calibration_npz: Path, *, fp32_op_types: Sequence[str] = ()) -> dict[str, Any]:
    """AutoCast `src` to mixed FP16 at `dst`; returns what was done (for the manifest)."""
    modelopt_version()
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    _quiet_modelopt()
    with tempfile.TemporaryDirectory(prefix=".fp16-", dir=dst.parent) as tmp:
        source = _private_copy(src, Path(tmp))
        try:
            model = convert_to_mixed_precision(str(source), low_precision_type="fp16", keep_io_types=True,
                                               op_types_to_exclude=list(fp32_op_types) or None,
                                               calibration_data=str(calibration_npz), providers=["cpu"])
        except Exception as exc:  # ModelOpt raises a variety of errors; name the graph
            raise CalibrationError(f"ModelOpt AutoCast failed on {src.name}: {exc}") from exc
    onnx.save(model, str(dst))
    counts = _precision_counts(model)
    return {"tool": "modelopt.onnx.autocast", "keep_io_types": True,
            "fp32_op_types": list(fp32_op_types), "nodes": counts}


def _precision_counts(model: Any) -> dict[str, int]:
    """Count Cast nodes to fp16 and Q/DQ nodes (a quick description of what changed)."""
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"total": len(model.graph.node), "Cast": ops.get("Cast", 0),
            "QuantizeLinear": ops.get("QuantizeLinear", 0), "DequantizeLinear": ops.get("DequantizeLinear", 0)}


class _Reader:
    """onnxruntime CalibrationDataReader over stacked inputs (one row of each per batch)."""

    def __init__(self, inputs: Mapping[str, np.ndarray]) -> None:
        self.inputs, self.i = dict(inputs), 0
        self.count = min(len(v) for v in self.inputs.values())

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= self.count:
            return None
        self.i += 1
        return {name: value[self.i - 1 : self.i] for name, value in self.inputs.items()}

    def rewind(self) -> None:
        self.i = 0


def percentile_cache(src: Path, inputs: Mapping[str, np.ndarray], percentile: float, path: Path) -> int:
    """Percentile activation ranges of `src` on `inputs` (name -> rows, one per batch), as a TensorRT calibration cache.

    Each line is ``tensor: hex(big-endian float32 scale)`` with scale = amax / 127, the format
    TensorRT and ModelOpt read.  Returns the number of tensors.
    """
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory(prefix="fineparser-percentile-") as tmp:
        # Shape-inferred copy: the calibrator only sees tensors with value_info.  With ModelOpt
        # imported, onnxruntime's calibrator is patched to take node names, not op types.
        model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
        inferred = Path(tmp) / "inferred.onnx"
        onnx.save(model, str(inferred))
        nodes = [node.name for node in model.graph.node]
        calibrator = create_calibrator(str(inferred), nodes, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Percentile,
                                       extra_options={"percentile": percentile, "symmetric": True})
        calibrator.collect_data(_Reader(inputs))
        ranges = calibrator.compute_data()
    lines = ["TRT-10000-EntropyCalibration2"]
    for name, value in sorted(ranges.data.items()):
        low, high = value.range_value
        amax = max(float(np.abs(np.asarray(low)).max()), float(np.abs(np.asarray(high)).max()), 1e-8)
        lines.append(f"{name}: {struct.pack('!f', amax / 127.0).hex()}")
    path.write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def node_macs(path: Path) -> dict[str, int]:
    """Multiply-adds of every Conv/MatMul/Gemm node (by name), from the output shapes of one onnxruntime run on
    zero inputs (dynamic dims taken as 1).  A MatMul of two activations counts 0."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {t.name: list(numpy_helper.to_array(t).shape) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in QUANTIZABLE_OPS]
    known = {o.name for o in model.graph.output}
    for node in nodes:
        if node.output[0] not in known:
            model.graph.output.append(onnx.ValueInfoProto(name=node.output[0]))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                              np.uint8 if "uint8" in i.type else np.float32) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    shapes = dict(zip(names, (np.shape(v) for v in session.run(names, feeds))))
    macs = {}
    for node in nodes:
        out, weight = shapes[node.output[0]], weights.get(node.input[1])
        if weight is None:
            macs[node.name] = 0
        elif node.op_type == "Conv":  # weight [Cout, Cin/groups, k...]
            macs[node.name] = int(np.prod(out)) * int(np.prod(weight[1:]))
        else:
            macs[node.name] = int(np.prod(out)) * int(weight[0] if node.op_type == "MatMul" else weight[-1])
    return macs


def int8_macs_share(src: Path, quantized: Any) -> float:
    """Share of `src`'s Conv/MatMul/Gemm multiply-adds that run INT8 in `quantized` (an ONNX model): nodes whose
    activation input comes out of a DequantizeLinear."""
    macs = node_macs(src)
    dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8 = sum(macs.get(n.name, 0) for n in quantized.graph.node
               if n.op_type in QUANTIZABLE_OPS and n.input and n.input[0] in dequantized)
    return round(int8 / max(sum(macs.values()), 1), 4)


def make_int8(src: Path, dst: Path, inputs: Mapping[str, np.ndarray], *, method: str = INT8_DEFAULT_METHOD,
              percentile: float = 99.99, high_precision: str = "fp32",
              exclude: Sequence[str] = INT8_EXCLUDE) -> dict[str, Any]:
    """Quantize `src` to explicit INT8 Q/DQ at `dst`, calibrated on `inputs`: every graph input by name, N rows
    each (the encoder: {"frames": uint8 [N, 96, 112, 112, 3]}; the spotter: frames and the states fed with them)."""
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r} (known: {', '.join(METHODS)})")
    if high_precision not in ("fp16", "fp32"):
        raise CalibrationError(f"high precision must be fp16 or fp32, got {high_precision!r}")
    modelopt_version()
    from modelopt.onnx.quantization import quantize

    _quiet_modelopt()
    info: dict[str, Any] = {"tool": "modelopt.onnx.quantization", "mode": "int8", "method": method,
                            "calibration_clips": int(min(len(v) for v in inputs.values())),
                            "high_precision": high_precision,
                            "format": "explicit QuantizeLinear/DequantizeLinear on activations; int8 weight "
                                      "initializers with DequantizeLinear", "excluded_nodes": list(exclude)}
    # The work directory sits beside dst so the finished file is renamed, never copied, into place.
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=dst.parent) as tmp:
        source = _private_copy(src, Path(tmp))
        cache = None
        if method == "percentile":
            cache = Path(tmp) / "percentile.cache"
            info["percentile"] = percentile
            info["calibrated_tensors"] = percentile_cache(source, inputs, percentile, cache)
        out = Path(tmp) / "int8.onnx"
        try:
            quantize(str(source), quantize_mode="int8", calibration_data=dict(inputs),
                     calibration_method="max" if method == "max" else "entropy",
                     calibration_cache_path=str(cache) if cache else None, calibration_eps=["cpu"],
                     nodes_to_exclude=list(exclude) or None, dq_only=True,
                     output_path=str(out), high_precision_dtype=high_precision, log_level="WARNING")
        except Exception as exc:
            raise CalibrationError(f"ModelOpt INT8 quantization failed on {src.name}: {exc}") from exc
        if not out.is_file():
            raise CalibrationError(f"ModelOpt INT8 quantization of {src.name} wrote no model")
        import onnx

        quantized = onnx.load(str(out))
        info["nodes"] = _precision_counts(quantized)
        info["int8_macs_share"] = int8_macs_share(source, quantized)
        os.replace(out, dst)
    return info
