"""Per-frame spotter labels of a broadcast, from the synthetic world's ground truth or a user's annotation.

Torch-free (numpy, and OpenCV only to read a video's frame rate and length when the file does not
give them), so the spotter's trainer, benchmarks and tools share one reader.  Classes are those of
:data:`fineparser.spotter_spec.CLASS_NAMES` (idle, approach, flight, entry, replay), ids in that order.

Two file kinds, one schema (docs/data.md, "Annotated broadcasts"):

- ``broadcast_NNN.json`` of ``fineparser-synth`` (world 2.1+): per-frame ``frame_spans`` plus the
  dive and replay records; read as written.
- A user's annotation of a recorded broadcast, JSON or CSV: live dives (start, end, optional take-off
  end and entry start) and replay spans, in seconds or frames.  Frames no span covers are idle.

Boundaries follow the real FineDiving step labels: a dive's ``start`` is its first frame and ``end``
the first frame after it (exclusive, as the runtime's timecodes); ``takeoff_end`` is the last
take-off frame (approach = start .. takeoff_end), ``entry_start`` the first entry frame (the hands
reach the water; entry = entry_start .. end); flight lies strictly between.  A time ``s`` names the
frame ``round(s * fps)``, the one whose timestamp ``i / fps`` is nearest (29.97 and 59.94 are the
NTSC rates 30000/1001 and 60000/1001, :func:`frame_rate`).  ``*_frame`` fields are
frame indices (``end_frame`` inclusive, as in the synthetic JSON).  A dive whose take-off end or
entry start is not given has its unknown live frames labelled :data:`UNLABELLED` (a trainer skips them).
"""

from __future__ import annotations

import bisect
import csv
import json
import json.decoder
import json.scanner
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from fineparser.spec import canonical_dive_number
from fineparser.spotter_spec import APPROACH, CLASS_NAMES, ENTRY, FLIGHT, IDLE, REPLAY

UNLABELLED = -1
"""Class id of a live frame whose phase the annotation leaves open (no take-off end or entry start)."""
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v", ".avi", ".ts", ".webm")
"""Extensions looked for next to a CSV annotation (same stem) to learn its frame rate and length."""

_BOUNDARIES = ("start", "end", "takeoff_end", "entry_start")
_KNOWN_TIME_KEYS = tuple(f"{b}{suffix}" for b in _BOUNDARIES for suffix in ("", "_s", "_frame"))
_CSV_COLUMNS = ("kind", *_KNOWN_TIME_KEYS, "dive_number", "dive", "order", "final_score")


class BroadcastLabelError(ValueError):
    """An annotation file that cannot be read; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class LabelledDive:
    """One live dive of a broadcast, in frames (``end_frame`` inclusive)."""

    order: int  # 1-based, as in the file (or its position in it)
    start_frame: int
    end_frame: int
    takeoff_end_frame: int | None  # last take-off (approach) frame
    entry_start_frame: int | None  # first entry frame
    dive_number: str | None = None  # canonical (fineparser.spec.canonical_dive_number)
    final_score: float | None = None
    line: int | None = None  # where the file describes it


@dataclass(frozen=True)
class LabelledReplay:
    """One replay span in frames (``end_frame`` inclusive) and the dive it shows (its order, if known)."""

    start_frame: int
    end_frame: int
    dive: int | None = None
    line: int | None = None


@dataclass(frozen=True)
class BroadcastLabels:
    """Per-frame classes of one broadcast and the records they come from."""

    path: Path
    fps: float
    num_frames: int
    classes: np.ndarray = field(repr=False)  # int64 [num_frames]: ids into CLASS_NAMES, or UNLABELLED
    dives: tuple[LabelledDive, ...]
    replays: tuple[LabelledReplay, ...]
    video: Path | None = None
    settings: dict | None = None  # the synthetic world's generation settings, None for a user file

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in id order (fineparser.spotter_spec.CLASS_NAMES)."""
        return CLASS_NAMES

    def spans(self) -> list[dict[str, Any]]:
        """Run-length form: [{"start_frame", "end_frame" (inclusive), "class"}] ("unlabelled" for UNLABELLED)."""
        return class_spans(self.classes)


