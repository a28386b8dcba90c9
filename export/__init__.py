"""export: `fineparser-export CKPT` turns a checkpoint into a model package (ONNX + exemplar bank + manifest).

Submodules: onnx_export (PyTorch -> ONNX), bank (exemplar bank from the training split), parity
(onnxruntime vs PyTorch report), audit (TensorRT readiness of the graphs), tensorrt (engines, where
TensorRT is installed), cli (the command).  Importing this package imports nothing heavy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path


def human_size(num_bytes: int) -> str:
    """Bytes as a short human-readable size (kB/MB/GB, powers of 1000)."""
    size = float(num_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def log_saved(logger: logging.Logger, path: str | os.PathLike, seconds: float) -> None:
    """The closing line of every export step: saved <file> (<size>, <seconds> s)."""
    path = Path(path)
    logger.info("saved %s (%s, %.1f s)", path.name, human_size(path.stat().st_size), seconds)
