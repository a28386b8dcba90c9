"""Dive segmentation: a Segmenter is fed frame times and answers with dive start/end events.

Modes: ``clip`` (the whole source is one dive), ``timecodes:FILE`` (CSV or JSON of start/end
seconds; the synthetic broadcast's ``broadcast_NNN.json`` is accepted as is), ``operator`` (keys
``s``/``e`` on stdin, HTTP POST /dive/start and /dive/end) and ``auto``: :class:`DiveStateMachine`
turns the spotter's per-frame class probabilities into phases and dive start/end (the session runs
the spotter, runtime/spotter.py, and feeds its output here; this module stays pure and torch-free).

A dive the stream cuts short (it ends or is lost before the dive's end) is still ended, with
``Dive.incomplete_reason`` saying why: its score is never presented as final.
"""

from __future__ import annotations

import csv
import json
import logging
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from fineparser.spec import canonical_dive_number
from fineparser.spotter_spec import APPROACH, CLASS_NAMES, DEFAULT_THRESHOLDS, ENTRY, LIVE_CLASSES, REPLAY

log = logging.getLogger(__name__)


class SegmentError(ValueError):
    """A timecodes file or start list that cannot be used (the message names file and line)."""


@dataclass
class Dive:
    """One dive of the stream (index counts from 1 in stream order)."""

    index: int
    start: float
    end: float | None = None
    dive_number: str | None = None
    ground_truth_score: float | None = None
    source: str = ""  # what decided the boundaries
    incomplete_reason: str | None = None  # why the dive was cut short (None: the whole dive was seen)


@dataclass
class SegmentEvent:
    """A dive started (kind "start") or ended ("end": all of its frames are in the buffer)."""

    kind: str
    dive: Dive


class Segmenter(Protocol):
    """Turns frame times into dive start/end events."""

    name: str

    def feed(self, time: float) -> list[SegmentEvent]:
        """Called for every frame in stream order with its stream time."""

    def finish(self, last_time: float | None, frame_duration: float, lost: bool = False) -> list[SegmentEvent]:
        """Called once at the end of the stream (`lost`: a live source gave up); closes what is open.

        A dive closed here before its own end carries ``incomplete_reason`` (:func:`cut_short_reason`).
        """


def cut_short_reason(stream_end: float, dive_end: float | None = None, lost: bool = False) -> str:
    """Why a dive is incomplete when the stream stops at `stream_end` s before the dive's end (the C++ demo says
    the same words, cpp_demo/src/segments.cpp)."""
    where = f" at {dive_end:.2f} s" if dive_end is not None else ""
    return f"the stream {'was lost' if lost else 'ended'} at {stream_end:.2f} s, before the dive's end{where}"


class ClipSegmenter:
    """The whole source is one dive: it starts at the first frame and ends with the stream."""

    name = "clip"

    def __init__(self) -> None:
        self._dive: Dive | None = None

    def feed(self, time: float) -> list[SegmentEvent]:
        """Start the dive at the first frame."""
        if self._dive is None:
            self._dive = Dive(1, time, source="clip")
            return [SegmentEvent("start", self._dive)]
        return []

    def finish(self, last_time: float | None, frame_duration: float, lost: bool = False) -> list[SegmentEvent]:
        """End the dive one frame after the last frame (ends are exclusive): the source's end is the dive's."""
        if self._dive is None or last_time is None:
            return []
        self._dive.end = last_time + frame_duration
        return [SegmentEvent("end", self._dive)]