def frame_rate(fps: float | Fraction | str) -> Fraction:
    """The exact frame rate of a number: 29.97 -> 30000/1001, 59.94 -> 60000/1001, 25 -> 25, 12.5 -> 25/2.

    A non-integer rate within 0.005 of n * 1000/1001 is that NTSC rate; "30000/1001" is accepted as is.
    """
    if isinstance(fps, Fraction):
        rate = fps
    else:
        try:
            rate = Fraction(str(fps).strip())
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"frame rate {fps!r} is not a number (e.g. 25, 29.97, 30000/1001)") from None
        value = float(rate)
        ntsc = round(value * 1.001)
        if rate.denominator != 1 and abs(value - ntsc * 1000 / 1001) < 0.005:
            rate = Fraction(ntsc * 1000, 1001)
        rate = rate.limit_denominator(100_000)
    if not (rate > 0 and math.isfinite(float(rate))):
        raise ValueError(f"frame rate must be positive, got {fps!r}")
    return rate


def class_spans(classes: np.ndarray | Sequence[int]) -> list[dict[str, Any]]:
    """Per-frame class ids -> run-length spans [{"start_frame", "end_frame" (inclusive), "class": name}]."""
    ids = np.asarray(classes, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"class ids must be one-dimensional, got shape {list(ids.shape)}")
    if not ids.size:
        return []
    cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [ids.size]]) - 1
    return [
        {"start_frame": int(s), "end_frame": int(e), "class": _class_name(int(ids[s]))}
        for s, e in zip(starts, ends, strict=True)
    ]


def _class_name(class_id: int) -> str:
    if class_id == UNLABELLED:
        return "unlabelled"
    return CLASS_NAMES[class_id]


def read_broadcast_labels(
    path: str | Path, *, fps: float | None = None, num_frames: int | None = None
) -> BroadcastLabels:
    """Read a broadcast's labels from a synthetic ``broadcast_NNN.json`` or a user's JSON/CSV annotation.

    fps, num_frames: for files that do not say (a CSV, or a JSON without ``fps`` / ``num_frames``);
    otherwise they are taken from the file, else from the video next to it (``video`` in a JSON, or the
    same stem with a video extension).  Given both in the file and here, they must agree.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BroadcastLabelError(f"cannot read annotation file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BroadcastLabelError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        return _read_json(path, text, fps, num_frames)
    return _read_csv(path, text, fps, num_frames)


def frame_labels(path: str | Path, **options) -> np.ndarray:
    """Per-frame class ids (int64 [num_frames], ids into CLASS_NAMES, UNLABELLED where open) of a broadcast."""
    return read_broadcast_labels(path, **options).classes


# ----------------------------------------------------------------------------- JSON


class _Located(dict):
    """A JSON object that remembers the line it starts on."""

    line: int = 1


def _load_json(path: Path, text: str) -> Any:
    """json.loads whose objects are _Located dicts carrying their line number."""
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]
    decoder = json.JSONDecoder()

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):
        obj, end = json.decoder.JSONObject(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo)
        located = _Located(obj)
        located.line = bisect.bisect_left(newlines, s_and_end[1]) + 1
        return located, end

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise BroadcastLabelError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None


def _read_json(path: Path, text: str, fps: float | None, num_frames: int | None) -> BroadcastLabels:
    data = _load_json(path, text)
    if isinstance(data, list):  # the runtime's timecodes list [{start, end[, dive_number]}]
        data = _Located(dives=data)
    if not isinstance(data, dict):
        raise BroadcastLabelError(
            f"{path}, line 1: expected an object with 'fps', 'dives' and optional 'replays' "
            "(see docs/data.md, 'Annotated broadcasts')"
        )
    video = _video_of(path, data)
    fps = _agree(path, "fps", data.get("fps"), fps, video, _fps)
    if num_frames is None and data.get("num_frames") is None and data.get("duration_s") is not None:
        num_frames = int(round(_positive_float(path, 1, "duration_s", data["duration_s"]) * fps))
    num_frames = _agree(path, "num_frames", data.get("num_frames"), num_frames, video, _count)
    items = data.get("dives", [])
    if not isinstance(items, list):
        raise BroadcastLabelError(f"{path}, line {data.line}: 'dives' must be a list of dive objects")
    dives, replays = [], []
    for position, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise BroadcastLabelError(f"{path}, line {data.line}: dive {position} is not an object")
        dive = _dive(path, item.line, item, position, fps)
        dives.append(dive)
        nested = item.get("replays", [])
        if not isinstance(nested, list):
            raise BroadcastLabelError(f"{path}, line {item.line}: 'replays' of dive {position} must be a list")
        for rep in nested:
            if not isinstance(rep, dict):
                raise BroadcastLabelError(f"{path}, line {item.line}: a replay of dive {position} is not an object")
            replays.append(_replay(path, rep.line, rep, fps, default_dive=dive.order))
    top = data.get("replays", [])
    if not isinstance(top, list):
        raise BroadcastLabelError(f"{path}, line {data.line}: 'replays' must be a list of replay objects")
    for rep in top:
        if not isinstance(rep, dict):
            raise BroadcastLabelError(f"{path}, line {data.line}: a replay is not an object")
        replays.append(_replay(path, rep.line, rep, fps, default_dive=None))
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else None
    if "frame_spans" in data:
        classes = _classes_from_spans(path, data, num_frames)
    else:
        classes = _classes_from_records(path, dives, replays, num_frames)
    return BroadcastLabels(path, fps, num_frames, classes, tuple(dives), tuple(replays), video,
                           dict(settings) if settings is not None else None)


def _classes_from_spans(path: Path, data: Mapping, num_frames: int) -> np.ndarray:
    """The synthetic JSON's run-length spans -> per-frame ids (checked to tile 0..num_frames-1)."""
    names = data.get("classes", list(CLASS_NAMES))
    if list(names) != list(CLASS_NAMES):
        raise BroadcastLabelError(f"{path}: classes {list(names)} are not this toolkit's {list(CLASS_NAMES)}: "
                                  "the file was written by another version")
    spans = data["frame_spans"]
    if not isinstance(spans, list):
        raise BroadcastLabelError(f"{path}, line {data.line}: 'frame_spans' must be a list")
    classes = np.full(num_frames, UNLABELLED, np.int64)
    expected = 0
    for span in spans:
        line = getattr(span, "line", data.line)
        if not isinstance(span, dict) or not {"start_frame", "end_frame", "class"} <= set(span):
            raise BroadcastLabelError(f"{path}, line {line}: a frame span needs start_frame, end_frame and class")
        start, end = _count(path, line, "start_frame", span["start_frame"]), _count(path, line, "end_frame",
                                                                                     span["end_frame"])
        if start != expected or end < start or end >= num_frames:
            raise BroadcastLabelError(f"{path}, line {line}: frame span {start}..{end} does not continue the "
                                      f"spans before it (next frame {expected} of {num_frames})")
        if span["class"] not in CLASS_NAMES:
            raise BroadcastLabelError(f"{path}, line {line}: unknown class {span['class']!r}; "
                                      f"known: {', '.join(CLASS_NAMES)}")
        classes[start:end + 1] = CLASS_NAMES.index(span["class"])
        expected = end + 1
    if expected != num_frames:
        raise BroadcastLabelError(f"{path}: frame spans cover {expected} of {num_frames} frames")
    return classes


