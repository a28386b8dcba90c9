"""fineparser-calibrate PKG --segmenter --data-root BROADCASTS: tune the auto segmenter on annotated broadcasts.

The spotter's probabilities become dives through :class:`fineparser.dive_state.DiveStateMachine`, whose
thresholds (``live_enter``, ``live_exit``, ``replay_enter``, ``live_back``: the spotter spec's) and durations
(``start_hold_s``, ``end_hold_s``, ``entry_tail_s``: the package's ``spotter.segmenter``) were set by hand.
This first sets the state a stream starts from (:func:`settled_idle_state`: the spotter's mean state on settled
idle frames, ``spotter.spec.initial_state``; with zeros, the spotter misreads a programme's first seconds), then
runs the package's ``spotter.onnx`` over every annotated broadcast under ``--data-root`` (the training
format, docs/data.md "Annotated broadcasts"; use broadcasts the spotter was not trained on) from that state, then
replays the state machine on those probabilities for candidate settings (every combination of
:data:`GRID_NAMES`' candidates, then one setting at a time, a few passes, durations included:
one threshold alone can lose what two together win; ``entry_tail_s`` tries 0, off, and quantiles of the
annotated entry-to-end durations) and keeps the settings of lowest cost:

    cost = 100 x (missed + false [+ late] dives)  +  mean |start error| + |end error|  +  0.5 x mean decision delay

(errors and delays in frames of matched dives; a dive is matched at temporal IoU >= 0.5).  A false
dive or a missed one outweighs any timing, so timing is tuned only among settings that detect equally
well.  With a latency budget (``--max-end-delay S``), a matched dive whose ``dive_end`` is decided more than S
stream seconds after its true end counts as *late*, as heavily as a missed one: the end error is then tuned only
among settings that keep every tuning dive within the budget (or as many as any setting can).  The chosen
values, and the figures before and after, are written into the manifest (atomically; ``spotter.tuning``),
where ``fineparser-live --segment auto`` reads them.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fineparser.metrics import DETECTION_TIOU, match_detections

log = logging.getLogger("fineparser.calibrate")

THRESHOLD_NAMES = ("live_enter", "live_exit", "replay_enter", "live_back")
GRID_NAMES = ("live_enter", "live_exit", "replay_enter")
"""Thresholds searched jointly (every combination) before the one-at-a-time passes."""
DURATION_NAMES = ("start_hold_s", "end_hold_s", "entry_tail_s")
CANDIDATES: dict[str, tuple[float, ...]] = {
    "live_enter": (0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "live_exit": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "replay_enter": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "live_back": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0),
    "start_hold_s": (0.04, 0.08, 0.12, 0.2, 0.32, 0.48),
    "end_hold_s": (0.04, 0.08, 0.12, 0.2, 0.3, 0.4),
}
"""Values tried for each setting (thresholds are probabilities, durations stream seconds)."""
PASSES = 3
MIN_GAIN = 1.0
"""A setting moves only when it lowers the cost by at least this much (about a frame of timing per dive): the
tuning broadcasts are few, and a threshold or hold that wins a fraction of a frame on them tends to split or
merge dives on broadcasts unlike them."""


@dataclass
class Recording:
    """One annotated broadcast and the spotter's outputs on it, step by step."""

    name: str
    fps: float
    probs: np.ndarray  # float32 [N, 5]: the output after frame t (the frame lookahead earlier's classes)
    dives: list[tuple[float, float]]  # true live dives, stream seconds [start, end)
    replays: list[tuple[float, float]]
    entries: list[float | None] | None = None  # per dive: stream time of its first entry frame (None: not annotated)


def spotter_probs(runner: Any, frames: np.ndarray) -> np.ndarray:
    """Step a fresh spotter over `frames` (uint8 [N, h, w, 3], RGB) in order; float32 [N, 5]."""
    runner.reset()
    return np.stack([runner.step(frame) for frame in frames]).astype(np.float32)


