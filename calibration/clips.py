"""Calibration and held-out clips, prepared exactly as the runtime prepares a dive, cached as .npy.

Clips come from a FineDiving-layout data root through :class:`fineparser.data.FineDivingIndex`
(test-mode sampling: 96 frames, centre crop, no flip), i.e. the same ``fineparser.preprocess``
arithmetic the runtime applies to live frames.  Calibration clips are drawn from the train split
spread over dive numbers; held-out clips (for the drift report) from the test split.  Each clip is
cached as ``<cache>/<hash>.npy`` (uint8 [96, 112, 112, 3]); the hash covers the data root, the
sample key, the annotation file's size and time and the cache version, so a changed data set is
prepared again while a re-run reads the cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fineparser import spec
from fineparser.data import FineDivingIndex, SampleKey, format_key

CACHE_VERSION = 1


@dataclass
class Clip:
    """One prepared clip and what the drift report needs to know of it."""

    key: str
    frames: np.ndarray  # uint8 [96, 112, 112, 3]
    dive_number: str
    final_score: float
    transitions: np.ndarray  # int64 [2], ground truth


def default_cache_dir() -> Path:
    """$FINEPARSER_CACHE/calibration, else $XDG_CACHE_HOME/fineparser/calibration, else ~/.cache/..."""
    if os.environ.get("FINEPARSER_CACHE"):
        return Path(os.environ["FINEPARSER_CACHE"]) / "calibration"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fineparser" / "calibration"


def spread_keys(index: FineDivingIndex, keys: Sequence[SampleKey], count: int) -> list[SampleKey]:
    """Up to `count` keys taken round-robin over dive numbers (every dive number before any repeats).

    ``count <= 0`` means all keys.  The order within a dive number is the split's order, so the
    choice is deterministic.
    """
    if count <= 0 or count >= len(keys):
        return list(keys)
    groups: dict[str, list[SampleKey]] = {}
    for key in keys:
        groups.setdefault(index.info(key).dive_number, []).append(key)
    queues = [groups[number] for number in sorted(groups)]
    chosen: list[SampleKey] = []
    depth = 0
    while len(chosen) < count:
        for queue in queues:
            if depth < len(queue) and len(chosen) < count:
                chosen.append(queue[depth])
        depth += 1
    return chosen


def cache_path(index: FineDivingIndex, key: SampleKey, cache_dir: Path) -> Path:
    """Where the prepared frames of one clip are cached."""
    annotation = index.paths.annotation
    stat = annotation.stat()
    ident = "|".join([str(CACHE_VERSION), str(Path(index.paths.frames_root).resolve()), format_key(key),
                      str(stat.st_size), str(stat.st_mtime_ns),
                      str(spec.NUM_FRAMES), str(spec.FRAME_SIZE)])
    return cache_dir / f"{hashlib.sha1(ident.encode()).hexdigest()}.npy"


def _save_atomic(path: Path, frames: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, frames)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_clips(index: FineDivingIndex, keys: Sequence[SampleKey], cache_dir: Path | None,
               desc: str = "clips") -> tuple[list[Clip], int]:
    """Prepared clips for `keys` (cached when `cache_dir` is given); returns (clips, cache hits)."""
    clips, hits = [], 0
    expected = (spec.NUM_FRAMES, spec.FRAME_SIZE, spec.FRAME_SIZE, 3)
    for key in tqdm(keys, desc=desc, unit="clip", disable=None):
        info = index.info(key)
        frames = None
        path = cache_path(index, key, cache_dir) if cache_dir is not None else None
        if path is not None and path.is_file():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.shape == expected and cached.dtype == np.uint8:
                    frames, hits = cached, hits + 1
            except (OSError, ValueError):
                frames = None  # a damaged cache file is prepared again and overwritten
        sample = None
        if frames is None:
            sample = index.load_clip(key, train=False)
            frames = sample.frames
            if path is not None:
                _save_atomic(path, frames)
        transitions = sample.transitions if sample is not None else index.test_transitions(key)
        clips.append(Clip(format_key(key), frames, info.dive_number, float(info.final_score),
                          np.asarray(transitions, dtype=np.int64)))
    return clips, hits
