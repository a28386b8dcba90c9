"""FP16 and INT8 variants of a model package (``fineparser-calibrate``).

- :mod:`calibration.clips` prepares calibration and held-out clips with the runtime's preprocessing
  and caches them as ``.npy``;
- :mod:`calibration.variants` writes ``encoder_fp16.onnx`` / ``pair_head_fp16.onnx`` through NVIDIA
  ModelOpt's AutoCast and ``encoder_int8.onnx`` (explicit Q/DQ) through ModelOpt's ONNX PTQ;
- :mod:`calibration.drift` scores held-out clips with fp32 and a variant and reports the drift;
- :mod:`calibration.cli` ties them together and records each variant in the package manifest.
"""

from calibration.drift import GOALS, DriftReport, drift_report, run_variant
from calibration.variants import CalibrationError

__all__ = ["GOALS", "CalibrationError", "DriftReport", "drift_report", "run_variant"]
