"""What the spotter is, as the runtime needs to know it (numpy + OpenCV only, no torch).

The spotter is the small network of the `auto` segmenter (DESIGN.md section 8): it labels every
broadcast frame causally as one of :data:`CLASS_NAMES`.  Training, export parity and the runtime
all turn a broadcast frame into the spotter's input with :func:`spotter_frame`, and all read the
classes, input size, look-ahead and decision thresholds from one :class:`SpotterSpec`, which the
model package's manifest carries (``manifest["spotter"]``).

Look-ahead: the spotter is a delay line.  The output it produces after seeing frame ``t`` is the
label of frame ``t - lookahead`` (:func:`labelled_frame`); training shifts its targets by the same
amount.  So the label of frame ``s`` depends on frames ``0 .. s + lookahead`` only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

import cv2
import numpy as np

from fineparser import spec

CLASS_NAMES = ("idle", "approach", "flight", "entry", "replay")
"""Per-frame classes in output order (machine names, stable in files and events)."""
CLASS_LABELS = ("idle (anything else)", *spec.STEP_NAMES, "replay")
"""Human labels of :data:`CLASS_NAMES`, same order."""
IDLE, APPROACH, FLIGHT, ENTRY, REPLAY = range(len(CLASS_NAMES))
LIVE_CLASSES = (APPROACH, FLIGHT, ENTRY)
"""The three live phases of a dive (the steps FineParser explains a score by)."""

SPOTTER_FILE = "spotter.onnx"
"""The spotter's one-frame step graph in a model package."""
SPOTTER_INPUTS = ("frame", "state")
"""Graph inputs: uint8 frame [1, H, W, 3] (from :func:`spotter_frame`), float32 state [1, hidden_size]."""
SPOTTER_OUTPUTS = ("probs", "state_out")
"""Graph outputs: float32 class probabilities [1, len(CLASS_NAMES)], float32 next state [1, hidden_size]."""
MANIFEST_KEY = "spotter"
"""Section of manifest.json describing the spotter: {"file", "sha256", "size", "spec", "config", "parity", ...}."""

INPUT_HW = (90, 160)
"""Default (height, width) of the spotter's input: a 16:9 frame downscaled 8x from 720p."""
MAX_LOOKAHEAD = 8
"""The largest look-ahead (frames) a spotter may be trained with."""
DEFAULT_LOOKAHEAD = 4
"""Default look-ahead: 160 ms at 25 fps, enough to see a take-off leave the board."""

DEFAULT_THRESHOLDS = {"live_enter": 0.6, "live_exit": 0.3, "replay_enter": 0.6, "live_back": 0.6}
"""Decision thresholds of the segmenter's hysteresis on the spotter's probabilities.

live_enter: a dive starts when P(approach) + P(flight) + P(entry) reaches this;
live_exit: a started dive ends when that sum falls below this (live_exit <= live_enter);
replay_enter: a frame counts as replay (never a new dive) when P(replay) reaches this;
live_back: a started dive is dated back over the frames just before it whose P(live) reaches this
(at most the segmenter's ``start_back_s``): the first frames of an approach look like the waiting diver,
so the spotter is often sure of a dive only a few frames in.  At live_enter or above it changes nothing.
"""


class SpotterSpecError(ValueError):
    """A spotter spec (manifest section) that is malformed or foreign."""


def spotter_frame(frame: np.ndarray, input_hw: tuple[int, int] = INPUT_HW,
                  reduced: np.ndarray | None = None) -> np.ndarray:
    """A broadcast frame (uint8 RGB [H, W, 3], any size) -> the spotter's input uint8 [h, w, 3].

    Two steps, the same call for training, export parity and the runtime: the model frame's integer box
    average (:func:`fineparser.preprocess.box_reduce_frame`, 1080p -> 320x540), then OpenCV's area filter to
    the input size (aspect not kept). Both average every source pixel, so the input is the full frame's area
    average up to rounding in the middle (at most 1 level), and the capture thread, which reduces each frame
    for the model anyway, pays only the second step: pass that reduction as `reduced`. When the reduction is
    smaller than the input on a side (a large custom input), the full frame is resized instead.
    Channel order is kept: a BGR frame gives a BGR input.
    """
    from fineparser.preprocess import box_reduce_frame

    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"spotter_frame expects a uint8 RGB frame [H, W, 3], got {frame.dtype} "
                         f"{list(frame.shape)}")
    height, width = input_hw
    if frame.shape[:2] == (height, width):
        return np.ascontiguousarray(frame)
    source = box_reduce_frame(frame) if reduced is None else reduced
    if source.shape[0] < height or source.shape[1] < width:
        source = frame
    if source.shape[:2] == (height, width):
        return np.ascontiguousarray(source)
    return cv2.resize(source, (width, height), interpolation=cv2.INTER_AREA)


def labelled_frame(step: int, lookahead: int) -> int:
    """Index of the frame whose label the spotter outputs after seeing frame `step` (-1: none yet)."""
    return step - lookahead if step >= lookahead else -1


