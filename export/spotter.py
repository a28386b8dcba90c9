"""The spotter -> `spotter.onnx`: one frame per call, its recurrent state an explicit input and output.

Graph contract (every runtime steps it the same way, see docs/spotter.md)::

    inputs   frame      uint8   [1, H, W, 3]    spotter_spec.spotter_frame(broadcast frame)
             state      float32 [1, hidden]     SpotterSpec.start_state() first, then the last state_out
    outputs  probs      float32 [1, C]          softmax over spotter_spec.CLASS_NAMES, for frame t - lookahead
             state_out  float32 [1, hidden]

:func:`export_spotter` writes the graph, checks it (an onnxruntime step loop against the PyTorch
model run over the whole sequence at once), audits it for TensorRT and returns the manifest's
``spotter`` section.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from export import log_saved
from export.audit import audit_graph
from export.onnx_export import DEFAULT_OPSET, _finalise, _torch_export, describe_onnx
from fineparser.onnx_session import CPU_PROVIDERS, onnx_session
from fineparser.package import PackageError, file_entry, read_manifest, verify_files
from fineparser.spotter import Spotter
from fineparser.spotter_spec import SPOTTER_FILE, SPOTTER_INPUTS, SPOTTER_OUTPUTS, SpotterSpec

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
"""Largest |onnxruntime - torch| allowed on any probability or state value over the parity sequence."""
PARITY_FRAMES = 32
"""Frames of the parity sequence (several times the longest look-ahead)."""
METADATA_KEY = "fineparser.spotter_spec"
"""ONNX metadata_props key holding the SpotterSpec JSON: the graph describes itself."""


class SpotterStepGraph(nn.Module):
    """One frame: (frame uint8 [1, H, W, 3], state [1, hidden]) -> (probs [1, C], state_out [1, hidden])."""

    def __init__(self, model: Spotter) -> None:
        super().__init__()
        self.model = model

    def forward(self, frame: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        _, probs, state_out = self.model.step(frame, state)
        return probs, state_out


def parity_frames(spec: SpotterSpec, count: int = PARITY_FRAMES, seed: int = 0) -> np.ndarray:
    """`count` random broadcast-sized frames brought to the spotter's input by `spotter_frame`: uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    # Twice the input size, so the parity input goes through the runtime's own downscaling.
    source = rng.integers(0, 256, (count, 2 * spec.input_height, 2 * spec.input_width, 3), dtype=np.uint8)
    return np.stack([spec.prepare(frame) for frame in source])


