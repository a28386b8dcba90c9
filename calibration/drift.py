"""Drift of a precision variant against fp32 on held-out clips, scored the runtime's way.

For every held-out clip both graph sets run in onnxruntime's CPU provider: encoder on the clip,
pair head against the package's exemplar bank, exemplars and score by ``fineparser.scoring``
(the runtime's rule).  The bank stays the fp32 one the package ships, which is what a box
running the variant uses.  The report gives Spearman's rho
between variant and fp32 scores, mean and max |delta score|, transition agreement, and each
side's rho against the judges where the clips carry scores.  Against the clips' true transitions it
gives, for both sides, AIoU@0.75 and the transition error in frames (median, share within 1 and 2),
next to the same figures of the constant guess fitted on the training split: agreement with fp32
says nothing about whether fp32 parses time at all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calibration.clips import Clip
from fineparser.metrics import ConstantTransitionGuess, aiou, spearman_rho, transition_errors
from fineparser.onnx_session import CPU_PROVIDERS, onnx_session
from fineparser.package import ENCODER_INPUT, ENCODER_OUTPUTS, ExemplarBank
from fineparser.scoring import pair_feeds, score_dive, select_exemplars
from fineparser.spec import target_transitions

GOALS: dict[str, dict[str, float]] = {
    "fp16": {"mean_abs_delta": 0.05},
    "int8": {"rho_vs_fp32": 0.995, "mean_abs_delta": 0.25, "max_abs_delta": 3.0, "transition_agreement": 0.97},
}
"""Acceptance goals per precision (score points; rho between the variant's and fp32's scores)."""


@dataclass
class VariantRun:
    """Scores and transitions of one graph set over the held-out clips."""

    scores: np.ndarray  # [N]
    transitions: np.ndarray  # [N, 2]
    encoder_ms: float  # median per clip
    pair_head_ms: float


@dataclass
class DriftReport:
    """The manifest's drift record of one variant."""

    precision: str
    clips: int
    rho_vs_fp32: float
    mean_abs_delta: float
    max_abs_delta: float
    transition_agreement: float  # fraction of transitions on the same frame
    transition_max_frames: int
    rho_vs_judges: float | None
    fp32_rho_vs_judges: float | None
    encoder_ms: float
    fp32_encoder_ms: float
    goals: dict[str, float] = field(default_factory=dict)
    vs_truth: dict[str, dict[str, float]] = field(default_factory=dict)
    """Transitions against the truth: {"variant"|"fp32"|"constant_guess": {aiou_75, median, within_1, within_2}}."""
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    measured_with: str = "onnxruntime CPUExecutionProvider"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_variant(encoder: Path, pair_head: Path, clips: Sequence[Clip], bank: ExemplarBank, voter_number: int,
                desc: str = "scoring") -> VariantRun:
    """Score every clip with one encoder / pair-head pair (onnxruntime CPU)."""
    enc = onnx_session(encoder, providers=CPU_PROVIDERS)
    pair = onnx_session(pair_head, providers=CPU_PROVIDERS)
    scores, transitions, enc_t, pair_t = [], [], [], []
    for clip in tqdm(clips, desc=desc, unit="clip", disable=None):
        start = time.perf_counter()
        outputs = dict(zip(ENCODER_OUTPUTS, enc.run(list(ENCODER_OUTPUTS), {ENCODER_INPUT: clip.frames[None]})))
        enc_t.append(time.perf_counter() - start)
        indices, _ = select_exemplars(bank, clip.dive_number, voter_number)
        start = time.perf_counter()
        delta, _ = pair.run(["delta", "step_deltas"], pair_feeds(outputs, bank.pair_head_inputs(indices)))
        pair_t.append(time.perf_counter() - start)
        scores.append(score_dive(bank.final_score[indices], delta).final)
        transitions.append(np.asarray(outputs["transitions"]).reshape(-1)[:2])
    return VariantRun(np.array(scores), np.array(transitions, dtype=np.int64),
                      float(np.median(enc_t) * 1000), float(np.median(pair_t) * 1000))


