"""One event schema for every sink: JSON lines, the stdout table, server-sent events.

Every event is a flat JSON object with ``type`` (one of :data:`EVENT_TYPES`), ``seq`` (0, 1, ...
per run), ``wall_time`` (UTC ISO 8601) and type-specific fields; docs/runtime.md lists them and
docs/events.schema.json is the written contract (the C++ demo writes the same events).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)

EVENT_TYPES = ("stream", "dive_start", "dive_end", "score", "warning", "phase", "phase_summary")
STREAM_STATUSES = ("opened", "backend", "reconnecting", "reconnected", "ended")
QUEUE_HIGH_WATER = 10_000
"""Undelivered events past which the bus logs that a sink cannot keep up (a run makes a few per dive)."""

Event = dict[str, Any]
Subscriber = Callable[[Event], None]
_DeliveryQueue = queue.SimpleQueue  # of (event, subscribers at publish) and a final None from close


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
    """Stamps events where they are published and delivers them to every subscriber from one thread.

    ``publish`` never waits on a sink: it numbers the event, queues it together with the subscribers
    of that moment and returns the event. One delivery thread calls the sinks in publish order, so
    a sink gets exactly the events published while it was subscribed, in ``seq`` order; a sink that
    raises is logged and the others still get the event. ``flush`` waits until everything published
    so far has been delivered; ``close`` flushes and stops the thread. To close a sink: unsubscribe,
    flush, then close it (``run_live`` does, and closes a bus it made itself). A publish after
    ``close`` starts a new delivery thread.
    The returned event is the dict the sinks get: read it, do not change it.

    A sink slower than the events forever: nothing is dropped. The queue is unbounded and grows by
    the backlog (events are a few hundred bytes, a handful per dive); when the backlog passes
    ``high_water`` undelivered events a warning naming the count is logged (again after it has
    fallen below half of that), so a stuck sink shows in the log long before memory matters.
    Capture never slows down for it.
    """

    def __init__(self, high_water: int = QUEUE_HIGH_WATER) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._seq = 0
        self.counts: dict[str, int] = {kind: 0 for kind in EVENT_TYPES}
        self._queue: _DeliveryQueue | None = None  # with its thread; a new pair after close
        self._thread: threading.Thread | None = None
        self._closed_thread: threading.Thread | None = None  # a new thread waits for it: order across a close
        self._delivered = 0
        self._delivered_changed = threading.Condition()
        self.high_water = high_water
        self._over_high_water = False

    def subscribe(self, subscriber: Subscriber) -> None:
        """Add a sink; it is called with every event published from now on."""
        with self._lock:
            self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Remove a sink added by subscribe (a no-op if absent); events published before still reach it (flush)."""
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    def publish(self, event_type: str, /, **fields: Any) -> Event:
        """Build, number and queue one event for the sinks; returns it at once (sinks are called later)."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
        with self._lock:
            event = {"type": event_type, "seq": self._seq,
                     "wall_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                     **_jsonable(fields)}
            self._seq += 1
            self.counts[event_type] += 1
            # Queued under the lock: queue order is seq order, whichever thread publishes.
            if self._queue is None:
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._deliver, args=(self._queue, self._closed_thread),
                                                name="events", daemon=True)
                self._thread.start()
            self._queue.put((event, tuple(self._subscribers)))
            backlog = self._seq - self._delivered
        if backlog > self.high_water and not self._over_high_water:
            self._over_high_water = True
            log.warning("event sinks are %d events behind (a sink is slower than the events; none is dropped, "
                        "memory grows until it catches up)", backlog)
        return event

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event published before this call has reached every sink; False on timeout."""
        with self._lock:
            target = self._seq
            thread = self._thread
        if thread is None or thread is threading.current_thread():  # a sink flushing would wait for itself
            return True
        with self._delivered_changed:
            return self._delivered_changed.wait_for(lambda: self._delivered >= target, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver everything queued, then stop the delivery thread."""
        with self._lock:
            if self._queue is not None:
                self._queue.put(None)
            thread, self._queue, self._thread = self._thread, None, None
            self._closed_thread = thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.error("event sinks did not finish within %s s: %d event(s) not yet delivered", timeout,
                          self._seq - self._delivered)

    def _deliver(self, events: _DeliveryQueue, previous: threading.Thread | None) -> None:
        """The delivery thread: sinks in publish order until close's end marker."""
        if previous is not None:
            previous.join()
        while True:
            item = events.get()
            if item is None:
                return
            event, subscribers = item
            if event["type"] == "warning":
                log.warning("%s", event.get("message", event))
            for subscriber in subscribers:
                try:
                    subscriber(event)
                except Exception:  # a broken sink must not stop the others
                    log.exception("event sink %r failed", subscriber)
            with self._delivered_changed:
                self._delivered += 1
                self._delivered_changed.notify_all()
            if self._over_high_water and self._seq - self._delivered < self.high_water // 2:
                self._over_high_water = False


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
    if event.get("complete") is False:  # cut short: the score is not final
        note += f"  INCOMPLETE: {event.get('incomplete_reason') or 'cut short'}"
    return (f"{event['dive']:>4} {str(event.get('dive_number') or '?'):>7} {event['score']:7.2f} {truth_text} "
            f"{steps.get('approach/take-off', 0.0):+6.2f} {steps.get('flight', 0.0):+6.2f} "
            f"{steps.get('entry', 0.0):+6.2f} {event['start_s']:8.2f} {event['end_s']:8.2f} "
            f"{event['latency_ms']:6.0f}  {len(event.get('exemplars', []))}{note}")


def format_phase_summary(event: Event) -> str:
    """The closing line of an auto-segmented run: seconds per phase and dive counts."""
    seconds = ", ".join(f"{name} {value:.2f} s" for name, value in event["phase_seconds"].items())
    return (f"phases: {seconds}; {event['dives']} dive(s) detected, {event['scored']} scored, "
            f"{event['incomplete']} incomplete")


class TableSink:
    """Prints a header once and one row per score event; a run segmented by the spotter ends with its phase summary."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._header_done = False

    def __call__(self, event: Event) -> None:
        if event["type"] not in ("score", "phase_summary"):
            return
        stream = self._stream or sys.stdout
        if event["type"] == "phase_summary":
            if event["dives"] == 0:
                print("no dive detected", file=stream)
            print(format_phase_summary(event), file=stream, flush=True)
            return
        if not self._header_done:
            print(TABLE_HEADER, file=stream)
            self._header_done = True
        print(format_score_row(event), file=stream, flush=True)
