"""FineDiving data: layouts, records, dive numbers, masks, clip loading, pair datasets, every bad input."""

from __future__ import annotations

import logging
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from finediving_fixture import (  # noqa: E402
    FakeClip,
    decode_position,
    standard_clips,
    step_labels,
    write_dataset,
)

from fineparser.data import (  # noqa: E402
    ANNOTATION_FILE,
    ANNOTATIONS_DIR,
    FRAMES_DIR,
    MASKS_DIR,
    TEST_SPLIT_FILE,
    TRAIN_SPLIT_FILE,
    DataError,
    DataPaths,
    FineDivingIndex,
    PairDataset,
    TestDataset,
    TrainShifts,
    load_annotation_pickle,
)
from fineparser.package import ExemplarBank  # noqa: E402
from fineparser.preprocess import sample_frame_indices  # noqa: E402
from fineparser.spec import canonical_dive_number  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset(tmp_path) -> DataPaths:
    return write_dataset(tmp_path / "FineDiving", standard_clips())


def frame_folder(paths: DataPaths, key: tuple[str, int]) -> Path:
    return paths.frames_root / key[0] / str(key[1])


# --------------------------------------------------------------------------- paths


def test_discover_config_layout(dataset, caplog) -> None:
    root = dataset.frames_root.parent
    assert dataset.frames_root == root / FRAMES_DIR
    assert dataset.mask_root == root / MASKS_DIR and dataset.masks_note is None
    assert dataset.annotation == root / ANNOTATIONS_DIR / ANNOTATION_FILE
    shutil.rmtree(root / MASKS_DIR)
    with caplog.at_level(logging.INFO, logger="fineparser.data"):
        plain = DataPaths.discover(root)  # plain FineDiving: frames, no masks
    assert plain.mask_root is None and not plain.has_masks
    note = plain.masks_note
    assert note is not None and "\n" not in note
    assert str(root / MASKS_DIR) in note and str(root / "FineDiving_HM") in note
    assert [r.getMessage() for r in caplog.records if "masks" in r.getMessage()] == [note]
    with pytest.raises(DataError, match="FineDiving_HM"):  # who asks for masks hears where they were sought
        PairDataset(FineDivingIndex(plain), seed=0, with_masks=True)


def test_discover_readme_layout_with_annotations_beside_the_root(tmp_path) -> None:
    # FineParser's README: $DATASET_ROOT/FineDiving, $DATASET_ROOT/FineDiving_HM, annotations elsewhere.
    root = tmp_path / "data"
    paths = write_dataset(root, standard_clips(), layout="readme")
    assert paths.frames_root == root / "FineDiving" and paths.mask_root == root / "FineDiving_HM"
    assert paths.annotation == tmp_path / ANNOTATIONS_DIR / ANNOTATION_FILE
    assert paths.train_split.parent == paths.test_split.parent == tmp_path / ANNOTATIONS_DIR
    index = FineDivingIndex(paths)
    assert len(index.train_keys) == 5 and index.check(deep=True) == []
    # the 2022 FineDiving README: the pickles directly in the root
    for name in (ANNOTATION_FILE, TRAIN_SPLIT_FILE, TEST_SPLIT_FILE):
        shutil.move(str(tmp_path / ANNOTATIONS_DIR / name), root / name)
    assert DataPaths.discover(root).annotation == root / ANNOTATION_FILE
    # explicit folders replace the search; masks are then sought beside the frames
    explicit = DataPaths.discover(frames_root=root / "FineDiving", annotations=root)
    assert explicit.frames_root == root / "FineDiving" and explicit.mask_root == root / "FineDiving_HM"
    shutil.move(str(root / "FineDiving_HM"), tmp_path / "hm")
    assert DataPaths.discover(root).masks_note is not None
    assert DataPaths.discover(root, mask_root=tmp_path / "hm").mask_root == tmp_path / "hm"
    with pytest.raises(DataError, match=r"\(mask_root\)"):  # a mask folder named explicitly must exist
        DataPaths.discover(root, mask_root=tmp_path / "nowhere")


