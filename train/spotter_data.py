"""The spotter's training data: windows of consecutive broadcast frames with their per-frame classes.

Broadcasts are found under ``DATA/broadcasts`` (or ``DATA`` itself when it has no such folder), in
subfolders too: every video (``fineparser.broadcast_labels.VIDEO_SUFFIXES``) with an annotation of the
same stem (``.json`` or ``.csv``), and every JSON annotation whose ``video`` field names its video.
``fineparser-synth --broadcasts`` writes exactly that; a user adds ``final_2024.mp4`` with
``final_2024.json`` (format: docs/data.md, "Annotated broadcasts").

Each video is decoded once with OpenCV; every frame goes through
:func:`fineparser.spotter_spec.spotter_frame` (the runtime's own preparation) and the result is cached
as uint8 ``[N, h, w, 3]`` ``.npy`` beside a key (video size, mtime, input size).  Later runs map the
cache from disk instead of decoding again.

Windows are drawn per (seed, epoch, index) like :class:`fineparser.data.PairDataset`, so a resumed run
replays the same samples.  A share ``live_fraction`` of the windows is drawn around a live frame
(approach, flight, entry, or a dive frame whose phase is open): live phases are a quarter of a
broadcast's frames, and a dive is seen whole only in a window placed near it.  A share
``replay_fraction`` is drawn around a replay frame: replays are the negatives that look most like a
live dive.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from fineparser.broadcast_labels import UNLABELLED, VIDEO_SUFFIXES, BroadcastLabelError, read_broadcast_labels
from fineparser.data import DataError
from fineparser.spotter import IGNORE_INDEX
from fineparser.spotter_spec import CLASS_NAMES, LIVE_CLASSES, REPLAY, spotter_frame
from train.config import SpotterDataConfig

log = logging.getLogger(__name__)

BROADCASTS_DIR = "broadcasts"
"""Folder of broadcasts below a data root (synth.broadcast.BROADCASTS_DIR)."""
CACHE_DIR = ".spotter_cache"
"""Default frame cache folder, beside each video."""
CACHE_FORMAT = 2
"""Bumped whenever spotter_frame changes what it makes (2: from the model frame's box reduction)."""


class SpotterDataError(DataError):
    """Broadcasts that cannot be used for training; names the file (and line, for an annotation)."""


@dataclass
class Broadcast:
    """One annotated broadcast: per-frame targets and the cached spotter-input frames."""

    name: str  # path below the broadcasts folder, without suffix
    video: Path
    annotation: Path
    targets: np.ndarray = field(repr=False)  # int64 [N]: class ids, IGNORE_INDEX where the phase is open
    cache: Path  # uint8 [N, h, w, 3] .npy
    _frames: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_frames(self) -> int:
        return len(self.targets)

    @property
    def frames(self) -> np.ndarray:
        """uint8 [N, h, w, 3], memory-mapped from the cache (opened once per process)."""
        if self._frames is None:
            self._frames = np.load(self.cache, mmap_mode="r")
        return self._frames

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own map
        return {**self.__dict__, "_frames": None}


def broadcasts_folder(root: str | Path) -> Path:
    """`root/broadcasts` when it exists, else `root` (a folder of the user's annotated videos)."""
    root = Path(root)
    if not root.is_dir():
        raise SpotterDataError(f"data root {root} does not exist")
    return root / BROADCASTS_DIR if (root / BROADCASTS_DIR).is_dir() else root


def find_broadcasts(folder: Path) -> list[tuple[Path, Path | None]]:
    """(annotation, video or None) pairs below `folder`: same-stem pairs and JSON files with a `video` field."""
    pairs: dict[Path, Path | None] = {}
    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and CACHE_DIR not in p.parts)
    for video in videos:
        for suffix in (".json", ".csv"):
            if video.with_suffix(suffix).is_file():
                pairs[video.with_suffix(suffix)] = video
                break
        else:
            log.warning("%s has no annotation (%s.json or .csv beside it): not used", video, video.stem)
    for annotation in sorted(folder.rglob("*.json")):
        if annotation in pairs or CACHE_DIR in annotation.parts:
            continue
        try:
            named = json.loads(annotation.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            named = None
        if isinstance(named, dict) and named.get("video"):
            pairs[annotation] = None  # the reader resolves `video` (and reports a bad file by line)
    return sorted(pairs.items())


def frame_cache(video: Path, input_hw: tuple[int, int], cache_dir: str | Path | None = None,
                progress: bool = True) -> Path:
    """The .npy of `video`'s frames as spotter input (uint8 [N, h, w, 3]); decoded only when absent or stale.

    The key beside it (`.json`) holds the video's size and mtime and the input size; any change decodes again.
    """
    stat = video.stat()
    folder = Path(cache_dir) if cache_dir else video.parent / CACHE_DIR
    digest = hashlib.sha256(str(video.resolve()).encode()).hexdigest()[:10]
    stem = f"{video.stem}-{digest}-{input_hw[0]}x{input_hw[1]}"
    array, key_file = folder / f"{stem}.npy", folder / f"{stem}.json"
    key = {"format": CACHE_FORMAT, "video": str(video.resolve()), "size": stat.st_size,
           "mtime_ns": stat.st_mtime_ns, "input_hw": list(input_hw)}
    if array.is_file() and key_file.is_file():
        try:
            stored = json.loads(key_file.read_text())
        except (OSError, json.JSONDecodeError):
            stored = {}
        if {k: stored.get(k) for k in key} == key:
            return array
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpotterDataError(f"cannot create the frame cache folder {folder} ({exc.strerror}): set "
                               "spotter_data.cache_dir to a writable folder") from None
    count = _decode_to_npy(video, input_hw, array, progress)
    tmp = key_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**key, "frames": count}))
    os.replace(tmp, key_file)
    return array


