"""``fineparser-live SOURCE``: score dives live from a video file, stream, webcam or frames folder.

Exit codes: 0 done; 1 the stream failed mid-way; 2 bad input (source, package, start list,
timecodes, options), always as one ``error:`` line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from fineparser.package import ModelPackage, PackageError, load_package
from fineparser.precision import AUTO, REQUESTABLE
from fineparser.scoring import EdgeOffsets
from fineparser.spec import canonical_dive_number
from runtime.backends import DEVICE_HELP, Backend, BackendError, choose_backend, parse_device, warm_up
from runtime.events import EventBus, JsonLinesSink, TableSink
from runtime.scorer import DiveScorer, ScoringError
from runtime.segments import (
    Dive,
    DiveStateMachine,
    OperatorSegmenter,
    PhaseChange,
    Segmenter,
    SegmentError,
    SegmentEvent,
    make_segmenter,
    read_start_list,
)
from runtime.server import TOKEN_ENV, DiveNumberError, check_exposure, parse_address
from runtime.sources import CapturedFrame, CaptureThread, FrameBuffer, SourceError, parse_source
from runtime.spotter import SpotterRunner, has_spotter, spotter_segmenter_settings

log = logging.getLogger("runtime")

DEFAULT_BUFFER_SECONDS = 60.0
DEMO_PACKAGE = Path(__file__).resolve().parents[1] / "demo" / "package"
DROP_REPORT_INTERVAL_S = 1.0
STREAM_GAP_S = 0.5
"""Consecutive frames further apart than this in stream time are a gap in the stream (a reconnect)."""


class UsageError(ValueError):
    """Bad input detected before the stream starts (exit 2)."""


def build_parser() -> argparse.ArgumentParser:
    """The fineparser-live argument parser."""
    parser = argparse.ArgumentParser(
        prog="fineparser-live",
        description="Score dives live from broadcast video with a FineParser model package; events as JSON lines.")
    parser.add_argument("source", nargs="?", help="video file, GIF, frames folder, rtsp/rtmp/srt/udp/http URL, or "
                        "webcam index")
    parser.add_argument("--package", type=Path, help=f"model package directory (default with --demo: {DEMO_PACKAGE})")
    parser.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt", "torch"),
                        help="inference backend; auto: tensorrt (if the package has engines), onnxruntime, torch")
    parser.add_argument("--precision", default=AUTO, choices=REQUESTABLE,
                        help="auto (default): fp32 on the CPU, on a GPU backend the package's recommended precision "
                             "(what fineparser-calibrate measured); fp16/int8: the package's variant (onnxruntime "
                             "runs its ONNX, tensorrt its engines); bf16/fp16: autocast with --backend torch on CUDA")
    parser.add_argument("--device", default="auto", help=f"where the backend runs: {DEVICE_HELP}")
    parser.add_argument("--checkpoint", help="source checkpoint for --backend torch (default: the manifest's)")
    parser.add_argument("--segment", help="auto | clip | timecodes:FILE | operator (default: auto when the package "
                        "has a spotter, else clip)")
    parser.add_argument("--start-list", type=Path, help="CSV order,diver,dive_number,difficulty in competition order")
    parser.add_argument("--events", type=Path, help="write events as JSON lines to this file")
    parser.add_argument("--overlay", type=Path, help="write the programme with masks, phases and scores as MP4")
    parser.add_argument("--serve", metavar="HOST:PORT", help="HTTP API (/events, /health, POST /dive/start|end, "
                        "/dive_number); host defaults to 127.0.0.1")
    parser.add_argument("--serve-token", metavar="TOKEN", help="POSTs to the HTTP API need 'Authorization: Bearer "
                        f"TOKEN' (default: ${TOKEN_ENV}); required to --serve beyond loopback")
    parser.add_argument("--realtime", action="store_true", help="pace file sources at their frame rate")
    parser.add_argument("--buffer-seconds", type=float, default=DEFAULT_BUFFER_SECONDS,
                        help="ring buffer length in seconds of stream (default 60)")
    parser.add_argument("--buffer-frames", type=int, help="ring buffer length in frames (overrides --buffer-seconds)")
    parser.add_argument("--give-up-after", type=float, default=30.0,
                        help="live sources: stop after this many seconds without frames (default 30)")
    parser.add_argument("--read-timeout", type=float, default=5.0,
                        help="live sources: a read waiting this long counts as a lost connection (default 5 s)")
    parser.add_argument("--demo", action="store_true", help="score a generated synthetic broadcast with the bundled "
                        "demo package")
    parser.add_argument("--single-segment", action="store_true",
                        help="score each dive once, on its segment as found, instead of the mean over the segments "
                             "the package's scoring.edge_offsets_s names (fineparser-export --edge-average: 6, a "
                             "sixth of the work; the score then moves more with the segment's boundaries)")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only in the log")
    return parser


@dataclass
class LiveOptions:
    """Everything a live session needs, resolved from the command line."""

    source: str
    package: Path
    backend: str = "auto"
    checkpoint: str | None = None
    precision: str = AUTO  # fineparser.precision.resolve_precision decides per backend
    device: str = "auto"
    segment: str | None = None  # None: auto when the package has a spotter, else clip
    start_list: Path | None = None
    events: Path | None = None
    overlay: Path | None = None
    serve: str | None = None
    serve_token: str | None = None
    realtime: bool = False
    buffer_seconds: float = DEFAULT_BUFFER_SECONDS
    buffer_frames: int | None = None
    give_up_after: float = 30.0
    read_timeout: float = 5.0
    single_segment: bool = False  # True: ignore the package's scoring.edge_offsets_s
    truth: dict[int, float] = field(default_factory=dict)
    truth_spans: list[tuple[float, float]] = field(default_factory=list)  # --demo: true dives, to grade detection


@dataclass
class SessionReport:
    """What a finished session did (returned to tests and the demo)."""

    scores: list[dict[str, Any]]
    dives: int
    frames: int
    dropped: int
    corrupt: int
    backend: str
    capture_seconds: float
    buffer_max: int
    buffer_capacity: int
    error: str | None = None
    incomplete: int = 0  # dives cut short (their score events say complete: false)
    phase_seconds: dict[str, float] | None = None  # --segment auto: seconds of stream in each phase


class LiveSession:
    """One run: capture thread, segmenter, scorer and sinks around an event bus."""

    def __init__(self, options: LiveOptions, backend: Backend | None = None, bus: EventBus | None = None) -> None:
        self.options = options
        self.bus = bus or EventBus()
        self.package: ModelPackage = load_package(options.package)
        self.bank = self.package.bank()
        self.edge_offsets = EdgeOffsets() if options.single_segment else self.package.edge_offsets()
        self.dive_numbers = read_start_list(options.start_list) if options.start_list else None
        self.segment = options.segment or ("auto" if has_spotter(self.package) else "clip")
        self.spotter: SpotterRunner | None = None
        self.segmenter: Segmenter | DiveStateMachine
        if self.segment == "auto":
            self.spotter = SpotterRunner.from_package(self.package)
            log.info("%s", self.spotter.description)
            self.segmenter = DiveStateMachine(lookahead=self.spotter.spec.lookahead,
                                              thresholds=self.spotter.spec.thresholds,
                                              durations=spotter_segmenter_settings(self.package))
        else:
            self.segmenter = make_segmenter(self.segment)
        self.source = parse_source(options.source)
        self._backend_given = backend
        self.backend: Backend | None = backend
        self.scores: list[dict[str, Any]] = []
        self.dives_started = 0
        self.buffer: FrameBuffer | None = None
        self.capture: CaptureThread | None = None
        self.overlay = None
        self._sinks: list[Any] = []
        self._reported_drops = 0
        self._last_drop_report = 0.0
        self._open_dive: Dive | None = None
        self.phase: str | None = None  # the spotter's current phase (--segment auto)
        self._stream_now = 0.0  # stream time of the newest frame segmented: when a dive start/end was decided
        self.incomplete = 0
        # Dive numbers: the operator's corrections (POST /dive_number, keys n / r), read by the consumer thread.
        self._numbers_lock = threading.Lock()
        self._number_overrides: dict[int, str] = {}  # dive -> dive number
        self._row_offsets: dict[int, int] = {}  # from dive -> start-list row minus dive index
        self._own_numbers: dict[int, str | None] = {}  # dive -> the segmenter's own number (timecodes)
        self._numbers_used: dict[int, str | None] = {}  # dive -> the number its score took

    # ------------------------------------------------------------------ health / operator

    def health(self) -> dict[str, Any]:
        """Counters for GET /health."""
        stats = self.capture.stats if self.capture else None
        return {"backend": getattr(self.backend, "description", None), "source": self.options.source,
                "segmenter": self.segmenter.name, "frames": stats.frames if stats else 0,
                "drops": self.buffer.dropped if self.buffer else 0, "corrupt": stats.corrupt if stats else 0,
                "dives": self.dives_started, "scored": len(self.scores), "incomplete": self.incomplete,
                "phase": self.phase, "buffered": len(self.buffer) if self.buffer else 0,
                "ended": bool(stats and stats.finished_at is not None)}

    def operator_request(self, what: str) -> bool:
        """Forward an HTTP dive mark to the operator segmenter; False with another segmenter."""
        if not isinstance(self.segmenter, OperatorSegmenter):
            return False
        self.segmenter.request(what)
        return True

    def set_dive_number(self, dive: int, dive_number: str | None = None,
                        start_list_row: int | None = None) -> dict[str, Any]:
        """The operator corrects the dive-number mapping while live (POST /dive_number, keys n / r).

        ``dive_number``: dive `dive` gets this number (it wins over timecodes and start list).
        ``start_list_row``: dive `dive` is row R of the start list, and later dives follow on from it
        (dive `dive` + k takes row R + k) until a correction given for a later dive.
        Either applies to every dive not yet scored; DiveNumberError when dive `dive` already was.
        """
        with self._numbers_lock:
            if dive in self._numbers_used:
                used = self._numbers_used[dive]
                raise DiveNumberError(f"dive {dive} was already scored (with dive number {used or 'none'}): "
                                      "corrections apply to dives not yet scored")
            if dive_number is not None:
                self._number_overrides[dive] = canonical_dive_number(dive_number)
                applies = f"dive {dive}"
            else:
                rows = len(self.dive_numbers or [])
                if not rows:
                    raise DiveNumberError("start_list_row needs a start list (--start-list CSV)")
                if not 1 <= int(start_list_row) <= rows:
                    raise DiveNumberError(f"start list row {start_list_row} is outside 1..{rows}")
                self._row_offsets[dive] = int(start_list_row) - dive
                applies = f"dive {dive} and the dives after it (dive {dive}+k: start-list row {start_list_row}+k)"
            number = self._dive_number(dive)
        state = "already started" if dive <= self.dives_started else "not started yet"
        log.info("operator: dive %d (%s) now has dive number %s", dive, state, number)
        return {"dive": dive, "dive_number": number, "applies_to": applies, "dive_state": state}

    def _dive_number(self, index: int) -> str | None:
        """Dive number of dive `index`: the operator's, else the segmenter's own, else its start-list row."""
        if index in self._number_overrides:
            return self._number_overrides[index]
        if self._own_numbers.get(index):
            return self._own_numbers[index]
        if not self.dive_numbers:
            return None
        shifts = [start for start in self._row_offsets if start <= index]
        row = index + (self._row_offsets[max(shifts)] if shifts else 0)
        return self.dive_numbers[row - 1] if 1 <= row <= len(self.dive_numbers) else None

    # ------------------------------------------------------------------ run

    def _load_backend(self) -> None:
        if self.backend is None:
            self.backend, skipped = choose_backend(self.options.backend, self.package, self.options.checkpoint,
                                                   self.options.precision, self.options.device)
            for reason in skipped:
                log.info("auto backend: skipped %s", reason)
        else:
            skipped = []
        start = time.perf_counter()
        feeds = self.bank.pair_head_inputs(self.bank.select("", k=1)[0])
        warm_up(self.backend, feeds, with_masks=self.options.overlay is not None)
        description = getattr(self.backend, "description", self.backend.name)
        log.info("backend %s ready (warm-up %.0f ms)", description, (time.perf_counter() - start) * 1000)
        self.bus.publish("stream", status="backend", backend=self.backend.name, description=description,
                         requested=self.options.backend, skipped=skipped,
                         warmup_ms=round((time.perf_counter() - start) * 1000, 1))

    def run(self) -> SessionReport:
        """Capture, segment and score until the source ends."""
        self._load_backend()
        scorer = DiveScorer(self.backend, self.bank, int(self.package.manifest.get("scoring", {})
                                                          .get("voter_number", 10)),
                            with_masks=self.options.overlay is not None, edge_offsets=self.edge_offsets)
        capacity = self.options.buffer_frames or 0
        if not capacity:
            probe_fps = 50.0  # until the source says its rate; a generous bound for 25/30/50 fps
            capacity = max(int(self.options.buffer_seconds * probe_fps), 2)
        self.buffer = FrameBuffer(capacity)
        if self.options.overlay is not None:
            from runtime.overlay import OverlayWriter

            self.overlay = OverlayWriter(self.options.overlay, max_held=capacity)
        # The capture thread makes the spotter's input of each frame (spotter_frame, from the model frame's reduction).
        self.capture = CaptureThread(self.source, self.buffer, self.bus.publish, realtime=self.options.realtime,
                                     preview_width=self.overlay.width if self.overlay else None,
                                     spotter_hw=self.spotter.spec.input_hw if self.spotter else None,
                                     give_up_after=self.options.give_up_after,
                                     read_timeout_s=self.options.read_timeout)
        if isinstance(self.segmenter, OperatorSegmenter) and sys.stdin is not None:
            self.segmenter.read_keys(dive_number=self.set_dive_number)
        capture_start = time.monotonic()
        self.capture.start()
        last: CapturedFrame | None = None
        try:
            while True:
                item = self.buffer.read_next(timeout=0.2)
                self._report_drops()
                if item is None:
                    if self.buffer.drained:
                        break
                    continue
                self._check_gap(last, item)
                last = item
                self._stream_now = item.time
                for event in self._segment_frame(item):
                    self._on_event(event, scorer)
                if self.overlay is not None:
                    self.overlay.fps = self.capture.stats.fps or self.overlay.fps  # used when the file opens
                    self.overlay.frame(item)
            fps = self.capture.stats.fps or 25.0
            lost = self.source.live or self.capture.error is not None
            for event in self.segmenter.finish(last.time if last else None, 1.0 / fps, lost=lost):
                self._on_event(event, scorer)
            self._report_drops(force=True)
            phase_seconds = self._phase_summary() if last is not None else None
        finally:
            self.capture.stop()
            self.capture.join(timeout=5.0)
            if self.overlay is not None:
                self.overlay.close()
        stats = self.capture.stats
        capture_seconds = (stats.finished_at or time.monotonic()) - capture_start
        return SessionReport(self.scores, self.dives_started, stats.frames, self.buffer.dropped, stats.corrupt,
                             getattr(self.backend, "description", ""), capture_seconds, self.buffer.max_length,
                             self.buffer.capacity, self.capture.error, self.incomplete, phase_seconds)

    def _segment_frame(self, item: CapturedFrame) -> list[SegmentEvent | PhaseChange]:
        """The segmenter's events at this frame; with --segment auto the spotter labels it first."""
        if self.spotter is None:
            return self.segmenter.feed(item.time)
        if self.segmenter.fps is None:  # the first frame: the stream's rate converts the machine's durations
            self.segmenter.fps = self.capture.stats.fps or 25.0
            if self.overlay is not None:
                self.overlay.delay_frames = self.segmenter.decision_delay_frames + 1
        probs = self.spotter.step(cv2.cvtColor(item.spotter, cv2.COLOR_BGR2RGB))
        item.spotter = None  # read once: the ring buffer holds model frames (and overlay previews) only
        return self.segmenter.feed(item.time, probs)

    def _decided(self) -> dict[str, float]:
        """--segment auto: when a dive start/end was decided (stream time), to measure the detection delay."""
        return {"decided_s": round(self._stream_now, 4)} if isinstance(self.segmenter, DiveStateMachine) else {}

    def _check_gap(self, previous: CapturedFrame | None, item: CapturedFrame) -> None:
        """A gap in stream time between consecutive captured frames (a reconnect) inside a dive cuts it short."""
        if previous is None or item.seq != previous.seq + 1 or self._open_dive is None:
            return
        gap = item.time - previous.time
        dive_end = self._open_dive.end if self._open_dive.end is not None else item.time
        if min(item.time, dive_end) - previous.time > STREAM_GAP_S and self._open_dive.incomplete_reason is None:
            self._open_dive.incomplete_reason = (f"the stream was lost for {gap:.2f} s during the dive "
                                                 f"(from {previous.time:.2f} s)")

    def _phase_summary(self) -> dict[str, float] | None:
        """--segment auto: publish the seconds spent in each phase and the dive counts; None with other segmenters."""
        if not isinstance(self.segmenter, DiveStateMachine):
            return None
        seconds = self.segmenter.phase_seconds()
        self.bus.publish("phase_summary", phase_seconds=seconds, dives=self.dives_started, scored=len(self.scores),
                         incomplete=self.incomplete, segmenter=self.segmenter.name)
        log.info("phases: %s; %d dive(s)", ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()),
                 self.dives_started)
        return seconds

    def _on_event(self, event: SegmentEvent | PhaseChange, scorer: DiveScorer) -> None:
        if isinstance(event, PhaseChange):
            self._on_phase(event)
        else:
            self._on_segment(event, scorer)

    def _on_phase(self, change: PhaseChange) -> None:
        self.phase = change.phase
        self.bus.publish("phase", phase=change.phase, previous=change.previous, at_s=round(change.time, 4),
                         decided_s=round(change.decided_at, 4), dive=change.dive)
        if self.overlay is not None:
            self.overlay.phase(change.time, change.phase)

    def _report_drops(self, force: bool = False) -> None:
        """One warning per second at most while frames are being dropped (counts are cumulative)."""
        dropped = self.buffer.dropped
        now = time.monotonic()
        if dropped > self._reported_drops and (force or now - self._last_drop_report >= DROP_REPORT_INTERVAL_S):
            self.bus.publish("warning", kind="frames_dropped",
                             message=f"consumer behind: {dropped - self._reported_drops} frame(s) dropped "
                                     f"({dropped} in total, buffer of {self.buffer.capacity} frames, oldest first)",
                             dropped=dropped - self._reported_drops, dropped_total=dropped)
            self._reported_drops = dropped
            self._last_drop_report = now

    def _on_segment(self, event: SegmentEvent, scorer: DiveScorer) -> None:
        dive = event.dive
        if event.kind == "start":
            self.dives_started += 1
            with self._numbers_lock:
                self._own_numbers[dive.index] = dive.dive_number
                dive.dive_number = self._dive_number(dive.index)
            if dive.dive_number is None and self.dive_numbers is not None:
                self.bus.publish("warning", kind="start_list", message=f"dive {dive.index} is beyond the start "
                                 f"list ({len(self.dive_numbers)} dives): no dive number")
            if dive.ground_truth_score is None:
                dive.ground_truth_score = self.options.truth.get(dive.index)
            self._open_dive = dive
            if self.overlay is not None:
                self.overlay.dive_started(dive.index, dive.start)
            self.bus.publish("dive_start", dive=dive.index, start_s=round(dive.start, 4), dive_number=dive.dive_number,
                             segmenter=self.segmenter.name, **self._decided())
            return
        ended_at = time.perf_counter()
        self._open_dive = None
        with self._numbers_lock:  # the operator's last correction counts; after this the dive's number is fixed
            dive.dive_number = self._dive_number(dive.index)
            self._numbers_used[dive.index] = dive.dive_number
        self.bus.publish("dive_end", dive=dive.index, start_s=round(dive.start, 4), end_s=round(dive.end or 0.0, 4),
                         dive_number=dive.dive_number, segmenter=self.segmenter.name, **self._decided())
        result = None
        try:
            result = self._score(dive, scorer, ended_at)
        finally:
            if self.overlay is not None:
                self.overlay.dive_done(dive.index, dive.end if dive.end is not None else float("inf"), result)

    def _score(self, dive: Dive, scorer: DiveScorer, ended_at: float) -> Any:
        """Score an ended dive from the buffer and publish it; a dive cut short is said to be so, first."""
        frames = self.buffer.frames_between(dive.start, dive.end if dive.end is not None else float("inf"))
        # Frames just before the start, for the edge offsets that move it earlier (twice the earliest offset; the
        # segments take only the frames they need).
        lead_s = scorer.edge_offsets.lead_s
        lead = self.buffer.frames_between(dive.start - 2.0 * lead_s, dive.start) if lead_s > 0 else []
        oldest = self.buffer.oldest_time()
        if oldest is not None and oldest > dive.start + 1e-6:
            self.bus.publish("warning", kind="dive_truncated", dive=dive.index,
                             message=f"dive {dive.index}: frames before {oldest:.2f} s were already dropped from the "
                                     f"buffer (dive starts at {dive.start:.2f} s); scoring the frames left")
            if dive.incomplete_reason is None:
                dive.incomplete_reason = (f"frames before {oldest:.2f} s were already dropped from the buffer "
                                          f"(the dive starts at {dive.start:.2f} s)")
        if dive.incomplete_reason is not None:
            self.incomplete += 1
            self.bus.publish("warning", kind="dive_incomplete", dive=dive.index,
                             message=f"dive {dive.index}: cut short ({dive.incomplete_reason}): its score is not final")
        try:
            result = scorer.score(dive, frames, ended_at, lead=lead)
        except ScoringError as exc:
            self.bus.publish("warning", kind="not_scored", dive=dive.index, message=f"dive {dive.index}: {exc}")
            return None
        except Exception as exc:  # a backend failing on one dive must not end a live session
            log.debug("scoring dive %d failed", dive.index, exc_info=True)
            self.bus.publish("warning", kind="not_scored", dive=dive.index,
                             message=f"dive {dive.index}: the backend failed ({_one_line(exc)})")
            return None
        if result.event.get("exemplar_fallback"):
            self.bus.publish("warning", kind="exemplar_fallback", dive=dive.index,
                             message=f"dive {dive.index}: {result.event['exemplar_fallback']}")
        # Whether the dive was seen whole is the segmentation's to say, not the scorer's (the C++ loop does the same).
        result.event["complete"] = dive.incomplete_reason is None
        if dive.incomplete_reason is not None:
            result.event["incomplete_reason"] = dive.incomplete_reason
        event_out = self.bus.publish("score", **result.event)
        self.scores.append(event_out)
        return result


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _demo_options(args: argparse.Namespace) -> LiveOptions:
    """Generate (once, cached) a synthetic broadcast and point the session at it and the demo package."""
    package = args.package or DEMO_PACKAGE
    if not (Path(package) / "manifest.json").is_file():
        raise UsageError(f"the demo package {package} does not exist yet: `make demo-model` builds it "
                         "(or pass --package PKG)")
    try:
        from synth import find_ffmpeg, generate_broadcasts
        from synth.dataset import SYNTH_VERSION
    except ImportError as exc:
        raise UsageError("--demo renders its broadcast with the synthetic world, which cannot be imported here "
                         f"({exc}): install the project with `pip install '.[synth]'` (or run `make demo` "
                         "from a checkout)") from None
    if find_ffmpeg() is None:
        log.info("no ffmpeg found: the demo broadcast is written with OpenCV's mp4v encoder "
                 "(`pip install '.[synth]'` brings an ffmpeg binary for H.264)")

    out = Path(tempfile.gettempdir()) / f"fineparser-demo-{SYNTH_VERSION}"  # a new world renders a new broadcast
    folder = out / "broadcasts"
    if not (folder / "broadcast_000.json").is_file():
        log.info("generating a synthetic broadcast into %s", folder)
        generate_broadcasts(out, 1, seed=7, size=(640, 360), fps=25.0, dives_per_broadcast=3, idle_seconds=(1.0, 2.0),
                            score_seconds=1.5, overwrite=True, progress=False)
    import json

    truth_file = folder / "broadcast_000.json"
    truth = json.loads(truth_file.read_text())
    # The demo finds its dives itself when the package has a spotter; the ground truth only grades it.
    segment = None if has_spotter(load_package(package)) else f"timecodes:{truth_file}"
    if segment is not None:
        log.warning("the package %s has no spotter: the demo takes its dives from the ground truth", package)
    options = LiveOptions(source=str(folder / "broadcast_000.mp4"), package=Path(package), backend=args.backend,
                          precision=args.precision, device=args.device, segment=segment,
                          start_list=folder / "start_list_000.csv",
                          events=args.events or out / "events.jsonl", overlay=args.overlay or out / "overlay.mp4",
                          serve=args.serve, serve_token=_serve_token(args), single_segment=args.single_segment)
    options.truth = {d["order"]: d["final_score"] for d in truth["dives"]}
    options.truth_spans = [(d["start_s"], d["end_s"]) for d in truth["dives"]]
    print(f"demo: broadcast {options.source}; events -> {options.events}; overlay -> {options.overlay}")
    return options


