"""One event schema for every sink: JSON lines, the stdout table, server-sent events.

Every event is a flat JSON object with ``type`` (one of :data:`EVENT_TYPES`), ``seq`` (0, 1, ...
per run), ``wall_time`` (UTC ISO 8601) and type-specific fields; docs/runtime.md lists them.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)

EVENT_TYPES = ("stream", "dive_start", "dive_end", "score", "warning")
STREAM_STATUSES = ("opened", "backend", "reconnecting", "reconnected", "ended")

Event = dict[str, Any]
Subscriber = Callable[[Event], None]


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays become plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class EventBus:
    """Stamps events and hands them to every subscriber (thread-safe, in publish order)."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._seq = 0
        self.counts: dict[str, int] = {kind: 0 for kind in EVENT_TYPES}

    def subscribe(self, subscriber: Subscriber) -> None:
        """Add a sink; it is called with every later event."""
        with self._lock:
            self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Remove a sink added by subscribe (a no-op if absent)."""
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    def publish(self, event_type: str, /, **fields: Any) -> Event:
        """Build, number and deliver one event; a failing sink is logged, never raised into capture."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
        with self._lock:
            event = {"type": event_type, "seq": self._seq,
                     "wall_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                     **_jsonable(fields)}
            self._seq += 1
            self.counts[event_type] += 1
            for subscriber in self._subscribers:
                try:
                    subscriber(event)
                except Exception:  # a broken sink must not stop scoring
                    log.exception("event sink %r failed", subscriber)
        if event_type == "warning":
            log.warning("%s", event.get("message", event))
        return event


class JsonLinesSink:
    """Appends each event as one JSON line, flushed per event (a crash loses nothing written)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "w", encoding="utf-8")

    def __call__(self, event: Event) -> None:
        self._handle.write(json.dumps(event) + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


TABLE_HEADER = f"{'dive':>4} {'number':>7} {'score':>7} {'truth':>7} {'appr':>6} {'flight':>6} {'entry':>6} " \
               f"{'start s':>8} {'end s':>8} {'ms':>6}  exemplars"


def format_score_row(event: Event) -> str:
    """One table line of a score event (the CLI prints it to stdout)."""
    steps = event.get("step_deltas", {})
    truth = event.get("ground_truth_score")
    truth_text = f"{truth:7.2f}" if truth is not None else f"{'-':>7}"
    note = " (fallback)" if event.get("exemplar_fallback") else ""
    return (f"{event['dive']:>4} {str(event.get('dive_number') or '?'):>7} {event['score']:7.2f} {truth_text} "
            f"{steps.get('approach/take-off', 0.0):+6.2f} {steps.get('flight', 0.0):+6.2f} "
            f"{steps.get('entry', 0.0):+6.2f} {event['start_s']:8.2f} {event['end_s']:8.2f} "
            f"{event['latency_ms']:6.0f}  {len(event.get('exemplars', []))}{note}")


class TableSink:
    """Prints a header once and one row per score event."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._header_done = False

    def __call__(self, event: Event) -> None:
        if event["type"] != "score":
            return
        stream = self._stream or sys.stdout
        if not self._header_done:
            print(TABLE_HEADER, file=stream)
            self._header_done = True
        print(format_score_row(event), file=stream, flush=True)