def _decode_to_npy(video: Path, input_hw: tuple[int, int], out: Path, progress: bool) -> int:
    """Decode every frame of `video` through spotter_frame into `out` (atomically); returns the frame count."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SpotterDataError(f"OpenCV cannot open {video}: is it a video file ffmpeg can read?")
    expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    height, width = input_hw
    count = 0
    # Raw frames stream to a temporary file (a broadcast may not fit in memory); the .npy header goes
    # in front once the count is known.
    with tempfile.TemporaryFile(dir=out.parent) as raw:
        with tqdm(total=expected, desc=f"decode {video.name}", unit="frame", disable=not progress, leave=False) as bar:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                raw.write(cv2.cvtColor(spotter_frame(bgr, input_hw), cv2.COLOR_BGR2RGB).tobytes())  # resize, then swap
                count += 1
                bar.update(1)
        cap.release()
        if count == 0:
            raise SpotterDataError(f"OpenCV decoded no frame from {video}")
        raw.seek(0)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (count, height, width, 3)})
                shutil.copyfileobj(raw, f, 1 << 22)
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    log.info("decoded %s: %d frames -> %s", video, count, out)
    return count


def load_broadcast(annotation: Path, video: Path | None, folder: Path, input_hw: tuple[int, int],
                   cache_dir: str | Path | None = None, progress: bool = True) -> Broadcast:
    """Read one broadcast's labels and make sure its frame cache exists (decoding the video if needed)."""
    try:
        labels = read_broadcast_labels(annotation)
    except BroadcastLabelError as exc:
        raise SpotterDataError(str(exc)) from None
    video = labels.video or video
    if video is None or not video.is_file():
        raise SpotterDataError(f"{annotation}: its video {video} does not exist")
    cache = frame_cache(video, input_hw, cache_dir, progress)
    decoded = int(np.load(cache, mmap_mode="r").shape[0])
    targets = np.where(labels.classes == UNLABELLED, IGNORE_INDEX, labels.classes).astype(np.int64)
    if decoded != labels.num_frames:
        log.warning("%s: the annotation covers %d frames, OpenCV decoded %d from %s: using the first %d",
                    annotation, labels.num_frames, decoded, video, min(decoded, labels.num_frames))
    targets = targets[:decoded]
    name = str(annotation.relative_to(folder).with_suffix(""))
    return Broadcast(name, video, annotation, targets, cache)


def load_broadcasts(root: str | Path, input_hw: tuple[int, int], cache_dir: str | Path | None = None,
                    progress: bool = True) -> list[Broadcast]:
    """Every annotated broadcast under `root` (see the module docstring), frames cached."""
    folder = broadcasts_folder(root)
    pairs = find_broadcasts(folder)
    if not pairs:
        raise SpotterDataError(f"no annotated broadcast under {folder}: expected videos with a same-name .json or "
                               ".csv annotation (fineparser-synth --broadcasts N writes them; docs/data.md)")
    return [load_broadcast(a, v, folder, input_hw, cache_dir, progress)
            for a, v in tqdm(pairs, desc="broadcasts", unit="video", disable=not progress, leave=False)]


def split_broadcasts(broadcasts: list[Broadcast], test_videos: list[str], test_fraction: float,
                     seed: int) -> tuple[list[Broadcast], list[Broadcast]]:
    """(train, test) by video: the named ones, else `test_fraction` of them (at least one) drawn with `seed`."""
    names = [b.name for b in broadcasts]
    if test_videos:
        unknown = sorted(set(test_videos) - set(names))
        if unknown:
            raise SpotterDataError(f"spotter_data.test_videos names unknown broadcast(s) {', '.join(unknown)}; "
                                   f"known: {', '.join(names)}")
        test = set(test_videos)
    else:
        count = max(1, int(round(test_fraction * len(names)))) if test_fraction > 0 else 0
        order = np.random.default_rng(seed).permutation(len(names))
        test = {names[i] for i in order[:count]}
    train = [b for b in broadcasts if b.name not in test]
    held = [b for b in broadcasts if b.name in test]
    if not train:
        raise SpotterDataError(f"all {len(names)} broadcast(s) are test videos: add broadcasts or lower "
                               "spotter_data.test_fraction")
    return train, held


