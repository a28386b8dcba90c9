"""The dive records every segmenter emits, and ``--segment auto``'s state machine (pure, torch-free).

:class:`DiveStateMachine` turns the spotter's per-frame class probabilities into phases and dive
start/end.  It lives here, not in runtime/, because the live session (runtime/segments.py and
runtime/cli.py) and the offline tuning of its thresholds (calibration/segmenter.py) run the same one.
The C++ demo has no auto segmenter; it shares :func:`cut_short_reason`'s words (cpp_demo/src/segments.cpp).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from fineparser.spotter_spec import APPROACH, CLASS_NAMES, DEFAULT_THRESHOLDS, ENTRY, LIVE_CLASSES, REPLAY


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


def cut_short_reason(stream_end: float, dive_end: float | None = None, lost: bool = False) -> str:
    """Why a dive is incomplete when the stream stops at `stream_end` s before the dive's end (the C++ demo says
    the same words, cpp_demo/src/segments.cpp)."""
    where = f" at {dive_end:.2f} s" if dive_end is not None else ""
    return f"the stream {'was lost' if lost else 'ended'} at {stream_end:.2f} s, before the dive's end{where}"


# --------------------------------------------------------------------------- auto: the spotter's state machine

SPOTTER_DURATIONS_S = {"start_hold_s": 0.2, "phase_hold_s": 0.12, "end_hold_s": 0.4, "max_dive_s": 15.0,
                       "start_back_s": 1.0, "entry_tail_s": 0.0}
"""Durations of the ``auto`` segmenter in seconds of stream (converted to frames with the stream's fps):

start_hold_s: a live phase (approach, flight, entry) must hold this long before a dive starts;
phase_hold_s: a change of phase (idle <-> replay; approach -> flight -> entry within a dive) must hold this long;
end_hold_s: idle or replay must hold this long after the live phases before a dive ends;
max_dive_s: a dive still live after this long is ended there;
start_back_s: how far back a starting dive may be dated over frames with P(live) >= live_back;
entry_tail_s: a dive that reached its entry ends this long after the entry's first frame (0: off, the dive
  ends only when non-live frames hold).  Where a dive ends is an annotation convention that no frame shows
  (the camera stays on the pool after the entry), so a fixed tail after the visible entry, fitted on
  annotated broadcasts by ``fineparser-calibrate --segmenter``, ends dives closer to the convention and
  with a bounded delay than waiting for the spotter to let go (docs/spotter.md, "Where a dive ends").
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
        if name == "entry_tail_s" and value == 0:
            continue
        if not value > 0:
            raise SegmentError(f"spotter segmenter duration {name}={value} must be a positive number of seconds"
                               + (" (entry_tail_s: or 0, off)" if name == "entry_tail_s" else ""))
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
    - with entry_tail_s > 0, a dive that reached entry also ends at the frame nearest entry_tail_s after the
      entry's first frame, if the rule above has not ended it sooner (at the first of the non-live frames
      running then, if any); the next dive can start only after a
      frame that is not live (the spotter may still be letting go of this one);
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
        self._entry_at: float | None = None  # in a dive: stream time of the entry's first frame (None: not yet)
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

    def _classify(self, probs: np.ndarray) -> tuple[bool, bool, bool, float]:
        """(replay, live enough to start a dive, live enough to stay in one, P(live))."""
        replay = bool(probs[REPLAY] >= self.thresholds["replay_enter"])
        live = float(sum(probs[i] for i in LIVE_CLASSES))
        return (replay, not replay and live >= self.thresholds["live_enter"],
                not replay and live >= self.thresholds["live_exit"], live)

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
        replay, live_enter, _, live = self._classify(probs)
        self._recent.append((at, -1.0 if replay else live))
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
        self._entry_at = None
        self._outside_run = self._advance_run = None
        self._end_run = []
        events.append(SegmentEvent("start", self._dive))
        phase = APPROACH + int(np.argmax(first[APPROACH:ENTRY + 1]))
        self._entered(phase, start)
        self._change(PHASE_NAMES[phase], start, decided, events, self._dive.index)
        for at, probs in run[1:]:  # the held frames may already show the next phase
            self._advance(at, probs, decided, events)

    @property
    def _entry_seen(self) -> bool:
        return self._entry_at is not None

    def _entered(self, phase: int, at: float) -> None:
        if phase == ENTRY and self._entry_at is None:
            self._entry_at = at

    def _inside(self, at: float, probs: np.ndarray, decided: float, events: list) -> None:
        dive = self._dive
        if at - dive.start >= self.durations["max_dive_s"]:
            reason = None if self._entry_seen else (f"still live after max_dive_s {self.durations['max_dive_s']:g} s "
                                                     "without an entry: ended by the limit")
            self._end_dive(at, decided, events, reason, [(at, self._classify(probs)[0])])
            self._armed = False
            return
        replay, _, live_hold, _ = self._classify(probs)
        tail = self.durations["entry_tail_s"]
        if tail > 0 and self._entry_seen and at >= self._entry_at + tail - 0.5 / self.fps:
            after = [*self._end_run, (at, replay)]  # non-live frames already running end it where they began
            self._end_dive(after[0][0], decided, events, None, after)
            self._armed = False
            return
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
            self._entered(best, self._advance_run[1])
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