def record(runner: Any, broadcasts: list, progress: bool = True) -> list[Recording]:
    """Step `runner` (fresh state per broadcast) over each broadcast's cached frames (train.spotter_data.Broadcast)."""
    from tqdm import tqdm

    return [recording(b, spotter_probs(runner, b.frames))
            for b in tqdm(broadcasts, unit="video", desc=f"spotter {Path(runner.path).name}", disable=not progress)]


def recording(broadcast: Any, probs: np.ndarray) -> Recording:
    """A broadcast (train.spotter_data.Broadcast) with the spotter's outputs on it: its annotated dives, replays
    and entries in stream seconds (the annotation's last frame included: a dive ends at (end_frame + 1) / fps)."""
    from fineparser.broadcast_labels import read_broadcast_labels

    labels = read_broadcast_labels(broadcast.annotation)
    fps = labels.fps
    return Recording(
        name=broadcast.name, fps=fps, probs=probs,
        dives=[(d.start_frame / fps, (d.end_frame + 1) / fps) for d in labels.dives],
        replays=[(r.start_frame / fps, (r.end_frame + 1) / fps) for r in labels.replays],
        entries=[None if d.entry_start_frame is None else d.entry_start_frame / fps for d in labels.dives])


TAIL_QUANTILES = (0.2, 0.3, 0.4, 0.5, 0.6)
"""Quantiles of the annotated entry-to-end durations tried as ``entry_tail_s`` (beside 0, off)."""
BUDGET_TAIL_STEP_S = 0.04
"""Under a latency budget the tail, which sets how long after the entry the end is decided, is also tried every
this many seconds (a frame at 25 fps) from the shortest annotated entry-to-end duration up to the 60 % quantile:
the longest tail within the budget sits between the quantiles, which are far apart where few dives end early."""


def entry_tail_candidates(recordings: list[Recording], budget: bool = False) -> tuple[float, ...]:
    """``entry_tail_s`` values to try: 0 (off) and quantiles of the annotated dives' entry-to-end seconds
    (`budget`: also every :data:`BUDGET_TAIL_STEP_S` from the shortest of them to the last quantile).

    Only 0 when no dive has its entry annotated (the optional ``entry_start`` of docs/data.md)."""
    tails = [end - entry for rec in recordings for (_, end), entry in zip(rec.dives, rec.entries or [])
             if entry is not None and end > entry]
    if not tails:
        return (0.0,)
    values = {round(float(np.quantile(tails, q)), 2) for q in TAIL_QUANTILES}
    if budget:
        low, high = min(tails), float(np.quantile(tails, TAIL_QUANTILES[-1]))
        values |= {round(float(v), 2) for v in np.arange(low, high + 1e-9, BUDGET_TAIL_STEP_S)}
    return (0.0, *sorted(values))


SETTLE_S = 1.0
"""A frame's state counts as settled idle when this many seconds of frames up to it are all idle..."""
WARM_S = 10.0
"""...and it is at least this far into its broadcast (the first seconds still carry the zero start)."""


def settled_idle_state(runner: Any, broadcasts: list, progress: bool = True) -> tuple[np.ndarray | None, int]:
    """The spotter's mean recurrent state on settled idle frames of `broadcasts`, and how many frames it averages.

    A live stream starts with no past. From zeros, a state the spotter never holds after its first frames, the
    bundled spotter read a programme's opening close-up as a replay for 8 s, and missed the dive that followed
    (docs/spotter.md, "Where a stream starts"). Started from the state it holds while nothing happens, it reads
    the first frames as it reads any idle stretch. (None, 0) when no frame qualifies (broadcasts too short).
    """
    from tqdm import tqdm

    from fineparser.broadcast_labels import read_broadcast_labels
    from fineparser.spotter_spec import IDLE

    total = np.zeros((1, runner.spec.hidden_size), dtype=np.float64)
    count = 0
    for b in tqdm(broadcasts, unit="video", desc="settled idle state", disable=not progress):
        labels = read_broadcast_labels(b.annotation)
        idle = np.asarray(labels.classes) == IDLE
        settle, warm = max(1, round(SETTLE_S * labels.fps)), round(WARM_S * labels.fps)
        # run[t]: idle frames in a row ending at frame t
        run = np.zeros(len(idle), dtype=np.int64)
        for t, is_idle in enumerate(idle):
            run[t] = (run[t - 1] + 1 if t else 1) if is_idle else 0
        runner.reset()
        runner.state = np.zeros_like(runner.state)  # whatever the spec holds: calibrating twice gives one state
        for t, frame in enumerate(b.frames):
            runner.step(frame)
            if t >= warm and t < len(run) and run[t] >= settle:
                total += runner.state
                count += 1
    if count == 0:
        return None, 0
    return (total / count).astype(np.float32), count