def run_spotter_parity(model: Spotter, path: str | Path, frames: np.ndarray,
                       tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """Step the ONNX graph frame by frame and compare with the torch model's forward over the whole sequence.

    frames: uint8 [T, H, W, 3].  Returns max abs errors of the probabilities (all steps) and of the
    final state, the tolerance and whether both are within it.
    """
    model.eval()
    with torch.no_grad():
        logits, torch_state = model(torch.from_numpy(frames)[None])
    torch_probs = torch.softmax(logits, dim=-1)[0].numpy()
    session = onnx_session(path, providers=CPU_PROVIDERS)
    state = np.zeros((1, model.hidden_size), dtype=np.float32)
    probs = []
    for frame in frames:
        step_probs, state = session.run(list(SPOTTER_OUTPUTS), {SPOTTER_INPUTS[0]: frame[None],
                                                                SPOTTER_INPUTS[1]: state})
        probs.append(step_probs[0])
    probs_error = float(np.abs(np.stack(probs) - torch_probs).max())
    state_error = float(np.abs(state - torch_state.numpy()).max())
    passed = max(probs_error, state_error) <= tolerance
    return {"frames": int(len(frames)), "max_abs_probs": probs_error, "max_abs_state": state_error,
            "tolerance": tolerance, "passed": passed,
            "reference": "torch forward over the whole sequence, fp32 CPU; onnxruntime CPU one step per frame"}


def export_spotter(model: Spotter, out_dir: str | Path, opset: int = DEFAULT_OPSET,
                   thresholds: dict[str, float] | None = None, parity_frame_count: int = PARITY_FRAMES,
                   seed: int = 0) -> dict[str, Any]:
    """Write `out_dir/spotter.onnx`, check parity, audit for TensorRT; returns the manifest's `spotter` section.

    The section is {"file", "sha256", "size", "spec" (SpotterSpec dict), "config", "graph" (inputs and
    outputs), "opset", "params", "flops_per_frame", "parity", "audit"}.  A failed parity or audit is
    reported in it (``parity["passed"]``, ``audit["passed"]``) and logged, not raised: the caller decides.
    thresholds: decision thresholds to record (None: the spec's defaults).
    """
    from fineparser.spotter import summarise_spotter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SPOTTER_FILE
    spec = model.config.to_spec(thresholds)
    was_training = model.training
    start = time.perf_counter()
    log.info("exporting %s (trunk %s, input %dx%d, look-ahead %d, torch %s, onnx %s, opset %d)", path.name,
             model.config.trunk, spec.input_height, spec.input_width, spec.lookahead, torch.__version__,
             onnx.__version__, opset)
    graph = SpotterStepGraph(model).eval()
    frame = torch.from_numpy(parity_frames(spec, 1, seed=seed + 1))
    state = torch.zeros(1, spec.hidden_size)
    _torch_export(graph, (frame, state), path, opset, list(SPOTTER_INPUTS), list(SPOTTER_OUTPUTS), None)
    _finalise(path, {SPOTTER_OUTPUTS[0]: [1, len(spec.classes)], SPOTTER_OUTPUTS[1]: [1, spec.hidden_size]},
              f"FineParser spotter step: uint8 RGB frame [1,{spec.input_height},{spec.input_width},3] + state "
              f"[1,{spec.hidden_size}] -> class probabilities [1,{len(spec.classes)}] of frame t-{spec.lookahead}, "
              "next state")
    onnx_model = onnx.load(str(path))
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(spec.to_dict())
    onnx.save(onnx_model, str(path))
    log_saved(log, path, time.perf_counter() - start)

    parity = run_spotter_parity(model, path, parity_frames(spec, parity_frame_count, seed), PARITY_TOLERANCE)
    log.info("spotter parity over %d frames: max |probs| %.2e, max |state| %.2e (tolerance %.0e) %s",
             parity["frames"], parity["max_abs_probs"], parity["max_abs_state"], parity["tolerance"],
             "passed" if parity["passed"] else "FAILED")
    if not parity["passed"]:
        log.warning("spotter.onnx does not reproduce the PyTorch spotter within %.0e", parity["tolerance"])
    audit = audit_graph(path, name=SPOTTER_FILE).to_dict()
    if audit["passed"]:
        log.info("audit %s: %d op types, all supported by the TensorRT ONNX parser; static shapes", SPOTTER_FILE,
                 len(audit["op_types"]))
    else:
        log.warning("audit %s FAILED: %s", SPOTTER_FILE, "; ".join(audit["problems"]))
    summary = summarise_spotter(model)
    model.train(was_training)
    described = describe_onnx(path)
    return {"file": SPOTTER_FILE, **file_entry(out_dir, SPOTTER_FILE), "spec": spec.to_dict(),
            "config": model.config.to_dict(), "graph": {"inputs": described["inputs"], "outputs": described["outputs"]},
            "opset": described["opset"], "params": summary["params_total"],
            "flops_per_frame": summary["flops_per_frame"], "parity": parity, "audit": audit}


def add_spotter(package_dir: str | Path, model: Spotter, opset: int = DEFAULT_OPSET,
                thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """Add (or replace) the spotter of an existing package; returns the new manifest.

    The graph is written and checked beside the package first: a spotter that fails its parity
    leaves the package as it was.  The manifest is rewritten atomically with the new file's hash.
    """
    import shutil
    import tempfile

    from fineparser.package import read_manifest, write_manifest

    package_dir = Path(package_dir)
    manifest = read_manifest(package_dir)
    with tempfile.TemporaryDirectory(prefix=".spotter.", dir=package_dir) as staging:
        section = export_spotter(model, staging, opset=opset, thresholds=thresholds)
        if not section["parity"]["passed"]:
            raise RuntimeError(f"spotter.onnx stepped frame by frame does not reproduce the spotter "
                               f"({section['parity']}); {package_dir} was left as it was")
        shutil.move(str(Path(staging) / SPOTTER_FILE), str(package_dir / SPOTTER_FILE))
    manifest["spotter"] = section
    write_manifest(package_dir, manifest, [SPOTTER_FILE])
    return read_manifest(package_dir)


def spotter_files(section: dict[str, Any]) -> list[str]:
    """The package files a manifest's ``spotter`` section names: its graph and its recorded precision variants."""
    return [section["file"], *(v["file"] for v in (section.get("variants") or {}).values())]


def spotter_of(package: str | Path) -> dict[str, Any]:
    """The ``spotter`` section of an existing package, its files checked against its manifest.

    A package without a spotter, or whose spotter files are missing, unhashed or changed, is a
    PackageError naming it and what to do."""
    package = Path(package)
    manifest = read_manifest(package)
    section = manifest.get("spotter")
    if not isinstance(section, dict) or not section.get("file"):
        raise PackageError(f"{package} has no spotter to copy (its manifest has no 'spotter' section); add one "
                           "with `fineparser-export SPOTTER_CKPT --add-spotter --out PKG`")
    names = spotter_files(section)
    listed = manifest.get("files") or {}
    unlisted = [name for name in names if name not in listed]
    if unlisted:
        raise PackageError(f"{package}: its spotter names {', '.join(unlisted)}, which the manifest does not hash; "
                           "add the spotter there again (fineparser-export SPOTTER_CKPT --add-spotter)")
    verify_files(package, {"files": {name: listed[name] for name in names}})
    return section


def copy_spotter(source_package: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """The spotter of an existing package, copied into `out_dir` (a package being written); returns its section.

    The spotter is its own network, so a re-exported scorer keeps it as it was tuned: the graph, its
    precision variants, thresholds, holds and start state (``fineparser-calibrate --segmenter``) travel
    with it unchanged (:func:`spotter_of` checks them first).
    """
    import copy
    import shutil

    section = copy.deepcopy(spotter_of(source_package))
    names = spotter_files(section)
    for name in names:
        shutil.copy2(Path(source_package) / name, Path(out_dir) / name)
    log.info("copied the spotter of %s (%s; thresholds and holds %s)", source_package, ", ".join(names),
             "as tuned there" if section.get("tuning") else "not tuned")
    return section
