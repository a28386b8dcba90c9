"""fineparser-live --segment auto: the spotter's state machine, phases, incomplete dives, HTTP token and corrections.

The spotter here is a stand-in ONNX graph made with onnx.helper whose probabilities are a function of a
frame's mean colour (one colour per class), behind a delay line of `lookahead` frames, so a test paints
a programme and knows each frame's label.  One test runs the real exported spotter instead.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from jsonschema import Draft202012Validator
from onnx import TensorProto, helper, numpy_helper

from fineparser.package import ExemplarBank, sha256_file, write_manifest
from fineparser.spotter_spec import CLASS_NAMES, SPOTTER_FILE, SpotterSpec
from runtime.cli import LiveOptions, main, run_live
from runtime.events import EventBus, TableSink
from runtime.segments import DiveStateMachine, OperatorSegmenter, PhaseChange, SegmentEvent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin_backend import StandInBackend  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "docs" / "events.schema.json"
FPS = 25.0
COLOURS = {"idle": (40, 40, 40), "approach": (220, 40, 40), "flight": (40, 220, 40), "entry": (40, 40, 220),
           "replay": (220, 220, 220)}
"""RGB colour of a frame of each class: the stand-in spotter answers the class nearest to a frame's mean colour."""
BANK_NUMBERS = ["107b", "107b", "205c", "205c", "405c", "405c"]


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA.read_text()))