def record_broadcasts(runner: Any, root: Path, progress: bool = True) -> list[Recording]:
    """The spotter's outputs on every annotated broadcast under `root` (frames decoded once, cached).

    SpotterDataError (naming the file, and the line of a bad annotation) when there is none or one is unusable.
    """
    from train.spotter_data import load_broadcasts

    return record(runner, load_broadcasts(root, runner.spec.input_hw, progress=progress), progress)


def detect(recording: Recording, lookahead: int, settings: dict[str, float]) -> list[tuple[float, float, float]]:
    """The auto segmenter's dives on a recording: (start_s, end_s, decided_s) each."""
    from fineparser.dive_state import DiveStateMachine, SegmentEvent

    machine = DiveStateMachine(fps=recording.fps, lookahead=lookahead,
                               thresholds={k: settings[k] for k in THRESHOLD_NAMES if k in settings},
                               durations={k: settings[k] for k in DURATION_NAMES if k in settings})
    dives = []
    frame = 1.0 / recording.fps
    last = None
    for t, probs in enumerate(recording.probs):
        last = t * frame
        for event in machine.feed(last, probs):
            if isinstance(event, SegmentEvent) and event.kind == "end":
                dives.append((event.dive.start, event.dive.end, last))
    for event in machine.finish(last, frame):
        if isinstance(event, SegmentEvent) and event.kind == "end":
            dives.append((event.dive.start, event.dive.end, last))
    return dives


