"""``fineparser-live SOURCE``: score dives live from a video file, stream, webcam or frames folder.

Exit codes: 0 done; 1 the stream failed mid-way; 2 bad input (source, package, start list,
timecodes, options), always as one ``error:`` line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fineparser.package import ModelPackage, PackageError, load_package
from runtime.backends import Backend, BackendError, choose_backend, warm_up
from runtime.events import EventBus, JsonLinesSink, TableSink
from runtime.scorer import DiveScorer, ScoringError
from runtime.segments import (
    Dive,
    OperatorSegmenter,
    Segmenter,
    SegmentError,
    SegmentEvent,
    make_segmenter,
    read_start_list,
)
from runtime.sources import CaptureThread, FrameBuffer, SourceError, parse_source

log = logging.getLogger("runtime")

DEFAULT_BUFFER_SECONDS = 60.0
DEMO_PACKAGE = Path(__file__).resolve().parents[1] / "demo" / "package"
DROP_REPORT_INTERVAL_S = 1.0


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
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                        help="package variant to run (fp16/int8 made by fineparser-calibrate; onnxruntime backend)")
    parser.add_argument("--checkpoint", help="source checkpoint for --backend torch (default: the manifest's)")
    parser.add_argument("--segment", default="clip", help="clip | timecodes:FILE | operator (default clip)")
    parser.add_argument("--start-list", type=Path, help="CSV order,diver,dive_number,difficulty in competition order")
    parser.add_argument("--events", type=Path, help="write events as JSON lines to this file")
    parser.add_argument("--overlay", type=Path, help="write the programme with masks, phases and scores as MP4")
    parser.add_argument("--serve", metavar="HOST:PORT", help="HTTP API (/events, /health, POST /dive/start|end); "
                        "host defaults to 127.0.0.1")
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
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only in the log")
    return parser


@dataclass
class LiveOptions:
    """Everything a live session needs, resolved from the command line."""

    source: str
    package: Path
    backend: str = "auto"
    checkpoint: str | None = None
    precision: str = "fp32"
    segment: str = "clip"
    start_list: Path | None = None
    events: Path | None = None
    overlay: Path | None = None
    serve: str | None = None
    realtime: bool = False
    buffer_seconds: float = DEFAULT_BUFFER_SECONDS
    buffer_frames: int | None = None
    give_up_after: float = 30.0
    read_timeout: float = 5.0
    truth: dict[int, float] = field(default_factory=dict)


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


class LiveSession:
    """One run: capture thread, segmenter, scorer and sinks around an event bus."""

    def __init__(self, options: LiveOptions, backend: Backend | None = None, bus: EventBus | None = None) -> None:
        self.options = options
        self.bus = bus or EventBus()
        self.package: ModelPackage = load_package(options.package)
        self.bank = self.package.bank()
        self.dive_numbers = read_start_list(options.start_list) if options.start_list else None
        self.segmenter: Segmenter = make_segmenter(options.segment)
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

    # ------------------------------------------------------------------ health / operator

    def health(self) -> dict[str, Any]:
        """Counters for GET /health."""
        stats = self.capture.stats if self.capture else None
        return {"backend": getattr(self.backend, "description", None), "source": self.options.source,
                "segmenter": self.segmenter.name, "frames": stats.frames if stats else 0,
                "drops": self.buffer.dropped if self.buffer else 0, "corrupt": stats.corrupt if stats else 0,
                "dives": self.dives_started, "scored": len(self.scores),
                "buffered": len(self.buffer) if self.buffer else 0,
                "ended": bool(stats and stats.finished_at is not None)}

    def operator_request(self, what: str) -> bool:
        """Forward an HTTP dive mark to the operator segmenter; False with another segmenter."""
        if not isinstance(self.segmenter, OperatorSegmenter):
            return False
        self.segmenter.request(what)
        return True

    # ------------------------------------------------------------------ run

    def _load_backend(self) -> None:
        if self.backend is None:
            self.backend, skipped = choose_backend(self.options.backend, self.package, self.options.checkpoint,
                                                   self.options.precision)
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
                            with_masks=self.options.overlay is not None)
        if self.options.overlay is not None:
            from runtime.overlay import OverlayWriter

            self.overlay = OverlayWriter(self.options.overlay)
        capacity = self.options.buffer_frames or 0
        if not capacity:
            probe_fps = 50.0  # until the source says its rate; a generous bound for 25/30/50 fps
            capacity = max(int(self.options.buffer_seconds * probe_fps), 2)
        self.buffer = FrameBuffer(capacity)
        self.capture = CaptureThread(self.source, self.buffer, self.bus.publish, realtime=self.options.realtime,
                                     preview_width=self.overlay.width if self.overlay else None,
                                     give_up_after=self.options.give_up_after,
                                     read_timeout_s=self.options.read_timeout)
        if isinstance(self.segmenter, OperatorSegmenter) and sys.stdin is not None:
            self.segmenter.read_keys()
        capture_start = time.monotonic()
        self.capture.start()
        last_time: float | None = None
        try:
            while True:
                item = self.buffer.read_next(timeout=0.2)
                self._report_drops()
                if item is None:
                    if self.buffer.drained:
                        break
                    continue
                last_time = item.time
                if self.overlay is not None:
                    self.overlay.fps = self.capture.stats.fps or self.overlay.fps  # used when the file opens
                    self.overlay.frame(item, self._open_dive is not None)
                for event in self.segmenter.feed(item.time):
                    self._on_segment(event, scorer)
            fps = self.capture.stats.fps or 25.0
            for event in self.segmenter.finish(last_time, 1.0 / fps):
                self._on_segment(event, scorer)
            self._report_drops(force=True)
        finally:
            self.capture.stop()
            self.capture.join(timeout=5.0)
            if self.overlay is not None:
                self.overlay.close()
        stats = self.capture.stats
        capture_seconds = (stats.finished_at or time.monotonic()) - capture_start
        return SessionReport(self.scores, self.dives_started, stats.frames, self.buffer.dropped, stats.corrupt,
                             getattr(self.backend, "description", ""), capture_seconds, self.buffer.max_length,
                             self.buffer.capacity, self.capture.error)

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
            if dive.dive_number is None and self.dive_numbers is not None:
                if dive.index <= len(self.dive_numbers):
                    dive.dive_number = self.dive_numbers[dive.index - 1]
                else:
                    self.bus.publish("warning", kind="start_list", message=f"dive {dive.index} is beyond the start "
                                     f"list ({len(self.dive_numbers)} dives): no dive number")
            if dive.ground_truth_score is None:
                dive.ground_truth_score = self.options.truth.get(dive.index)
            self._open_dive = dive
            self.bus.publish("dive_start", dive=dive.index, start_s=round(dive.start, 4), dive_number=dive.dive_number,
                             segmenter=self.segmenter.name)
            return
        ended_at = time.perf_counter()
        self._open_dive = None
        self.bus.publish("dive_end", dive=dive.index, start_s=round(dive.start, 4), end_s=round(dive.end or 0.0, 4),
                         dive_number=dive.dive_number, segmenter=self.segmenter.name)
        frames = self.buffer.frames_between(dive.start, dive.end if dive.end is not None else float("inf"))
        oldest = self.buffer.oldest_time()
        if oldest is not None and oldest > dive.start + 1e-6:
            self.bus.publish("warning", kind="dive_truncated", dive=dive.index,
                             message=f"dive {dive.index}: frames before {oldest:.2f} s were already dropped from the "
                                     f"buffer (dive starts at {dive.start:.2f} s); scoring the frames left")
        try:
            result = scorer.score(dive, frames, ended_at)
        except ScoringError as exc:
            self.bus.publish("warning", kind="not_scored", dive=dive.index, message=f"dive {dive.index}: {exc}")
            return
        except Exception as exc:  # a backend failing on one dive must not end a live session
            log.debug("scoring dive %d failed", dive.index, exc_info=True)
            self.bus.publish("warning", kind="not_scored", dive=dive.index,
                             message=f"dive {dive.index}: the backend failed ({_one_line(exc)})")
            return
        if result.event.get("exemplar_fallback"):
            self.bus.publish("warning", kind="exemplar_fallback", dive=dive.index,
                             message=f"dive {dive.index}: {result.event['exemplar_fallback']}")
        event_out = self.bus.publish("score", **result.event)
        self.scores.append(event_out)
        if self.overlay is not None:
            self.overlay.dive_scored(result, frames)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _demo_options(args: argparse.Namespace) -> LiveOptions:
    """Generate (once, cached) a synthetic broadcast and point the session at it and the demo package."""
    package = args.package or DEMO_PACKAGE
    if not (Path(package) / "manifest.json").is_file():
        raise UsageError(f"the demo package {package} does not exist yet: `make demo-model` builds it "
                         "(or pass --package PKG)")
    from fineparser.synth import generate_broadcasts
    from fineparser.synth.dataset import SYNTH_VERSION

    out = Path(tempfile.gettempdir()) / f"fineparser-demo-{SYNTH_VERSION}"  # a new world renders a new broadcast
    folder = out / "broadcasts"
    if not (folder / "broadcast_000.json").is_file():
        log.info("generating a synthetic broadcast into %s", folder)
        generate_broadcasts(out, 1, seed=7, size=(640, 360), fps=25.0, dives_per_broadcast=3, idle_seconds=(1.0, 2.0),
                            score_seconds=1.5, replay_probability=0.0, overwrite=True, progress=False)
    import json

    truth = json.loads((folder / "broadcast_000.json").read_text())
    options = LiveOptions(source=str(folder / "broadcast_000.mp4"), package=Path(package), backend=args.backend,
                          precision=args.precision, segment=f"timecodes:{folder / 'broadcast_000.json'}",
                          start_list=folder / "start_list_000.csv",
                          events=args.events or out / "events.jsonl", overlay=args.overlay or out / "overlay.mp4",
                          serve=args.serve)
    options.truth = {d["order"]: d["final_score"] for d in truth["dives"]}
    print(f"demo: broadcast {options.source}; events -> {options.events}; overlay -> {options.overlay}")
    return options


def options_from_args(args: argparse.Namespace) -> LiveOptions:
    """Resolve arguments into LiveOptions (UsageError on missing pieces)."""
    if args.demo:
        return _demo_options(args)
    if not args.source:
        raise UsageError("SOURCE is required (a video file, GIF, frames folder, URL or webcam index), or use --demo")
    if args.package is None:
        raise UsageError("--package PKG is required (a directory written by fineparser-export)")
    return LiveOptions(source=args.source, package=args.package, backend=args.backend, checkpoint=args.checkpoint,
                       precision=args.precision, segment=args.segment, start_list=args.start_list,
                       events=args.events, overlay=args.overlay,
                       serve=args.serve, realtime=args.realtime, buffer_seconds=args.buffer_seconds,
                       buffer_frames=args.buffer_frames, give_up_after=args.give_up_after,
                       read_timeout=args.read_timeout)


def run_live(options: LiveOptions, backend: Backend | None = None, bus: EventBus | None = None,
             table: bool = True) -> SessionReport:
    """Build a session with its sinks (events file, table, HTTP) and run it to the end of the source."""
    session = LiveSession(options, backend=backend, bus=bus)
    sinks: list[Any] = []
    server = None
    try:
        if options.events is not None:
            sink = JsonLinesSink(options.events)
            session.bus.subscribe(sink)
            sinks.append(sink)
        if table:
            session.bus.subscribe(TableSink())
        if options.serve:
            from runtime.server import LiveServer, parse_address

            server = LiveServer(parse_address(options.serve), session.bus, session.health,
                                session.operator_request).start()
        return session.run()
    finally:
        if server is not None:
            server.close()
        for sink in sinks:
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
    log.info("done: %d dive(s) scored, %d frames, %d dropped, %d corrupt, backend %s", len(report.scores),
             report.frames, report.dropped, report.corrupt, report.backend)
    if report.error:
        print(f"error: {report.error}", file=sys.stderr)
        return 2 if report.frames == 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
