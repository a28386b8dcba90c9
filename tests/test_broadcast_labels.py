"""Per-frame spotter labels from a user's annotation of a recorded broadcast (JSON or CSV), and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fineparser.broadcast_labels import (
    UNLABELLED,
    BroadcastLabelError,
    class_spans,
    frame_labels,
    read_broadcast_labels,
)
from fineparser.spotter_spec import APPROACH, CLASS_NAMES, ENTRY, FLIGHT, IDLE, REPLAY

# 10 fps keeps the arithmetic readable: a time s names frame round(10 s).
GOOD_JSON = """{
 "video": "final.mp4",
 "fps": 10,
 "num_frames": 60,
 "dives": [
  {"start_s": 1.0, "end_s": 2.5, "takeoff_end_s": 1.3, "entry_start_s": 2.1, "dive_number": "107B",
   "replays": [{"start_s": 3.0, "end_s": 3.8}]},
  {"start_frame": 40, "end_frame": 49, "takeoff_end_frame": 42, "entry_start_frame": 47}
 ],
 "replays": [{"start_s": 5.2, "end_s": 5.6, "dive": 2}]
}
"""

GOOD_CSV = """# final, annotated by hand (seconds)
kind,start,end,takeoff_end,entry_start,dive_number,dive
dive,1.0,2.5,1.3,2.1,107B,
replay,3.0,3.8,,,,1
dive,4.0,5.0,4.2,4.7,,
replay,5.2,5.6,,,,2
"""


def _expected() -> np.ndarray:
    classes = np.full(60, IDLE)
    classes[10:14] = APPROACH  # start 1.0 s -> frame 10; take-off ends with frame 13
    classes[14:21] = FLIGHT
    classes[21:25] = ENTRY  # entry from frame 21; the end (2.5 s, exclusive) is frame 25
    classes[30:38] = REPLAY
    classes[40:43], classes[43:47], classes[47:50] = APPROACH, FLIGHT, ENTRY
    classes[52:56] = REPLAY
    return classes


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_user_json_gives_the_per_frame_classes(tmp_path):
    labels = read_broadcast_labels(_write(tmp_path, "final.json", GOOD_JSON))
    np.testing.assert_array_equal(labels.classes, _expected())
    assert labels.fps == 10 and labels.num_frames == 60 and labels.video == tmp_path / "final.mp4"
    assert labels.class_names == CLASS_NAMES == ("idle", "approach", "flight", "entry", "replay")
    first, second = labels.dives
    assert (first.start_frame, first.end_frame, first.takeoff_end_frame, first.entry_start_frame) == (10, 24, 13, 21)
    assert first.dive_number == "107b" and second.order == 2 and second.line == 8
    assert [(r.start_frame, r.end_frame, r.dive) for r in labels.replays] == [(30, 37, 1), (52, 55, 2)]
    assert labels.spans()[:2] == [{"start_frame": 0, "end_frame": 9, "class": "idle"},
                                  {"start_frame": 10, "end_frame": 13, "class": "approach"}]


def test_user_csv_reads_like_the_json(tmp_path):
    path = _write(tmp_path, "final.csv", GOOD_CSV)
    np.testing.assert_array_equal(frame_labels(path, fps=10, num_frames=60), _expected())


def test_csv_takes_frame_rate_and_length_from_the_video_beside_it(tmp_path):
    writer = cv2.VideoWriter(str(tmp_path / "final.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 36))
    for _ in range(60):
        writer.write(np.zeros((36, 64, 3), np.uint8))
    writer.release()
    labels = read_broadcast_labels(_write(tmp_path, "final.csv", GOOD_CSV))
    assert labels.fps == pytest.approx(10.0) and labels.num_frames == 60
    np.testing.assert_array_equal(labels.classes, _expected())


def test_dive_without_phases_is_unlabelled_live_not_idle(tmp_path):
    text = "start,end,takeoff_end\n1.0,2.0,1.2\n3.0,4.0,\n"
    classes = frame_labels(_write(tmp_path, "t.csv", text), fps=10, num_frames=50)
    assert list(classes[10:13]) == [APPROACH] * 3 and set(classes[13:20]) == {UNLABELLED}
    assert set(classes[30:40]) == {UNLABELLED} and classes[29] == IDLE == classes[40]


def test_runtime_timecodes_files_read_as_dives_with_open_phases(tmp_path):
    csv_path = _write(tmp_path, "t.csv", "1.0,2.0,107B\n3.0,4.0\n")
    json_path = _write(tmp_path, "t.json", '[{"start": 1.0, "end": 2.0, "dive_number": "107B"},\n'
                                           ' {"start": 3, "end": 4}]')
    for path in (csv_path, json_path):
        labels = read_broadcast_labels(path, fps=10, num_frames=50)
        assert set(labels.classes[10:20]) == set(labels.classes[30:40]) == {UNLABELLED}
        assert labels.dives[0].dive_number == "107b" and labels.classes[20] == IDLE


def test_ntsc_rates_are_exact(tmp_path):
    text = '{"fps": 29.97, "num_frames": 108000, "dives": [{"start_s": 3600.015, "end_s": 3601.0}]}'
    labels = read_broadcast_labels(_write(tmp_path, "hour.json", text))
    assert labels.fps == 30000 / 1001
    assert labels.dives[0].start_frame == 107893  # 3600.015 s * 30000/1001; 29.97 flat would say 107892


def test_class_spans_round_trip():
    classes = np.array([0, 0, 1, 1, 1, 2, 3, 3, 0, 4, 4])
    spans = class_spans(classes)
    assert spans[1] == {"start_frame": 2, "end_frame": 4, "class": "approach"} and len(spans) == 6
    rebuilt = np.concatenate([[CLASS_NAMES.index(s["class"])] * (s["end_frame"] - s["start_frame"] + 1)
                              for s in spans])
    np.testing.assert_array_equal(rebuilt, classes)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "start,end\n1.0,2.0\n3.0,abc\n", r"a.csv, line 3: end 'abc' is not a number"),
        ("b.csv", "start,end,takeof_end\n1,2,1.5\n", r"b.csv, line 1: .*unknown column\(s\) takeof_end"),
        ("c.csv", "kind,start,end\ndive,1,2\nclip,3,4\n", r"c.csv, line 3: kind 'clip' is neither"),
        ("d.csv", "start,end\n2.0,1.0\n", r"d.csv, line 2: dive 1 ends \(frame 9\) before it starts \(frame 20\)"),
        ("e.csv", "kind,start,end\ndive,1,3\nreplay,2.5,4\n",
         r"e.csv, line 3: replay \(from frame 25\) overlaps dive 1 of line 2"),
        ("f.csv", "start,end,takeoff_end,entry_start\n1,2,1.8,1.5\n",
         r"f.csv, line 2: dive 1: entry start \(frame 15\) is not after the take-off end \(frame 18\)"),
        ("g.csv", "kind,start,end,dive\nreplay,1,2,3\n", r"g.csv, line 2: replay of dive 3, which the file does not"),
        ("h.csv", "start,end\n1,9\n", r"h.csv, line 2: dive 1 ends at frame 89, past the video's 50 frames"),
        ("i.json", '{"fps": 10, "num_frames": 50,\n "dives": [\n  {"start_s": 1, "end_s": 2},\n'
                   '  {"start_s": 3, "end_s": 4, "takeoff_end_sec": 3.2}]}',
         r"i.json, line 4: unknown time field 'takeoff_end_sec'"),
        ("j.json", '{"fps": 10, "num_frames": 50,\n "dives": [{"start_s": 1, "end_s": 2},]}',
         r"j.json, line 2: not valid JSON"),
        ("k.json", '{"num_frames": 50, "dives": []}', r"k.json: no fps: write it into the file"),
        ("l.json", '{"fps": 10, "num_frames": 50,\n "dives": [\n  {"end_s": 2}]}', r"l.json, line 3: no start"),
        ("m.json", '{"fps": -5, "num_frames": 50, "dives": []}', r"m.json, line 1: fps must be a positive frame rate"),
    ],
)
def test_bad_annotations_are_refused_naming_file_and_line(tmp_path, name, text, message):
    path = _write(tmp_path, name, text)
    with pytest.raises(BroadcastLabelError, match=message):
        read_broadcast_labels(path, **({"fps": 10, "num_frames": 50} if name.endswith(".csv") else {}))


def test_caller_and_file_must_agree_and_synthetic_spans_must_tile(tmp_path):
    path = _write(tmp_path, "final.json", GOOD_JSON)
    with pytest.raises(BroadcastLabelError, match=r"the file says fps 10.0, the caller 25.0"):
        read_broadcast_labels(path, fps=25)
    spans = {"fps": 10, "num_frames": 10, "classes": list(CLASS_NAMES), "dives": [],
             "frame_spans": [{"start_frame": 0, "end_frame": 3, "class": "idle"},
                             {"start_frame": 5, "end_frame": 9, "class": "replay"}]}
    gap = _write(tmp_path, "gap.json", json.dumps(spans, indent=1))
    with pytest.raises(BroadcastLabelError, match=r"gap.json, line \d+: frame span 5..9 does not continue"):
        read_broadcast_labels(gap)
