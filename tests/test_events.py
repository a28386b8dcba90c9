"""Events: a slow sink never stalls the publisher, nothing is lost or reordered, every event meets the schema."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from jsonschema import Draft202012Validator

from fineparser.package import ExemplarBank, write_manifest
from runtime.cli import LiveOptions, run_live
from runtime.events import EventBus, JsonLinesSink

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin_backend import StandInBackend  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "docs" / "events.schema.json"
WALL_TIME = "2026-11-28T19:38:08.185+00:00"


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_errors(validator: Draft202012Validator, event: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(event)'}: {e.message}" for e in validator.iter_errors(event)]


# --------------------------------------------------------------------------- delivery


class SleepingSink:
    """A sink as slow as a stalled disk: `delay` seconds per event."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.seqs: list[int] = []

    def __call__(self, event: dict) -> None:
        time.sleep(self.delay)
        self.seqs.append(event["seq"])


def test_slow_sink_never_stalls_the_publisher_and_loses_nothing(tmp_path):
    sink_delay, frames, frame_period, every = 0.05, 200, 0.002, 5
    bus = EventBus()
    slow = SleepingSink(sink_delay)
    lines = JsonLinesSink(tmp_path / "events.jsonl")
    bus.subscribe(slow)
    bus.subscribe(lines)
    publish_seconds = []
    loop_start = time.perf_counter()
    for frame in range(frames):  # a capture loop: a frame every 2 ms, an event every 5th frame
        time.sleep(frame_period)
        if frame % every == 0:
            start = time.perf_counter()
            event = bus.publish("warning", kind="corrupt_frame", message=f"frame {frame}", path=f"{frame:05d}.jpg")
            publish_seconds.append(time.perf_counter() - start)
            assert event["seq"] == len(publish_seconds) - 1 and event["path"] == f"{frame:05d}.jpg"
    loop_seconds = time.perf_counter() - loop_start
    count = len(publish_seconds)
    sink_seconds = count * sink_delay
    delivered_at_loop_end = len(slow.seqs)
    bus.close()
    lines.close()
    print(f"{count} events: publish max {max(publish_seconds) * 1e3:.3f} ms, median "
          f"{np.median(publish_seconds) * 1e3:.3f} ms; sink {sink_delay * 1e3:.0f} ms per event ({sink_seconds:.1f} s "
          f"in all); capture loop {loop_seconds:.2f} s for {frames} frames of {frame_period * 1e3:.0f} ms; "
          f"{delivered_at_loop_end} delivered when the loop ended")
    # The publisher kept its own pace: it finished long before the sink could have taken every event.
    assert delivered_at_loop_end < count
    assert loop_seconds < sink_seconds
    assert max(publish_seconds) < sink_delay / 2
    # close() delivered the rest, in publish order, to every sink.
    assert slow.seqs == list(range(count))
    written = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in written] == list(range(count))
    assert [e["path"] for e in written] == [f"{f:05d}.jpg" for f in range(0, frames, every)]


def test_a_blocked_sink_holds_back_nothing_and_is_reported(caplog):
    """A sink that never returns (stdout piped into a stalled reader) until released: publish returns at once."""
    gate = threading.Event()
    received: list[int] = []
    bus = EventBus(high_water=5)
    bus.subscribe(lambda event: gate.wait())
    bus.subscribe(lambda event: received.append(event["seq"]))
    with caplog.at_level(logging.WARNING, logger="runtime.events"):
        for i in range(20):
            bus.publish("stream", status="reconnecting", source="udp://x", at_s=float(i))
        assert not bus.flush(timeout=0.2)  # the blocked sink still holds everything
    assert any("6 events behind" in r.getMessage() and "none is dropped" in r.getMessage() for r in caplog.records)
    gate.set()
    assert bus.flush(timeout=10)
    assert received == list(range(20))
    bus.close()


def test_subscribers_get_the_events_published_while_subscribed():
    bus = EventBus()
    early: list[int] = []
    late: list[int] = []
    bus.subscribe(early.append)
    bus.publish("warning", kind="start_list", message="one")
    bus.subscribe(late.append)
    bus.publish("warning", kind="start_list", message="two")
    bus.unsubscribe(early.append)
    bus.publish("warning", kind="start_list", message="three")
    bus.close()
    assert [e["message"] for e in early] == ["one", "two"] and [e["message"] for e in late] == ["two", "three"]
    with pytest.raises(ValueError, match="unknown event type 'summary'"):
        bus.publish("summary")