def schema_errors(validator: Draft202012Validator, event: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(event)'}: {e.message}" for e in validator.iter_errors(event)]


# --------------------------------------------------------------------------- inputs the tests make


def one_hot(name: str, p: float = 0.9) -> np.ndarray:
    probs = np.full(len(CLASS_NAMES), (1 - p) / (len(CLASS_NAMES) - 1))
    probs[CLASS_NAMES.index(name)] = p
    return probs


def labels(*runs: tuple[str, int]) -> list[str]:
    """[("idle", 20), ("approach", 10), ...] -> one label per frame."""
    return [name for name, count in runs for _ in range(count)]


def run_machine(machine: DiveStateMachine, frame_labels: list[str], fps: float = FPS, finish: bool = True
                ) -> tuple[list[SegmentEvent], list[PhaseChange]]:
    """Feed a label sequence as the spotter would answer it: after frame t, the label of frame t - lookahead."""
    machine.fps = fps
    out: list = []
    for t in range(len(frame_labels)):
        source = t - machine.lookahead
        probs = one_hot(frame_labels[source]) if source >= 0 else np.zeros(len(CLASS_NAMES))
        out += machine.feed(t / fps, probs)
    if finish:
        out += machine.finish((len(frame_labels) - 1) / fps, 1 / fps)
    return [e for e in out if isinstance(e, SegmentEvent)], [e for e in out if isinstance(e, PhaseChange)]


def stand_in_spotter(path: Path, lookahead: int, input_hw: tuple[int, int] = (36, 64), tau: float = 400.0
                     ) -> SpotterSpec:
    """spotter.onnx of the graph contract: probs = softmax(-|mean colour - class colour|^2 / tau), delayed."""
    classes = len(CLASS_NAMES)
    hidden = max(lookahead * classes, 1)
    spec = SpotterSpec(input_height=input_hw[0], input_width=input_hw[1], lookahead=lookahead, hidden_size=hidden)
    centres = np.array([COLOURS[name] for name in CLASS_NAMES], np.float32)  # [5, 3]
    weights = (2 * centres.T / tau).astype(np.float32)  # the -|x|^2 term is the same for every class
    bias = (-(centres ** 2).sum(1) / tau).astype(np.float32)
    nodes = [helper.make_node("Cast", ["frame"], ["frame_f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["frame_f"], ["colour"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["colour", "weights"], ["scaled"]),
             helper.make_node("Add", ["scaled", "bias"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["now"], axis=-1)]
    inits = [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")]
    if lookahead == 0:
        nodes += [helper.make_node("Identity", ["now"], ["probs"]),
                  helper.make_node("Identity", ["state"], ["state_out"])]
    else:  # the state is a delay line of the last `lookahead` answers, oldest first
        inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                  [("zero", [0]), ("c", [classes]), ("h", [hidden]), ("axis", [1])]]
        nodes += [helper.make_node("Slice", ["state", "zero", "c", "axis"], ["probs"]),
                  helper.make_node("Slice", ["state", "c", "h", "axis"], ["rest"]),
                  helper.make_node("Concat", ["rest", "now"], ["state_out"], axis=1)]
    graph = helper.make_graph(
        nodes, "stand_in_spotter",
        [helper.make_tensor_value_info("frame", TensorProto.UINT8, [1, *input_hw, 3]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, hidden])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, classes]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return spec


def make_package(root: Path, lookahead: int | None = 2, segmenter: dict | None = None) -> Path:
    """A package with an exemplar bank and, unless lookahead is None, the stand-in spotter (the backend is faked)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = len(BANK_NUMBERS)
    bank = ExemplarBank(rng.normal(0, 1, (n, 9, 16)), rng.integers(0, 96, (n, 2)), rng.normal(0, 1, (n, 12, 8)),
                        rng.uniform(30, 90, n).round(2), np.full(n, 3.0), BANK_NUMBERS,
                        [f"meet/{i}" for i in range(n)])
    bank.save_npz(root / "bank.npz")
    manifest = {"scoring": {"voter_number": 2}, "bank": {"status": "bank", "file": "bank.npz"}, "engines": []}
    files = ["bank.npz"]
    if lookahead is not None:
        spec = stand_in_spotter(root / SPOTTER_FILE, lookahead)
        manifest["spotter"] = {"file": SPOTTER_FILE, "sha256": sha256_file(root / SPOTTER_FILE),
                               "spec": spec.to_dict(), **({"segmenter": segmenter} if segmenter else {})}
        files.append(SPOTTER_FILE)
    write_manifest(root, manifest, files)
    return root


def programme(path: Path, frame_labels: list[str], fps: float = FPS, size: tuple[int, int] = (160, 90)) -> Path:
    """A video whose frame i has the colour of frame_labels[i] (with a little texture), mp4v."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    rng = np.random.default_rng(1)
    for name in frame_labels:
        rgb = np.clip(np.array(COLOURS[name], np.int16) + rng.integers(-6, 7, (size[1], size[0], 3)), 0, 255)
        writer.write(cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def collect(bus: EventBus) -> list[dict]:
    events: list[dict] = []
    bus.subscribe(events.append)
    return events


# --------------------------------------------------------------------------- the state machine


DIVE = labels(("idle", 20), ("approach", 10), ("flight", 8), ("entry", 4), ("idle", 20))
"""A live dive at 25 fps: approach from frame 20, flight from 30, entry from 38, idle again from 42."""


@pytest.mark.parametrize("lookahead", [0, 4])
def test_a_live_dive_starts_and_ends_at_the_frames_where_the_phase_changed(lookahead):
    segments, phases = run_machine(DiveStateMachine(lookahead=lookahead), DIVE)
    assert [(e.kind, e.dive.index) for e in segments] == [("start", 1), ("end", 1)]
    dive = segments[0].dive
    # The times are those of the frames where the labels changed, whatever the look-ahead delay.
    assert dive.start == pytest.approx(20 / FPS) and dive.end == pytest.approx(42 / FPS)
    assert dive.incomplete_reason is None and dive.source == "auto"
    assert [(p.phase, round(p.time * FPS)) for p in phases] == [
        ("idle", 0), ("approach", 20), ("flight", 30), ("entry", 38), ("idle", 42)]
    assert [p.dive for p in phases] == [None, 1, 1, 1, None]
    # Decided later: after start_hold (0.2 s = 5 frames) of approach, and `lookahead` frames after that.
    start = next(p for p in phases if p.phase == "approach")
    assert round(start.decided_at * FPS) == 20 + 5 - 1 + lookahead
    end = phases[-1]
    assert round(end.decided_at * FPS) == 42 + 10 - 1 + lookahead  # end_hold 0.4 s = 10 frames


def test_durations_are_seconds_so_any_frame_rate_finds_the_same_dive():
    at_50 = [name for name in DIVE for _ in range(2)]  # the same programme at 50 fps
    (start25, _), _ = run_machine(DiveStateMachine(lookahead=4), DIVE, fps=25.0)
    (start50, _), _ = run_machine(DiveStateMachine(lookahead=4), at_50, fps=50.0)
    assert start25.dive.start == pytest.approx(start50.dive.start)
    assert start25.dive.end == pytest.approx(start50.dive.end)
    machine = DiveStateMachine(fps=50.0, durations={"start_hold_s": 0.2})
    assert machine.frames("start_hold_s") == 10 and machine.frames("end_hold_s") == 20


def test_a_dive_is_dated_back_over_the_unsure_frames_of_its_approach_but_never_over_a_replay():
    unsure, sure = soft(approach=0.3), soft(approach=0.9)
    # idle 0-19, an approach the spotter is unsure of 20-27, sure from 28: starts at 20 with live_back 0.25.
    probs = [soft()] * 20 + [unsure] * 8 + [sure] * 20 + [soft()] * 20

    def start(thresholds: dict, durations: dict | None = None, frames=probs) -> int:
        machine = DiveStateMachine(fps=FPS, thresholds=thresholds, durations=durations)
        events = [e for t, p in enumerate(frames) for e in machine.feed(t / FPS, p)]
        return round(next(e.dive.start for e in events if isinstance(e, SegmentEvent)) * FPS)

    assert start({}) == 28  # the default live_back (= live_enter) dates nothing back
    assert start({"live_back": 0.25}) == 20
    assert start({"live_back": 0.25}, {"start_back_s": 0.12}) == 25  # at most 3 frames back
    # A replay (or the start of the phase before it) bounds the way back.
    after_replay = [soft()] * 10 + [soft(replay=0.9)] * 10 + [unsure] * 8 + [sure] * 20
    assert start({"live_back": 0.25}, frames=after_replay) == 20


def test_a_replay_never_starts_a_dive():
    replay = np.array([0.0, 0.1, 0.2, 0.1, 0.6])  # P(live) 0.4: above the low live_enter below
    machine = DiveStateMachine(fps=FPS, thresholds={"live_enter": 0.35, "live_exit": 0.2})
    out = [e for t in range(40) for e in machine.feed(t / FPS, one_hot("idle") if t < 10 else replay)]
    out += machine.finish(39 / FPS, 1 / FPS)
    assert not [e for e in out if isinstance(e, SegmentEvent)]
    assert [(e.phase, round(e.time * FPS)) for e in out] == [("idle", 0), ("replay", 10)]
    assert machine.phase_seconds()["replay"] == pytest.approx(30 / FPS)


def test_flicker_shorter_than_the_start_hold_is_no_dive():
    flicker = labels(*[("idle", 6), ("approach", 4)] * 5, ("idle", 10), *[("flight", 2), ("replay", 3)] * 4)
    segments, phases = run_machine(DiveStateMachine(lookahead=2), flicker)
    assert segments == [] and {p.phase for p in phases} <= {"idle", "replay"}


def test_a_dive_without_entry_or_cut_by_the_stream_is_incomplete():
    (start, end), _ = run_machine(DiveStateMachine(), labels(("idle", 5), ("approach", 20), ("idle", 15)))
    assert end.dive.end == pytest.approx(25 / FPS) and "no entry" in end.dive.incomplete_reason
    # The stream ends during the flight: ended with the stream, incomplete.
    (start, end), phases = run_machine(DiveStateMachine(lookahead=2), labels(("idle", 5), ("approach", 10),
                                                                             ("flight", 6)))
    assert end.dive.end == pytest.approx(21 / FPS)
    assert end.dive.incomplete_reason == "the stream ended at 0.84 s, before the dive's end"
    # Entry seen and idle already begun when the stream ends: only the end hold was cut, the dive is whole.
    (start, end), _ = run_machine(DiveStateMachine(lookahead=2), labels(("idle", 5), ("approach", 10),
                                                                        ("flight", 6), ("entry", 3), ("idle", 5)))
    assert end.dive.end == pytest.approx(24 / FPS) and end.dive.incomplete_reason is None


def test_a_dive_longer_than_max_dive_s_is_ended_there():
    machine = DiveStateMachine(durations={"max_dive_s": 1.0})
    (start, end), _ = run_machine(machine, labels(("idle", 5), ("approach", 60)))
    assert end.dive.end - start.dive.start == pytest.approx(1.0)
    assert "max_dive_s" in end.dive.incomplete_reason


def test_entry_tail_ends_a_dive_at_a_fixed_time_after_its_entry_while_the_spotter_lingers():
    # The spotter stays on "entry" for 2 s after the hands reach the water (it cannot see where the annotators
    # end a dive), then a second dive follows with no idle frame between: 30 + 10 + 8 + 50 + 10 + 8 + 50.
    lingering = labels(("idle", 30), ("approach", 10), ("flight", 8), ("entry", 50),
                       ("approach", 10), ("flight", 8), ("entry", 50), ("idle", 20))
    (start, end), _ = run_machine(DiveStateMachine(lookahead=2), lingering)
    assert round(end.dive.end * FPS) == 166  # tail off: the first dive runs through both, up to the idle frames
    machine = DiveStateMachine(lookahead=2, durations={"entry_tail_s": 0.6})  # 15 frames
    segments, phases = run_machine(machine, lingering)
    assert [(e.kind, e.dive.index) for e in segments] == [("start", 1), ("end", 1)]
    first = segments[1].dive
    assert round(first.start * FPS) == 30 and round(first.end * FPS) == 48 + 15 and first.incomplete_reason is None
    # Decided as soon as the tail has passed (plus the look-ahead), not when the spotter lets go 2 s later.
    end_phase = next(p for p in phases if p.dive is None and p.time > first.start)
    assert round(end_phase.decided_at * FPS) == 63 + 2
    # The spotter still says live after the anchored end: no new dive until a frame that is not live.
    again = labels(("idle", 30), ("approach", 10), ("flight", 8), ("entry", 30), ("idle", 3),
                   ("approach", 10), ("flight", 8), ("entry", 10), ("idle", 20))
    segments, _ = run_machine(DiveStateMachine(lookahead=2, durations={"entry_tail_s": 0.6}), again)
    ends = [(round(e.dive.start * FPS), round(e.dive.end * FPS)) for e in segments if e.kind == "end"]
    assert ends == [(30, 63), (81, 109)]
    # A cut to idle before the tail has passed ends the dive there, as without the tail.
    (start, end), _ = run_machine(DiveStateMachine(durations={"entry_tail_s": 2.0}),
                                  labels(("idle", 5), ("approach", 10), ("flight", 6), ("entry", 4), ("idle", 20)))
    assert round(end.dive.end * FPS) == 25 and end.dive.incomplete_reason is None
    # A dive that never reaches entry is not ended by the tail.
    (start, end), _ = run_machine(DiveStateMachine(durations={"entry_tail_s": 0.2}),
                                  labels(("idle", 5), ("approach", 10), ("flight", 30), ("idle", 15)))
    assert round(end.dive.end * FPS) == 45 and "no entry" in end.dive.incomplete_reason


def test_entry_tail_is_off_at_zero_and_never_negative():
    assert DiveStateMachine(fps=FPS).durations["entry_tail_s"] == 0.0
    with pytest.raises(ValueError, match=r"entry_tail_s=-0.5 must be a positive number of seconds .*or 0, off"):
        DiveStateMachine(durations={"entry_tail_s": -0.5})
    with pytest.raises(ValueError, match="end_hold_s=0.0 must be a positive"):
        DiveStateMachine(durations={"end_hold_s": 0})


def test_phase_seconds_add_up_to_the_stream():
    machine = DiveStateMachine(lookahead=3)
    run_machine(machine, DIVE + labels(("replay", 30), ("idle", 10)))
    seconds = machine.phase_seconds()
    assert sum(seconds.values()) == pytest.approx((len(DIVE) + 40) / FPS, abs=1e-3)
    assert seconds["approach"] == pytest.approx(10 / FPS) and seconds["entry"] == pytest.approx(4 / FPS)
    assert seconds["replay"] == pytest.approx(30 / FPS)


def test_unknown_durations_are_an_error_listing_the_known_ones():
    with pytest.raises(ValueError, match="unknown spotter segmenter duration.*start_hold_s, phase_hold_s"):
        DiveStateMachine(durations={"start_hold": 0.2})


def test_schema_holds_complete_and_its_reason_together(validator):
    line = next(line for line in (REPO / "docs" / "runtime.md").read_text().splitlines()
                if line.startswith('{"type": "score"'))  # the documented score event
    score = json.loads(line.replace('"wall_time": "..."', '"wall_time": "2026-11-28T19:38:08.185+00:00"'))
    assert schema_errors(validator, score) == [] and score["complete"] is True
    cut = score | {"complete": False, "incomplete_reason": "the stream ended at 3.60 s, before the dive's end"}
    assert schema_errors(validator, cut) == []
    assert any("'incomplete_reason' is a required property" in e
               for e in schema_errors(validator, score | {"complete": False}))
    assert schema_errors(validator, score | {"incomplete_reason": "a reason for a whole dive"})
    assert schema_errors(validator, {k: v for k, v in score.items() if k != "complete"}) == []  # files from before


# --------------------------------------------------------------------------- end to end


def test_segment_auto_end_to_end(tmp_path, validator):
    """Two dives among idle and replay: detected at their frames, numbered by the start list, every event valid."""
    package = make_package(tmp_path / "pkg", lookahead=2)
    frame_labels = labels(("idle", 20), ("approach", 12), ("flight", 10), ("entry", 5), ("idle", 15),
                          ("replay", 25), ("idle", 15), ("approach", 10), ("flight", 10), ("entry", 5), ("idle", 20))
    video = programme(tmp_path / "programme.mp4", frame_labels)
    start_list = tmp_path / "start.csv"
    start_list.write_text("order,diver,dive_number,difficulty\n1,A,205C,3.0\n2,B,405C,3.4\n")
    bus = EventBus()
    events = collect(bus)
    table = io.StringIO()
    bus.subscribe(TableSink(table))
    report = run_live(LiveOptions(source=str(video), package=package, start_list=start_list,  # --segment: auto
                                  events=tmp_path / "events.jsonl", overlay=tmp_path / "overlay.mp4"),
                      backend=StandInBackend(), bus=bus, table=False)
    bus.close()
    written = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    for event in written:
        assert schema_errors(validator, event) == [], event
    starts = [e for e in events if e["type"] == "dive_start"]
    ends = [e for e in events if e["type"] == "dive_end"]
    assert [round(e["start_s"] * FPS) for e in starts] == [20, 102]
    assert [round(e["end_s"] * FPS) for e in ends] == [47, 127]
    assert {e["segmenter"] for e in starts} == {"auto"}
    scores = report.scores
    assert [s["dive_number"] for s in scores] == ["205c", "405c"] and all(s["complete"] for s in scores)
    assert {x["dive_number"] for x in scores[0]["exemplars"]} == {"205c"}
    phases = [(e["phase"], round(e["at_s"] * FPS)) for e in events if e["type"] == "phase"]
    assert phases == [("idle", 0), ("approach", 20), ("flight", 32), ("entry", 42), ("idle", 47), ("replay", 62),
                      ("idle", 87), ("approach", 102), ("flight", 112), ("entry", 122), ("idle", 127)]
    summary = [e for e in events if e["type"] == "phase_summary"]
    assert len(summary) == 1 and summary[0]["dives"] == 2 and summary[0]["scored"] == 2
    assert summary[0]["phase_seconds"]["replay"] == pytest.approx(1.0, abs=0.05)
    assert sum(report.phase_seconds.values()) == pytest.approx(len(frame_labels) / FPS, abs=0.01)
    assert "phases: idle" in table.getvalue() and "2 dive(s) detected" in table.getvalue()
    overlay = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == len(frame_labels)  # every frame once, in order
    overlay.release()


def test_segment_auto_without_a_spotter_is_one_line(tmp_path, capsys):
    package = make_package(tmp_path / "pkg", lookahead=None)
    video = programme(tmp_path / "p.mp4", labels(("idle", 5)))
    rc = main([str(video), "--package", str(package), "--segment", "auto"])
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: --segment auto needs a spotter") and "--spotter SPOTTER_CKPT" in err


def test_a_programme_without_dives_ends_with_time_per_class(tmp_path, capsys, monkeypatch):
    package = make_package(tmp_path / "pkg", lookahead=2)
    video = programme(tmp_path / "p.mp4", labels(("idle", 30), ("replay", 20), ("idle", 10), ("approach", 2),
                                                ("idle", 10)))
    monkeypatch.setattr("runtime.cli.choose_backend", lambda *args, **kwargs: (StandInBackend(), []))
    rc = main([str(video), "--package", str(package), "--events", str(tmp_path / "e.jsonl"), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    (summary,) = [e for e in events if e["type"] == "phase_summary"]
    assert summary["dives"] == 0 and summary["scored"] == 0
    assert summary["phase_seconds"] == pytest.approx({"idle": 52 / FPS, "approach": 0.0, "flight": 0.0,
                                                      "entry": 0.0, "replay": 20 / FPS}, abs=1e-3)
    assert "no dive detected" in out and "phases: idle 2.08 s" in out and "replay 0.80 s" in out


def test_a_dive_cut_by_the_end_of_the_stream_is_not_a_final_score(tmp_path, validator):
    package = make_package(tmp_path / "pkg", lookahead=None)
    video = programme(tmp_path / "p.mp4", labels(("idle", 75)))  # 3 s
    timecodes = tmp_path / "dives.csv"
    timecodes.write_text("start,end\n0.4,1.2\n2.0,5.0\n")
    bus = EventBus()
    events = collect(bus)
    table = io.StringIO()
    bus.subscribe(TableSink(table))
    report = run_live(LiveOptions(source=str(video), package=package, segment=f"timecodes:{timecodes}"),
                      backend=StandInBackend(), bus=bus, table=False)
    bus.close()
    for event in events:
        assert schema_errors(validator, event) == [], event
    whole, cut = report.scores
    assert whole["complete"] is True and "incomplete_reason" not in whole
    assert cut["complete"] is False and cut["end_s"] == 3.0
    assert cut["incomplete_reason"] == "the stream ended at 3.00 s, before the dive's end at 5.00 s"
    warnings = [e for e in events if e["type"] == "warning" and e["kind"] == "dive_incomplete"]
    assert [w["dive"] for w in warnings] == [2] and "its score is not final" in warnings[0]["message"]
    kinds = [e["type"] if e["type"] != "warning" else e["kind"] for e in events if e.get("dive") == 2]
    assert kinds.index("dive_end") < kinds.index("dive_incomplete") < kinds.index("score")
    assert report.incomplete == 1 and not [e for e in events if e["type"] in ("phase", "phase_summary")]
    rows = table.getvalue().splitlines()
    assert "INCOMPLETE" not in rows[1] and "INCOMPLETE: the stream ended at 3.00 s" in rows[2]


def test_real_exported_spotter_steps_in_the_runtime(tmp_path):
    """The runner takes the graph export/spotter.py writes (a small random-weight spotter)."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    from export.spotter import export_spotter
    from fineparser.package import load_package
    from fineparser.spotter import Spotter, SpotterConfig
    from runtime.spotter import SpotterRunner

    model = Spotter(SpotterConfig(input_height=48, input_width=80, feature_dim=24, hidden_size=16, lookahead=2))
    package = make_package(tmp_path / "pkg", lookahead=None)
    record = export_spotter(model.eval(), package, parity_frame_count=4)
    manifest = json.loads((package / "manifest.json").read_text())
    write_manifest(package, {**manifest, "spotter": record}, [SPOTTER_FILE])
    runner = SpotterRunner.from_package(load_package(package))
    frames = np.random.default_rng(0).integers(0, 256, (6, 90, 160, 3), dtype=np.uint8)
    probs = np.stack([runner.step(frame) for frame in frames])
    assert probs.shape == (6, 5) and np.allclose(probs.sum(1), 1, atol=1e-5) and runner.steps == 6
    machine = DiveStateMachine(fps=FPS, lookahead=runner.spec.lookahead, thresholds=runner.spec.thresholds)
    phases = [e for t, p in enumerate(probs) for e in machine.feed(t / FPS, p)]
    assert phases and phases[0].phase == "idle" and phases[0].time == 0.0  # frame 0 labelled after 2 steps


# --------------------------------------------------------------------------- HTTP: token, dive-number correction


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port: int, method: str, path: str, body: dict | None = None, token: str | None = None
            ) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def wait_for(port: int, condition, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, health = request(port, "GET", "/health")
            if status == 200 and condition(health):
                return health
        except OSError:
            pass
        assert time.monotonic() < deadline, "the session did not get there in time"
        time.sleep(0.05)


def live_session(tmp_path: Path, options: LiveOptions) -> tuple[threading.Thread, dict, list[dict]]:
    bus = EventBus()
    events = collect(bus)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(report=run_live(options, StandInBackend(), bus, False)))
    thread.start()
    return thread, result, events


def test_posts_need_the_token_beyond_loopback(tmp_path, capsys, monkeypatch):
    package = make_package(tmp_path / "pkg", lookahead=None)
    video = programme(tmp_path / "p.mp4", labels(("idle", 75)))
    # Binding every interface without a token is a usage error (one line).
    monkeypatch.delenv("FINEPARSER_SERVE_TOKEN", raising=False)
    rc = main([str(video), "--package", str(package), "--serve", f"0.0.0.0:{free_port()}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--serve-token TOKEN" in err and "FINEPARSER_SERVE_TOKEN" in err
    # Bound to 0.0.0.0 with a token (from the environment, as --serve-token would give it); spoken to over loopback.
    monkeypatch.setenv("FINEPARSER_SERVE_TOKEN", "s3cret-token")
    from runtime.cli import build_parser, options_from_args

    port = free_port()
    options = options_from_args(build_parser().parse_args([str(video), "--package", str(package), "--segment",
                                                           "operator", "--realtime", "--serve", f"0.0.0.0:{port}"]))
    assert options.serve_token == "s3cret-token"
    thread, result, events = live_session(tmp_path, options)
    try:
        health = wait_for(port, lambda h: h["frames"] > 0)  # read-only endpoints stay open
        assert health["phase"] is None and health["segmenter"] == "operator"
        assert request(port, "POST", "/dive/start")[0] == 401
        assert request(port, "POST", "/dive/start", token="wrong")[0] == 401
        assert request(port, "POST", "/dive_number", {"dive": 1, "dive_number": "107b"})[0] == 401
        status, body = request(port, "POST", "/dive/start", token="s3cret-token")
        assert status == 202 and body == {"accepted": "start"}
        wait_for(port, lambda h: h["dives"] == 1)
        assert request(port, "POST", "/dive/end", token="s3cret-token")[0] == 202
    finally:
        thread.join(timeout=30)
    assert len(result["report"].scores) == 1


def test_dive_number_correction_over_http(tmp_path):
    package = make_package(tmp_path / "pkg", lookahead=None)
    video = programme(tmp_path / "p.mp4", labels(("idle", 100)))  # 4 s at real time
    start_list = tmp_path / "start.csv"
    start_list.write_text("order,diver,dive_number,difficulty\n1,A,107B,2.0\n2,B,205C,3.0\n3,C,107B,2.0\n")
    port = free_port()
    options = LiveOptions(source=str(video), package=package, segment="operator", start_list=start_list,
                          realtime=True, serve=f"127.0.0.1:{port}", serve_token="tok")
    thread, result, events = live_session(tmp_path, options)
    post = lambda path, body=None: request(port, "POST", path, body, token="tok")  # noqa: E731
    try:
        wait_for(port, lambda h: h["frames"] > 0)
        assert post("/dive/start")[0] == 202
        wait_for(port, lambda h: h["dives"] == 1)
        # Dive 1 is open: its score takes the corrected number (start-list row 1 said 107b).
        status, body = post("/dive_number", {"dive": 1, "dive_number": "405C"})
        assert status == 200 and body["dive_number"] == "405c" and body["dive_state"] == "already started"
        # Dive 2 has not started: it is start-list row 1, and dive 3 would be row 2.
        status, body = post("/dive_number", {"dive": 2, "start_list_row": 1})
        assert status == 200 and body["dive_number"] == "107b" and body["dive_state"] == "not started yet"
        assert post("/dive_number", {"dive": 0, "dive_number": "107b"})[0] == 400
        assert post("/dive_number", {"dive": 2, "start_list_row": 9})[0] == 409
        assert post("/dive/end")[0] == 202
        wait_for(port, lambda h: h["scored"] == 1)
        status, body = post("/dive_number", {"dive": 1, "dive_number": "107b"})
        assert status == 409 and "already scored" in body["error"]
        assert post("/dive/start")[0] == 202
        wait_for(port, lambda h: h["dives"] == 2)
        assert post("/dive/end")[0] == 202
        wait_for(port, lambda h: h["scored"] == 2)
    finally:
        thread.join(timeout=30)
    first, second = result["report"].scores
    assert first["dive_number"] == "405c" and {x["dive_number"] for x in first["exemplars"]} == {"405c"}
    assert second["dive_number"] == "107b" and {x["dive_number"] for x in second["exemplars"]} == {"107b"}
    starts = [e["dive_number"] for e in events if e["type"] == "dive_start"]
    ends = [e["dive_number"] for e in events if e["type"] == "dive_end"]
    assert starts == ["107b", "107b"] and ends == ["405c", "107b"]


def test_operator_keys_correct_dive_numbers():
    calls: list[tuple] = []
    keys = io.StringIO("n 2 107B\nr 3 1\nn two 107b\ns\n")
    segmenter = OperatorSegmenter()
    segmenter.read_keys(keys, dive_number=lambda *args: calls.append(args) or {}).join(timeout=5)
    assert calls == [(2, "107B", None), (3, None, 1)]
    assert segmenter.feed(0.0)[0].kind == "start"  # 's' still starts a dive


# --------------------------------------------------------------------------- fineparser-calibrate --segmenter


def soft(**probs: float) -> np.ndarray:
    """Class probabilities by name, the rest idle."""
    out = np.zeros(len(CLASS_NAMES))
    for name, p in probs.items():
        out[CLASS_NAMES.index(name)] = p
    out[CLASS_NAMES.index("idle")] += 1 - out.sum()
    return out


def test_tuning_finds_thresholds_that_detect_every_dive_and_no_replay_where_the_defaults_fail():
    from calibration.segmenter import Recording, figures, tune
    from fineparser.spotter_spec import DEFAULT_THRESHOLDS
    from runtime.segments import SPOTTER_DURATIONS_S

    # An unsure spotter: live dives reach P(live) 0.56 only (below live_enter 0.6), replays look half live.
    rows, dives, replays, t = [], [], [], 0
    for _ in range(3):
        rows += [soft()] * 30 + [soft(approach=0.3, flight=0.26)] * 10 + [soft(flight=0.56)] * 10 + \
            [soft(entry=0.56)] * 6 + [soft()] * 25 + [soft(replay=0.45, flight=0.5)] * 40
        dives.append(((t + 30) / FPS, (t + 56) / FPS))
        replays.append(((t + 81) / FPS, (t + 121) / FPS))
        t += 121
    recording = Recording("unsure", FPS, np.array(rows, np.float32), dives, replays)
    start = {**DEFAULT_THRESHOLDS, "start_hold_s": SPOTTER_DURATIONS_S["start_hold_s"],
             "end_hold_s": SPOTTER_DURATIONS_S["end_hold_s"]}
    assert figures([recording], 0, start)["f1"] == 0.0  # the defaults find nothing
    best, before, after = tune([recording], 0, start)
    assert before["missed"] == 3
    assert after["f1"] == 1.0 and after["false_dives"] == 0 and after["false_on_replay"] == 0
    assert after["start_err_median"] <= 1 and after["end_err_median"] <= 1
    assert best["live_exit"] <= best["live_enter"] <= 0.56 and best["replay_enter"] <= 0.45
    assert after["cost"] < before["cost"]


def test_entry_tail_candidates_come_from_the_annotated_entries():
    from calibration.segmenter import Recording, entry_tail_candidates, figures, tune

    # Four dives whose annotated end falls 1.0-1.6 s after the entry; the spotter stays on entry 5 s.
    rows, dives, entries, t = [], [], [], 0
    for tail in (25, 30, 35, 40):
        rows += [soft()] * 30 + [soft(approach=0.9)] * 10 + [soft(flight=0.9)] * 10 + [soft(entry=0.9)] * 125
        dives.append(((t + 30) / FPS, (t + 50 + tail) / FPS))
        entries.append((t + 50) / FPS)
        t += 175
    recording = Recording("lingering", FPS, np.array(rows, np.float32), dives, [], entries)
    candidates = entry_tail_candidates([recording])
    assert candidates[0] == 0.0 and 1.0 <= min(candidates[1:]) < max(candidates[1:]) <= 1.6
    assert entry_tail_candidates([Recording("bare", FPS, recording.probs, dives, [])]) == (0.0,)
    start = {"live_enter": 0.6, "live_exit": 0.4, "replay_enter": 0.6, "live_back": 0.6, "start_hold_s": 0.2,
             "end_hold_s": 0.4, "entry_tail_s": 0.0}
    best, before, after = tune([recording], 0, start, {"entry_tail_s": candidates})
    # Without the tail the spotter's 5 s of entry make every dive too long to match (tIoU < 0.5).
    assert before["f1"] == 0.0 and after["f1"] == 1.0 and best["entry_tail_s"] in candidates[1:]
    assert after["end_err_median"] <= 5 and figures([recording], 0, best)["cost"] == after["cost"]


def test_a_latency_budget_keeps_every_tuned_dive_end_within_it():
    from calibration.segmenter import Recording, entry_tail_candidates, figures, tune

    # Eight dives whose annotated end falls 0.8-1.64 s after the entry; the spotter stays on entry 5 s, so only
    # the tail ends them, and a tail that is right on average decides the early-ending dives' ends late.
    rows, dives, entries, t = [], [], [], 0
    for tail in (20, 22, 30, 34, 36, 38, 40, 41):
        rows += [soft()] * 30 + [soft(approach=0.9)] * 10 + [soft(flight=0.9)] * 10 + [soft(entry=0.9)] * 125
        dives.append(((t + 30) / FPS, (t + 50 + tail) / FPS))
        entries.append((t + 50) / FPS)
        t += 175
    recording = Recording("lingering", FPS, np.array(rows, np.float32), dives, [], entries)
    start = {"live_enter": 0.6, "live_exit": 0.4, "replay_enter": 0.6, "live_back": 0.6, "start_hold_s": 0.2,
             "end_hold_s": 0.4, "entry_tail_s": 0.0}
    budget = 0.2
    free_best, _, free = tune([recording], 0, start, {"entry_tail_s": entry_tail_candidates([recording])})
    assert free["f1"] == 1.0 and "late_dives" not in free  # no budget, no lateness
    assert figures([recording], 0, free_best, budget)["late_dives"] > 0  # ...but that tail misses the budget
    best, before, after = tune([recording], 0, start, {"entry_tail_s": entry_tail_candidates([recording], True)},
                               max_end_delay_s=budget)
    assert after["f1"] == 1.0 and after["late_dives"] == 0 and after["end_decided_after_max_s"] <= budget
    assert 0 < best["entry_tail_s"] < free_best["entry_tail_s"]
    assert after["end_err_median"] > free["end_err_median"]  # the price: ends placed earlier than the annotation


def test_calibrate_segmenter_records_tuned_settings_the_runtime_reads(tmp_path, capsys):
    from calibration.cli import main as calibrate_main
    from fineparser.package import load_package
    from runtime.spotter import spotter_segmenter_settings

    package = make_package(tmp_path / "pkg", lookahead=2)
    folder = tmp_path / "val"
    folder.mkdir()
    frame_labels = labels(("idle", 20), ("approach", 12), ("flight", 10), ("entry", 5), ("idle", 15),
                          ("replay", 25), ("idle", 15))
    programme(folder / "heat.mp4", frame_labels)
    (folder / "heat.json").write_text(json.dumps({"fps": FPS, "dives": [
        {"start_s": 20 / FPS, "end_s": 47 / FPS, "takeoff_end_s": 31 / FPS, "entry_start_s": 42 / FPS,
         "replays": [{"start_s": 62 / FPS, "end_s": 87 / FPS}]}]}))
    assert calibrate_main([str(package), "--segmenter", "--data-root", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "before" in out and "after" in out
    loaded = load_package(package)  # hashes still verify
    section = loaded.manifest["spotter"]
    tuning = section["tuning"]
    assert tuning["broadcasts"] == ["heat"] and tuning["frames"] == len(frame_labels)
    assert tuning["after"]["f1"] == 1.0 and tuning["after"]["cost"] <= tuning["before"]["cost"]
    assert section["spec"]["thresholds"] == {k: tuning["after"]["settings"][k]
                                             for k in ("live_enter", "live_exit", "replay_enter", "live_back")}
    durations = ("start_hold_s", "end_hold_s", "entry_tail_s")
    assert {k: spotter_segmenter_settings(loaded)[k] for k in durations} == \
        {k: tuning["after"]["settings"][k] for k in durations}

    assert calibrate_main([str(package), "--segmenter"]) == 2
    assert "--segmenter needs --data-root" in capsys.readouterr().err
    assert calibrate_main([str(package), "--segmenter", "--data-root", str(folder), "--max-end-delay", "0.5"]) == 0
    assert "> 0.5 s late" in capsys.readouterr().out
    tuning = load_package(package).manifest["spotter"]["tuning"]
    assert tuning["max_end_delay_s"] == 0.5 and tuning["after"]["late_dives"] == 0
    for bad, words in ((["--segmenter", "--data-root", str(folder), "--max-end-delay", "-1"], "must be a number"),
                       (["--max-end-delay", "0.5", "--data-root", str(folder)], "add --segmenter")):
        assert calibrate_main([str(package), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    bare = make_package(tmp_path / "bare", lookahead=None)
    assert calibrate_main([str(bare), "--segmenter", "--data-root", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has none" in err[0]


def test_calibrate_segmenter_starts_streams_in_the_settled_idle_state(tmp_path, monkeypatch, caplog):
    """From zeros the stand-in's first answers are no class at all; from the calibrated state they read idle."""
    import calibration.segmenter as segmenter
    from calibration.cli import main as calibrate_main
    from fineparser.package import load_package
    from runtime.spotter import SpotterRunner

    folder = tmp_path / "val"
    folder.mkdir()
    programme(folder / "heat.mp4", labels(("idle", 20), ("approach", 12), ("flight", 10), ("entry", 5), ("idle", 30)))
    (folder / "heat.json").write_text(json.dumps({"fps": FPS, "dives": [{"start_s": 20 / FPS, "end_s": 47 / FPS}]}))
    idle_frame = np.full((90, 160, 3), COLOURS["idle"], np.uint8)

    # The 3 s heat has no frame 10 s into it: the stream keeps its zero start, and the log says why.
    short = make_package(tmp_path / "short", lookahead=3)
    assert calibrate_main([str(short), "--segmenter", "--data-root", str(folder)]) == 0
    assert load_package(short).manifest["spotter"]["spec"]["initial_state"] == []
    assert "streams start from zeros" in caplog.text
    cold = SpotterRunner.from_package(load_package(short))
    assert cold.step(idle_frame).max() == 0.0 and "starts from zeros (`fineparser-calibrate" in cold.description

    monkeypatch.setattr(segmenter, "WARM_S", 0.2)  # this heat is short; broadcasts are minutes long
    package = make_package(tmp_path / "pkg", lookahead=3)
    assert calibrate_main([str(package), "--segmenter", "--data-root", str(folder)]) == 0
    loaded = load_package(package)
    spec = loaded.manifest["spotter"]["spec"]
    # settled: 1 s of idle at 25 fps; the 30 idle frames after the dive give 6 such frames
    assert len(spec["initial_state"]) == spec["hidden_size"] and loaded.manifest["spotter"]["tuning"][
        "initial_state_frames"] == 6
    runner = SpotterRunner.from_package(loaded)
    assert runner.description.endswith("starts from its settled idle state")  # the session logs it
    first = runner.step(idle_frame)
    for _ in range(10):
        settled = runner.step(idle_frame)
    assert CLASS_NAMES[int(np.argmax(first))] == "idle" and np.allclose(first, settled, atol=0.02)
    runner.reset()
    assert np.allclose(runner.step(idle_frame), first)  # a new stream starts there again


def test_calibrate_spotter_writes_measured_variants_and_refuses_one_that_misses(tmp_path, capsys, monkeypatch):
    pytest.importorskip("modelopt", reason="nvidia-modelopt[onnx] is not installed (pip install 'fineparser[calib]')")
    pytest.importorskip("timm")
    import calibration.spotter_variants as variants
    from calibration.cli import main as calibrate_main
    from export.spotter import export_spotter
    from fineparser.package import load_package
    from fineparser.spotter import Spotter, SpotterConfig

    package = make_package(tmp_path / "pkg", lookahead=None)
    model = Spotter(SpotterConfig(input_height=48, input_width=80, feature_dim=16, hidden_size=8, lookahead=1))
    manifest = json.loads((package / "manifest.json").read_text())
    write_manifest(package, {**manifest, "spotter": export_spotter(model.eval(), package, parity_frame_count=2)},
                   [SPOTTER_FILE])
    folder = tmp_path / "val"
    folder.mkdir()
    for name in ("a", "b"):
        programme(folder / f"{name}.mp4", labels(("idle", 10), ("approach", 6), ("flight", 6), ("entry", 4),
                                                 ("idle", 10)))
        (folder / f"{name}.json").write_text(json.dumps({"fps": FPS, "dives": [{"start_s": 0.4, "end_s": 1.04}]}))
    monkeypatch.setattr(variants, "CALIBRATION_STEPS", 16)
    assert calibrate_main([str(package), "--spotter", "--data-root", str(folder), "--precision", "fp16,int8"]) == 0
    out = capsys.readouterr().out
    assert "fp16" in out and "int8" in out and "agreement" in out
    section = load_package(package).manifest["spotter"]  # the new files are hashed into the manifest
    assert set(section["variants"]) == {"fp16", "int8"}
    fp16, int8 = section["variants"]["fp16"], section["variants"]["int8"]
    assert fp16["drift"]["passed"] and fp16["drift"]["class_agreement"] >= 0.99
    assert fp16["drift"]["frames"] == 36 and fp16["drift"]["broadcasts"] == ["b"]  # a calibrates, b measures
    assert int8["how"]["method"] == "max" and int8["how"]["nodes"]["QuantizeLinear"] > 0
    graph = onnx.load(str(package / int8["file"])).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    consumers = {n.name for n in graph.node if set(n.input) & dequantized}
    assert any(name.startswith("/trunk/") for name in consumers)  # the trunk runs int8 ...
    assert not any(name.startswith(("/head/", "/classifier/", "/input_gates/")) for name in consumers)  # the GRU not

    # A variant that misses its goals is not written unless --accept-drift, and the exit status says so.
    again = make_package(tmp_path / "pkg2", lookahead=None)
    write_manifest(again, {**json.loads((again / "manifest.json").read_text()),
                           "spotter": export_spotter(model.eval(), again, parity_frame_count=2)}, [SPOTTER_FILE])
    real = variants.drift
    monkeypatch.setattr(variants, "drift", lambda *a: {**real(*a), "failures": ["forced"], "passed": False})
    assert calibrate_main([str(again), "--spotter", "--data-root", str(folder), "--precision", "fp16"]) == 1
    assert "missed: forced (not recorded)" in capsys.readouterr().out
    assert "variants" not in load_package(again).manifest["spotter"] and not (again / "spotter_fp16.onnx").exists()


def test_the_bundled_spotter_finds_the_dives_of_an_unseen_broadcast_and_none_on_its_replays(tmp_path):
    """demo/package's spotter with its recorded thresholds, on a broadcast of a seed never used in training."""
    from calibration.segmenter import DURATION_NAMES, figures, record_broadcasts
    from fineparser.package import load_package
    from runtime.segments import segmenter_durations
    from runtime.spotter import SpotterRunner, spotter_segmenter_settings
    from synth.broadcast import generate_broadcasts

    package = load_package(REPO / "demo" / "package")
    runner = SpotterRunner.from_package(package)
    # The programme's timings are the training set's (waits of 2-4 s, 3 s score graphics); every dive replayed.
    generate_broadcasts(tmp_path, 1, seed=7, size=(320, 180), dives_per_broadcast=3, replay_probability=1.0,
                        progress=False)
    recordings = record_broadcasts(runner, tmp_path, progress=False)
    assert sum(len(r.replays) for r in recordings) >= 3  # every dive replayed at least once
    durations = segmenter_durations(spotter_segmenter_settings(package))
    result = figures(recordings, runner.spec.lookahead,
                     {**runner.spec.thresholds, **{k: durations[k] for k in DURATION_NAMES}})
    assert result["f1"] >= 0.9, result
    assert result["false_on_replay"] == 0, result
