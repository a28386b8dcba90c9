"""fineparser-calibrate PKG --spotter --data-root BROADCASTS: FP16 and INT8 variants of the package's spotter.

The annotated broadcasts under ``--data-root`` (the training format; not those the spotter trained on)
are split in two: every other one calibrates, the rest measure.  The fp32 ``spotter.onnx`` is stepped
over the calibration half to collect what a variant is calibrated on: frames and the recurrent state
fed with each (:data:`CALIBRATION_STEPS` steps spread over the broadcasts).  Then, per precision:

- fp16: ModelOpt AutoCast (``calibration.variants.make_fp16``, I/O kept fp32/uint8);
- int8: ModelOpt PTQ of the trunk only (``make_int8``; the projection, GRU and classifier stay fp32:
  :data:`SPOTTER_INT8_EXCLUDE`), activation ranges by ``--method`` (``max`` unless given);

and the variant is stepped over the measuring half beside fp32.  What a user relies on is the dives,
so the goals are the detection's (the package's own thresholds and holds, ``calibration.segmenter``):
dive F1 at temporal IoU 0.5 no lower than fp32's, no more false dives, median start and end error
within :data:`BOUNDARY_SLACK_FRAMES` of fp32's.  Per-frame class agreement and the largest probability
difference are reported beside them.  A variant that meets the goals (or any, with ``--accept-drift``)
is written as ``spotter_<precision>.onnx`` and recorded in ``manifest["spotter"]["variants"]``, where
the engine plan (``export/engine_plan.py``) builds it with the package's variant of that precision.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from calibration.segmenter import DURATION_NAMES, Recording, figures, record

log = logging.getLogger("fineparser.calibrate")

SPOTTER_VARIANT_FILES = {"fp16": "spotter_fp16.onnx", "int8": "spotter_int8.onnx"}
"""File of each spotter variant in the package."""
SPOTTER_INT8_EXCLUDE = ("/projection/.*", "/input_gates/.*", "/head/.*", "/classifier/.*")
"""ONNX node name patterns INT8 leaves in fp32: everything after the trunk (0.2% of the FLOPs)."""
CALIBRATION_STEPS = 512
BOUNDARY_SLACK_FRAMES = 1.0


def calibration_inputs(runner: Any, broadcasts: list, steps: int = CALIBRATION_STEPS) -> dict[str, np.ndarray]:
    """{frame: uint8 [N, h, w, 3], state: float32 [N, hidden]}: N steps spread evenly over the broadcasts,
    each with the state fp32 fed with it (stepping from each broadcast's first frame)."""
    from fineparser.spotter_spec import SPOTTER_INPUTS

    total = sum(b.num_frames for b in broadcasts)
    stride = max(1, total // max(steps, 1))
    frames, states = [], []
    for b in broadcasts:
        runner.reset()
        for t in range(b.num_frames):
            frame = np.asarray(b.frames[t])
            if t % stride == 0:
                frames.append(frame)
                states.append(runner.state.reshape(-1).copy())
            runner.step(frame)
    return {SPOTTER_INPUTS[0]: np.stack(frames), SPOTTER_INPUTS[1]: np.stack(states).astype(np.float32)}


def drift(reference: list[Recording], variant: list[Recording], lookahead: int, settings: dict[str, float]
          ) -> dict[str, Any]:
    """The variant's detection beside fp32's on the same broadcasts, per-frame agreement, and the goals."""
    ref_probs = np.concatenate([r.probs for r in reference])
    var_probs = np.concatenate([r.probs for r in variant])
    fp32, low = figures(reference, lookahead, settings), figures(variant, lookahead, settings)
    failures = []
    if low["f1"] < fp32["f1"]:
        failures.append(f"dive F1 {low['f1']:.3f} below fp32's {fp32['f1']:.3f}")
    if low["false_dives"] > fp32["false_dives"]:
        failures.append(f"{low['false_dives']} false dives, fp32 {fp32['false_dives']}")
    for key in ("start_err_median", "end_err_median"):
        if low[key] > fp32[key] + BOUNDARY_SLACK_FRAMES:
            failures.append(f"{key} {low[key]:.1f} frames, fp32 {fp32[key]:.1f} (+{BOUNDARY_SLACK_FRAMES:g} allowed)")
    return {"frames": int(len(ref_probs)), "broadcasts": [r.name for r in reference],
            "class_agreement": round(float(np.mean(ref_probs.argmax(1) == var_probs.argmax(1))), 5),
            "max_abs_probs": round(float(np.abs(ref_probs - var_probs).max()), 6),
            "mean_abs_probs": round(float(np.abs(ref_probs - var_probs).mean()), 6),
            "fp32": fp32, "variant": low, "failures": failures, "passed": not failures}


def run(package_dir: Path, data_root: Path, precisions: list[str], method: str | None = None,
        accept_drift: bool = False, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Make, measure and (when they pass, or accept_drift) record the spotter variants; {precision: record}."""
    import shutil

    from calibration.variants import INT8_DEFAULT_METHOD, make_fp16, make_int8
    from fineparser.dive_state import segmenter_durations
    from fineparser.package import load_package, read_manifest, write_manifest
    from fineparser.spotter_runner import SpotterRunner, spotter_segmenter_settings
    from train.spotter_data import load_broadcasts

    package_dir = Path(package_dir)
    package = load_package(package_dir)
    runner = SpotterRunner.from_package(package)
    broadcasts = load_broadcasts(data_root, runner.spec.input_hw, progress=progress)
    calib, held = broadcasts[0::2], broadcasts[1::2]
    if not held:
        log.warning("one broadcast under %s: it both calibrates and measures the spotter variants", data_root)
        held = calib
    settings = {**runner.spec.thresholds,
                **{k: segmenter_durations(spotter_segmenter_settings(package))[k] for k in DURATION_NAMES}}
    start = time.perf_counter()
    inputs = calibration_inputs(runner, calib)
    reference = record(runner, held, progress)
    log.info("spotter fp32: %d calibration steps from %d broadcasts, %d frames of %d broadcasts to measure (%.1f s)",
             len(inputs["frame"]), len(calib), sum(len(r.probs) for r in reference), len(held),
             time.perf_counter() - start)
    records: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix=".spotter-variants.", dir=package_dir) as staging:
        work = Path(staging)
        for precision in precisions:
            start = time.perf_counter()
            out = work / SPOTTER_VARIANT_FILES[precision]
            if precision == "fp16":
                npz = work / "spotter_calib.npz"
                np.savez(npz, **{name: value[:1] for name, value in inputs.items()})
                how = make_fp16(runner.path, out, npz)
            else:
                how = make_int8(runner.path, out, inputs, method=method or INT8_DEFAULT_METHOD,
                                exclude=SPOTTER_INT8_EXCLUDE)
            variant = SpotterRunner(out, runner.spec)
            report = drift(reference, record(variant, held, progress), runner.spec.lookahead, settings)
            records[precision] = {"file": out.name, "precision": precision, "how": how, "drift": report,
                                  "accepted_with_drift": not report["passed"],
                                  "seconds": round(time.perf_counter() - start, 1)}
            log.info("spotter %s: %s (class agreement %.4f, max |dp| %.4f)", precision,
                     "met its goals" if report["passed"] else "missed: " + "; ".join(report["failures"]),
                     report["class_agreement"], report["max_abs_probs"])
        keep = {p: r for p, r in records.items() if r["drift"]["passed"] or accept_drift}
        for r in keep.values():
            shutil.move(str(work / r["file"]), str(package_dir / r["file"]))
    if keep:
        manifest = read_manifest(package_dir)
        section = manifest["spotter"]
        section["variants"] = {**(section.get("variants") or {}), **keep}
        write_manifest(package_dir, manifest, [r["file"] for r in keep.values()])
    for precision, r in records.items():
        r["recorded"] = precision in keep
    return records


def format_records(records: dict[str, dict[str, Any]]) -> str:
    """One table: fp32 and each variant's detection figures and drift."""
    keys = ("f1", "false_dives", "start_err_median", "end_err_median")
    lines = [f"{'spotter':<10}" + "".join(f"{k:>18}" for k in keys) + f"{'agreement':>12}{'max |dp|':>10}  goals"]
    first = next(iter(records.values()), None)
    if first is not None:
        ref = first["drift"]["fp32"]
        lines.append(f"{'fp32':<10}" + "".join(f"{ref[k]:>18.3f}" if isinstance(ref[k], float) else f"{ref[k]:>18}"
                                              for k in keys))
    for precision, r in records.items():
        d, v = r["drift"], r["drift"]["variant"]
        lines.append(f"{precision:<10}" + "".join(f"{v[k]:>18.3f}" if isinstance(v[k], float) else f"{v[k]:>18}"
                                                  for k in keys)
                     + f"{d['class_agreement']:>12.4f}{d['max_abs_probs']:>10.4f}  "
                     + ("met" if d["passed"] else "missed: " + "; ".join(d["failures"]))
                     + ("" if r["recorded"] else " (not recorded)"))
    return "\n".join(lines)