def _rho(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2:
        return None
    value = spearman_rho(a, b)
    return None if np.isnan(value) else round(float(value), 6)


def transitions_vs_truth(pred: np.ndarray, clips: Sequence[Clip]) -> dict[str, float]:
    """AIoU@0.75 and transition error of predicted transitions [N, 2] against the clips' truth."""
    true = target_transitions(np.array([c.transitions for c in clips], dtype=np.int64).reshape(-1, 2))
    errors = transition_errors(pred, true)
    return {"aiou_75": round(aiou(pred, true, 0.75), 6),
            **{k: round(errors[k], 6) for k in ("median", "within_1", "within_2")}}


def drift_report(precision: str, reference: VariantRun, variant: VariantRun, clips: Sequence[Clip],
                 guess: ConstantTransitionGuess | None = None) -> DriftReport:
    """Compare a variant's run with the fp32 run on the same clips and check the precision's goals.

    `guess`: the constant transition guess fitted on the training split, reported beside both runs.
    """
    delta = np.abs(variant.scores - reference.scores)
    frames = np.abs(variant.transitions - reference.transitions)
    judges = np.array([c.final_score for c in clips], dtype=np.float64)
    rho = _rho(variant.scores, reference.scores)
    report = DriftReport(
        precision=precision, clips=len(clips),
        rho_vs_fp32=float("nan") if rho is None else rho,
        mean_abs_delta=round(float(delta.mean()), 6), max_abs_delta=round(float(delta.max()), 6),
        transition_agreement=round(float((frames == 0).mean()), 6), transition_max_frames=int(frames.max()),
        rho_vs_judges=_rho(variant.scores, judges), fp32_rho_vs_judges=_rho(reference.scores, judges),
        encoder_ms=round(variant.encoder_ms, 2), fp32_encoder_ms=round(reference.encoder_ms, 2),
        goals=dict(GOALS.get(precision, {})),
        vs_truth={"variant": transitions_vs_truth(variant.transitions, clips),
                  "fp32": transitions_vs_truth(reference.transitions, clips),
                  **({"constant_guess": transitions_vs_truth(guess.predict(len(clips)), clips)} if guess else {})},
    )
    for name, goal in report.goals.items():
        value = getattr(report, name)
        at_least = name.startswith("rho") or name == "transition_agreement"
        ok = value >= goal if at_least else value <= goal
        if not ok or np.isnan(value):
            report.failures.append(f"{name} {value:.4g} (goal {'>=' if at_least else '<='} {goal:g})")
    report.passed = not report.failures
    return report


def format_report(reports: Sequence[DriftReport]) -> str:
    """A plain table of drift reports."""
    head = (f"{'variant':<8}{'clips':>6}{'rho/fp32':>10}{'mean|d|':>10}{'max|d|':>9}{'trans=':>8}"
            f"{'rho/judges':>12}{'enc ms':>9}{'fp32 ms':>9}  result")
    rows = [head]
    for r in reports:
        judges = "-" if r.rho_vs_judges is None else f"{r.rho_vs_judges:.3f}"
        rows.append(f"{r.precision:<8}{r.clips:>6}{r.rho_vs_fp32:>10.4f}{r.mean_abs_delta:>10.4f}"
                    f"{r.max_abs_delta:>9.3f}{r.transition_agreement:>8.3f}{judges:>12}{r.encoder_ms:>9.1f}"
                    f"{r.fp32_encoder_ms:>9.1f}  {'ok' if r.passed else 'FAILED: ' + '; '.join(r.failures)}")
    if reports and reports[0].vs_truth:
        rows += ["", "transitions against the truth (frames of the 96; constant guess fitted on the train split)",
                 f"{'parser':<20}{'AIoU@0.75':>10}{'median':>8}{'<=1':>7}{'<=2':>7}"]
        sides = [("fp32", reports[0].vs_truth["fp32"])]
        sides += [(r.precision, r.vs_truth["variant"]) for r in reports if "variant" in r.vs_truth]
        if "constant_guess" in reports[0].vs_truth:
            sides.append(("constant guess", reports[0].vs_truth["constant_guess"]))
        rows += [f"{name:<20}{v['aiou_75']:>10.3f}{v['median']:>8.1f}{v['within_1']:>7.2f}{v['within_2']:>7.2f}"
                 for name, v in sides]
    return "\n".join(rows)
