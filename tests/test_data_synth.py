"""The reader reads exactly what the synthetic generator writes."""

from __future__ import annotations

import json

import numpy as np

from fineparser.data import DataPaths, FineDivingIndex, PairDataset, TestDataset
from fineparser.preprocess import sample_frame_indices


def test_reader_reads_generated_world(synth_root):
    index = FineDivingIndex(DataPaths.discover(synth_root), voter_number=3)
    assert index.check(deep=True) == []
    meta = {(d["competition"], d["clip_id"]): d for d in json.loads((synth_root / "synth.json").read_text())["dives"]}
    assert len(index.train_keys) + len(index.test_keys) == len(meta) == 12
    assert index.test_keys, "the generator must give a test split"
    for key in list(index.train_keys)[:3] + list(index.test_keys)[:2]:
        sample = index.load_clip(key, train=False, with_masks=True)
        assert sample.frames.shape == (96, 112, 112, 3) and sample.frames.dtype == np.uint8
        assert sample.masks.shape == (96, 112, 112) and set(np.unique(sample.masks)) <= {0, 1}
        assert sample.masks.any(), f"{key}: the diver must be visible in the centre crop"
        d = meta[key]
        # The paper's transitions: last take-off frame and last frame before entry, in sampled frames.
        idx = sample_frame_indices(0, d["num_frames"] - 1)
        expected = [int(np.flatnonzero(idx > d["takeoff_end"])[0]) - 1,
                    int(np.flatnonzero(idx >= d["entry_start"])[0]) - 1]
        assert sample.transitions.tolist() == expected, key
        assert 0 <= expected[0] < 48 <= expected[1] < 96
        assert sample.dive_number == d["dive_number"] and sample.final_score == d["final_score"]
        files = index.clip_files(key)  # frames named by their number in the untrimmed video
        assert (files.first, files.last) == (d["start_frame"], d["end_frame"])


def test_pairs_and_voters_use_train_exemplars_of_the_same_dive_number(synth_root):
    index = FineDivingIndex(DataPaths.discover(synth_root), voter_number=3)
    pairs = PairDataset(index, seed=0, with_masks=True)
    for i in range(len(pairs)):
        rng = np.random.default_rng([0, 0, i])
        exemplar = pairs.exemplar_key(i, rng)
        assert exemplar != pairs.keys[i]
        assert index.info(exemplar).dive_number == index.info(pairs.keys[i]).dive_number
        assert exemplar in index.train_keys
    item = pairs[0]
    assert item["query"]["video"].shape == (3, 96, 112, 112) and item["query"]["mask"].shape == (1, 96, 112, 112)
    tests = TestDataset(index, seed=0)
    for i in range(len(tests)):
        keys = tests.exemplar_keys(i)
        assert keys and all(k in index.train_keys for k in keys)
        assert {index.info(k).dive_number for k in keys} == {index.info(tests.keys[i]).dive_number}
