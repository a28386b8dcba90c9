"""The exemplar bank: encoder outputs of training-split dives, computed once at export.

At test time the paper compares a query with exemplars of its dive number; everything heavy of an
exemplar depends on the exemplar alone, so the package stores it and the pair head is all that
runs per exemplar on the box.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export import log_saved
from fineparser.data import FineDivingIndex, SampleKey, clip_item, format_key
from fineparser.model import FineParser, QueryFeatures
from fineparser.package import ExemplarBank, spread_indices
from fineparser.preprocess import normalize_clip

log = logging.getLogger(__name__)


def choose_exemplars(index: FineDivingIndex, per_dive: int | None = None) -> list[SampleKey]:
    """Training keys for the bank: all, or `per_dive` per dive number spread over their scores."""
    keys: list[SampleKey] = []
    for dive_number in index.dive_numbers:
        pool = index.exemplar_pool(dive_number)
        if per_dive is not None:
            # Quantiles of the sorted scores: the box compares a dive with poor and good exemplars alike.
            scores = [index.info(key).final_score for key in pool]
            pool = [pool[i] for i in spread_indices(scores, per_dive)]
        keys.extend(pool)
    return keys


@torch.no_grad()
def encode_frames(model: FineParser, frames: np.ndarray, with_masks: bool = False) -> QueryFeatures:
    """Encode uint8 frames [96, 112, 112, 3] with PyTorch (normalised by fineparser.preprocess)."""
    clip = torch.from_numpy(normalize_clip(frames))[None]
    return model.encode(clip, with_masks=with_masks)


@torch.no_grad()
def build_bank(model: FineParser, index: FineDivingIndex, keys: Sequence[SampleKey],
               progress: bool = True) -> ExemplarBank:
    """Load and encode each exemplar clip (test-time preprocessing) into an ExemplarBank (progress bar on a tty)."""
    start = time.perf_counter()
    log.info("encoding %d exemplar clip(s) of %d dive number(s) for the bank", len(keys),
             len({index.info(k).dive_number for k in keys}))
    features, scores, difficulty, numbers, clip_ids = [], [], [], [], []
    for key in tqdm(keys, desc="encoding exemplars", unit="clip", disable=None if progress else True):
        item = clip_item(index.load_clip(key, train=False), with_masks=False)
        features.append(model.encode(torch.from_numpy(item["video"])[None]))
        scores.append(float(item["score"]))
        difficulty.append(float(item["difficulty"]))
        numbers.append(item["dive_number"])
        clip_ids.append(format_key(key))
    if features:
        encoded = QueryFeatures.cat(features)
        window_features = encoded.window_features.numpy()
        transitions = encoded.transitions.numpy()
        static_tokens = encoded.static_tokens.numpy()
    else:
        dim, tokens = model.config.feature_dim, model.config.token_dim
        window_features, transitions, static_tokens = np.zeros((0, 9, dim)), np.zeros((0, 2)), np.zeros((0, 12, tokens))
    metadata = {"source": "training split", "frames_root": str(index.paths.frames_root)}
    world = Path(index.paths.frames_root).parent / "synth.json"  # fineparser-synth's record of its world
    if world.is_file():
        metadata["world_version"] = str(json.loads(world.read_text()).get("version"))
    bank = ExemplarBank(window_features, transitions, static_tokens, np.asarray(scores), np.asarray(difficulty),
                        np.asarray(numbers, dtype=str), np.asarray(clip_ids, dtype=str), metadata=metadata)
    log.info("encoded %d exemplars in %.1f s", len(bank), time.perf_counter() - start)
    return bank


def write_bank(bank: ExemplarBank, package_dir: str | Path, npz_name: str, bin_name: str) -> list[Path]:
    """Write bank.npz and bank.bin into the package directory."""
    paths = []
    for name, writer in ((npz_name, bank.save_npz), (bin_name, bank.save_bin)):
        start = time.perf_counter()
        path = writer(Path(package_dir) / name)
        log_saved(log, path, time.perf_counter() - start)
        paths.append(path)
    return paths