def test_discover_lists_what_is_missing(tmp_path) -> None:
    (tmp_path / FRAMES_DIR).mkdir()
    with pytest.raises(DataError) as error:
        DataPaths.discover(tmp_path)
    message = str(error.value)
    assert "3 required item(s) missing" in message and "annotation, train_split, test_split" in message
    assert f"found    {tmp_path / FRAMES_DIR}" in message
    assert f"missing  {tmp_path / ANNOTATIONS_DIR / ANNOTATION_FILE}" in message
    assert "train_split.pkl" in message and "test_split.pkl" in message and MASKS_DIR in message


def test_explicit_scattered_paths(tmp_path) -> None:
    found = write_dataset(tmp_path / "a", standard_clips(), with_masks=False)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("annotation", "train_split", "test_split"):
        shutil.move(str(getattr(found, name)), moved / getattr(found, name).name)
    paths = DataPaths(
        frames_root=str(found.frames_root),
        annotation=moved / found.annotation.name,
        train_split=moved / found.train_split.name,
        test_split=moved / found.test_split.name,
    )
    assert isinstance(paths.frames_root, Path) and paths.mask_root is None
    index = FineDivingIndex(paths)
    assert len(index.train_keys) == 5 and len(index.test_keys) == 2
    index.check(deep=True)


# --------------------------------------------------------------------------- records and dive numbers


def test_real_list_records_and_older_tuples_read_alike(dataset) -> None:
    lists = FineDivingIndex(dataset)
    record = load_annotation_pickle(dataset.annotation)[("WorldCup2021_M3m", 0)]
    assert type(record) is list and len(record) == 5 and record[3].dtype == np.int64
    # synthetic worlds before 2.0: tuples with judge scores at index 3, upper-case dive numbers
    _rewrite(
        dataset.annotation,
        lambda anno: {k: (v[0].upper(), v[1], v[2], (7.0, 7.5, 8.0), v[4]) for k, v in anno.items()},
    )
    tuples = FineDivingIndex(dataset)
    for key in lists.train_keys + lists.test_keys:
        a, b = lists.info(key), tuples.info(key)
        assert (a.dive_number, a.final_score, a.difficulty) == (b.dive_number, b.final_score, b.difficulty)
        np.testing.assert_array_equal(a.frame_labels, b.frame_labels)
    assert tuples.dive_numbers == ["107b", "5253b"]


def test_canonical_dive_number() -> None:
    assert canonical_dive_number("407C") == canonical_dive_number(" 407 c\t") == "407c"
    assert canonical_dive_number("5237d") == "5237d"


def test_bank_of_lowercase_dive_numbers_selects_407C() -> None:
    numbers = ["407c", "407c", "107b", "5237d"]  # as a bank exported from the real annotations holds them
    n = len(numbers)
    bank = ExemplarBank(np.zeros((n, 9, 4)), np.zeros((n, 2)), np.zeros((n, 12, 4)), [70.0, 80.0, 60.0, 75.0],
                        [3.2, 3.2, 3.0, 3.3], numbers, [f"c/{i}" for i in range(n)])
    for spelling in ("407C", "407c", " 407 C "):
        chosen, note = bank.select(spelling, k=10)
        assert chosen.tolist() == [0, 1] and note is None
    chosen, note = bank.select("5237D")
    assert chosen.tolist() == [3] and note is None
    chosen, note = bank.select("105B")  # same group and position as 107b
    assert chosen.tolist() == [2] and "no exemplar of dive 105b" in note and "(107b)" in note


def test_start_list_dive_numbers_are_canonical(tmp_path) -> None:
    from runtime.segments import read_start_list

    listing = tmp_path / "start.csv"
    listing.write_text("order,diver,dive_number,difficulty\n2,B, 5237D ,3.3\n1,A,407C,3.2\n")
    assert read_start_list(listing) == ["407c", "5237d"]


def test_annotation_pickles_that_name_code_are_refused(dataset) -> None:
    class Payload:
        def __reduce__(self):
            return (subprocess.call, (["false"],))

    dataset.annotation.write_bytes(pickle.dumps({("C", 0): Payload()}))
    with pytest.raises(DataError, match="subprocess.call") as error:
        FineDivingIndex(dataset)
    assert error.value.path == dataset.annotation