@dataclass
class SpotterSpec:
    """Everything a runtime needs to feed the spotter and read its output (the manifest's `spotter`)."""

    classes: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    class_labels: list[str] = field(default_factory=lambda: list(CLASS_LABELS))
    input_height: int = INPUT_HW[0]
    input_width: int = INPUT_HW[1]
    lookahead: int = DEFAULT_LOOKAHEAD  # frames: output after frame t is the label of frame t - lookahead
    mean: list[float] = field(default_factory=lambda: list(spec.IMAGENET_MEAN))  # applied inside the graph
    std: list[float] = field(default_factory=lambda: list(spec.IMAGENET_STD))
    hidden_size: int = 128  # length of the recurrent state vector (graph input `state` [1, hidden_size])
    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    # The state a stream starts from: [] is zeros; `fineparser-calibrate --segmenter` stores the spotter's settled
    # idle state here (docs/spotter.md, "Where a stream starts"), so a programme's first frames are read in context.
    initial_state: list[float] = field(default_factory=list)

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the spotter's input frames."""
        return self.input_height, self.input_width

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """A broadcast frame -> this spotter's input (see :func:`spotter_frame`)."""
        return spotter_frame(frame, self.input_hw)

    def start_state(self) -> np.ndarray:
        """The recurrent state before a stream's first frame, float32 [1, hidden_size]: ``initial_state``, or zeros."""
        if self.initial_state:
            return np.asarray(self.initial_state, dtype=np.float32).reshape(1, self.hidden_size)
        return np.zeros((1, self.hidden_size), dtype=np.float32)

    def validate(self) -> SpotterSpec:
        """Check the values; raises SpotterSpecError saying which one is wrong."""
        if list(self.classes) != list(CLASS_NAMES):
            raise SpotterSpecError(f"spotter classes {list(self.classes)} are not this toolkit's "
                                   f"{list(CLASS_NAMES)}: the package was made by another version")
        if len(self.class_labels) != len(self.classes):
            raise SpotterSpecError(f"{len(self.class_labels)} class labels for {len(self.classes)} classes")
        if not (0 <= self.lookahead <= MAX_LOOKAHEAD):
            raise SpotterSpecError(f"spotter lookahead {self.lookahead} is outside 0..{MAX_LOOKAHEAD} frames")
        if self.input_height < 32 or self.input_width < 32:
            raise SpotterSpecError(f"spotter input {self.input_height}x{self.input_width} is below 32x32")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise SpotterSpecError(f"spotter mean/std must be 3 values each (std > 0), got {self.mean}, {self.std}")
        if self.hidden_size < 1:
            raise SpotterSpecError(f"spotter hidden_size must be positive, got {self.hidden_size}")
        if self.initial_state and (len(self.initial_state) != self.hidden_size
                                   or not np.all(np.isfinite(np.asarray(self.initial_state, dtype=np.float64)))):
            raise SpotterSpecError(f"spotter initial_state has {len(self.initial_state)} values (finite ones needed: "
                                   f"hidden_size {self.hidden_size}, or none for zeros): re-run "
                                   "`fineparser-calibrate PKG --segmenter`")
        unknown = sorted(set(self.thresholds) - set(DEFAULT_THRESHOLDS))
        if unknown:
            raise SpotterSpecError(f"unknown spotter threshold(s) {', '.join(unknown)}; known: "
                                   f"{', '.join(DEFAULT_THRESHOLDS)}")
        for name, value in self.thresholds.items():
            if not 0.0 <= float(value) <= 1.0:
                raise SpotterSpecError(f"spotter threshold {name}={value} is not a probability in [0, 1]")
        thresholds = {**DEFAULT_THRESHOLDS, **self.thresholds}
        if thresholds["live_exit"] > thresholds["live_enter"]:
            raise SpotterSpecError(f"live_exit {thresholds['live_exit']} above live_enter "
                                   f"{thresholds['live_enter']}: the hysteresis would never hold a dive")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/manifest friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SpotterSpec:
        """Build from a dict (a manifest's `spotter` section); unknown keys are an error listing the known ones.

        Thresholds missing from `values["thresholds"]` take their defaults, so an older manifest still reads.
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SpotterSpecError(f"unknown spotter spec key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
        values = dict(values)
        if "thresholds" in values:
            values["thresholds"] = {**DEFAULT_THRESHOLDS, **dict(values["thresholds"])}
        for name in ("classes", "class_labels", "mean", "std", "initial_state"):
            if name in values:
                values[name] = list(values[name])
        return cls(**values).validate()

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> SpotterSpec:
        """The spec of a package's spotter (``manifest["spotter"]["spec"]``); SpotterSpecError if it has none."""
        section = manifest.get(MANIFEST_KEY)
        if not isinstance(section, dict) or "spec" not in section:
            raise SpotterSpecError("this model package has no spotter: export one into it (see docs/spotter.md) "
                                   "or choose another segmenter")
        return cls.from_dict(section["spec"])
