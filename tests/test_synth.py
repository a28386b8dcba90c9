"""The synthetic diving world: exact masks, determinism, judging rules, layout and broadcasts."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from fineparser import spec
from fineparser.synth import (
    DIVE_TABLE,
    STEP_TYPES,
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
from fineparser.synth.cli import main as synth_main
from fineparser.synth.dataset import ANNOTATIONS_DIR, FRAMES_DIR, MASKS_DIR
from fineparser.synth.dives import ENTRY_LABEL, TAKEOFF_LABELS
from fineparser.synth.render import PLAIN_BACKGROUND, camera_offsets, frame_labels

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
        clip = synth_dive(SEED, dive_meta["index"], dives_per_competition=PER_COMPETITION).render()
        folder = dataset / MASKS_DIR / dive_meta["competition"] / str(dive_meta["clip_id"])
        for t in range(0, clip.masks.shape[0], 7):
            disk = cv2.imread(str(folder / f"{t:05d}.jpg"), cv2.IMREAD_UNCHANGED)
            assert disk.ndim == 2, "masks are single-channel JPEGs"
            np.testing.assert_array_equal((disk >= 128).astype(np.uint8), clip.masks[t])


def test_same_seed_writes_the_same_bytes_and_another_seed_differs(dataset, tmp_path):
    again = tmp_path / "again"
    generate_dataset(again, NUM_DIVES, SEED, dives_per_competition=PER_COMPETITION, progress=False)
    assert _tree_digest(again) == _tree_digest(dataset)
    other = tmp_path / "other"
    generate_dataset(other, 1, SEED + 1, dives_per_competition=PER_COMPETITION, progress=False)
    first = sorted((other / FRAMES_DIR).rglob("00000.jpg"))[0].read_bytes()
    assert first != sorted((dataset / FRAMES_DIR).rglob("00000.jpg"))[0].read_bytes()
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
        for i, n in enumerate(("107B", "626C", "5255B", "407C"))
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


def test_dive_table_uses_real_numbers_that_enter_head_first():
    assert DIVE_TABLE["10m"]["107B"] == 3.0
    info = parse_dive_number("5253B")
    assert (info.direction, info.half_somersaults, info.half_twists, info.position) == ("back", 5, 3, "B")
    assert parse_dive_number("626C").armstand
    for board, table in DIVE_TABLE.items():
        assert 12 <= len(table) <= 20
        for number, dd in table.items():
            info = parse_dive_number(number)
            assert 1.0 < dd < 5.0
            assert info.half_somersaults % 2 == (0 if info.armstand else 1), number
            assert not (info.armstand and board == "3m")


def test_annotations_splits_and_frame_folders_agree(dataset):
    annotations = pickle.loads((dataset / ANNOTATIONS_DIR / "fine-grained_annotation_aqa.pkl").read_bytes())
    train = pickle.loads((dataset / ANNOTATIONS_DIR / "train_split.pkl").read_bytes())
    test = pickle.loads((dataset / ANNOTATIONS_DIR / "test_split.pkl").read_bytes())
    meta = json.loads((dataset / "synth.json").read_text())
    assert len(annotations) == NUM_DIVES == len(meta["dives"])
    assert sorted(train + test) == sorted(annotations) and not set(train) & set(test)
    for (competition, clip_id), record in annotations.items():
        assert isinstance(competition, str) and isinstance(clip_id, int)
        number, score, dd, judges, labels = record
        assert DIVE_TABLE["10m" if "10m" in competition else "3m"][number] == dd
        assert score == pytest.approx(final_score(judges, dd))
        assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < len(STEP_TYPES)
        frames = sorted((dataset / FRAMES_DIR / competition / str(clip_id)).iterdir())
        masks = sorted((dataset / MASKS_DIR / competition / str(clip_id)).iterdir())
        assert [p.name for p in frames] == [f"{i:05d}.jpg" for i in range(len(labels))]
        assert [p.name for p in masks] == [p.name for p in frames]
        image = cv2.imread(str(frames[0]))
        assert image.shape == (256, 455, 3)
        info = next(d for d in meta["dives"] if (d["competition"], d["clip_id"]) == (competition, clip_id))
        assert info["num_frames"] == len(labels) and info["judge_scores"] == list(judges)
        assert set(info["quality"]) == set(Quality.__dataclass_fields__)


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


def test_short_broadcast_is_a_readable_mp4_with_ground_truth_inside(tmp_path):
    (summary,) = generate_broadcasts(
        tmp_path,
        1,
        seed=2,
        size=(320, 180),
        fps=25,
        dives_per_broadcast=2,
        idle_seconds=(0.4, 0.6),
        score_seconds=0.6,
        replay_probability=1.0,
        progress=False,
    )
    folder = tmp_path / "broadcasts"
    truth = json.loads((folder / "broadcast_000.json").read_text())
    cap = cv2.VideoCapture(str(folder / "broadcast_000.mp4"))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == truth["num_frames"] == summary.num_frames
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(truth["fps"])
    read = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (180, 320, 3)
        read += 1
    assert read == truth["num_frames"]
    duration = truth["num_frames"] / truth["fps"]
    previous_end = 0.0
    for dive in truth["dives"]:
        assert previous_end <= dive["start_s"] < dive["takeoff_end_s"] < dive["entry_start_s"] < dive["end_s"]
        assert dive["end_s"] <= duration
        assert dive["replay"]["start_s"] >= dive["end_s"] and dive["replay"]["end_s"] <= duration
        assert dive["final_score"] == pytest.approx(final_score(dive["judge_scores"], dive["difficulty"]))
        previous_end = dive["score_graphic"]["end_s"]
    with open(folder / "start_list_000.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["dive_number"], float(r["difficulty"])) for r in rows] == [
        (d["dive_number"], d["difficulty"]) for d in truth["dives"]
    ]


def test_cli_refuses_a_non_empty_out_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    assert synth_main(["--out", str(tmp_path), "--dives", "1", "--quiet"]) == 1
    assert (tmp_path / "keep.txt").exists() and not (tmp_path / FRAMES_DIR).exists()


def test_broadcast_falls_back_to_opencv_mp4v_without_ffmpeg(tmp_path, monkeypatch):
    import fineparser.synth.broadcast as broadcast

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