def _number(value: str, path: Path, line: int, column: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SegmentError(f"{path}, line {line}: {column} {value!r} is not a number of seconds") from None


def read_timecodes(path: str | Path) -> list[Dive]:
    """Dives from a CSV (``start,end[,dive_number]``, header optional) or JSON (broadcast ground truth or a list)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SegmentError(f"cannot read timecodes file {path}: {exc.strerror or exc}") from None
    dives: list[Dive] = []
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SegmentError(f"{path}, line {getattr(exc, 'lineno', '?')}: not valid JSON ({exc})") from None
        items = data.get("dives") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise SegmentError(f"{path}: expected a list of dives or an object with 'dives'")
        for i, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                raise SegmentError(f"{path}: dive {i} is not an object with start/end")
            start = item.get("start_s", item.get("start"))
            end = item.get("end_s", item.get("end"))
            if start is None or end is None:
                raise SegmentError(f"{path}: dive {i} has no start_s/end_s (or start/end)")
            number = item.get("dive_number")
            score = item.get("final_score")
            dives.append(Dive(i, _number(start, path, i, "start"), _number(end, path, i, "end"),
                              canonical_dive_number(number) if number else None,
                              float(score) if score is not None else None, source=f"timecodes:{path.name}"))
    else:
        rows = list(csv.reader(text.splitlines()))
        for line, row in enumerate(rows, start=1):
            if not row or not "".join(row).strip() or row[0].strip().startswith("#"):
                continue
            if line == 1 and row[0].strip().lower() in ("start", "start_s"):
                continue
            if len(row) < 2:
                raise SegmentError(f"{path}, line {line}: expected start,end[,dive_number], got {','.join(row)!r}")
            number = canonical_dive_number(row[2]) if len(row) > 2 and row[2].strip() else None
            dives.append(Dive(len(dives) + 1, _number(row[0].strip(), path, line, "start"),
                              _number(row[1].strip(), path, line, "end"), number, source=f"timecodes:{path.name}"))
    if not dives:
        raise SegmentError(f"{path}: no dives in the timecodes file")
    for dive in dives:
        if dive.end <= dive.start:
            raise SegmentError(f"{path}: dive {dive.index} ends ({dive.end}) before it starts ({dive.start})")
    dives.sort(key=lambda d: d.start)
    for i, dive in enumerate(dives, start=1):
        dive.index = i
    return dives


def read_start_list(path: str | Path) -> list[str]:
    """Dive numbers in competition order from ``order,diver,dive_number,difficulty`` (fineparser-synth's CSV).

    Numbers come back canonical (spec.canonical_dive_number: '407C' -> '407c'), as banks hold them.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SegmentError(f"cannot read start list {path}: {exc.strerror or exc}") from None
    rows = [(line, row) for line, row in enumerate(csv.reader(text.splitlines()), start=1)
            if any(c.strip() for c in row)]
    if not rows:
        raise SegmentError(f"start list {path} is empty: expected a header order,diver,dive_number,difficulty "
                           "and one row per dive")
    header_line, header = rows[0]
    columns = [c.strip().lower() for c in header]
    if "dive_number" not in columns or "order" not in columns:
        raise SegmentError(f"start list {path}, line {header_line}: header must name order and dive_number "
                           f"(order,diver,dive_number,difficulty), got {','.join(header)!r}")
    order_col, number_col = columns.index("order"), columns.index("dive_number")
    entries = []
    for line, row in rows[1:]:
        if len(row) <= max(order_col, number_col) or not row[number_col].strip():
            raise SegmentError(f"start list {path}, line {line}: expected {len(columns)} columns "
                               f"({','.join(columns)}), got {','.join(row)!r}")
        try:
            order = int(row[order_col])
        except ValueError:
            raise SegmentError(f"start list {path}, line {line}: order {row[order_col]!r} is not an integer") from None
        entries.append((order, canonical_dive_number(row[number_col])))
    if not entries:
        raise SegmentError(f"start list {path} has a header but no dives")
    return [number for _, number in sorted(entries)]


class TimecodeSegmenter:
    """Dives at known stream times: a start when a frame reaches it, an end when a frame passes it."""

    def __init__(self, dives: list[Dive], name: str = "timecodes") -> None:
        self.name = name
        self._pending = list(dives)
        self._open: list[Dive] = []

    def feed(self, time: float) -> list[SegmentEvent]:
        """Events due at this frame time."""
        events = []
        while self._pending and time >= self._pending[0].start:
            dive = self._pending.pop(0)
            self._open.append(dive)
            events.append(SegmentEvent("start", dive))
        for dive in list(self._open):
            if dive.end is not None and time >= dive.end:
                self._open.remove(dive)
                events.append(SegmentEvent("end", dive))
        return events

    def finish(self, last_time: float | None, frame_duration: float, lost: bool = False) -> list[SegmentEvent]:
        """Dives still open end with the stream, cut short when their own end lies beyond it; dives never reached
        are logged."""
        events = []
        for dive in self._open:
            if last_time is not None:
                stream_end = last_time + frame_duration
                if dive.end is not None and dive.end > stream_end + 1e-6:
                    dive.incomplete_reason = cut_short_reason(stream_end, dive.end, lost)
                dive.end = min(dive.end or stream_end, stream_end)
            events.append(SegmentEvent("end", dive))
        self._open = []
        for dive in self._pending:
            log.warning("dive %d (%.2f-%.2f s) lies beyond the end of the stream: not scored", dive.index,
                        dive.start, dive.end or 0.0)
        return events

    @property
    def unreached(self) -> list[Dive]:
        """Dives whose start the stream never reached."""
        return list(self._pending)


class OperatorSegmenter:
    """Dive boundaries from an operator: ``request("start"|"end")`` from stdin keys or HTTP."""

    name = "operator"

    def __init__(self) -> None:
        self._requests: queue.Queue[str] = queue.Queue()
        self._dive: Dive | None = None
        self._count = 0
        self._last_time: float | None = None

    def request(self, what: str) -> None:
        """Queue a start or end; it takes effect at the next frame's stream time."""
        if what not in ("start", "end"):
            raise ValueError(f"operator request must be 'start' or 'end', got {what!r}")
        self._requests.put(what)

    @property
    def in_dive(self) -> bool:
        """Whether a dive is open."""
        return self._dive is not None

    def feed(self, time: float) -> list[SegmentEvent]:
        """Apply queued requests at this frame."""
        self._last_time = time
        events = []
        while True:
            try:
                what = self._requests.get_nowait()
            except queue.Empty:
                return events
            if what == "start":
                if self._dive is not None:  # a second start closes the open dive first
                    self._dive.end = time
                    events.append(SegmentEvent("end", self._dive))
                self._count += 1
                self._dive = Dive(self._count, time, source="operator")
                events.append(SegmentEvent("start", self._dive))
            elif self._dive is not None:
                self._dive.end = time
                events.append(SegmentEvent("end", self._dive))
                self._dive = None
            else:
                log.warning("operator 'end' at %.2f s without an open dive: ignored", time)

    def finish(self, last_time: float | None, frame_duration: float, lost: bool = False) -> list[SegmentEvent]:
        """An open dive ends with the stream, cut short: the operator never marked its end."""
        if self._dive is None or last_time is None:
            return []
        self._dive.end = last_time + frame_duration
        self._dive.incomplete_reason = cut_short_reason(self._dive.end, lost=lost)
        dive, self._dive = self._dive, None
        return [SegmentEvent("end", dive)]

    def read_keys(self, stream: TextIO | None = None,
                  dive_number: Callable[[int, str | None, int | None], Any] | None = None) -> threading.Thread:
        """Start a daemon thread turning stdin lines into operator actions.

        ``s`` / ``e``: a dive starts / ends at the next frame.  With `dive_number` (the session's
        correction, as ``POST /dive_number``): ``n I NUMBER`` sets the dive number of dive I,
        ``r I ROW`` says dive I is row ROW of the start list (later dives follow from ROW + 1).
        """
        def loop() -> None:
            try:
                for line in stream or sys.stdin:
                    words = line.split()
                    key = words[0].lower()[:1] if words else ""
                    if key in ("s", "e"):
                        self.request("start" if key == "s" else "end")
                    elif key in ("n", "r") and dive_number is not None:
                        self._correct(words, dive_number)
            except (OSError, ValueError) as exc:  # no readable stdin (a service, a test): HTTP marks still work
                log.info("operator keys unavailable: %s", exc)

        thread = threading.Thread(target=loop, name="operator keys", daemon=True)
        thread.start()
        return thread

    @staticmethod
    def _correct(words: list[str], dive_number: Callable[[int, str | None, int | None], Any]) -> None:
        """``n I NUMBER`` / ``r I ROW`` -> dive_number(I, NUMBER, None) / dive_number(I, None, ROW); errors logged."""
        usage = "operator keys: 'n DIVE NUMBER' sets a dive number, 'r DIVE ROW' maps a dive to a start-list row"
        if len(words) != 3 or not words[1].isdigit() or (words[0].lower().startswith("r") and not words[2].isdigit()):
            log.warning("%s; got %r", usage, " ".join(words))
            return
        try:
            if words[0].lower().startswith("n"):
                result = dive_number(int(words[1]), words[2], None)
            else:
                result = dive_number(int(words[1]), None, int(words[2]))
            log.info("operator: %s", result)
        except ValueError as exc:  # DiveNumberError: a dive already scored, a row beyond the start list
            log.warning("operator: %s", exc)


def make_segmenter(text: str) -> Segmenter:
    """Build the segmenter named by ``--segment`` (clip | timecodes:FILE | operator); ``auto`` needs the package's
    spotter and is built by the session (:class:`DiveStateMachine`)."""
    if text == "clip":
        return ClipSegmenter()
    if text == "operator":
        return OperatorSegmenter()
    if text.startswith("timecodes:"):
        path = text.split(":", 1)[1]
        return TimecodeSegmenter(read_timecodes(path), name=f"timecodes:{Path(path).name}")
    raise SegmentError(f"unknown --segment {text!r}: use auto, clip, timecodes:FILE or operator")


def segment_summary(dives: list[Dive]) -> list[dict[str, Any]]:
    """Plain dicts of dives (for logs and tests)."""
    return [{"dive": d.index, "start_s": d.start, "end_s": d.end, "dive_number": d.dive_number} for d in dives]


# --------------------------------------------------------------------------- auto: the spotter's state machine

SPOTTER_DURATIONS_S = {"start_hold_s": 0.2, "phase_hold_s": 0.12, "end_hold_s": 0.4, "max_dive_s": 15.0,
                       "start_back_s": 1.0}
"""Durations of the ``auto`` segmenter in seconds of stream (converted to frames with the stream's fps):

start_hold_s: a live phase (approach, flight, entry) must hold this long before a dive starts;
phase_hold_s: a change of phase (idle <-> replay; approach -> flight -> entry within a dive) must hold this long;
end_hold_s: idle or replay must hold this long after the live phases before a dive ends;
max_dive_s: a dive still live after this long is ended there;
start_back_s: how far back a starting dive may be dated over frames with P(live) >= live_back.
A package records its own in ``manifest["spotter"]["segmenter"]``; missing names take these defaults.
"""
NO_ENTRY_REASON = "the spotter saw no entry before the dive's end"
PHASE_NAMES = CLASS_NAMES
"""Phases of the programme: the spotter's classes (idle, approach, flight, entry, replay)."""


def hold_frames(seconds: float, fps: float) -> int:
    """A duration in stream seconds -> a whole number of frames at `fps` (at least 1)."""
    return max(1, int(round(seconds * fps)))


def segmenter_durations(values: dict[str, Any] | None) -> dict[str, float]:
    """The auto segmenter's durations: `values` (a manifest's ``spotter.segmenter``) over the defaults.

    Unknown names and non-positive values are a SegmentError listing the known names.
    """
    values = dict(values or {})
    unknown = sorted(set(values) - set(SPOTTER_DURATIONS_S))
    if unknown:
        raise SegmentError(f"unknown spotter segmenter duration(s) {', '.join(unknown)}; known: "
                           f"{', '.join(SPOTTER_DURATIONS_S)} (seconds)")
    durations = {**SPOTTER_DURATIONS_S, **{k: float(v) for k, v in values.items()}}
    for name, value in durations.items():
        if not value > 0:
            raise SegmentError(f"spotter segmenter duration {name}={value} must be a positive number of seconds")
    if durations["max_dive_s"] <= durations["start_hold_s"]:
        raise SegmentError(f"max_dive_s {durations['max_dive_s']} must exceed start_hold_s {durations['start_hold_s']}")
    return durations


@dataclass
class PhaseChange:
    """The programme entered `phase` at stream time `time` (the first frame of it)."""

    phase: str
    previous: str | None  # None for the first phase of the stream
    time: float
    decided_at: float  # stream time of the frame whose spotter output settled it (time + look-ahead + hold)
    dive: int | None = None  # the dive this phase belongs to (None outside dives)


class DiveStateMachine:
    """``--segment auto``: the spotter's class probabilities, frame by frame, -> phases and dive start/end.

    Pure (no I/O, no model): ``feed(time, probs)`` with the stream time of the frame just given to the
    spotter and the probabilities it answered; with look-ahead L those are the probabilities of the frame
    L frames earlier, so the machine labels that frame and reports every time as the time of the frame
    where the phase changed, not of the decision.  Rules (thresholds from the spotter's spec, durations
    from :data:`SPOTTER_DURATIONS_S`, both converted at `fps`):

    - a frame is *replay* when P(replay) >= replay_enter; otherwise *live* when P(approach) + P(flight) +
      P(entry) >= live_enter (to start) or >= live_exit (to stay in a dive);
    - outside a dive, a dive starts when live frames hold for start_hold_s; it starts at the first of
      them, or earlier: at the first of the frames just before them whose P(live) >= live_back (none a
      replay frame, none before the current phase began, at most start_back_s back).  Replay frames are
      never live, so a replay never starts a dive;
    - in a dive the phase is approach, flight or entry (the likeliest of the three), and only moves forward,
      after holding phase_hold_s; outside it is idle or replay, changing after phase_hold_s too;
    - a dive ends when non-live frames (idle or replay) hold for end_hold_s; it ends at the first of them
      (ends are exclusive).  One that never reached entry is ended all the same but marked incomplete;
    - a dive still live after max_dive_s ends there (incomplete unless its entry was seen), and the next one
      can start only after a frame that is not live;
    - at the end of the stream an open dive is incomplete, unless it had reached entry and was already
      followed by non-live frames (only the end hold was cut).
    """

    name = "auto"

    def __init__(self, fps: float | None = None, lookahead: int = 0, thresholds: dict[str, float] | None = None,
                 durations: dict[str, float] | None = None) -> None:
        self.fps = fps  # the session sets it when the stream says its rate, before the first feed
        self.lookahead = int(lookahead)
        self.thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        self.durations = segmenter_durations(durations)
        self.phase = "idle"
        self.last_labelled: float | None = None  # stream time of the last frame labelled
        self._times: deque[float] = deque(maxlen=self.lookahead + 1)
        self._phase_since: float | None = None
        self._seconds = dict.fromkeys(PHASE_NAMES, 0.0)
        self._dive: Dive | None = None
        self._count = 0
        self._entry_seen = False
        self._armed = True  # False after a dive ended by max_dive_s, until a frame that is not live
        self._live_run: list[tuple[float, np.ndarray]] = []  # outside a dive: consecutive live frames
        self._recent: deque[tuple[float, float]] = deque()  # outside a dive: (time, P(live) or -1 for replay)
        self._outside_run: list[Any] | None = None  # [target phase, first time, frames]
        self._advance_run: list[Any] | None = None  # in a dive: [phase index, first time, frames]
        self._end_run: list[tuple[float, bool]] = []  # in a dive: consecutive non-live frames (time, is replay)

    # ------------------------------------------------------------------ frames

    def frames(self, name: str) -> int:
        """Duration `name` of :data:`SPOTTER_DURATIONS_S` in frames at this stream's fps."""
        if not self.fps:
            raise ValueError("DiveStateMachine.fps is not set: the stream's frame rate converts its durations")
        return hold_frames(self.durations[name], self.fps)

    @property
    def decision_delay_frames(self) -> int:
        """Frames between a phase change and its decision, at most (look-ahead + the longest start/phase hold)."""
        return self.lookahead + max(self.frames("start_hold_s"), self.frames("phase_hold_s"))

    @property
    def in_dive(self) -> bool:
        """Whether a dive is open."""
        return self._dive is not None

    def _classify(self, probs: np.ndarray) -> tuple[bool, bool, bool]:
        """(replay, live enough to start a dive, live enough to stay in one)."""
        replay = bool(probs[REPLAY] >= self.thresholds["replay_enter"])
        live = float(sum(probs[i] for i in LIVE_CLASSES))
        return (replay, not replay and live >= self.thresholds["live_enter"],
                not replay and live >= self.thresholds["live_exit"])

    def feed(self, time: float, probs: Any) -> list[SegmentEvent | PhaseChange]:
        """The spotter's output after the frame at `time`: class probabilities [5] of the frame `lookahead` earlier."""
        self._times.append(float(time))
        if len(self._times) <= self.lookahead:  # the first L outputs label no frame
            return []
        probs = np.asarray(probs, dtype=np.float64).reshape(-1)
        if probs.shape != (len(PHASE_NAMES),):
            raise ValueError(f"expected {len(PHASE_NAMES)} class probabilities ({', '.join(PHASE_NAMES)}), "
                             f"got shape {list(np.shape(probs))}")
        at, decided = self._times[0], self._times[-1]
        events: list[SegmentEvent | PhaseChange] = []
        if self._phase_since is None:  # the first labelled frame: the programme starts idle
            self._phase_since = at
            events.append(PhaseChange("idle", None, at, decided))
        self.last_labelled = at
        if self._dive is None:
            self._outside(at, probs, decided, events)
        else:
            self._inside(at, probs, decided, events)
        return events

    def _outside(self, at: float, probs: np.ndarray, decided: float, events: list) -> None:
        replay, live_enter, _ = self._classify(probs)
        self._recent.append((at, -1.0 if replay else float(sum(probs[i] for i in LIVE_CLASSES))))
        while len(self._recent) > self.frames("start_back_s") + self.frames("start_hold_s"):
            self._recent.popleft()
        self._armed = self._armed or not live_enter
        if live_enter and self._armed:
            self._live_run.append((at, probs))
            if len(self._live_run) >= self.frames("start_hold_s"):
                self._start_dive(decided, events)
                return
        else:
            self._live_run.clear()
        self._track_outside("replay" if replay else "idle", at, decided, events)

    def _track_outside(self, target: str, at: float, decided: float, events: list) -> None:
        if target == self.phase:
            self._outside_run = None
            return
        if self._outside_run is None or self._outside_run[0] != target:
            self._outside_run = [target, at, 0]
        self._outside_run[2] += 1
        if self._outside_run[2] >= self.frames("phase_hold_s"):
            self._change(target, self._outside_run[1], decided, events, None)
            self._outside_run = None

    def _start_dive(self, decided: float, events: list) -> None:
        run, self._live_run = self._live_run, []
        start, first = run[0]
        before = list(self._recent)[:-len(run)]  # the frames just before the live run, oldest first
        self._recent.clear()
        for at, live in reversed(before[-self.frames("start_back_s"):]):
            if live < self.thresholds["live_back"] or at < self._phase_since:
                break
            start = at
        self._count += 1
        self._dive = Dive(self._count, start, source="auto")
        self._entry_seen = False
        self._outside_run = self._advance_run = None
        self._end_run = []
        events.append(SegmentEvent("start", self._dive))
        phase = APPROACH + int(np.argmax(first[APPROACH:ENTRY + 1]))
        self._entered(phase)
        self._change(PHASE_NAMES[phase], start, decided, events, self._dive.index)
        for at, probs in run[1:]:  # the held frames may already show the next phase
            self._advance(at, probs, decided, events)

    def _entered(self, phase: int) -> None:
        self._entry_seen = self._entry_seen or phase == ENTRY

    def _inside(self, at: float, probs: np.ndarray, decided: float, events: list) -> None:
        dive = self._dive
        if at - dive.start >= self.durations["max_dive_s"]:
            reason = None if self._entry_seen else (f"still live after max_dive_s {self.durations['max_dive_s']:g} s "
                                                     "without an entry: ended by the limit")
            self._end_dive(at, decided, events, reason, [(at, self._classify(probs)[0])])
            self._armed = False
            return
        replay, _, live_hold = self._classify(probs)
        if live_hold:
            self._end_run = []
            self._advance(at, probs, decided, events)
            return
        self._advance_run = None
        self._end_run.append((at, replay))
        if len(self._end_run) >= self.frames("end_hold_s"):
            reason = None if self._entry_seen else NO_ENTRY_REASON
            self._end_dive(self._end_run[0][0], decided, events, reason, self._end_run)

    def _advance(self, at: float, probs: np.ndarray, decided: float, events: list) -> None:
        """In a dive: move to a later live phase once it has held phase_hold_s."""
        current = PHASE_NAMES.index(self.phase)
        best = APPROACH + int(np.argmax(probs[APPROACH:ENTRY + 1]))
        if best <= current:
            self._advance_run = None
            return
        if self._advance_run is None or self._advance_run[0] != best:
            self._advance_run = [best, at, 0]
        self._advance_run[2] += 1
        if self._advance_run[2] >= self.frames("phase_hold_s"):
            self._entered(best)
            self._change(PHASE_NAMES[best], self._advance_run[1], decided, events, self._dive.index)
            self._advance_run = None

    def _end_dive(self, end: float, decided: float, events: list, reason: str | None,
                  after: list[tuple[float, bool]]) -> None:
        """Close the dive at `end`; `after`: the non-live frames (time, is replay) from `end` on, already seen."""
        dive, self._dive = self._dive, None
        dive.end = end
        if reason is not None and dive.incomplete_reason is None:
            dive.incomplete_reason = reason
        self._end_run, self._advance_run = [], None
        self._recent.clear()
        events.append(SegmentEvent("end", dive))
        self._change("replay" if after and after[0][1] else "idle", end, decided, events, None)
        for at, replay in after[1:]:
            self._track_outside("replay" if replay else "idle", at, decided, events)

    def _change(self, phase: str, at: float, decided: float, events: list, dive: int | None) -> None:
        at = max(at, self._phase_since)  # phases never overlap, so their seconds add up to the stream's
        self._seconds[self.phase] += at - self._phase_since
        events.append(PhaseChange(phase, self.phase, at, decided, dive))
        self.phase, self._phase_since = phase, at

    def finish(self, last_time: float | None, frame_duration: float,
               lost: bool = False) -> list[SegmentEvent | PhaseChange]:
        """End of the stream: close an open dive (see the class rules) and the phase accounting."""
        events: list[SegmentEvent | PhaseChange] = []
        if last_time is None or self._phase_since is None:
            return events
        stream_end = last_time + frame_duration
        if self._dive is not None:
            if self._entry_seen and self._end_run:  # entry, then idle/replay: only the end hold was cut
                self._end_dive(self._end_run[0][0], last_time, events, None, self._end_run)
            else:
                self._end_dive(stream_end, last_time, events, cut_short_reason(stream_end, lost=lost), [])
        self._seconds[self.phase] += max(stream_end - self._phase_since, 0.0)
        self._phase_since = stream_end
        return events

    def phase_seconds(self) -> dict[str, float]:
        """Seconds of stream spent in each phase so far (after finish: the whole stream), rounded to ms."""
        return {name: round(value, 3) for name, value in self._seconds.items()}