# --------------------------------------------------------------------------- loading


def test_index_pools_are_train_only(dataset) -> None:
    index = FineDivingIndex(dataset, voter_number=2)
    assert index.dive_numbers == ["107b", "5253b"]
    assert set(index.exemplar_pool("107B")) == {("WorldCup2021_M3m", k) for k in (0, 1, 2)}
    for dive in index.dive_numbers:
        assert not set(index.exemplar_pool(dive)) & set(index.test_keys)
    assert index.info(("WorldCup2021_M3m", 3)).difficulty == pytest.approx(3.2)


def test_load_clip_test_mode(dataset) -> None:
    index = FineDivingIndex(dataset)
    key = ("WorldCup2021_M3m", 2)  # 40 frames numbered 120..159
    clip = index.load_clip(key, train=False, with_masks=True)
    assert clip.frames.shape == (96, 112, 112, 3) and clip.frames.dtype == np.uint8
    assert clip.masks is not None and clip.masks.shape == (96, 112, 112) and clip.masks.dtype == np.uint8
    assert clip.transitions.dtype == np.int64 and clip.frame_labels.dtype == np.int64
    assert clip.frame_labels.shape == (96,)
    assert (clip.dive_number, clip.final_score, clip.difficulty) == ("107b", 70.0, 3.0)
    positions = np.linspace(0, 39, 96).astype(int)
    decoded = [decode_position(clip.frames[t].reshape(-1, 3).mean(0)) for t in range(96)]
    assert decoded == positions.tolist()  # the sampled frames, in order, from the first file on
    labels = np.asarray(step_labels(40, [0, 10, 30], [1, 15, 36]))
    np.testing.assert_array_equal(clip.frame_labels, labels[positions])
    # mask: left third of the frame, centre crop keeps all columns
    assert clip.masks[:, :, :30].all() and not clip.masks[:, :, 45:].any()
    again = index.load_clip(key, train=False, with_masks=True)
    np.testing.assert_array_equal(clip.frames, again.frames)


def test_transitions_of_a_known_clip(tmp_path) -> None:
    # 200 frames numbered 10..209; step 0 until frame 59, step 5 from 60, step 9 from 140.
    labels = step_labels(200, [0, 60, 140], [0, 5, 9])
    clips = [
        FakeClip("C", 1, "101A", 50.0, 1.4, labels, first_frame=10),
        FakeClip("C", 2, "101A", 52.0, 1.4, labels, first_frame=10, split="test"),
    ]
    index = FineDivingIndex(write_dataset(tmp_path, clips, with_masks=False))
    clip = index.load_clip(("C", 1), train=False)
    # sampled position j is floor(j * 199 / 95): j = 28 -> 58, j = 29 -> 60, j = 66 -> 138, j = 67 -> 140,
    # so the first step ends at j = 28 and the last frame before the last step is j = 66.
    np.testing.assert_array_equal(clip.transitions, [28, 66])
    assert clip.frame_labels[28] == 0 and clip.frame_labels[29] == 5
    assert clip.frame_labels[66] == 5 and clip.frame_labels[67] == 9


def test_frame_numbers_past_99999_keep_their_order(dataset) -> None:
    # 28 frames numbered 99990..100017: names grow from five to six digits mid-clip, as in 531 real clips.
    key = ("WorldCup2021_M3m", 3)
    index = FineDivingIndex(dataset)
    files = index.clip_files(key)
    assert (files.first, files.last) == (99990, 100017) and files.frames[10].name == "100000.jpg"
    clip = index.load_clip(key, train=False)
    decoded = [decode_position(clip.frames[t].reshape(-1, 3).mean(0)) for t in range(96)]
    assert decoded == np.linspace(0, 27, 96).astype(int).tolist()  # short clip: frames repeat, in order