def detection_table(truth: list[tuple[float, float]], scores: list[dict[str, Any]]) -> str:
    """Detected versus true start and end of every true dive (the detected dive that overlaps it most)."""
    lines = [f"{'dive':>4} {'true start':>10} {'found':>8} {'true end':>9} {'found':>8}"]
    for i, (start, end) in enumerate(truth, start=1):
        overlap = [(min(end, s["end_s"]) - max(start, s["start_s"]), s) for s in scores]
        best = max(overlap, key=lambda item: item[0], default=(0.0, None))
        found = best[1] if best[0] > 0 else None
        lines.append(f"{i:>4} {start:>10.2f} " + (f"{found['start_s']:>8.2f} {end:>9.2f} {found['end_s']:>8.2f}"
                                                  if found else f"{'missed':>8} {end:>9.2f} {'-':>8}"))
    extra = len(scores) - sum(1 for line in lines[1:] if "missed" not in line)
    if extra > 0:
        lines.append(f"{extra} detected dive(s) match no true dive")
    return "\n".join(lines)


def _serve_token(args: argparse.Namespace) -> str | None:
    """--serve-token, else $FINEPARSER_SERVE_TOKEN; UsageError when --serve reaches beyond loopback without one."""
    token = args.serve_token or os.environ.get(TOKEN_ENV) or None
    if args.serve:
        try:
            check_exposure(parse_address(args.serve)[0], token)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return token