# ----------------------------------------------------------------------------- CSV


def _read_csv(path: Path, text: str, fps: float | None, num_frames: int | None) -> BroadcastLabels:
    rows = [(line, row) for line, row in enumerate(csv.reader(text.splitlines()), start=1)
            if row and "".join(row).strip() and not row[0].strip().startswith("#")]
    if not rows:
        raise BroadcastLabelError(f"{path}: no header and no rows")
    header_line, header = rows[0]
    columns = [c.strip().lower() for c in header]
    try:  # no header: the runtime's timecodes CSV, start,end[,dive_number]
        float(columns[0])
        columns = ["start", "end", "dive_number"][: len(header)]
        rows = [(0, header), *rows]
    except ValueError:
        pass
    unknown = [c for c in columns if c not in _CSV_COLUMNS]
    if unknown or not ({"start", "start_s", "start_frame"} & set(columns)):
        raise BroadcastLabelError(
            f"{path}, line {header_line}: the first row must name the columns, e.g. "
            f"'kind,start,end,takeoff_end,entry_start,dive_number,dive'"
            + (f"; unknown column(s) {', '.join(unknown)} (known: {', '.join(_CSV_COLUMNS)})" if unknown else "")
        )
    video = _video_of(path, {})
    fps = _agree(path, "fps", None, fps, video, _fps)
    num_frames = _agree(path, "num_frames", None, num_frames, video, _count)
    dives, replays = [], []
    for line, row in rows[1:]:
        if len(row) > len(columns):
            raise BroadcastLabelError(f"{path}, line {line}: {len(row)} values for {len(columns)} columns")
        record = {c: v.strip() for c, v in zip(columns, row, strict=False) if v.strip()}
        kind = record.pop("kind", "dive").lower()
        if kind == "dive":
            dives.append(_dive(path, line, record, len(dives) + 1, fps))
        elif kind == "replay":
            replays.append(_replay(path, line, record, fps, default_dive=None))
        else:
            raise BroadcastLabelError(f"{path}, line {line}: kind {kind!r} is neither 'dive' nor 'replay'")
    classes = _classes_from_records(path, dives, replays, num_frames)
    return BroadcastLabels(path, fps, num_frames, classes, tuple(dives), tuple(replays), video, None)