def test_colour_mask_at_half_the_frame_size(tmp_path) -> None:
    grey = FineDivingIndex(write_dataset(tmp_path / "grey", standard_clips()))
    colour = FineDivingIndex(
        write_dataset(tmp_path / "colour", standard_clips(), mask_hw=(16, 24), mask_colour=(200, 0, 0))
    )
    colour.check(deep=True)
    key = ("WorldCup2021_M3m", 2)
    expected = grey.load_clip(key, train=False, with_masks=True).masks
    masks = colour.load_clip(key, train=False, with_masks=True).masks
    assert masks.shape == (96, 112, 112) and set(np.unique(masks)) <= {0, 1}
    assert masks[:, :, :30].all() and not masks[:, :, 45:].any()  # the left third, as the grey mask
    assert np.mean(masks == expected) > 0.99


def test_load_clip_train_mode_is_seeded(dataset) -> None:
    index = FineDivingIndex(dataset)
    key = ("WorldCup2021_M3m", 0)
    a = index.load_clip(key, train=True, rng=np.random.default_rng(1), with_masks=True)
    b = index.load_clip(key, train=True, rng=np.random.default_rng(1), with_masks=True)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.masks, b.masks)
    flips = set()
    for seed in range(8):
        clip = index.load_clip(key, train=True, rng=np.random.default_rng(seed), with_masks=True)
        flips.add(bool(clip.masks[:, :, -1].all()))  # the diver (left third) ends up on the right
        assert decode_position(clip.frames[-1].reshape(-1, 3).mean(0)) in (26, 27, 28, 29)  # end shift -3..0
    assert flips == {False, True}
    with pytest.raises(ValueError, match="rng"):
        index.load_clip(key, train=True)


def test_train_shifts_move_both_edges_inwards(dataset) -> None:
    index = FineDivingIndex(dataset)
    key = ("WorldCup2021_M3m", 0)  # 30 frames
    labels = index.info(key).frame_labels
    fixed = index.load_clip(key, train=True, rng=np.random.default_rng(0), shifts=TrainShifts((2, 2), (-1, -1)))
    positions = sample_frame_indices(0, 29, 96, end_shift=-1, start_shift=2)
    assert positions[0] == 2 and positions[-1] == 28
    decoded = [decode_position(fixed.frames[t].reshape(-1, 3).mean(0)) for t in range(96)]
    assert decoded == positions.tolist()  # the frames sampled between the moved edges, in order
    np.testing.assert_array_equal(fixed.frame_labels, labels[positions])  # labels (and transitions) follow
    firsts, lasts = set(), set()
    wide = TrainShifts((0, 3), (-2, 0))
    for seed in range(40):
        clip = index.load_clip(key, train=True, rng=np.random.default_rng(seed), shifts=wide)
        firsts.add(decode_position(clip.frames[0].reshape(-1, 3).mean(0)))
        lasts.add(decode_position(clip.frames[-1].reshape(-1, 3).mean(0)))
    assert firsts == {0, 1, 2, 3} and lasts == {27, 28, 29}


def test_the_papers_shifts_draw_what_they_always_drew() -> None:
    # Runs made before start shifts existed replay the same samples: one end draw, nothing for the start.
    ours, papers = np.random.default_rng(5), np.random.default_rng(5)
    assert TrainShifts().draw(ours) == (0, int(papers.integers(-3, 0, endpoint=True)))
    assert ours.random() == papers.random()
    for start, end, words in (((-1, 0), (-3, 0), "start_shift must be >= 0"),
                              ((0, 0), (-3, 2), "end_shift must be <= 0"),
                              ((3, 1), (-3, 0), "start_shift must be two integers"),
                              ((0, 0), (-3.5, 0), "end_shift must be two integers")):
        with pytest.raises(ValueError, match=words):
            TrainShifts(start, end)


# --------------------------------------------------------------------------- datasets


def _check_clip_item(item: dict, with_masks: bool) -> None:
    assert item["video"].shape == (3, 96, 112, 112) and item["video"].dtype == np.float32
    assert item["transitions"].shape == (2,) and item["transitions"].dtype == np.int64
    assert item["score"].dtype == np.float32 and item["difficulty"].dtype == np.float32
    assert isinstance(item["dive_number"], str)
    if with_masks:
        assert item["mask"].shape == (1, 96, 112, 112) and item["mask"].dtype == np.float32
        assert set(np.unique(item["mask"])) <= {0.0, 1.0}
    else:
        assert "mask" not in item