@dataclass
class Matched:
    """The auto segmenter's dives on recordings, matched to the true ones (tIoU >= DETECTION_TIOU)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    on_replay: int = 0  # unmatched detections overlapping a replay
    starts: list[float] = dataclasses.field(default_factory=list)  # per matched dive: |start error|, frames
    ends: list[float] = dataclasses.field(default_factory=list)  # |end error|, frames
    after_s: list[float] = dataclasses.field(default_factory=list)  # decided - true end, stream s (may be < 0)
    fps: list[float] = dataclasses.field(default_factory=list)  # the dive's stream rate

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp else 0.0


def merged(parts: list[Matched]) -> Matched:
    """One Matched of several (the shards of a distributed evaluation): counts add up, per-dive lists join."""
    total = Matched()
    for part in parts:
        for f in dataclasses.fields(Matched):
            setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))
    return total


def match(recordings: list[Recording], lookahead: int, settings: dict[str, float]) -> Matched:
    """Detect on every recording with `settings` and match the detections to the true dives."""
    m = Matched()
    for rec in recordings:
        detected = detect(rec, lookahead, settings)
        matched = match_detections(rec.dives, [(s, e) for s, e, _ in detected])
        m.tp += len(matched)
        m.fn += len(rec.dives) - len(matched)
        unmatched = [d for i, d in enumerate(detected) if i not in matched.values()]
        m.fp += len(unmatched)
        m.on_replay += sum(1 for s, e, _ in unmatched if any(min(e, b) > max(s, a) for a, b in rec.replays))
        for truth, found in matched.items():
            (start, end), (s, e, decided) = rec.dives[truth], detected[found]
            m.starts.append(abs(s - start) * rec.fps)
            m.ends.append(abs(e - end) * rec.fps)
            m.after_s.append(decided - end)
            m.fps.append(rec.fps)
    return m


def figures(recordings: list[Recording], lookahead: int, settings: dict[str, float],
            max_end_delay_s: float | None = None) -> dict[str, Any]:
    """Detection figures of `settings` pooled over the recordings, and their cost (lower is better)."""
    return matched_figures(match(recordings, lookahead, settings), max_end_delay_s)


def matched_figures(m: Matched, max_end_delay_s: float | None = None) -> dict[str, Any]:
    """:func:`figures` of detections already matched (NaN errors when no dive matched).

    `max_end_delay_s`: the latency budget; matched dives whose end is decided later than that after their true
    end are ``late_dives`` and cost as much as a missed dive (None: no budget, no ``late_dives``)."""
    starts, ends = m.starts, m.ends
    delays = [max(after, 0.0) * fps for after, fps in zip(m.after_s, m.fps)]
    timing = (statistics.mean(a + b for a, b in zip(starts, ends)) if starts else 0.0)
    delay = statistics.mean(delays) if delays else 0.0
    late = 0 if max_end_delay_s is None else sum(1 for after in m.after_s if after > max_end_delay_s + 1e-9)
    return {"dives": m.tp + m.fn, "detected": m.tp + m.fp, "f1": m.f1,
            "missed": m.fn, "false_dives": m.fp, "false_on_replay": m.on_replay,
            "start_err_median": float(np.median(starts)) if starts else float("nan"),
            "end_err_median": float(np.median(ends)) if ends else float("nan"),
            "end_decided_after_median_frames": float(np.median(delays)) if delays else float("nan"),
            "end_decided_after_max_s": round(max(m.after_s), 4) if m.after_s else float("nan"),
            **({} if max_end_delay_s is None else {"late_dives": late}),
            "cost": round(100.0 * (m.fn + m.fp + late) + timing + 0.5 * delay, 4)}


def _valid(settings: dict[str, float]) -> bool:
    return settings["live_exit"] <= settings["live_enter"]


def tune(recordings: list[Recording], lookahead: int, start: dict[str, float],
         candidates: dict[str, tuple[float, ...]] = CANDIDATES, passes: int = PASSES,
         min_gain: float = MIN_GAIN, max_end_delay_s: float | None = None) -> tuple[dict, dict, dict]:
    """Grid over the thresholds, then coordinate descent from there; returns (best settings, figures at start,
    figures at best).  Each step takes the lowest-cost candidate (the grid's best combination, then each
    setting's best value) only when it beats the current settings by `min_gain`, so the start is kept unless
    something clearly beats it, whatever the order of the candidates.  `max_end_delay_s`: the latency budget
    (:func:`matched_figures`)."""
    import itertools

    best = dict(start)
    before = figures(recordings, lookahead, best, max_end_delay_s)
    best_figures = before

    def take(trials: list[dict[str, float]]) -> bool:
        nonlocal best, best_figures
        results = [(figures(recordings, lookahead, t, max_end_delay_s), t) for t in trials if _valid(t) and t != best]
        if not results:
            return False
        result, trial = min(results, key=lambda r: r[0]["cost"])
        if result["cost"] >= best_figures["cost"] - min_gain:
            return False
        best, best_figures = trial, result
        return True

    grid = [name for name in GRID_NAMES if name in candidates]
    take([{**best, **dict(zip(grid, map(float, values)))}
          for values in itertools.product(*(candidates[name] for name in grid))])
    for p in range(passes):
        changed = False
        for name, values in candidates.items():
            changed |= take([{**best, name: float(value)} for value in values])
        log.info("segmenter tuning pass %d: cost %.2f (%s)", p + 1, best_figures["cost"],
                 ", ".join(f"{k} {v:g}" for k, v in best.items()))
        if not changed:
            break
    return best, before, best_figures


def run(package_dir: Path, data_root: Path, progress: bool = True,
        max_end_delay_s: float | None = None) -> dict[str, Any]:
    """Tune the package's auto segmenter on the broadcasts under `data_root`; returns the manifest's record.

    `max_end_delay_s`: the latency budget (:func:`matched_figures`), recorded with the tuning."""
    from fineparser.dive_state import segmenter_durations
    from fineparser.package import load_package, read_manifest, write_manifest
    from fineparser.spotter_runner import SpotterRunner, spotter_segmenter_settings
    from train.spotter_data import load_broadcasts

    package = load_package(package_dir)
    runner = SpotterRunner.from_package(package)  # SpotterError (one line) when the package has none
    started = time.perf_counter()
    broadcasts = load_broadcasts(data_root, runner.spec.input_hw, progress=progress)
    state, idle_frames = settled_idle_state(runner, broadcasts, progress)
    if state is None:
        log.warning("no settled idle frame (%g s of idle, %g s or more into a broadcast) under %s: streams start "
                    "from zeros; tune on longer broadcasts to start them in context", SETTLE_S, WARM_S, data_root)
    runner.spec = dataclasses.replace(
        runner.spec, initial_state=[] if state is None else [round(float(v), 6) for v in state.reshape(-1)])
    recordings = record(runner, broadcasts, progress)
    frames = sum(len(r.probs) for r in recordings)
    log.info("spotter ran over %d broadcasts (%d frames, %d dives) in %.1f s", len(recordings), frames,
             sum(len(r.dives) for r in recordings), time.perf_counter() - started)
    durations = segmenter_durations(spotter_segmenter_settings(package))
    start = {**runner.spec.thresholds, **{k: durations[k] for k in DURATION_NAMES}}
    candidates = {**CANDIDATES, "entry_tail_s": entry_tail_candidates(recordings, budget=max_end_delay_s is not None)}
    best, before, after = tune(recordings, runner.spec.lookahead, start, candidates, max_end_delay_s=max_end_delay_s)
    if max_end_delay_s is not None and after["late_dives"]:
        log.warning("%d of %d tuning dive(s) still end more than the budget of %g s after their true end with the "
                    "best settings (at most %.2f s): no candidate keeps them all within it", after["late_dives"],
                    after["dives"], max_end_delay_s, after["end_decided_after_max_s"])
    tuning = {"data_root": str(data_root), "broadcasts": [r.name for r in recordings], "frames": frames,
              "initial_state_frames": idle_frames, "max_end_delay_s": max_end_delay_s,
              "match_tiou": DETECTION_TIOU, "before": {**before, "settings": start},
              "after": {**after, "settings": best}}
    manifest = read_manifest(package_dir)
    section = manifest["spotter"]
    section["spec"]["initial_state"] = list(runner.spec.initial_state)
    section["spec"]["thresholds"] = {**section["spec"].get("thresholds", {}),
                                     **{k: best[k] for k in THRESHOLD_NAMES}}
    section["segmenter"] = {**(section.get("segmenter") or {}), **{k: best[k] for k in DURATION_NAMES}}
    section["tuning"] = tuning
    write_manifest(package_dir, manifest, [])
    return tuning


def format_record(record: dict[str, Any]) -> str:
    """Before/after table of a tuning record (errors in frames; a budgeted tuning adds its late dives)."""
    columns = {"f1": "f1", "missed": "missed", "false_dives": "false dives", "false_on_replay": "on replays",
               "start_err_median": "start err (fr)", "end_err_median": "end err (fr)",
               "end_decided_after_median_frames": "end late med (fr)", "end_decided_after_max_s": "end late max (s)"}
    if record.get("max_end_delay_s") is not None:
        columns["late_dives"] = f"> {record['max_end_delay_s']:g} s late"
    columns["cost"] = "cost"
    lines = [f"{'':<8}" + "".join(f"{label:>18}" for label in columns.values())]
    for name in ("before", "after"):
        row = record[name]
        lines.append(f"{name:<8}" + "".join(f"{row.get(k, ''):>18.3f}" if isinstance(row.get(k), float)
                                            else f"{row.get(k, ''):>18}" for k in columns))
        lines.append(f"{'':<8}" + ", ".join(f"{k} {v:g}" for k, v in row["settings"].items()))
    return "\n".join(lines)
