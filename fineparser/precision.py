"""Which precision a backend runs: the package's measured recommendation and the one rule that applies it.

Torch-free (json dicts in, strings out), used by ``fineparser-calibrate`` (which records the
recommendation), the runtime's backends (which apply it) and the tests.

The rule, in full:

- ``fineparser-calibrate`` records in the manifest the **recommended precision**: the most
  compressed precision (int8 > fp16 > fp32) whose variant met its drift goals (a variant recorded
  with ``--accept-drift`` did not); fp32 stands when no variant did.
- ``--precision fp32|fp16|int8|bf16`` is used as given (the backend refuses what it cannot run).
- ``--precision auto`` (the default) runs **fp32 on the CPU**; on a **GPU backend** (TensorRT, an
  onnxruntime GPU provider, torch on CUDA) it runs the recommended precision if that backend can
  run it here, else the most compressed precision below it that the backend can run and that met
  its goals (an unmeasured precision, e.g. torch bf16, is never chosen automatically).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fineparser.package import ENCODER_FILE, PAIR_HEAD_FILE

PRECISIONS = ("fp32", "fp16", "int8")
"""Precisions a package's ONNX variants come in, least to most compressed."""
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")
"""Precisions of the torch backend: fp32, or bf16 / fp16 autocast on CUDA."""
AUTO = "auto"
REQUESTABLE = (AUTO, "fp32", "fp16", "int8", "bf16")
"""Values of ``--precision``."""

VARIANT_FILES: dict[str, dict[str, str]] = {
    "fp32": {"encoder": ENCODER_FILE, "pair_head": PAIR_HEAD_FILE},
    "fp16": {"encoder": "encoder_fp16.onnx", "pair_head": "pair_head_fp16.onnx"},
    # The pair head is ~0.1 % of the compute: int8 keeps the exact fp32 graph.
    "int8": {"encoder": "encoder_int8.onnx", "pair_head": PAIR_HEAD_FILE},
}
"""The graph files of each precision variant, as fineparser-calibrate writes them."""

RECOMMENDED_KEY = "recommended_precision"
"""manifest.json section: {"precision", "rule", "met_goals", "missed_goals"}."""
RULE = "the most compressed variant that met its drift goals (int8 > fp16 > fp32)"


class PrecisionError(ValueError):
    """A precision that is not one of the known values."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a backend runs, what was asked for, and why (one line for the log)."""

    precision: str
    requested: str
    reason: str


def rank(precision: str) -> int:
    """0 for fp32, 1 for fp16, 2 for int8 (bf16 ranks with fp16)."""
    if precision == "bf16":
        return PRECISIONS.index("fp16")
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; known: {', '.join(REQUESTABLE)}")
    return PRECISIONS.index(precision)


def _variant(manifest: Mapping[str, Any], precision: str) -> Mapping[str, Any] | None:
    for variant in manifest.get("variants", []) or []:
        if variant.get("name") == precision:
            return variant
    return None


def met_goals(manifest: Mapping[str, Any], precision: str) -> bool:
    """Whether a precision was measured to meet its goals: fp32 its parity, fp16/int8 their drift goals.

    A variant recorded with ``--accept-drift`` (``accepted_with_drift``) did not; a package without a
    variant of that precision has nothing measured.
    """
    if precision == "fp32":
        return bool((manifest.get("parity") or {}).get("passed", True))
    variant = _variant(manifest, precision)
    if variant is None or variant.get("accepted_with_drift"):
        return False
    return bool((variant.get("drift") or {}).get("passed", False))


def recommendation(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``recommended_precision`` section, computed from its variants by :data:`RULE`."""
    present = ["fp32", *[p for p in PRECISIONS[1:] if _variant(manifest, p) is not None]]
    met = [p for p in present if met_goals(manifest, p)]
    chosen = max(met or ["fp32"], key=rank)
    missed = {}
    for precision in present:
        if precision in met:
            continue
        variant = _variant(manifest, precision) or {}
        failures = (variant.get("drift") or {}).get("failures") or []
        missed[precision] = ("accepted with drift: " if variant.get("accepted_with_drift") else "") + (
            "; ".join(failures) or "its goals were not met")
    return {"precision": chosen, "rule": RULE, "met_goals": met, "missed_goals": missed}


def recommended_precision(manifest: Mapping[str, Any]) -> str:
    """The precision the package recommends: its recorded choice, or (older manifests) the rule applied now.

    A recorded choice whose variant is no longer in the package is recomputed.
    """
    section = manifest.get(RECOMMENDED_KEY)
    if isinstance(section, Mapping):
        recorded = section.get("precision")
        if recorded == "fp32" or (recorded in PRECISIONS and _variant(manifest, recorded) is not None):
            return str(recorded)
    return str(recommendation(manifest)["precision"])


def parse_precision(text: str) -> str:
    """A ``--precision`` value, checked and lower-cased; PrecisionError lists the known ones."""
    value = str(text).strip().lower()
    if value not in REQUESTABLE:
        raise PrecisionError(f"--precision {text}: unknown; known: {', '.join(REQUESTABLE)}")
    return value


def resolve_precision(requested: str, manifest: Mapping[str, Any], *, backend: str, on_gpu: bool,
                      runnable: Sequence[str]) -> PrecisionChoice:
    """Apply the rule (module docstring) for one backend.

    backend: its name, for the reason; on_gpu: whether it runs on a GPU here; runnable: the
    precisions it can run for this package here (variants present, engines built, providers).
    """
    requested = parse_precision(requested)
    if requested != AUTO:
        return PrecisionChoice(requested, requested, f"--precision {requested} as asked")
    if not on_gpu:
        return PrecisionChoice("fp32", AUTO, f"--precision auto on the CPU ({backend}): fp32, the reference")
    recommended = recommended_precision(manifest)
    candidates = [p for p in reversed(PRECISIONS[:rank(recommended) + 1])
                  if p in runnable and met_goals(manifest, p)]
    if not candidates:
        fallback = "fp32" if "fp32" in runnable or not runnable else runnable[0]
        return PrecisionChoice(fallback, AUTO, f"--precision auto on {backend}: the package recommends "
                               f"{recommended}, and nothing measured runs here; {fallback}")
    chosen = candidates[0]
    if chosen == recommended:
        reason = f"--precision auto on {backend} (GPU): {chosen}, the package's recommendation ({RULE})"
    else:
        reason = (f"--precision auto on {backend} (GPU): the package recommends {recommended}, which "
                  f"{backend} cannot run here; {chosen}, the most compressed below it that met its goals")
    return PrecisionChoice(chosen, AUTO, reason)


__all__ = [
    "AUTO",
    "PRECISIONS",
    "RECOMMENDED_KEY",
    "REQUESTABLE",
    "RULE",
    "TORCH_PRECISIONS",
    "VARIANT_FILES",
    "PrecisionChoice",
    "PrecisionError",
    "met_goals",
    "parse_precision",
    "rank",
    "recommendation",
    "recommended_precision",
    "resolve_precision",
]