def test_pair_dataset(dataset) -> None:
    index = FineDivingIndex(dataset)
    pairs = PairDataset(index, seed=7, with_masks=True)
    assert len(pairs) == 5
    item = pairs[0]
    _check_clip_item(item["query"], with_masks=True)
    _check_clip_item(item["exemplar"], with_masks=True)
    train_keys = {f"{c}/{i}" for c, i in index.train_keys}
    for epoch in range(3):
        pairs.set_epoch(epoch)
        for i in range(len(pairs)):
            query = index.train_keys[i]
            rng = np.random.default_rng([7, epoch, i])
            exemplar = pairs.exemplar_key(i, rng)
            assert exemplar != query and exemplar in index.train_keys
            assert index.info(exemplar).dive_number == index.info(query).dive_number
    assert item["exemplar"]["key"] in train_keys and item["exemplar"]["key"] != item["query"]["key"]
    assert item["exemplar"]["dive_number"] == item["query"]["dive_number"]
    # a resumed run replays the same samples
    pairs.set_epoch(0)
    replay = PairDataset(index, seed=7, with_masks=True)[0]
    for side in ("query", "exemplar"):
        assert replay[side]["key"] == item[side]["key"]
        np.testing.assert_array_equal(replay[side]["video"], item[side]["video"])
        np.testing.assert_array_equal(replay[side]["mask"], item[side]["mask"])
    with pytest.raises(IndexError):
        pairs[len(pairs)]


def test_pair_dataset_without_masks_and_lonely_dive(tmp_path, caplog) -> None:
    clips = [
        *standard_clips(),
        FakeClip("Solo", 0, "6245D", 88.0, 3.6, step_labels(20, [0, 5, 15], [0, 1, 2])),
    ]
    paths = write_dataset(tmp_path, clips, with_masks=False)
    index = FineDivingIndex(paths)
    with pytest.raises(DataError, match="mask folder"):
        PairDataset(index, seed=0, with_masks=True)
    with caplog.at_level(logging.WARNING, logger="fineparser.data"):
        pairs = PairDataset(index, seed=0)
    lonely = [r for r in caplog.records if "single training clip" in r.getMessage()]
    assert len(lonely) == 1 and "6245d" in lonely[0].getMessage()
    solo = index.train_keys.index(("Solo", 0))
    item = pairs[solo]
    assert item["query"]["key"] == item["exemplar"]["key"] == "Solo/0"
    _check_clip_item(item["query"], with_masks=False)


def test_test_dataset(dataset, caplog) -> None:
    index = FineDivingIndex(dataset, voter_number=3)
    with caplog.at_level(logging.WARNING, logger="fineparser.data"):
        tests = TestDataset(index, seed=3, with_masks=True)
    assert any("5253b (2)" in r.getMessage() for r in caplog.records)  # fewer than 3 exemplars: stated
    assert len(tests) == 2
    for i in range(2):
        item = tests[i]
        _check_clip_item(item["query"], with_masks=True)
        ex = item["exemplars"]
        count = int(item["num_exemplars"])
        assert ex["video"].shape == (3, 3, 96, 112, 112) and ex["mask"].shape == (3, 1, 96, 112, 112)
        assert (
            ex["transitions"].shape == (3, 2) and ex["score"].shape == (3,) and ex["difficulty"].shape == (3,)
        )
        assert ex["valid"].tolist() == [True] * count + [False] * (3 - count)
        assert not ex["video"][count:].any()
        dive = item["query"]["dive_number"]
        assert ex["dive_number"] == dive
        expected = {f"{c}/{k}" for c, k in index.exemplar_pool(dive)}
        assert set(ex["key"][:count]) == expected  # all exemplars used when fewer than voter_number
        assert item["query"]["key"] not in ex["key"]
    assert tests.exemplar_keys(0) == TestDataset(index, seed=3).exemplar_keys(0)  # deterministic
    big = FineDivingIndex(dataset, voter_number=2)
    keys = TestDataset(big, seed=0).exemplar_keys(0)
    assert len(keys) == 2 and len(set(keys)) == 2


