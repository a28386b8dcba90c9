"""A package's ``spotter.onnx`` stepped one frame at a time, its state fed back (runtime and calibration).

Graph contract (docs/spotter.md): inputs ``frame`` uint8 [1, H, W, 3] (``SpotterSpec.prepare`` of the
broadcast frame) and ``state`` float32 [1, hidden]; outputs ``probs`` float32 [1, 5] (the classes of
``fineparser.spotter_spec.CLASS_NAMES``) for the frame ``lookahead`` frames back, and ``state_out``.
The live session runs it on every frame in stream order and feeds the probabilities to
``fineparser.dive_state.DiveStateMachine``; ``fineparser-calibrate --segmenter`` / ``--spotter`` run it offline.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fineparser.onnx_session import OnnxSessionError, onnx_session
from fineparser.package import ModelPackage, sha256_file
from fineparser.spotter_spec import (
    MANIFEST_KEY,
    SPOTTER_FILE,
    SPOTTER_INPUTS,
    SPOTTER_OUTPUTS,
    SpotterSpec,
    SpotterSpecError,
)

log = logging.getLogger(__name__)

ADD_SPOTTER_HINT = ("add one with `fineparser-export CKPT --out PKG --spotter SPOTTER_CKPT` (docs/spotter.md), "
                    "or choose --segment clip, timecodes:FILE or operator")
SPOTTER_THREADS = 2
"""onnxruntime intra-op threads of the spotter session (its cost goal is measured with 2, docs/spotter.md)."""


class SpotterError(ValueError):
    """A package whose spotter cannot be run (absent, malformed, damaged); the message says what to do."""


def has_spotter(package: ModelPackage) -> bool:
    """Whether the package's manifest records a spotter."""
    return isinstance(package.manifest.get(MANIFEST_KEY), dict)


def spotter_segmenter_settings(package: ModelPackage) -> dict[str, float]:
    """The package's own auto-segmenter durations (``manifest["spotter"]["segmenter"]``, seconds); {} when none."""
    return dict(package.manifest.get(MANIFEST_KEY, {}).get("segmenter") or {})


class SpotterRunner:
    """One onnxruntime session of spotter.onnx and its recurrent state; ``step`` once per frame, in order."""

    def __init__(self, path: Any, spec: SpotterSpec, providers: list[str] | None = None,
                 threads: int = SPOTTER_THREADS) -> None:
        self.spec = spec
        self.path = Path(path)
        try:
            self.session = onnx_session(path, providers=providers, threads=threads)
        except OnnxSessionError as exc:
            raise SpotterError(str(exc)) from None
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != set(SPOTTER_INPUTS) or not set(SPOTTER_OUTPUTS) <= set(outputs):
            raise SpotterError(f"{path}: inputs {sorted(inputs)} and outputs {outputs} are not the spotter's "
                               f"{list(SPOTTER_INPUTS)} -> {list(SPOTTER_OUTPUTS)}: re-export the spotter")
        frame_shape = inputs[SPOTTER_INPUTS[0]]
        if list(frame_shape[1:]) != [spec.input_height, spec.input_width, 3]:
            raise SpotterError(f"{path}: frame input {frame_shape} does not match the manifest's spotter spec "
                               f"[1, {spec.input_height}, {spec.input_width}, 3]: re-export the spotter")
        self.state = spec.start_state()
        self.steps = 0
        start = ("its settled idle state" if spec.initial_state else
                 "zeros (`fineparser-calibrate PKG --segmenter` sets the state a stream starts from)")
        self.description = (f"spotter {self.session.get_providers()[0]}, look-ahead {spec.lookahead}, "
                            f"starts from {start}")

    @classmethod
    def from_package(cls, package: ModelPackage, providers: list[str] | None = None) -> SpotterRunner:
        """The package's spotter; SpotterError (one line, naming the fix) when it has none or it is damaged."""
        section = package.manifest.get(MANIFEST_KEY)
        if not isinstance(section, dict):
            raise SpotterError(f"--segment auto needs a spotter and the package {package.root} has none: "
                               f"{ADD_SPOTTER_HINT}")
        try:
            spec = SpotterSpec.from_manifest(package.manifest)
        except SpotterSpecError as exc:
            raise SpotterError(f"{package.root}/manifest.json, spotter: {exc}") from None
        name = section.get("file", SPOTTER_FILE)
        path = package.path(name)
        if not path.is_file():
            raise SpotterError(f"{path} is missing (the manifest records a spotter): restore it or re-export the "
                               "package")
        if not package.has(name) and section.get("sha256"):
            # load_package verified every file of manifest["files"]; a spotter recorded only here is checked now.
            digest = sha256_file(path)
            if digest != section["sha256"]:
                raise SpotterError(f"{path}: sha256 {digest[:12]}... does not match the manifest "
                                   f"({str(section['sha256'])[:12]}...): the file is corrupted or was modified; "
                                   "restore it or re-export the package")
        return cls(path, spec, providers=providers)

    def step(self, frame_rgb: np.ndarray) -> np.ndarray:
        """One broadcast frame (uint8 RGB [H, W, 3], any size) -> probabilities [5] of the frame `lookahead` back.

        The first `lookahead` answers label no frame yet (DiveStateMachine skips them).
        """
        frame = self.spec.prepare(frame_rgb)[None]
        probs, self.state = self.session.run(list(SPOTTER_OUTPUTS), {SPOTTER_INPUTS[0]: frame,
                                                                      SPOTTER_INPUTS[1]: self.state})
        self.steps += 1
        return np.asarray(probs, dtype=np.float32).reshape(-1)

    def reset(self) -> None:
        """Forget the past (a new stream): back to the spec's start state (``SpotterSpec.start_state``)."""
        self.state = self.spec.start_state()
        self.steps = 0