def options_from_args(args: argparse.Namespace) -> LiveOptions:
    """Resolve arguments into LiveOptions (UsageError on missing pieces)."""
    try:
        parse_device(args.device)
    except BackendError as exc:
        raise UsageError(str(exc)) from None
    if args.demo:
        return _demo_options(args)
    if not args.source:
        raise UsageError("SOURCE is required (a video file, GIF, frames folder, URL or webcam index), or use --demo")
    if args.package is None:
        raise UsageError("--package PKG is required (a directory written by fineparser-export)")
    return LiveOptions(source=args.source, package=args.package, backend=args.backend, checkpoint=args.checkpoint,
                       precision=args.precision, device=args.device, segment=args.segment,
                       start_list=args.start_list,
                       events=args.events, overlay=args.overlay,
                       serve=args.serve, serve_token=_serve_token(args), realtime=args.realtime,
                       buffer_seconds=args.buffer_seconds,
                       buffer_frames=args.buffer_frames, give_up_after=args.give_up_after,
                       read_timeout=args.read_timeout, single_segment=args.single_segment)


def run_live(options: LiveOptions, backend: Backend | None = None, bus: EventBus | None = None,
             table: bool = True) -> SessionReport:
    """Build a session with its sinks (events file, table, HTTP) and run it to the end of the source."""
    session = LiveSession(options, backend=backend, bus=bus)
    sinks: list[Any] = []
    server = None
    try:
        if options.events is not None:
            sinks.append(JsonLinesSink(options.events))
        if table:
            sinks.append(TableSink())
        for sink in sinks:
            session.bus.subscribe(sink)
        if options.serve:
            from runtime.server import LiveServer

            server = LiveServer(parse_address(options.serve), session.bus, session.health, session.operator_request,
                                session.set_dive_number, token=options.serve_token).start()
        return session.run()
    finally:
        # The bus calls sinks from its own thread: every event published so far reaches them before they close.
        for sink in sinks:
            session.bus.unsubscribe(sink)
        if bus is None:
            session.bus.close()
        else:
            session.bus.flush()
        if server is not None:
            server.close()
        for sink in sinks:
            if isinstance(sink, JsonLinesSink):
                sink.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fineparser-live``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        options = options_from_args(args)
        report = run_live(options)
    except (UsageError, SourceError, SegmentError, PackageError, BackendError, OSError, ValueError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if options.truth_spans:
        print(detection_table(options.truth_spans, report.scores))
    log.info("done: %d dive(s) scored (%d incomplete), %d frames, %d dropped, %d corrupt, backend %s",
             len(report.scores), report.incomplete, report.frames, report.dropped, report.corrupt, report.backend)
    if report.error:
        print(f"error: {report.error}", file=sys.stderr)
        return 2 if report.frames == 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
