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
INT8_EXCLUDE = ("/psnet_model/.*",)
"""Node-name patterns INT8 leaves unquantized by default: the temporal parser's head, whose argmax
picks the transition frames (quantizing it moved transitions by frames and scores by points)."""
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


def make_int8(src: Path, dst: Path, inputs: Mapping[str, np.ndarray], *, method: str = "entropy",
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

        info["nodes"] = _precision_counts(onnx.load(str(out)))
        os.replace(out, dst)
    return info
