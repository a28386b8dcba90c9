"""Dive segmentation: a Segmenter is fed frame times and answers with dive start/end events.

Modes: ``clip`` (the whole source is one dive), ``timecodes:FILE`` (CSV or JSON of start/end
seconds; the synthetic broadcast's ``broadcast_NNN.json`` is accepted as is), ``operator`` (keys
``s``/``e`` on stdin, HTTP POST /dive/start and /dive/end) and ``auto``: :class:`DiveStateMachine`
(fineparser/dive_state.py) turns the spotter's per-frame class probabilities into phases and dive
start/end (the session runs the spotter, runtime/spotter.py, and feeds its output to it).

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

from fineparser.dive_state import (  # noqa: F401  (re-exported: the runtime and its callers use these names)
    NO_ENTRY_REASON,
    PHASE_NAMES,
    SPOTTER_DURATIONS_S,
    Dive,
    DiveStateMachine,
    PhaseChange,
    SegmentError,
    SegmentEvent,
    cut_short_reason,
    hold_frames,
    segmenter_durations,
)
from fineparser.spec import canonical_dive_number

log = logging.getLogger(__name__)


class Segmenter(Protocol):
    """Turns frame times into dive start/end events."""

    name: str

    def feed(self, time: float) -> list[SegmentEvent]:
        """Called for every frame in stream order with its stream time."""

    def finish(self, last_time: float | None, frame_duration: float, lost: bool = False) -> list[SegmentEvent]:
        """Called once at the end of the stream (`lost`: a live source gave up); closes what is open.

        A dive closed here before its own end carries ``incomplete_reason`` (:func:`cut_short_reason`).
        """


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