def test_items_collate_with_torch(dataset) -> None:
    torch_data = pytest.importorskip("torch.utils.data")
    index = FineDivingIndex(dataset, voter_number=3)
    pairs = PairDataset(index, seed=1, with_masks=True)
    batch = torch_data.default_collate([pairs[0], pairs[1]])
    assert tuple(batch["query"]["video"].shape) == (2, 3, 96, 112, 112)
    assert tuple(batch["exemplar"]["mask"].shape) == (2, 1, 96, 112, 112)
    assert tuple(batch["query"]["transitions"].shape) == (2, 2) and batch["query"]["score"].shape == (2,)
    assert batch["query"]["dive_number"] == [
        pairs[0]["query"]["dive_number"],
        pairs[1]["query"]["dive_number"],
    ]
    tests = TestDataset(index, seed=1)
    batch = torch_data.default_collate([tests[0], tests[1]])
    assert tuple(batch["exemplars"]["video"].shape) == (2, 3, 3, 96, 112, 112)
    assert batch["exemplars"]["valid"].shape == (2, 3) and batch["num_exemplars"].tolist() == [3, 2]


# --------------------------------------------------------------------------- bad input


def _assert_names(error: DataError, key: tuple[str, int], path: Path) -> None:
    assert error.key == key and repr(key) in str(error)
    assert error.path == path and str(path) in str(error)


def test_missing_clip_folder(dataset) -> None:
    key = ("WorldCup2021_M3m", 1)
    shutil.rmtree(frame_folder(dataset, key))
    index = FineDivingIndex(dataset)
    with pytest.raises(DataError, match="clip folder is missing") as error:
        index.load_clip(key, train=False)
    _assert_names(error.value, key, frame_folder(dataset, key))
    with pytest.raises(DataError, match="clip folder is missing"):
        index.check()


def test_fewer_frames_than_annotated(dataset) -> None:
    key = ("WorldCup2021_M3m", 1)  # 24 frames numbered 5..28
    (frame_folder(dataset, key) / "00028.jpg").unlink()
    with pytest.raises(DataError, match="fewer frames than annotated: 23 JPEGs but 24 frame labels") as error:
        FineDivingIndex(dataset).load_clip(key, train=False)
    _assert_names(error.value, key, frame_folder(dataset, key))


def test_gap_in_frame_numbers(dataset) -> None:
    key = ("WorldCup2021_M3m", 1)
    (frame_folder(dataset, key) / "00010.jpg").unlink()
    with pytest.raises(DataError, match="not consecutive .*first 10"):
        FineDivingIndex(dataset).check()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_jpeg(dataset, damage) -> None:
    key = ("Olympics2020_W10m", 1)
    path = frame_folder(dataset, key) / "00007.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 100)
    index = FineDivingIndex(dataset)
    index.check()  # shallow: does not decode
    with pytest.raises(DataError, match="unreadable frame JPEG") as error:
        index.load_clip(key, train=False)
    _assert_names(error.value, key, path)
    with pytest.raises(DataError, match="unreadable frame JPEG"):
        index.check(deep=True)


def test_missing_mask(dataset) -> None:
    key = ("WorldCup2021_M3m", 0)
    mask_folder = dataset.mask_root / key[0] / str(key[1])
    (mask_folder / "00003.jpg").unlink()
    index = FineDivingIndex(dataset)
    index.load_clip(key, train=False)  # frames alone are fine
    with pytest.raises(DataError, match="29 masks for 30 frames") as error:
        index.load_clip(key, train=False, with_masks=True)
    _assert_names(error.value, key, mask_folder)
    with pytest.raises(DataError, match="masks for"):
        index.check()
    index.check(with_masks=False)


def test_corrupt_mask_found_by_deep_check(dataset) -> None:
    key = ("WorldCup2021_M3m", 0)
    path = dataset.mask_root / key[0] / str(key[1]) / "00004.jpg"
    path.write_bytes(path.read_bytes()[:40])
    FineDivingIndex(dataset).check()
    with pytest.raises(DataError, match="unreadable mask JPEG") as error:
        FineDivingIndex(dataset).check(deep=True)
    _assert_names(error.value, key, path)


def _rewrite(path: Path, edit) -> None:
    data = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps(edit(data)))