def test_a_failing_sink_does_not_stop_the_others(caplog):
    bus = EventBus()
    got: list[str] = []

    def broken(event: dict) -> None:
        raise OSError("disk full")

    bus.subscribe(broken)
    bus.subscribe(lambda event: got.append(event["message"]))
    with caplog.at_level(logging.ERROR, logger="runtime.events"):
        bus.publish("warning", kind="start_list", message="still delivered")
        bus.close()
    assert got == ["still delivered"] and any("failed" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- the schema


def test_schema_rejects_what_the_runtimes_must_not_write(validator):
    good = {"type": "dive_start", "seq": 3, "wall_time": WALL_TIME, "dive": 1, "start_s": 0.72, "dive_number": None,
            "segmenter": "clip"}
    assert schema_errors(validator, good) == []
    for change, message in [({"type": "summary"}, "'summary' is not one of"),
                            ({"dive": 0}, "less than the minimum"),
                            ({"start_s": "0.72"}, "is not of type 'number'"),
                            ({"wall_time": "2026-11-28 19:38:08"}, "does not match"),
                            ({"extra": 1}, "'extra' was unexpected")]:
        errors = schema_errors(validator, good | change)
        assert any(message in e for e in errors), (change, errors)
    missing = {k: v for k, v in good.items() if k != "segmenter"}
    assert any("'segmenter' is a required property" in e for e in schema_errors(validator, missing))


def test_the_documented_examples_meet_the_schema(validator):
    text = (REPO / "docs" / "runtime.md").read_text()
    block = text.split("\n## Events\n", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    examples = [json.loads(line.replace('"wall_time": "..."', f'"wall_time": "{WALL_TIME}"'))
                for line in block.splitlines() if line.strip()]
    assert {e["type"] for e in examples} == {"stream", "dive_start", "dive_end", "score", "warning"}
    for event in examples:
        assert schema_errors(validator, event) == [], event


DIVE_NUMBERS = ["107B", "107B", "107B", "105B", "205C"]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A package holding only an exemplar bank: the runtime runs on it with a stand-in backend."""
    root = tmp_path_factory.mktemp("events_pkg")
    rng = np.random.default_rng(0)
    n = len(DIVE_NUMBERS)
    bank = ExemplarBank(rng.normal(0, 1, (n, 9, 16)), rng.integers(0, 96, (n, 2)), rng.normal(0, 1, (n, 12, 8)),
                        rng.uniform(30, 90, n).round(2), np.full(n, 3.0), DIVE_NUMBERS,
                        [f"meet/{i}" for i in range(n)])
    bank.save_npz(root / "bank.npz")
    bank.save_bin(root / "bank.bin")
    write_manifest(root, {"scoring": {"voter_number": 3},
                          "bank": {"status": "bank", "file": "bank.npz", "binary": "bank.bin"}, "engines": []},
                   ["bank.npz", "bank.bin"])
    return root


def frames_folder(folder: Path, count: int, corrupt: int | None = None) -> Path:
    folder.mkdir()
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), np.full((90, 160, 3), 40 + i % 200, np.uint8))
    if corrupt is not None:
        (folder / f"{corrupt:05d}.jpg").write_bytes(b"\xff\xd8 truncated")
    return folder


def test_python_runtime_events_meet_the_schema(package, validator, tmp_path):
    """Two short runs that between them write every event type and most warnings; each line is checked."""
    folder = frames_folder(tmp_path / "frames", 60, corrupt=7)  # 25 fps: 2.4 s of stream
    timecodes = tmp_path / "dives.json"
    timecodes.write_text(json.dumps({"dives": [
        {"order": 1, "start_s": 0.2, "end_s": 0.8, "dive_number": "107B", "final_score": 71.25},
        {"order": 2, "start_s": 1.0, "end_s": 1.6, "dive_number": "9999Z"},
        {"order": 3, "start_s": 1.8, "end_s": 2.3}]}))
    start_list = tmp_path / "start_list.csv"
    start_list.write_text("order,diver,dive_number,difficulty\n1,A,205C,3.0\n")
    first = tmp_path / "first.jsonl"
    run_live(LiveOptions(source=str(folder), package=package, segment=f"timecodes:{timecodes}",
                         start_list=start_list, events=first), backend=StandInBackend(), table=False)
    # The consumer is slow and the buffer short: frames are dropped, dives truncated or lost.
    (tmp_path / "dives.csv").write_text("start,end\n0.1,0.5\n0.6,1.0\n1.4,2.2\n")
    second = tmp_path / "second.jsonl"
    run_live(LiveOptions(source=str(folder), package=package, segment=f"timecodes:{tmp_path / 'dives.csv'}",
                         start_list=start_list, events=second, buffer_frames=6),
             backend=StandInBackend(delay=0.3), table=False)
    events = []
    for path in (first, second):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [e["seq"] for e in lines] == list(range(len(lines))), path.name
        events += lines
    for event in events:
        assert schema_errors(validator, event) == [], event
    assert {e["type"] for e in events} == {"stream", "dive_start", "dive_end", "score", "warning"}
    assert {e["status"] for e in events if e["type"] == "stream"} == {"backend", "opened", "ended"}
    kinds = {e["kind"] for e in events if e["type"] == "warning"}
    assert kinds >= {"corrupt_frame", "exemplar_fallback", "start_list", "frames_dropped"}, kinds
    assert any("ground_truth_score" in e for e in events if e["type"] == "score")