# ----------------------------------------------------------------------------- records


def _dive(path: Path, line: int, item: Mapping, position: int, fps: float) -> LabelledDive:
    _check_keys(path, line, item)
    start = _boundary(path, line, item, "start", fps, required=True)
    end = _boundary(path, line, item, "end", fps, required=True, exclusive=True)
    takeoff = _boundary(path, line, item, "takeoff_end", fps)
    entry = _boundary(path, line, item, "entry_start", fps)
    order = _count(path, line, "order", item["order"]) if item.get("order") is not None else position
    where = f"{path}, line {line}: dive {order}"
    if end < start:
        raise BroadcastLabelError(f"{where} ends (frame {end}) before it starts (frame {start})")
    if takeoff is not None and not start <= takeoff <= end:
        raise BroadcastLabelError(f"{where}: take-off end (frame {takeoff}) is outside the dive "
                                  f"(frames {start}..{end})")
    if entry is not None and not start < entry <= end + 1:
        raise BroadcastLabelError(f"{where}: entry start (frame {entry}) is outside the dive (frames {start}..{end})")
    if takeoff is not None and entry is not None and entry <= takeoff:
        raise BroadcastLabelError(f"{where}: entry start (frame {entry}) is not after the take-off end "
                                  f"(frame {takeoff})")
    number = item.get("dive_number")
    score = item.get("final_score")
    try:
        score = float(score) if score not in (None, "") else None
    except (TypeError, ValueError):
        raise BroadcastLabelError(f"{where}: final_score {score!r} is not a number") from None
    return LabelledDive(order, start, end, takeoff, entry,
                        canonical_dive_number(number) if number not in (None, "") else None, score, line)


def _replay(path: Path, line: int, item: Mapping, fps: float, default_dive: int | None) -> LabelledReplay:
    _check_keys(path, line, item)
    start = _boundary(path, line, item, "start", fps, required=True)
    end = _boundary(path, line, item, "end", fps, required=True, exclusive=True)
    if end < start:
        raise BroadcastLabelError(f"{path}, line {line}: replay ends (frame {end}) before it starts (frame {start})")
    dive = item.get("dive", default_dive)
    return LabelledReplay(start, end, _count(path, line, "dive", dive) if dive not in (None, "") else None, line)


def _check_keys(path: Path, line: int, item: Mapping) -> None:
    """A time-like key we do not know is a typo that would silently drop a boundary: refuse it."""
    for key in item:
        looks_like_time = key.endswith(("_s", "_frame")) or key.startswith(("start", "end", "takeoff", "entry"))
        if looks_like_time and key not in _KNOWN_TIME_KEYS:
            raise BroadcastLabelError(f"{path}, line {line}: unknown time field {key!r}; known: "
                                      f"{', '.join(_KNOWN_TIME_KEYS)}")


def _boundary(path: Path, line: int, item: Mapping, name: str, fps: float, *, required: bool = False,
              exclusive: bool = False) -> int | None:
    """A boundary as a frame index: ``{name}_frame`` if given, else seconds ``{name}_s`` / ``{name}``.

    ``end`` in seconds is exclusive and becomes the inclusive last frame; ``end_frame`` is inclusive already.
    """
    if item.get(f"{name}_frame") not in (None, ""):
        return _count(path, line, f"{name}_frame", item[f"{name}_frame"])
    for key in (f"{name}_s", name):
        if item.get(key) not in (None, ""):
            seconds = _number(path, line, key, item[key])
            if seconds < 0:
                raise BroadcastLabelError(f"{path}, line {line}: {key} {seconds} is negative")
            frame = int(math.floor(seconds * fps + 0.5))
            return frame - 1 if exclusive else frame
    if required:
        raise BroadcastLabelError(f"{path}, line {line}: no {name} (give {name}_s in seconds, or {name}_frame)")
    return None


