"""Parity of the exported graphs with the PyTorch model: per-output errors and score drift.

Every conversion ends with a report (max abs error, relative error, score drift and the tolerance
it was held to).  The reference is the PyTorch model in fp32 on the CPU, fed the same uint8 frames
normalised by ``fineparser.preprocess``; the ONNX encoder normalises inside its graph, so the
report covers that too.  Score drift follows the box's path exactly: ONNX encoder, ONNX pair head
against the package's bank, scored by ``fineparser.scoring``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.bank import encode_frames
from fineparser import spec
from fineparser.data import FineDivingIndex, format_key
from fineparser.model import FineParser, QueryFeatures
from fineparser.onnx_session import CPU_PROVIDERS, onnx_session
from fineparser.package import ENCODER_INPUT, ENCODER_OUTPUTS, MASK_OUTPUT, PAIR_HEAD_OUTPUTS, ExemplarBank
from fineparser.scoring import final_score, score_dive, select_exemplars

log = logging.getLogger(__name__)

SCORE_DRIFT_TOLERANCE = 1e-3
"""fp32 export fails when |score(ONNX) - score(PyTorch)| exceeds this for any parity query."""
RELATIVE_ERROR = "max |onnx - torch| / max |torch| over the output"
SYNTHETIC_SCORES = (45.0, 60.0, 75.0, 90.0)
"""Scores given to the parity clips when they stand in as a mini bank (no --data-root)."""


@dataclass
class ParityClip:
    """One query clip of the parity check."""

    name: str
    frames: np.ndarray  # uint8 [96, 112, 112, 3]
    dive_number: str


def parity_clips(index: FineDivingIndex | None, count: int, seed: int = 0) -> list[ParityClip]:
    """`count` test-split clips of the data root, or random uint8 clips when there is none."""
    if index is not None and index.test_keys:
        clips = []
        for key in index.test_keys[:count]:
            sample = index.load_clip(key, train=False)
            clips.append(ParityClip(format_key(key), sample.frames, sample.dive_number))
        return clips
    rng = np.random.default_rng(seed)
    shape = (spec.NUM_FRAMES, spec.FRAME_SIZE, spec.FRAME_SIZE, 3)
    return [ParityClip(f"random-{seed}-{i}", rng.integers(0, 256, shape, dtype=np.uint8), "synthetic")
            for i in range(count)]


def compare(onnx_value: np.ndarray, torch_value: np.ndarray) -> dict[str, Any]:
    """Max abs and relative error of one output (and mismatches for integer outputs)."""
    a, b = np.asarray(onnx_value), np.asarray(torch_value)
    if a.shape != b.shape:
        return {"shape_onnx": list(a.shape), "shape_torch": list(b.shape), "max_abs": float("inf"),
                "max_rel": float("inf")}
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    out = {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else max_abs}
    if not np.issubdtype(b.dtype, np.floating):
        out["mismatches"] = int((diff > 0).sum())
    return out


def _merge(into: dict[str, dict[str, Any]], name: str, errors: dict[str, Any]) -> None:
    """Keep the worst error of each output over all parity clips."""
    current = into.setdefault(name, {})
    for key, value in errors.items():
        current[key] = max(current.get(key, value), value) if key != "mismatches" else current.get(key, 0) + value


def _torch_outputs(features: QueryFeatures, with_masks: bool) -> dict[str, np.ndarray]:
    values = {"window_features": features.window_features, "transitions": features.transitions,
              "transition_probs": features.transition_probs, "static_tokens": features.static_tokens}
    if with_masks:
        values[MASK_OUTPUT] = features.mask_logits
    return {k: v.numpy() for k, v in values.items()}


def _as_features(arrays: Mapping[str, np.ndarray], prefix: str = "") -> QueryFeatures:
    return QueryFeatures(window_features=torch.from_numpy(np.asarray(arrays[f"{prefix}window_features"])),
                         transitions=torch.from_numpy(np.asarray(arrays[f"{prefix}transitions"])),
                         transition_probs=None,
                         static_tokens=torch.from_numpy(np.asarray(arrays[f"{prefix}static_tokens"])))


def mini_bank(clips: Sequence[ParityClip], encoded: Sequence[QueryFeatures]) -> ExemplarBank:
    """The parity clips themselves (already encoded by PyTorch) as a bank, with made-up scores."""
    features = QueryFeatures.cat([replace(e, mask_logits=None) for e in encoded])
    scores = [SYNTHETIC_SCORES[i % len(SYNTHETIC_SCORES)] for i in range(len(clips))]
    return ExemplarBank(features.window_features.numpy(), features.transitions.numpy(),
                        features.static_tokens.numpy(), np.asarray(scores), np.full(len(clips), 3.0),
                        [c.dive_number for c in clips], [c.name for c in clips],
                        metadata={"source": "parity clips (synthetic scores)"})


@torch.no_grad()
def run_parity(model: FineParser, graphs: Mapping[str, str | Path], clips: Sequence[ParityClip],
               bank: ExemplarBank | None, voter_number: int,
               tolerance: float = SCORE_DRIFT_TOLERANCE) -> dict[str, Any]:
    """Compare every ONNX graph with PyTorch on `clips`; score drift against `bank` (or a mini bank).

    `graphs` maps "encoder", "pair_head" and optionally "encoder_masks" to ONNX files.
    """
    import onnxruntime as ort

    start = time.perf_counter()
    log.info("parity: %d graph(s) vs PyTorch on %d clip(s) (onnxruntime %s, CPU)", len(graphs), len(clips),
             ort.__version__)
    sessions = {name: onnx_session(path, providers=CPU_PROVIDERS) for name, path in graphs.items()}
    errors: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in graphs}
    with_masks = "encoder_masks" in sessions
    references, onnx_queries = [], []
    for clip in clips:
        feed = {ENCODER_INPUT: clip.frames[None]}
        # The mask branches only add outputs: one PyTorch pass serves both encoder graphs.
        reference = encode_frames(model, clip.frames, with_masks=with_masks)
        onnx_encoded = dict(zip(ENCODER_OUTPUTS, sessions["encoder"].run(list(ENCODER_OUTPUTS), feed)))
        for name, value in _torch_outputs(reference, with_masks=False).items():
            _merge(errors["encoder"], name, compare(onnx_encoded[name], value))
        if with_masks:
            names = [*ENCODER_OUTPUTS, MASK_OUTPUT]
            masked = dict(zip(names, sessions["encoder_masks"].run(names, feed)))
            for name, value in _torch_outputs(reference, with_masks=True).items():
                _merge(errors["encoder_masks"], name, compare(masked[name], value))
        references.append(replace(reference, mask_logits=None))
        onnx_queries.append({f"query_{k}": v for k, v in onnx_encoded.items() if k != "transition_probs"})

    scoring_bank = bank if bank is not None and len(bank) else mini_bank(clips, references)
    queries = []
    for clip, reference, onnx_query in zip(clips, references, onnx_queries):
        indices, fallback = select_exemplars(scoring_bank, clip.dive_number, voter_number)
        exemplars = scoring_bank.pair_head_inputs(indices)
        exemplar_scores = scoring_bank.final_score[indices]
        # Pair head alone: identical (PyTorch) query features on both sides.
        torch_pair = model.pair_head(reference, _as_features(exemplars, "exemplar_"))
        query_feed = {f"query_{k}": v for k, v in _torch_outputs(reference, False).items() if k != "transition_probs"}
        onnx_pair = sessions["pair_head"].run(list(PAIR_HEAD_OUTPUTS), {**query_feed, **exemplars})
        for name, a, b in zip(PAIR_HEAD_OUTPUTS, onnx_pair, (torch_pair.delta, torch_pair.step_deltas)):
            _merge(errors["pair_head"], name, compare(a, b.numpy()))

        # The box's path end to end: ONNX encoder + ONNX pair head + bank.
        delta = sessions["pair_head"].run(["delta"], {**onnx_query, **exemplars})[0]
        score_onnx = score_dive(exemplar_scores, delta).final
        # model.score's rule, in torch, on the features already computed.
        score_torch = float(final_score(torch.from_numpy(exemplar_scores), torch_pair.delta))
        queries.append({"clip": clip.name, "dive_number": clip.dive_number, "exemplars": len(indices),
                        "fallback": fallback, "score_torch": score_torch, "score_onnx": score_onnx,
                        "drift": abs(score_onnx - score_torch)})
    max_drift = max((q["drift"] for q in queries), default=0.0)
    report = {
        "reference": f"PyTorch {torch.__version__} fp32 CPU",
        "runner": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "precision": "fp32",
        "clips": [c.name for c in clips],
        "relative_error": RELATIVE_ERROR,
        "graphs": errors,
        "score_drift": {"max": max_drift, "tolerance": tolerance, "queries": queries,
                        "bank": "package bank" if scoring_bank is bank else "parity clips as a mini bank"},
        "passed": bool(max_drift <= tolerance),
        "seconds": round(time.perf_counter() - start, 2),
    }
    log.info("parity done in %.1f s: max score drift %.2e (tolerance %.0e)", report["seconds"], max_drift, tolerance)
    return report


def format_parity_table(report: Mapping[str, Any]) -> str:
    """The parity report as a plain-text table (what the CLI prints)."""
    lines = [f"parity: {report['runner']} vs {report['reference']} on {len(report['clips'])} clip(s); "
             f"relative error = {report['relative_error']}",
             f"{'graph':<15}{'output':<20}{'max abs':>12}{'max rel':>12}"]
    for graph, outputs in report["graphs"].items():
        for output, err in outputs.items():
            extra = f"  ({err['mismatches']} mismatching)" if "mismatches" in err else ""
            lines.append(f"{graph:<15}{output:<20}{err['max_abs']:>12.2e}{err['max_rel']:>12.2e}{extra}")
    drift = report["score_drift"]
    lines.append(f"{'score drift':<35}{drift['max']:>12.2e}   tolerance {drift['tolerance']:.0e} "
                 f"({drift['bank']}, {len(drift['queries'])} quer{'y' if len(drift['queries']) == 1 else 'ies'}): "
                 f"{'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)