def test_split_key_missing_from_annotation(dataset) -> None:
    key = ("WorldCup2021_M3m", 3)
    _rewrite(dataset.annotation, lambda anno: {k: v for k, v in anno.items() if k != key})
    with pytest.raises(DataError, match="missing from the annotation") as error:
        FineDivingIndex(dataset)
    _assert_names(error.value, key, dataset.annotation)


def test_dive_number_without_training_exemplar(dataset) -> None:
    key = ("Olympics2020_W10m", 2)
    _rewrite(dataset.annotation, lambda anno: {**anno, key: ("9999Z", *anno[key][1:])})
    with pytest.raises(DataError, match="'9999z' has no training exemplar") as error:
        FineDivingIndex(dataset)
    _assert_names(error.value, key, dataset.train_split)


def test_several_problems_are_listed_together(dataset) -> None:
    shutil.rmtree(frame_folder(dataset, ("WorldCup2021_M3m", 1)))
    shutil.rmtree(frame_folder(dataset, ("Olympics2020_W10m", 2)))
    with pytest.raises(DataError, match="2 bad samples") as error:
        FineDivingIndex(dataset).check()
    assert "('WorldCup2021_M3m', 1)" in str(error.value) and "('Olympics2020_W10m', 2)" in str(error.value)
    assert len(error.value.problems) == 2


def test_skip_bad_drops_and_counts(dataset, caplog) -> None:
    # the only other 5253B training clip goes: the test query of 5253B keeps one exemplar
    shutil.rmtree(frame_folder(dataset, ("WorldCup2021_M3m", 3)))
    (frame_folder(dataset, ("WorldCup2021_M3m", 1)) / "00028.jpg").unlink()
    _rewrite(dataset.annotation, lambda anno: {k: v for k, v in anno.items() if k != ("WorldCup2021_M3m", 2)})
    with caplog.at_level(logging.WARNING, logger="fineparser.data"):
        index = FineDivingIndex(dataset, skip_bad=True)
        assert ("WorldCup2021_M3m", 2) not in index.train_keys
        dropped = index.check()
    assert {p.key for p in dropped} == {("WorldCup2021_M3m", 3), ("WorldCup2021_M3m", 1)}
    assert index.train_keys == [("WorldCup2021_M3m", 0), ("Olympics2020_W10m", 0)]
    assert len(index.test_keys) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("dropping bad sample" in m for m in messages) == 3
    assert any("dropped 2 bad sample(s); 2 train and 2 test samples remain" in m for m in messages)
    # losing every training clip of a dive number drops its test queries as well
    shutil.rmtree(frame_folder(dataset, ("Olympics2020_W10m", 0)))
    dropped = index.check()
    assert {p.key for p in dropped} == {("Olympics2020_W10m", 0), ("Olympics2020_W10m", 2)}
    assert index.test_keys == [("Olympics2020_W10m", 1)] and index.dive_numbers == ["107b"]


# --------------------------------------------------------------------------- torch-free


def test_preprocess_and_data_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import fineparser.preprocess, fineparser.data\n"
        "assert sys.modules['torch'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_single_step_labels(dataset) -> None:
    key = ("WorldCup2021_M3m", 4)
    _rewrite(
        dataset.annotation, lambda anno: {**anno, key: ("107B", 50.0, 3.0, None, np.zeros(20, np.int64))}
    )
    _rewrite(dataset.train_split, lambda split: [*split, key])
    shutil.copytree(frame_folder(dataset, ("Olympics2020_W10m", 2)), frame_folder(dataset, key))
    index = FineDivingIndex(dataset)
    with pytest.raises(DataError, match="two distinct steps") as error:
        index.check(with_masks=False)
    assert error.value.key == key
    with pytest.raises(DataError, match="two distinct steps"):
        index.load_clip(key, train=False)


def test_malformed_annotation_record(dataset) -> None:
    key = ("WorldCup2021_M3m", 0)
    _rewrite(dataset.annotation, lambda anno: {**anno, key: ("107B", 50.0)})
    with pytest.raises(DataError, match="malformed annotation record") as error:
        FineDivingIndex(dataset)
    _assert_names(error.value, key, dataset.annotation)