def _classes_from_records(path: Path, dives: Sequence[LabelledDive], replays: Sequence[LabelledReplay],
                          num_frames: int) -> np.ndarray:
    """Per-frame ids from dives and replays; frames they do not cover are idle."""
    orders = {d.order for d in dives}
    if len(orders) != len(dives):
        raise BroadcastLabelError(f"{path}: two dives have the same order")
    spans = [(d.start_frame, d.end_frame, f"dive {d.order}", d.line) for d in dives]
    for r in replays:
        if r.dive is not None and r.dive not in orders:
            raise BroadcastLabelError(f"{path}, line {r.line}: replay of dive {r.dive}, which the file does not have")
        spans.append((r.start_frame, r.end_frame, "replay", r.line))
    spans.sort()
    for (s0, e0, what0, line0), (s1, _e1, what1, line1) in zip(spans[:-1], spans[1:], strict=True):
        if s1 <= e0:
            raise BroadcastLabelError(f"{path}, line {line1}: {what1} (from frame {s1}) overlaps {what0} of line "
                                      f"{line0} (frames {s0}..{e0})")
    if spans and spans[-1][1] >= num_frames:
        s, e, what, line = max(spans, key=lambda x: x[1])
        raise BroadcastLabelError(f"{path}, line {line}: {what} ends at frame {e}, past the video's "
                                  f"{num_frames} frames")
    classes = np.full(num_frames, IDLE, np.int64)
    for r in replays:
        classes[r.start_frame:r.end_frame + 1] = REPLAY
    for d in dives:
        live = slice(d.start_frame, d.end_frame + 1)
        classes[live] = UNLABELLED
        if d.takeoff_end_frame is not None:
            classes[d.start_frame:d.takeoff_end_frame + 1] = APPROACH
        if d.entry_start_frame is not None:
            classes[d.entry_start_frame:d.end_frame + 1] = ENTRY
        if d.takeoff_end_frame is not None and d.entry_start_frame is not None:
            classes[d.takeoff_end_frame + 1:d.entry_start_frame] = FLIGHT
    return classes


# ----------------------------------------------------------------------------- values


def _video_of(path: Path, data: Mapping) -> Path | None:
    """The video an annotation describes: its 'video' field (relative to the file), else the same stem."""
    if data.get("video"):
        video = Path(str(data["video"]))
        return video if video.is_absolute() else path.parent / video
    for suffix in VIDEO_SUFFIXES:
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _agree(path: Path, name: str, in_file: Any, given: Any, video: Path | None, parse) -> Any:
    """A value from the file, the caller or the video (in that order); file and caller must agree."""
    value = parse(path, 1, name, in_file) if in_file is not None else None
    if given is not None:
        given = parse(path, 1, name, given)
        if value is not None and not math.isclose(value, given, rel_tol=1e-6):
            raise BroadcastLabelError(f"{path}: the file says {name} {value}, the caller {given}")
        value = given
    if value is None and video is not None and video.is_file():
        value = _from_video(path, video, name, parse)
    if value is None:
        raise BroadcastLabelError(f"{path}: no {name}: write it into the file, pass {name}=..., or put the video "
                                  f"next to it with the same name ({', '.join(VIDEO_SUFFIXES)})")
    return value


def _from_video(path: Path, video: Path, name: str, parse) -> Any:
    import cv2

    cap = cv2.VideoCapture(str(video))
    try:
        if not cap.isOpened():
            raise BroadcastLabelError(f"{path}: cannot open its video {video} to learn {name}")
        raw = cap.get(cv2.CAP_PROP_FPS if name == "fps" else cv2.CAP_PROP_FRAME_COUNT)
    finally:
        cap.release()
    if not raw or raw <= 0:
        raise BroadcastLabelError(f"{path}: its video {video} does not report {name}; write it into the file")
    return parse(path, 1, name, raw if name == "fps" else int(round(raw)))


def _number(path: Path, line: int, name: str, value: Any) -> float:
    if isinstance(value, bool):
        value = None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BroadcastLabelError(f"{path}, line {line}: {name} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise BroadcastLabelError(f"{path}, line {line}: {name} {value!r} is not a finite number")
    return number


def _positive_float(path: Path, line: int, name: str, value: Any) -> float:
    number = _number(path, line, name, value)
    if number <= 0:
        raise BroadcastLabelError(f"{path}, line {line}: {name} must be positive, got {value!r}")
    return number


def _fps(path: Path, line: int, name: str, value: Any) -> float:
    """A frame rate, NTSC rates made exact (29.97 -> 30000/1001), as a float."""
    try:
        return float(frame_rate(value))
    except (ValueError, TypeError):
        raise BroadcastLabelError(f"{path}, line {line}: {name} must be a positive frame rate (25, 29.97, "
                                  f"30000/1001), got {value!r}") from None


def _count(path: Path, line: int, name: str, value: Any) -> int:
    number = _number(path, line, name, value)
    if number < 0 or number != int(number):
        raise BroadcastLabelError(f"{path}, line {line}: {name} {value!r} is not a whole number >= 0")
    return int(number)
