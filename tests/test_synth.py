"""The synthetic diving world: exact masks, determinism, judging rules, the real files' layout, broadcasts."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from fineparser import spec
from fineparser.broadcast_labels import read_broadcast_labels
from fineparser.data import COARSE_ANNOTATION_FILE, DataPaths, FineDivingIndex, load_annotation_pickle
from fineparser.spotter_spec import APPROACH, CLASS_NAMES, ENTRY, FLIGHT, IDLE, REPLAY
from synth import (
    DIVE_TABLE,
    Quality,
    expected_judge_award,
    final_score,
    generate_broadcasts,
    generate_dataset,
    make_splits,
    parse_dive_number,
    sample_judge_scores,
    synth_dive,
)
from synth.broadcast import frame_rate
from synth.cli import build_parser
from synth.cli import main as synth_main
from synth.dataset import (
    ANNOTATIONS_DIR,
    FINE_GRAINED_ANNOTATION_FILE,
    FRAMES_DIR,
    MASKS_DIR,
    SUB_ACTION_TABLE_FILE,
    SYNTH_VERSION,
    clip_start_frame,
    dive_number_at,
)
from synth.dives import DIVE_FREQUENCY, ENTRY_LABEL, TAKEOFF_LABELS
from synth.finediving_facts import CLIP_LENGTH_QUANTILES, COARSE_FIELDS, SUB_ACTION_TYPES
from synth.render import PLAIN_BACKGROUND, camera_offsets, frame_labels, sample_clip_length, sample_step_timing

SEED = 11
NUM_DIVES = 4
PER_COMPETITION = 2  # two competitions: one platform, one springboard event


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "world"
    generate_dataset(out, NUM_DIVES, SEED, dives_per_competition=PER_COMPETITION, progress=False)
    return out


def test_mask_is_exactly_the_drawn_diver_on_a_plain_background():
    # An armstand, a twister and a springboard approach cover every take-off style.
    for index, number in ((0, "626C"), (1, "5253B"), (2, "5154B")):
        dive = synth_dive(
            SEED, index, dives_per_competition=PER_COMPETITION, plain_background=True, dive_number=number
        )
        clip = dive.render()
        r, g, b = PLAIN_BACKGROUND
        differs = (clip.frames[..., 0] != r) | (clip.frames[..., 1] != g) | (clip.frames[..., 2] != b)
        assert clip.masks.dtype == np.uint8 and clip.masks.max() == 1
        mismatched = int(np.count_nonzero(differs != clip.masks.view(bool)))
        assert mismatched == 0, f"{number}: {mismatched} pixels differ between frame and mask"
        before_entry = clip.masks[: dive.plan.entry_start].reshape(dive.plan.entry_start, -1)
        assert before_entry.any(axis=1).all(), "the diver is visible in every frame before the entry"


def test_mask_jpeg_thresholded_at_128_is_the_rendered_mask(dataset):
    meta = json.loads((dataset / "synth.json").read_text())
    for dive_meta in meta["dives"][:2]:
        dive = synth_dive(SEED, dive_meta["index"], dives_per_competition=PER_COMPETITION)
        clip, names = dive.render(), dive.frame_names()
        folder = dataset / MASKS_DIR / dive_meta["competition"] / str(dive_meta["clip_id"])
        for t in range(0, clip.masks.shape[0], 7):
            disk = cv2.imread(str(folder / names[t]), cv2.IMREAD_UNCHANGED)
            assert disk.ndim == 2, "masks are single-channel JPEGs"
            np.testing.assert_array_equal((disk >= 128).astype(np.uint8), clip.masks[t])


def test_same_seed_writes_the_same_bytes_and_another_seed_differs(dataset, tmp_path):
    again = tmp_path / "again"
    generate_dataset(again, NUM_DIVES, SEED, dives_per_competition=PER_COMPETITION, progress=False)
    assert _tree_digest(again) == _tree_digest(dataset)
    other = tmp_path / "other"
    generate_dataset(other, 1, SEED + 1, dives_per_competition=PER_COMPETITION, progress=False)
    first = sorted((other / FRAMES_DIR).rglob("*.jpg"))[0].read_bytes()
    assert first != sorted((dataset / FRAMES_DIR).rglob("*.jpg"))[0].read_bytes()
    assert (other / "synth.json").read_text() != (dataset / "synth.json").read_text()


def test_dive_i_does_not_depend_on_how_many_dives_are_written(dataset, tmp_path):
    small = tmp_path / "small"
    generate_dataset(small, 1, SEED, dives_per_competition=PER_COMPETITION, progress=False)
    clip = sorted((small / FRAMES_DIR).rglob("*.jpg"))
    for path in clip[::25]:
        assert path.read_bytes() == (dataset / path.relative_to(small)).read_bytes()


def test_equal_quality_gives_equal_award_and_better_quality_never_scores_lower():
    rng = np.random.default_rng(0)
    quality = Quality(0.7, 0.4, 0.9, 0.55, 0.8, 0.3)
    awards = {
        synth_dive(SEED, i, dive_number=n, quality=quality).expected_award
        for i, n in enumerate(("107b", "626C", "5255b", "407C"))
    }
    assert len(awards) == 1
    for _ in range(200):
        q = Quality(*rng.uniform(0.0, 1.0, size=6))
        base = expected_judge_award(q)
        assert 0.0 <= base <= 10.0
        assert expected_judge_award(q.raised(float(rng.uniform(0, 0.3)))) >= base
        for name, value in q.as_dict().items():
            better = Quality(**{**q.as_dict(), name: min(1.0, value + 0.2)})
            assert expected_judge_award(better) >= base
    assert expected_judge_award(Quality(*[1.0] * 6)) == 10.0
    assert expected_judge_award(Quality(*[0.0] * 6)) == 0.0


def test_judging_rule_middle_three_times_difficulty():
    # 7 judges: drop the two highest (9.0, 8.5) and two lowest (5.5, 6.0) -> 7.0 + 7.5 + 8.0.
    assert final_score((6.0, 7.5, 8.0, 8.5, 7.0, 9.0, 5.5), 3.0) == pytest.approx(67.5)
    # 5 judges: drop the highest (9.0) and lowest (6.5) -> 7.0 + 8.0 + 8.5.
    assert final_score((8.0, 8.5, 7.0, 9.0, 6.5), 3.2) == pytest.approx(75.2)
    scores = sample_judge_scores(9.9, np.random.default_rng(1), 7)
    assert len(scores) == 7 and all(0.0 <= s <= 10.0 and (2 * s).is_integer() for s in scores)
    with pytest.raises(ValueError):
        final_score((7.0, 7.0, 7.0, 7.0), 2.0)


def test_dive_table_holds_the_real_dive_numbers_in_canonical_form():
    # FineDiving: 52 dive numbers; the world renders all but 636c (armstand reverse), by height.
    assert DIVE_TABLE["10m"]["107b"] == 3.0 and DIVE_TABLE["3m"]["407c"] == 3.4
    assert len(set(DIVE_TABLE["10m"]) | set(DIVE_TABLE["3m"])) == 51
    info = parse_dive_number("5253B")
    assert info.number == "5253b" and parse_dive_number(" 5253 b").number == "5253b"
    assert (info.direction, info.half_somersaults, info.half_twists, info.position) == ("back", 5, 3, "B")
    assert parse_dive_number("626c").armstand
    for board, table in DIVE_TABLE.items():
        assert set(table) == set(DIVE_FREQUENCY[board])
        for number, dd in table.items():
            info = parse_dive_number(number)
            assert number == spec.canonical_dive_number(number)
            assert 1.5 <= dd <= 4.1
            assert info.half_somersaults % 2 == (0 if info.armstand else 1), number  # head first
            assert not (info.armstand and board == "3m")
            assert SUB_ACTION_TYPES[info.somersault_label].endswith(("Pike", "Tuck", "Straight"))
    # the most dived numbers of each height, as in the real data
    assert max(DIVE_FREQUENCY["10m"], key=DIVE_FREQUENCY["10m"].get) == "407c"
    assert max(DIVE_FREQUENCY["3m"], key=DIVE_FREQUENCY["3m"].get) == "205b"


def _frame_numbers(folder: Path) -> list[int]:
    return sorted(int(p.stem) for p in folder.iterdir())


def test_records_have_the_real_layout(dataset):
    """[dive_number, final_score, difficulty, steps_transit_frames, frames_labels], clip ids from 0."""
    annotations = load_annotation_pickle(dataset / ANNOTATIONS_DIR / "fine-grained_annotation_aqa.pkl")
    coarse = load_annotation_pickle(dataset / ANNOTATIONS_DIR / COARSE_ANNOTATION_FILE)
    fine = load_annotation_pickle(dataset / ANNOTATIONS_DIR / FINE_GRAINED_ANNOTATION_FILE)
    table = load_annotation_pickle(dataset / ANNOTATIONS_DIR / SUB_ACTION_TABLE_FILE)
    train = pickle.loads((dataset / ANNOTATIONS_DIR / "train_split.pkl").read_bytes())
    test = pickle.loads((dataset / ANNOTATIONS_DIR / "test_split.pkl").read_bytes())
    meta = json.loads((dataset / "synth.json").read_text())
    assert len(annotations) == NUM_DIVES == len(meta["dives"])
    assert sorted(train + test) == sorted(annotations) and not set(train) & set(test)
    assert all(type(key) is tuple for key in train + test)
    assert set(coarse) == set(fine) == set(annotations) and table == dict(SUB_ACTION_TYPES)
    for competition in {c for c, _ in annotations}:
        assert sorted(i for c, i in annotations if c == competition) == list(range(PER_COMPETITION))
    previous_end: dict[str, int] = {}
    for key, record in sorted(annotations.items()):
        competition, clip_id = key
        assert isinstance(competition, str) and type(clip_id) is int
        assert type(record) is list and len(record) == 5
        number, score, dd, transits, labels = record
        assert type(number) is str and number == number.lower() == spec.canonical_dive_number(number)
        assert type(score) is float and type(dd) is float
        assert transits.dtype == np.int64 and labels.dtype == np.int64 and labels.ndim == transits.ndim == 1
        np.testing.assert_array_equal(transits, np.flatnonzero(np.diff(labels) != 0))
        assert DIVE_TABLE["10m" if "10m" in competition else "3m"][number] == dd
        assert set(labels.tolist()) <= set(SUB_ACTION_TYPES) and labels[-1] == ENTRY_LABEL
        # the coarse record: judges, and where the clip lies in the untrimmed video
        info = coarse[key]
        assert list(info) == list(COARSE_FIELDS)
        assert all(type(info[name]) is kind for name, kind in COARSE_FIELDS.items())
        assert (info["action_type"], info["dive_score"], info["difficulty"]) == (number, score, dd)
        assert score == pytest.approx(final_score(info["judge_scores"], dd))
        assert info["end_frame"] - info["start_frame"] + 1 == len(labels)
        assert info["start_frame"] >= 95 and info["start_frame"] > previous_end.get(competition, -1)
        previous_end[competition] = info["end_frame"]
        np.testing.assert_array_equal(fine[key]["frames_labels"], labels)
        assert list(fine[key]["sub-action_types"].values()) == [
            SUB_ACTION_TYPES[i] for i in dict.fromkeys(labels.tolist())
        ]
        # frames named by their frame number in the untrimmed video, masks alike
        folder = dataset / FRAMES_DIR / competition / str(clip_id)
        names = sorted(p.name for p in folder.iterdir())
        assert _frame_numbers(folder) == list(range(info["start_frame"], info["end_frame"] + 1))
        assert names == sorted(p.name for p in (dataset / MASKS_DIR / competition / str(clip_id)).iterdir())
        assert cv2.imread(str(folder / names[0])).shape == (256, 455, 3)
        dive = next(d for d in meta["dives"] if (d["competition"], d["clip_id"]) == key)
        assert dive["num_frames"] == len(labels) and dive["judge_scores"] == info["judge_scores"]
        assert (dive["start_frame"], dive["end_frame"]) == (info["start_frame"], info["end_frame"])
        assert set(dive["quality"]) == set(Quality.__dataclass_fields__)


def test_six_digit_frame_numbers_are_written_and_read(tmp_path):
    # Seed 4 puts its first competition 122724 frames into its video, as 531 of the 3000 real clips.
    assert clip_start_frame(4, 0, 0, 0) > 99999
    generate_dataset(tmp_path, 1, seed=4, progress=False)
    (folder,) = (tmp_path / FRAMES_DIR).glob("*/0")
    names = sorted(p.name for p in folder.iterdir())
    assert all(len(name) == len("123456.jpg") for name in names)
    index = FineDivingIndex(DataPaths.discover(tmp_path))
    clip = index.clip_files(index.train_keys[0], with_masks=True)
    assert clip.first == int(names[0][:6]) and clip.last - clip.first + 1 == len(names)


def test_clip_lengths_and_transitions_follow_the_real_distributions():
    rng = np.random.default_rng(0)
    lengths = np.array([sample_clip_length(rng) for _ in range(2000)])
    assert lengths.min() >= CLIP_LENGTH_QUANTILES[0] and lengths.max() <= CLIP_LENGTH_QUANTILES[-1]
    assert np.median(lengths) == 101 and 0.1 < np.mean(lengths < 96) < 0.25  # real: 489 of 3000
    timing = np.array([sample_step_timing(int(t), rng) for t in lengths[:500]])
    takeoff = np.median(timing[:, 0] / (lengths[:500] - 1))
    entry = np.median((timing[:, 1] - 1) / (lengths[:500] - 1))
    assert abs(takeoff - 0.288) < 0.03 and abs(entry - 0.635) < 0.03  # the real medians


def test_dive_numbers_are_drawn_with_the_real_frequencies():
    for board, frequency in DIVE_FREQUENCY.items():
        total = sum(frequency.values())
        drawn = [dive_number_at(board, (i + 0.5) / total) for i in range(total)]  # one per real clip
        assert {n: drawn.count(n) for n in frequency} == dict(frequency)
    assert {dive_number_at("10m", u, dive_pool=2) for u in np.linspace(0, 0.999, 50)} == {"407c", "107b"}
    assert synth_dive(SEED, 0).dive_number in DIVE_TABLE["10m"]  # competition 0 is a platform event


def test_splits_keep_two_train_exemplars_of_every_test_dive_number():
    rng = np.random.default_rng(3)
    numbers = [str(n) for n in rng.choice(["107B", "207C", "626C", "5253B", "109C"], size=80)] + ["305C"] * 2
    keys = [("comp", i) for i in range(len(numbers))]
    train, test = make_splits(keys, numbers, seed=5)
    assert 0.2 <= len(test) / len(keys) <= 0.3
    by_key = dict(zip(keys, numbers, strict=True))
    for key in test:
        assert sum(by_key[k] == by_key[key] for k in train) >= 2
    assert make_splits(keys, numbers, seed=5) == (train, test)


def _transitions_ok(labels: np.ndarray) -> bool:
    for shift in range(spec.TRAIN_END_SHIFT[0], spec.TRAIN_END_SHIFT[1] + 1):
        sampled = labels[np.linspace(0, len(labels) - 1 + shift, spec.NUM_FRAMES).astype(int)]
        takeoff = np.flatnonzero(sampled == sampled[0])
        entry = np.flatnonzero(sampled == ENTRY_LABEL)
        if sampled[0] not in TAKEOFF_LABELS.values() or sampled[-1] != ENTRY_LABEL:
            return False
        if not (0 <= takeoff[-1] <= 47 and 48 <= entry[0] - 1 <= 95):
            return False
        if not np.all(np.diff(takeoff) == 1):  # one take-off block, then flight, then entry
            return False
    return True


def test_step_labels_meet_the_96_frame_transition_constraint(dataset):
    annotations = pickle.loads((dataset / ANNOTATIONS_DIR / "fine-grained_annotation_aqa.pkl").read_bytes())
    for record in annotations.values():
        assert _transitions_ok(record[4])
    for index in range(0, 400, 5):  # many more plans, without rendering them
        dive = synth_dive(SEED + 1, index)
        assert _transitions_ok(frame_labels(dive.plan)), dive.dive_number


def test_whole_path_stays_inside_the_centre_crop_band():
    h = 256
    for index, number in ((0, "109B"), (1, "6245D"), (2, "5156B"), (3, "307C")):
        dive = synth_dive(
            SEED,
            index,
            dives_per_competition=PER_COMPETITION,
            plain_background=True,
            dive_number=number,
            quality=Quality(1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        )
        rows = np.flatnonzero(dive.render().masks.any(axis=(0, 2)))
        assert rows.min() >= 0.25 * h and rows.max() <= 0.75 * h, (number, rows.min(), rows.max())
        assert dive.plan.geometry.water - dive.plan.splash_height >= 0.25 * h


def test_better_takeoff_and_splash_are_visible():
    def apex_and_splash(height_q: float, splash_q: float) -> tuple[int, int]:
        quality = Quality(height_q, 0.8, 0.8, 0.8, 0.8, splash_q)
        dive = synth_dive(SEED, 0, quality=quality, dive_number="207C")
        clip = dive.render()
        plan = dive.plan
        apex = int(np.flatnonzero(clip.masks[plan.takeoff_end : plan.entry_start].any(axis=(0, 2)))[0])
        cams = camera_offsets(plan, np.arange(plan.num_frames))
        splash = 0
        for t in range(plan.entry_start, plan.num_frames):
            background = dive.scene.background[:, cams[t] : cams[t] + clip.frames.shape[2]]
            splash += int(((clip.frames[t] != background).any(axis=-1) & (clip.masks[t] == 0)).sum())
        return apex, splash

    low_apex, big_splash = apex_and_splash(0.1, 0.1)
    high_apex, small_splash = apex_and_splash(0.9, 0.9)
    assert high_apex <= low_apex - 6  # rows grow downwards
    assert big_splash > 3 * small_splash


@pytest.fixture(scope="module")
def broadcast(tmp_path_factory) -> Path:
    """A 2-dive 320x180 programme with every cutaway and replays (seed 5: a follow and a static dive, three
    replays, with and without banner, cut and wipe)."""
    out = tmp_path_factory.mktemp("broadcast")
    generate_broadcasts(out, 1, seed=5, size=(320, 180), fps=25, dives_per_broadcast=2, idle_seconds=(0.4, 0.6),
                        score_seconds=0.6, replay_probability=1.0, cutaway_probability=1.0, progress=False)
    return out / "broadcasts"


def _decode(video: Path) -> tuple[list[np.ndarray], list[float]]:
    """All frames (RGB) and their timestamps in ms."""
    cap = cv2.VideoCapture(str(video))
    assert cap.isOpened()
    frames, stamps = [], []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        stamps.append(cap.get(cv2.CAP_PROP_POS_MSEC))
    return frames, stamps


def test_short_broadcast_is_a_readable_mp4_with_ground_truth_inside(broadcast):
    truth = json.loads((broadcast / "broadcast_000.json").read_text())
    cap = cv2.VideoCapture(str(broadcast / "broadcast_000.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == truth["num_frames"]
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(truth["fps"])
    frames, _ = _decode(broadcast / "broadcast_000.mp4")
    assert len(frames) == truth["num_frames"] and frames[0].shape == (180, 320, 3)
    assert truth["world_version"] == SYNTH_VERSION == truth["settings"]["world_version"]
    assert truth["settings"]["replay_banner_probability"] == 0.5 and truth["settings"]["seed"] == 5
    assert {s["kind"] for s in truth["shots"]} >= {"crowd", "closeup", "board", "live", "replay", "score", "scoreboard"}
    duration = truth["num_frames"] / truth["fps"]
    previous_end = 0.0
    for dive in truth["dives"]:
        assert previous_end <= dive["start_s"] < dive["takeoff_end_s"] < dive["entry_start_s"] < dive["end_s"]
        assert dive["end_s"] <= duration and dive["dive_number"] == spec.canonical_dive_number(dive["dive_number"])
        assert dive["replays"] and all(r["start_s"] >= dive["end_s"] and r["dive"] == dive["order"]
                                       for r in dive["replays"])
        assert dive["final_score"] == pytest.approx(final_score(dive["judge_scores"], dive["difficulty"]))
        previous_end = dive["score_graphic"]["end_s"]
    with open(broadcast / "start_list_000.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["dive_number"], float(r["difficulty"])) for r in rows] == [
        (d["dive_number"], d["difficulty"]) for d in truth["dives"]
    ]


def test_per_frame_labels_agree_with_the_dive_and_replay_records(broadcast):
    path = broadcast / "broadcast_000.json"
    truth = json.loads(path.read_text())
    labels = read_broadcast_labels(path)
    classes = labels.classes
    assert classes.shape == (truth["num_frames"],) and labels.class_names == CLASS_NAMES
    assert truth["classes"] == list(CLASS_NAMES)
    expected = np.full(truth["num_frames"], IDLE)  # cutaways, graphics, the pool after a dive: idle
    for dive in truth["dives"]:
        start, end = dive["start_frame"], dive["end_frame"]
        takeoff, entry = dive["takeoff_end_frame"], dive["entry_start_frame"]
        assert start < takeoff < entry <= end
        expected[start : takeoff + 1] = APPROACH
        expected[takeoff + 1 : entry] = FLIGHT
        expected[entry : end + 1] = ENTRY
        # The step labels' definition: clip time t is take-off while t <= takeoff_end, entry from entry_start.
        step = 25.0 / truth["fps"]
        clip = dive["clip"]
        assert (takeoff - start) * step <= clip["takeoff_end"] < (takeoff - start + 1) * step
        assert (entry - start - 1) * step < clip["entry_start"] <= (entry - start) * step
        assert (end - start) * step <= clip["num_frames"] - 1 < (end - start + 1) * step
        for replay in dive["replays"]:
            expected[replay["start_frame"] : replay["end_frame"] + 1] = REPLAY
    np.testing.assert_array_equal(classes, expected)
    # The records alone (a user's annotation of the same video) give the same labels as the spans.
    del truth["frame_spans"]
    records_only = path.with_name("records_only.json")
    records_only.write_text(json.dumps(truth))
    np.testing.assert_array_equal(read_broadcast_labels(records_only).classes, classes)


def test_replays_are_slow_motion_and_only_some_carry_the_banner(broadcast):
    truth = json.loads((broadcast / "broadcast_000.json").read_text())
    replays = [r for d in truth["dives"] for r in d["replays"]]
    for dive in truth["dives"]:
        live_per_clip_frame = (dive["end_frame"] - dive["start_frame"]) / (dive["clip"]["num_frames"] - 1)
        for r in dive["replays"]:
            assert 0.25 <= r["speed"] <= 0.5 and 1.3 <= r["zoom"] <= 2.0
            per_clip_frame = (r["end_frame"] - r["start_frame"]) / (r["clip_end"] - r["clip_start"])
            assert per_clip_frame == pytest.approx(live_per_clip_frame / r["speed"], rel=0.05)
            assert per_clip_frame >= 1.9 * live_per_clip_frame
    assert {r["banner"] for r in replays} == {True, False}, "seed 5 should give replays with and without banner"
    assert {r["transition"] for r in replays} == {"cut", "wipe"}
    assert {d["camera"] for d in truth["dives"]} == {"follow", "static"}
    frames, _ = _decode(broadcast / "broadcast_000.mp4")

    def red_banner(frame: np.ndarray) -> bool:  # the REPLAY panel: top left, (170, 20, 20) at 85 %
        box = frame[8:17, 8:40].astype(np.float32).reshape(-1, 3).mean(axis=0)
        return bool(box[0] - box[1] > 60)

    for r in replays:
        middle = frames[(r["start_frame"] + r["end_frame"]) // 2]
        assert red_banner(middle) == r["banner"], r
    live = truth["dives"][0]
    assert not red_banner(frames[(live["start_frame"] + live["end_frame"]) // 2])


def _background_shifts(frames: list[np.ndarray]) -> np.ndarray:
    """Frame-to-frame translation (pixels, 0 where nothing changed) of rows 22..47 of a 180-row picture: stands
    or sky, above the diver, below the logo."""
    band = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[22:48].astype(np.float32) for f in frames]
    window = cv2.createHanningWindow(band[0].shape[::-1], cv2.CV_32F)
    return np.array([0.0 if np.array_equal(a, b) else np.hypot(*cv2.phaseCorrelate(a, b, window)[0])
                     for a, b in zip(band[:-1], band[1:], strict=True)])


def test_follow_camera_moves_and_the_static_one_barely(tmp_path, monkeypatch):
    import synth.broadcast as broadcast

    written: list[np.ndarray] = []  # the frames as rendered, before H.264 adds its noise
    write = broadcast.VideoSink.write
    monkeypatch.setattr(broadcast.VideoSink, "write",
                        lambda self, frame, copies=1: (written.extend([frame.copy()] * copies),
                                                       write(self, frame, copies)))
    shifts = {}
    for follow in (0.0, 1.0):
        written.clear()
        (summary,) = generate_broadcasts(tmp_path / f"follow{follow}", 1, seed=3, size=(320, 180),
                                         dives_per_broadcast=1, idle_seconds=(0.3, 0.3), score_seconds=0.2,
                                         replay_probability=0.0, cutaway_probability=0.0,
                                         camera_follow_probability=follow, progress=False)
        (dive,) = json.loads(Path(summary.ground_truth).read_text())["dives"]
        assert dive["camera"] == ("follow" if follow else "static") and len(written) == summary.num_frames
        shifts[follow] = _background_shifts(written[dive["start_frame"] : dive["end_frame"] + 1])
    # The static camera pans at most 14 px (at 256 rows) over a whole dive, a pixel at a time.
    assert np.mean(shifts[0.0] > 0) < 0.1 and shifts[0.0].max() < 1.5
    assert np.mean(shifts[1.0] > 0) > 0.5 and shifts[1.0].max() > 2.0


def test_fractional_frame_rate_gives_exact_frame_count_and_timestamps(tmp_path):
    assert frame_rate(29.97) == Fraction(30000, 1001) and frame_rate(59.94) == Fraction(60000, 1001)
    assert frame_rate(25) == 25 and frame_rate(12.5) == Fraction(25, 2)
    assert frame_rate("24000/1001") == frame_rate(23.976)
    with pytest.raises(ValueError, match="positive"):
        frame_rate(0)
    (summary,) = generate_broadcasts(tmp_path, 1, seed=1, size=(160, 90), fps=29.97, dives_per_broadcast=1,
                                     idle_seconds=(0.3, 0.4), score_seconds=0.3, replay_probability=0.0,
                                     cutaway_probability=0.0, progress=False)
    truth = json.loads(Path(summary.ground_truth).read_text())
    rate = Fraction(30000, 1001)
    assert truth["frame_rate"] == summary.frame_rate == "30000/1001" and truth["fps"] == float(rate)
    assert truth["settings"]["fps"] == float(rate)
    (dive,) = truth["dives"]
    step = 25 / rate  # clip frames per programme frame
    live_frames = int((dive["clip"]["num_frames"] - 1) / step) + 1
    assert dive["end_frame"] - dive["start_frame"] + 1 == live_frames
    for key in ("start", "takeoff_end", "entry_start"):
        assert dive[f"{key}_s"] == float(dive[f"{key}_frame"] / rate)
    assert dive["end_s"] == float((dive["end_frame"] + 1) / rate)
    assert truth["duration_s"] == float(truth["num_frames"] / rate)
    frames, stamps = _decode(Path(summary.video))
    assert len(frames) == truth["num_frames"] == summary.num_frames
    np.testing.assert_allclose(stamps, np.arange(len(frames)) * 1000 / float(rate), atol=0.5)
    labels = read_broadcast_labels(summary.ground_truth)
    assert labels.fps == pytest.approx(float(rate)) and labels.classes.shape == (truth["num_frames"],)


def test_cli_takes_broadcast_options():
    args = build_parser().parse_args(["--out", "x", "--broadcast-fps", "59.94", "--replay-speed", "0.25-0.3",
                                      "--replay-banner-probability", "0.2", "--camera-follow-probability", "1"])
    assert frame_rate(args.broadcast_fps) == Fraction(60000, 1001) and args.replay_speed == (0.25, 0.3)
    assert args.replay_banner_probability == 0.2 and args.camera_follow_probability == 1.0
    defaults = build_parser().parse_args(["--out", "x"])
    assert defaults.replay_banner_probability == 0.5 and defaults.replay_speed == (0.25, 0.5)
    for bad in (["--replay-speed", "0.5-0.25"], ["--replay-banner-probability", "2"], ["--broadcast-fps", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--out", "x", *bad])


def test_cli_refuses_a_non_empty_out_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    assert synth_main(["--out", str(tmp_path), "--dives", "1", "--quiet"]) == 1
    assert (tmp_path / "keep.txt").exists() and not (tmp_path / FRAMES_DIR).exists()


def test_broadcast_falls_back_to_opencv_mp4v_without_ffmpeg(tmp_path, monkeypatch):
    import synth.broadcast as broadcast

    monkeypatch.setattr(broadcast, "find_ffmpeg", lambda: None)
    (summary,) = broadcast.generate_broadcasts(
        tmp_path,
        1,
        size=(160, 90),
        dives_per_broadcast=1,
        idle_seconds=(0.2, 0.3),
        score_seconds=0.2,
        replay_probability=0.0,
        progress=False,
    )
    assert summary.encoder == "opencv mp4v"
    assert int(cv2.VideoCapture(summary.video).get(cv2.CAP_PROP_FRAME_COUNT)) == summary.num_frames