def class_counts(broadcasts: list[Broadcast]) -> np.ndarray:
    """Labelled frames per class (int64 [len(CLASS_NAMES)]); open phases are not counted."""
    counts = np.zeros(len(CLASS_NAMES), np.int64)
    for b in broadcasts:
        counts += np.bincount(b.targets[b.targets >= 0], minlength=len(CLASS_NAMES))
    return counts


class SpotterWindows(Dataset):
    """`windows_per_epoch` windows of `window` consecutive frames, drawn per (seed, epoch, index).

    An item is {"frames": uint8 [T, h, w, 3], "labels": int64 [T] (IGNORE_INDEX where open), "key": "name@start"}.
    Call :meth:`set_epoch` at the start of each epoch.
    """

    def __init__(self, broadcasts: list[Broadcast], config: SpotterDataConfig, *, seed: int) -> None:
        self.config, self.seed, self.epoch = config, seed, 0
        self.window = config.window
        self.broadcasts = [b for b in broadcasts if b.num_frames >= self.window]
        for b in broadcasts:
            if b.num_frames < self.window:
                log.warning("%s has %d frames, fewer than a window (%d): not used for training", b.annotation,
                            b.num_frames, self.window)
        if not self.broadcasts:
            raise SpotterDataError(f"no training broadcast has a window's {self.window} frames: lower "
                                   "spotter_data.window")
        live = [np.flatnonzero(np.isin(b.targets, LIVE_CLASSES) | (b.targets == IGNORE_INDEX))
                for b in self.broadcasts]
        replay = [np.flatnonzero(b.targets == REPLAY) for b in self.broadcasts]
        starts = np.array([b.num_frames - self.window + 1 for b in self.broadcasts], np.float64)
        self.any_weights = starts / starts.sum()
        # (share of the windows, frames per broadcast, broadcast weights): windows placed around such a frame
        self.focus: list[tuple[float, list[np.ndarray], np.ndarray]] = []
        for name, share, frames in (("live", config.live_fraction, live), ("replay", config.replay_fraction, replay)):
            counts = np.array([len(f) for f in frames], np.float64)
            if share > 0 and not counts.sum():
                log.warning("no %s frame in the training broadcasts: those windows are drawn uniformly", name)
            elif share > 0:
                self.focus.append((share, frames, counts / counts.sum()))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the next items use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.config.windows_per_epoch

    def place(self, rng: np.random.Generator) -> tuple[int, int]:
        """(broadcast index, first frame) of one window."""
        draw = rng.random()
        for share, frames, weights in self.focus:
            if draw < share:
                v = int(rng.choice(len(self.broadcasts), p=weights))
                frame = int(frames[v][rng.integers(len(frames[v]))])
                low = max(0, frame - self.window + 1)
                high = min(frame, self.broadcasts[v].num_frames - self.window)
                return v, int(rng.integers(low, high + 1))
            draw -= share
        v = int(rng.choice(len(self.broadcasts), p=self.any_weights))
        return v, int(rng.integers(self.broadcasts[v].num_frames - self.window + 1))

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        v, start = self.place(rng)
        b = self.broadcasts[v]
        frames = np.array(b.frames[start:start + self.window])
        if self.config.augment:
            frames = augment_window(frames, rng, self.config)
        return {"frames": torch.from_numpy(np.ascontiguousarray(frames)),
                "labels": torch.from_numpy(b.targets[start:start + self.window].copy()),
                "key": f"{b.name}@{start}"}


def augment_window(frames: np.ndarray, rng: np.random.Generator, config: SpotterDataConfig) -> np.ndarray:
    """One random crop and one brightness/contrast change for all frames of a window (a camera, not flicker)."""
    count, height, width, _ = frames.shape
    if config.crop > 0:
        scale = 1.0 - rng.uniform(0.0, config.crop)
        h, w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
        top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
        if (h, w) != (height, width):
            frames = np.stack([cv2.resize(f[top:top + h, left:left + w], (width, height),
                                          interpolation=cv2.INTER_LINEAR) for f in frames])
    gain = 1.0 + rng.uniform(-config.contrast, config.contrast)
    offset = rng.uniform(-config.brightness, config.brightness) * 255.0
    if gain != 1.0 or offset != 0.0:
        x = frames.astype(np.float32)
        mean = x.mean()
        frames = np.clip((x - mean) * gain + mean + offset, 0, 255).round().astype(np.uint8)
    return frames
