"""FineDiving / FineDiving-HM as they ship: paths, annotations, clip loading and pair datasets.

Torch-free on purpose (edge boxes may lack it): the datasets are plain objects with
``__len__``/``__getitem__`` returning dicts of numpy arrays, which torch's DataLoader collates
itself.  Every problem with the data on disk is a :class:`DataError` naming the sample and the
path, raised at the first use or, up front, by :meth:`FineDivingIndex.check`.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fineparser import spec
from fineparser.preprocess import (
    FrameReadError,
    normalize_clip,
    prepare_clip,
    read_frame,
    read_mask,
    sample_frame_indices,
    transitions_from_labels,
)
from fineparser.spec import canonical_dive_number

logger = logging.getLogger(__name__)

FRAMES_DIR = "FINADiving_MTL_256s"
MASKS_DIR = "diving_mask_annotation"
ANNOTATIONS_DIR = "Annotations"
ANNOTATION_FILE = "fine-grained_annotation_aqa.pkl"
TRAIN_SPLIT_FILE = "train_split.pkl"
TEST_SPLIT_FILE = "test_split.pkl"
COARSE_ANNOTATION_FILE = "FineDiving_coarse_annotation.pkl"
"""Per dive: action_type, start_frame, end_frame, dive_score, difficulty, judge_scores (not needed to train)."""

FRAMES_DIR_NAMES = (FRAMES_DIR, "FineDiving")
"""Frame folders :meth:`DataPaths.discover` knows: the paper config's name, then the READMEs' name."""
MASKS_DIR_NAMES = (MASKS_DIR, "FineDiving_HM", "FineDiving-HM")
"""Mask folders it knows: the paper config's name, then FineParser's README name (and its hyphenated spelling)."""
ANNOTATION_FILE_NAMES = (ANNOTATION_FILE, "fine-grained_annotation_for_aqa.pkl")
"""The AQA annotation as shipped, and the name the 2022 FineDiving README gave it."""

SampleKey = tuple[str, int]
"""(competition, clip_id): the key of one dive in the annotation and the splits."""

_FRAME_NAME = re.compile(r"^(\d+)\.jpe?g$", re.IGNORECASE)


class DataError(ValueError):
    """Bad or missing dataset input; names the sample key and the path when they are known."""

    def __init__(
        self,
        message: str,
        *,
        key: SampleKey | None = None,
        path: os.PathLike | str | None = None,
        problems: Sequence[DataError] = (),
    ) -> None:
        self.key = key
        self.path = Path(path) if path is not None else None
        self.problems = list(problems)
        self.reason = message
        text = message if key is None else f"sample {key!r}: {message}"
        if path is not None:
            text = f"{text} [{path}]"
        super().__init__(text)


def format_key(key: SampleKey) -> str:
    """The key as ``competition/clip_id``, the clip's folder below the frames root."""
    return f"{key[0]}/{key[1]}"


def _normalise_key(raw: Any) -> SampleKey:
    """(competition, clip_id) with the types the dataset uses, from a tuple or list."""
    competition, clip_id = raw
    return str(competition), int(clip_id)


# --------------------------------------------------------------------------- pickles


_PICKLE_GLOBALS = {
    # numpy arrays and scalars, under numpy 1's and numpy 2's module names
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # plain containers that pickle by name
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
}


class _AnnotationUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain Python data only: a pickle that names anything else is refused.

    FineDiving's files hold dicts, lists, tuples, strings, numbers and numpy arrays; nothing in them
    needs code to run, so an annotation from an untrusted download cannot execute any.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}; annotation files may hold only numpy arrays and plain Python data"
            )
        if module.startswith("numpy.core."):  # numpy 2 keeps the old names only as deprecated aliases
            try:
                return getattr(importlib.import_module("numpy._core." + module[len("numpy.core.") :]), name)
            except ImportError:  # numpy 1
                pass
        return getattr(importlib.import_module(module), name)


def load_annotation_pickle(path: os.PathLike | str, what: str = "annotation") -> Any:
    """Read a FineDiving pickle (annotations, splits, sub-action table) with the restricted unpickler.

    Missing, unreadable or refused files are a DataError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file is missing", path=path)
    try:
        with open(path, "rb") as handle:
            return _AnnotationUnpickler(handle).load()
    except Exception as exc:  # any unpickling failure means the same thing to the user
        raise DataError(f"cannot read the {what} file ({type(exc).__name__}: {exc})", path=path) from exc


# --------------------------------------------------------------------------- paths


def _first(candidates: Sequence[Path], kind: str) -> Path | None:
    """The first candidate that exists as a folder (kind 'dir') or a file."""
    for path in candidates:
        if path.is_dir() if kind == "dir" else path.is_file():
            return path
    return None


def _annotation_folders(root: Path | None, frames_root: Path | None) -> list[Path]:
    """Where the annotation pickles may lie, in the order the layouts in the wild put them.

    ``ROOT/Annotations`` (our layout and FineParser's ``$ANNOTATIONS_ROOT`` inside the data),
    ``ROOT`` itself (the 2022 FineDiving README), ``Annotations`` beside the root (the paper's
    config: ``data/`` and ``Annotations/`` side by side) and inside the frame folder.
    """
    folders = []
    if root is not None:
        folders += [root / ANNOTATIONS_DIR, root, root.parent / ANNOTATIONS_DIR]
    if frames_root is not None:
        folders.append(frames_root / ANNOTATIONS_DIR)
    return list(dict.fromkeys(folders))


@dataclass(frozen=True, kw_only=True)
class DataPaths:
    """Where the frames, masks, annotation and splits are; real installs scatter them.

    ``mask_root`` None means no FineDiving-HM masks; after :meth:`discover`, ``masks_note`` then
    says in one line where they were looked for (None when masks were found or paths were given).
    """

    frames_root: Path
    mask_root: Path | None = None
    annotation: Path
    train_split: Path
    test_split: Path
    masks_note: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("frames_root", "mask_root", "annotation", "train_split", "test_split"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser())

    @classmethod
    def discover(
        cls,
        root: os.PathLike | str | None = None,
        *,
        frames_root: os.PathLike | str | None = None,
        mask_root: os.PathLike | str | None = None,
        annotations: os.PathLike | str | None = None,
    ) -> DataPaths:
        """Find frames, masks, annotation and splits below ``root`` in any layout the datasets ship in.

        Frames: ``ROOT/FINADiving_MTL_256s`` (the paper's config) or ``ROOT/FineDiving`` (the
        READMEs).  Masks: ``ROOT/diving_mask_annotation`` or ``ROOT/FineDiving_HM``.  Annotation
        and splits: ``ROOT/Annotations``, ``ROOT``, ``ROOT/../Annotations`` or
        ``FRAMES/Annotations``.  ``frames_root``, ``mask_root`` and ``annotations`` (the folder
        of the pickles) replace the search for that item.  Missing frames, annotation or splits
        (or an explicit mask folder): DataError listing every place looked at.  Masks not found by
        the search are allowed: ``mask_root`` is None and ``masks_note`` (also logged) names where
        they were looked for.
        """
        root = None if root is None else Path(root).expanduser()
        if root is None and (frames_root is None or annotations is None):
            raise DataError("DataPaths.discover needs a data root, or both frames_root= and annotations=")
        frame_candidates = (
            [Path(frames_root).expanduser()]
            if frames_root is not None
            else [root / name for name in FRAMES_DIR_NAMES]  # type: ignore[operator]
        )
        found_frames = _first(frame_candidates, "dir")
        folders = (
            [Path(annotations).expanduser()]
            if annotations is not None
            else _annotation_folders(root, found_frames)
        )
        annotation_candidates = [folder / name for folder in folders for name in ANNOTATION_FILE_NAMES]
        found_annotation = _first(annotation_candidates, "file")
        # The splits must come from the annotation's own folder: splits of another release of the
        # files would not match its keys.
        split_folders = [found_annotation.parent] if found_annotation is not None else folders
        looked: dict[str, list[Path]] = {
            "frames_root": frame_candidates,
            "annotation": annotation_candidates,
            "train_split": [folder / TRAIN_SPLIT_FILE for folder in split_folders],
            "test_split": [folder / TEST_SPLIT_FILE for folder in split_folders],
        }
        found = {
            name: _first(paths, "dir" if name == "frames_root" else "file") for name, paths in looked.items()
        }
        # Without a root, masks are sought beside the frame folder (the datasets ship them side by side).
        mask_base = root if root is not None else frame_candidates[0].parent
        mask_candidates = (
            [Path(mask_root).expanduser()]
            if mask_root is not None
            else [mask_base / name for name in MASKS_DIR_NAMES]
        )
        found_masks = _first(mask_candidates, "dir")
        missing = [name for name, path in found.items() if path is None]
        if mask_root is not None and found_masks is None:
            missing.append("mask_root")  # a mask folder named explicitly must be there
        if missing:
            lines = [
                f"  {'found  ' if found[name] == path else 'missing'}  {path}"
                for name, paths in looked.items()
                for path in paths
            ]
            lines += [
                f"  {'found  ' if found_masks == path else 'missing'}  {path}  (masks, optional)"
                for path in mask_candidates
            ]
            where = f"below {root}" if root is not None else "at the given paths"
            raise DataError(
                f"not a FineDiving root: {len(missing)} required item(s) missing {where} ({', '.join(missing)}); "
                "looked for\n" + "\n".join(lines) + "\n(pass frames_root=, mask_root=, annotations= or "
                "explicit DataPaths(...) for other layouts)"
            )
        note = None
        if found_masks is None:
            note = (
                f"no FineDiving-HM masks: looked for {', '.join(str(path) for path in mask_candidates)} "
                "(frames and annotations found: usable without masks; name the mask folder if it is elsewhere)"
            )
            logger.info("%s", note)
        return cls(**found, mask_root=found_masks, masks_note=note)  # type: ignore[arg-type]

    @property
    def has_masks(self) -> bool:
        """Whether a FineDiving-HM mask folder is configured."""
        return self.mask_root is not None


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SampleInfo:
    """One annotated dive: its dive number, official score, difficulty and per-frame step labels."""

    key: SampleKey
    dive_number: str
    final_score: float
    difficulty: float
    frame_labels: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class ClipFiles:
    """The frame (and mask) files of one clip, sorted by frame number."""

    key: SampleKey
    folder: Path
    frames: tuple[Path, ...]
    first: int
    last: int
    masks: tuple[Path, ...] | None = None


@dataclass(frozen=True)
class TrainShifts:
    """Closed ranges of the random moves of a training clip's first and last sampled frames, in source frames.

    The paper moves only the end, by -3..0 (``spec.TRAIN_END_SHIFT``).  Wider ranges teach the scorer that a
    clip cut a few frames inside the dive is the same dive (a live segmenter's boundaries are that far off).
    Moves go inwards only: a clip holds no frame before its first or after its last.
    """

    start: tuple[int, int] = spec.TRAIN_START_SHIFT
    end: tuple[int, int] = spec.TRAIN_END_SHIFT

    def __post_init__(self) -> None:
        for name, bounds, inward in (("start", self.start, (0, None)), ("end", self.end, (None, 0))):
            ok = (
                isinstance(bounds, (tuple, list))
                and len(bounds) == 2
                and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
            )
            if not ok or bounds[0] > bounds[1]:
                raise ValueError(f"{name}_shift must be two integers [low, high] with low <= high, got {bounds!r}")
            if (inward[0] is not None and bounds[0] < 0) or (inward[1] is not None and bounds[1] > 0):
                sign = ">= 0" if name == "start" else "<= 0"
                raise ValueError(f"{name}_shift must be {sign} (inwards: a clip has no frame outside it), "
                                 f"got {list(bounds)}")
            object.__setattr__(self, name, (int(bounds[0]), int(bounds[1])))

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """(start shift, end shift): the end first, then the start only when its range is not (0, 0), so the
        paper's setting draws exactly what it always drew."""
        end = int(rng.integers(self.end[0], self.end[1], endpoint=True))
        start = int(rng.integers(self.start[0], self.start[1], endpoint=True)) if self.start != (0, 0) else 0
        return start, end


@dataclass
class ClipSample:
    """One loaded and preprocessed clip, uint8 (normalisation is the consumer's last step)."""

    key: SampleKey
    frames: np.ndarray  # uint8 [96, 112, 112, 3] RGB
    masks: np.ndarray | None  # uint8 [96, 112, 112] 0/1, or None
    transitions: np.ndarray  # int64 [2]
    frame_labels: np.ndarray  # int64 [96]
    dive_number: str
    final_score: float
    difficulty: float


def _parse_record(key: SampleKey, record: Any, annotation: Path) -> SampleInfo:
    """Validate one annotation record: [dive number, final score, difficulty, _, frame labels].

    The real ``fine-grained_annotation_aqa.pkl`` holds lists whose index 3 is the array of
    ``steps_transit_frames``; the synthetic world before 2.0 wrote tuples with judge scores there.
    Index 3 is not used: transitions come from the labels of the sampled frames, as in the paper.
    """
    try:
        if isinstance(record, (str, bytes)) or len(record) < 5:
            raise ValueError(
                "expected [dive_number, final_score, difficulty, steps_transit_frames, frames_labels]"
            )
        dive_number, final_score, difficulty, labels = record[0], record[1], record[2], record[4]
        dive_number = canonical_dive_number(dive_number)
        if not dive_number:
            raise ValueError("the dive number is empty")
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.number):
            raise ValueError(
                f"frame labels must be a non-empty 1-D integer sequence, got {labels.dtype} {labels.shape}"
            )
        info = SampleInfo(key, dive_number, float(final_score), float(difficulty), labels.astype(np.int64))
    except (TypeError, IndexError, KeyError, ValueError) as exc:
        raise DataError(f"malformed annotation record ({exc})", key=key, path=annotation) from exc
    info.frame_labels.setflags(write=False)
    return info


def _frame_files(folder: Path) -> list[tuple[int, Path]]:
    """(frame number, path) of every ``<number>.jpg`` in a folder, sorted by number."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _FRAME_NAME.match(entry.name)
            if match:
                found.append((int(match.group(1)), Path(entry.path)))
    found.sort()
    return found


# --------------------------------------------------------------------------- index


class FineDivingIndex:
    """Annotations and splits of FineDiving, with the exemplar pool grouped by dive number.

    Exemplars always come from the train split.  Problems found while building the index (a
    split key missing from the annotation, a malformed record, a test dive number with no
    training exemplar) raise a DataError, or with ``skip_bad=True`` drop the sample with a
    warning.  :meth:`check` validates the files of every sample the same way.
    """

    def __init__(self, paths: DataPaths, *, voter_number: int = 10, skip_bad: bool = False) -> None:
        if voter_number < 1:
            raise ValueError(f"voter_number must be >= 1, got {voter_number}")
        self.paths = paths
        self.voter_number = voter_number
        self.skip_bad = skip_bad
        raw = load_annotation_pickle(paths.annotation, "annotation")
        if not isinstance(raw, dict):
            raise DataError(
                f"annotation must be a dict keyed by (competition, clip_id), got {type(raw).__name__}",
                path=paths.annotation,
            )
        self._records: dict[SampleKey, Any] = {}
        for key, record in raw.items():
            try:
                self._records[_normalise_key(key)] = record
            except (TypeError, ValueError) as exc:
                raise DataError(
                    f"annotation key {key!r} is not a (competition, clip_id) pair", path=paths.annotation
                ) from exc
        self._samples: dict[SampleKey, SampleInfo] = {}
        problems: list[DataError] = []
        self.train_keys = self._load_split(paths.train_split, "train split", problems)
        self.test_keys = self._load_split(paths.test_split, "test split", problems)
        self._pools: dict[str, list[SampleKey]] = {}
        self._drop(problems)

    # ------------------------------------------------------------------ construction helpers

    def _load_split(self, path: Path, what: str, problems: list[DataError]) -> list[SampleKey]:
        """Keys of one split that have a valid annotation record; the others go to problems."""
        raw = load_annotation_pickle(path, what)
        if not isinstance(raw, (list, tuple)):
            raise DataError(
                f"{what} must be a list of (competition, clip_id) keys, got {type(raw).__name__}", path=path
            )
        keys = []
        for entry in raw:
            try:
                key = _normalise_key(entry)
            except (TypeError, ValueError) as exc:
                raise DataError(
                    f"{what} entry {entry!r} is not a (competition, clip_id) key", path=path
                ) from exc
            if key not in self._records:
                problems.append(
                    DataError(
                        f"listed in the {what} but missing from the annotation",
                        key=key,
                        path=self.paths.annotation,
                    )
                )
                continue
            try:
                self._samples[key] = _parse_record(key, self._records[key], self.paths.annotation)
            except DataError as exc:
                problems.append(exc)
                continue
            keys.append(key)
        return keys

    def _rebuild_pools(self) -> list[DataError]:
        """Group train keys by dive number; test keys whose dive number has none are problems."""
        self._pools = {}
        for key in self.train_keys:
            self._pools.setdefault(self._samples[key].dive_number, []).append(key)
        return [
            DataError(
                f"dive number {self._samples[key].dive_number!r} has no training exemplar",
                key=key,
                path=self.paths.train_split,
            )
            for key in self.test_keys
            if self._samples[key].dive_number not in self._pools
        ]

    def _drop(self, problems: list[DataError]) -> list[DataError]:
        """Raise the problems, or with skip_bad drop their samples (warning per sample and in total)."""
        pending = list(problems)
        if not self.skip_bad:
            pending += self._rebuild_pools()
            if len(pending) == 1:
                raise pending[0]
            if pending:
                listing = "\n".join(f"  - {problem}" for problem in pending)
                raise DataError(
                    f"{len(pending)} bad samples (skip_bad=True drops them):\n{listing}", problems=pending
                )
            return []
        dropped: list[DataError] = []
        while True:
            for problem in pending:
                logger.warning("dropping bad sample: %s", problem)
            bad = {problem.key for problem in pending}
            self.train_keys = [key for key in self.train_keys if key not in bad]
            self.test_keys = [key for key in self.test_keys if key not in bad]
            dropped += pending
            # Dropping training clips can empty a dive number's pool: its test queries go too.
            pending = self._rebuild_pools()
            if not pending:
                break
        if dropped:
            logger.warning(
                "dropped %d bad sample(s); %d train and %d test samples remain",
                len(dropped),
                len(self.train_keys),
                len(self.test_keys),
            )
        return dropped

    # ------------------------------------------------------------------ queries

    def __repr__(self) -> str:
        return (
            f"FineDivingIndex({len(self.train_keys)} train, {len(self.test_keys)} test, "
            f"{len(self._pools)} dive numbers, masks={'yes' if self.paths.has_masks else 'no'})"
        )

    def info(self, key: SampleKey) -> SampleInfo:
        """The annotation of a sample; a key without one is a DataError."""
        key = _normalise_key(key)
        if key not in self._samples:
            if key not in self._records:
                raise DataError("not in the annotation", key=key, path=self.paths.annotation)
            self._samples[key] = _parse_record(key, self._records[key], self.paths.annotation)
        return self._samples[key]

    @property
    def dive_numbers(self) -> list[str]:
        """Dive numbers that have training exemplars, canonical (spec.canonical_dive_number), sorted."""
        return sorted(self._pools)

    def exemplar_pool(self, dive_number: str) -> list[SampleKey]:
        """Train-split keys of a dive number in any spelling ('407C' or '407c'); none is a DataError."""
        pool = self._pools.get(canonical_dive_number(dive_number))
        if not pool:
            raise DataError(
                f"dive number {dive_number!r} has no training exemplar", path=self.paths.train_split
            )
        return list(pool)

    # ------------------------------------------------------------------ files

    def clip_files(self, key: SampleKey, *, with_masks: bool = False) -> ClipFiles:
        """List and validate the files of one clip (no decoding); problems are DataErrors."""
        info = self.info(key)
        key = info.key
        folder = self.paths.frames_root / key[0] / str(key[1])
        if not folder.is_dir():
            raise DataError("clip folder is missing", key=key, path=folder)
        numbered = _frame_files(folder)
        if not numbered:
            raise DataError("clip folder holds no <frame>.jpg files", key=key, path=folder)
        numbers = [number for number, _ in numbered]
        first, last = numbers[0], numbers[-1]
        if last - first + 1 != len(numbers):
            gaps = sorted(set(range(first, last + 1)) - set(numbers))
            raise DataError(
                f"frame numbers {first}..{last} are not consecutive ({len(gaps)} missing, first {gaps[0]})",
                key=key,
                path=folder,
            )
        labels = len(info.frame_labels)
        if labels > len(numbers):
            raise DataError(
                f"fewer frames than annotated: {len(numbers)} JPEGs but {labels} frame labels",
                key=key,
                path=folder,
            )
        if labels < len(numbers):
            raise DataError(
                f"more frames than annotated: {len(numbers)} JPEGs but only {labels} frame labels",
                key=key,
                path=folder,
            )
        masks = None
        if with_masks:
            if self.paths.mask_root is None:
                raise DataError(
                    "masks requested but no mask folder is configured (DataPaths.mask_root)", key=key
                )
            mask_folder = self.paths.mask_root / key[0] / str(key[1])
            if not mask_folder.is_dir():
                raise DataError("mask folder is missing", key=key, path=mask_folder)
            mask_numbered = _frame_files(mask_folder)
            if len(mask_numbered) != len(numbered):
                raise DataError(
                    f"{len(mask_numbered)} masks for {len(numbered)} frames", key=key, path=mask_folder
                )
            if [number for number, _ in mask_numbered] != numbers:
                raise DataError(
                    f"mask numbers {mask_numbered[0][0]}..{mask_numbered[-1][0]} do not match "
                    f"frame numbers {first}..{last}",
                    key=key,
                    path=mask_folder,
                )
            masks = tuple(path for _, path in mask_numbered)
        return ClipFiles(key, folder, tuple(path for _, path in numbered), first, last, masks)

    def _decode(self, key: SampleKey, paths: Iterable[Path], mask: bool) -> Iterator[np.ndarray]:
        """Decode JPEGs one by one, turning a corrupt file into a DataError naming sample and file."""
        kind = "mask" if mask else "frame"
        for path in paths:
            try:
                yield read_mask(path) if mask else read_frame(path)
            except FrameReadError as exc:
                raise DataError(f"unreadable {kind} JPEG: {exc.reason}", key=key, path=path) from exc

    def load_clip(
        self,
        key: SampleKey,
        *,
        train: bool,
        rng: np.random.Generator | None = None,
        with_masks: bool = False,
        shifts: TrainShifts | None = None,
    ) -> ClipSample:
        """Sample 96 frames of a clip the paper's way, decode and preprocess them (uint8).

        Training draws, from ``rng`` and in this order: the end shift and start shift (``shifts``, default
        the paper's: TrainShifts.draw), the flip, the crop offset.  Test is deterministic (no shift, no
        flip, centre crop).
        """
        if train and rng is None:
            raise ValueError("training clips need an rng (np.random.Generator)")
        files = self.clip_files(key, with_masks=with_masks)
        info = self.info(key)
        start_shift, end_shift = (shifts or TrainShifts()).draw(rng) if train else (0, 0)
        try:
            numbers = sample_frame_indices(files.first, files.last, spec.NUM_FRAMES, end_shift, start_shift)
            positions = numbers - files.first
            labels = info.frame_labels[positions]
            transitions = transitions_from_labels(labels)
        except ValueError as exc:
            raise DataError(str(exc), key=info.key, path=files.folder) from exc
        # Short clips repeat frames: decode and resize each distinct frame once.
        unique, inverse = np.unique(positions, return_inverse=True)
        frames = list(self._decode(info.key, (files.frames[p] for p in unique), mask=False))
        masks = None
        if with_masks:
            assert files.masks is not None
            # A mask of another size than its frame is fine: like the reference, masks are resized
            # on their own to the frame's 200x112 before the shared crop.
            masks = list(self._decode(info.key, (files.masks[p] for p in unique), mask=True))
        clip, clip_masks = prepare_clip(frames, masks, train=train, rng=rng)
        return ClipSample(
            key=info.key,
            frames=clip[inverse],
            masks=None if clip_masks is None else clip_masks[inverse],
            transitions=transitions,
            frame_labels=labels.astype(np.int64),
            dive_number=info.dive_number,
            final_score=info.final_score,
            difficulty=info.difficulty,
        )

    def test_transitions(self, key: SampleKey) -> np.ndarray:
        """The reader transitions [2] of the key's test-mode 96 frames, from its labels (no decoding)."""
        files = self.clip_files(key)
        numbers = sample_frame_indices(files.first, files.last, spec.NUM_FRAMES)
        try:
            return transitions_from_labels(self.info(key).frame_labels[numbers - files.first])
        except ValueError as exc:
            raise DataError(str(exc), key=key, path=self.paths.annotation) from exc

    # ------------------------------------------------------------------ validation

    def _check_sample(self, key: SampleKey, *, deep: bool, with_masks: bool) -> None:
        """Validate one sample's files (and with deep, decode every JPEG)."""
        files = self.clip_files(key, with_masks=with_masks)
        self.test_transitions(key)
        if not deep:
            return
        shape = None
        for index, frame in enumerate(self._decode(key, files.frames, mask=False)):
            if shape is None:
                shape = frame.shape
            elif frame.shape != shape:
                raise DataError(
                    f"frame is {frame.shape[1]}x{frame.shape[0]}, the clip's first is {shape[1]}x{shape[0]}",
                    key=key,
                    path=files.frames[index],
                )
        if files.masks is not None:
            for _ in self._decode(key, files.masks, mask=True):
                pass  # any size and colour layout is read; only an unreadable mask is a problem

    def check(self, deep: bool = False, *, with_masks: bool | None = None) -> list[DataError]:
        """Validate every train and test sample up front; returns the problems dropped under skip_bad.

        Shallow: folders, frame counts and numbering, label lengths, masks (when a mask folder is
        configured, or ``with_masks``).  ``deep=True`` also decodes every JPEG.  Without
        ``skip_bad`` any problem raises a DataError listing all of them.
        """
        with_masks = self.paths.has_masks if with_masks is None else with_masks
        keys = [*self.train_keys, *self.test_keys]
        problems = []
        progress = tqdm(keys, desc="checking FineDiving clips", unit="clip", disable=None if deep else True)
        for key in progress:
            try:
                self._check_sample(key, deep=deep, with_masks=with_masks)
            except DataError as exc:
                problems.append(exc)
        return self._drop(problems)


# --------------------------------------------------------------------------- datasets


def clip_item(sample: ClipSample, *, with_masks: bool) -> dict[str, Any]:
    """A loaded clip as the model consumes it: normalised float32 video, optional mask, targets."""
    item: dict[str, Any] = {
        "video": normalize_clip(sample.frames),
        "transitions": sample.transitions.astype(np.int64),
        "score": np.float32(sample.final_score),
        "difficulty": np.float32(sample.difficulty),
        "dive_number": sample.dive_number,
        "key": format_key(sample.key),
    }
    if with_masks:
        assert sample.masks is not None
        item["mask"] = sample.masks[None].astype(np.float32)
    return item


def _check_seed(seed: int) -> int:
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return int(seed)


def _require_masks(index: FineDivingIndex, with_masks: bool) -> None:
    if with_masks and not index.paths.has_masks:
        raise DataError(
            "with_masks=True needs the FineDiving-HM mask folder (DataPaths.mask_root is not set"
            + (f"; {index.paths.masks_note}" if index.paths.masks_note else "")
            + ")"
        )


class PairDataset:
    """Training pairs: item i = train query i + one exemplar of its dive number (never itself).

    Randomness (exemplar choice, edge shifts, flip, crop) comes from
    ``np.random.default_rng([seed, epoch, i])``: a resumed run replays the same samples and
    DataLoader workers are independent.  Call :meth:`set_epoch` at the start of each epoch.
    """

    def __init__(
        self, index: FineDivingIndex, *, seed: int, with_masks: bool = False, shifts: TrainShifts | None = None
    ) -> None:
        _require_masks(index, with_masks)
        self.index = index
        self.seed = _check_seed(seed)
        self.with_masks = with_masks
        self.shifts = shifts or TrainShifts()
        self.epoch = 0
        self.keys = list(index.train_keys)
        lonely = sorted(
            {
                index.info(key).dive_number
                for key in self.keys
                if len(index.exemplar_pool(index.info(key).dive_number)) == 1
            }
        )
        if lonely:
            logger.warning(
                "dive number(s) %s have a single training clip: those queries are paired with "
                "themselves (target delta 0)",
                ", ".join(lonely),
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the next items use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.keys)

    def exemplar_key(self, i: int, rng: np.random.Generator) -> SampleKey:
        """Draw the exemplar of query i from the train pool of its dive number, excluding the query."""
        query = self.keys[i]
        pool = self.index.exemplar_pool(self.index.info(query).dive_number)
        candidates = [key for key in pool if key != query] or [query]
        return candidates[int(rng.integers(len(candidates)))]

    def __getitem__(self, i: int) -> dict[str, dict[str, Any]]:
        if not 0 <= i < len(self.keys):
            raise IndexError(f"pair {i} out of range for {len(self.keys)} training queries")
        rng = np.random.default_rng([self.seed, self.epoch, i])
        exemplar = self.exemplar_key(i, rng)
        query_clip = self.index.load_clip(self.keys[i], train=True, rng=rng, with_masks=self.with_masks,
                                          shifts=self.shifts)
        exemplar_clip = self.index.load_clip(exemplar, train=True, rng=rng, with_masks=self.with_masks,
                                             shifts=self.shifts)
        return {
            "query": clip_item(query_clip, with_masks=self.with_masks),
            "exemplar": clip_item(exemplar_clip, with_masks=self.with_masks),
        }


class TestDataset:
    """Evaluation: item i = test query i + up to ``voter_number`` train exemplars of its dive number.

    Exemplars are stacked along a leading axis of length ``voter_number`` so that batches
    collate; when a dive number has fewer training clips, the missing slots are zeros with
    ``valid`` False and ``num_exemplars`` says how many are real.  The choice is
    ``np.random.default_rng([seed, i])`` without replacement: deterministic for the seed.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, index: FineDivingIndex, *, seed: int, with_masks: bool = False) -> None:
        _require_masks(index, with_masks)
        self.index = index
        self.seed = _check_seed(seed)
        self.with_masks = with_masks
        self.voter_number = index.voter_number
        self.keys = list(index.test_keys)
        short = sorted(
            {
                (index.info(key).dive_number, len(index.exemplar_pool(index.info(key).dive_number)))
                for key in self.keys
                if len(index.exemplar_pool(index.info(key).dive_number)) < self.voter_number
            }
        )
        if short:
            logger.warning(
                "fewer than %d training exemplars for dive number(s) %s: their test queries vote "
                "with all they have (see num_exemplars)",
                self.voter_number,
                ", ".join(f"{dive} ({count})" for dive, count in short),
            )

    def __len__(self) -> int:
        return len(self.keys)

    def exemplar_keys(self, i: int) -> list[SampleKey]:
        """The exemplars of test query i, in voting order (deterministic for the seed)."""
        pool = self.index.exemplar_pool(self.index.info(self.keys[i]).dive_number)
        rng = np.random.default_rng([self.seed, i])
        chosen = rng.choice(len(pool), size=min(self.voter_number, len(pool)), replace=False)
        return [pool[j] for j in chosen]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self.keys):
            raise IndexError(f"test query {i} out of range for {len(self.keys)} test queries")
        query = self.index.load_clip(self.keys[i], train=False, with_masks=self.with_masks)
        exemplars = [
            clip_item(
                self.index.load_clip(key, train=False, with_masks=self.with_masks), with_masks=self.with_masks
            )
            for key in self.exemplar_keys(i)
        ]
        return {
            "query": clip_item(query, with_masks=self.with_masks),
            "exemplars": self._stack(exemplars, query.dive_number),
            "num_exemplars": np.int64(len(exemplars)),
        }

    def _stack(self, exemplars: list[dict[str, Any]], dive_number: str) -> dict[str, Any]:
        """Stack exemplar items along a leading voter axis padded to voter_number."""
        slots = self.voter_number
        template = exemplars[0]
        stacked: dict[str, Any] = {}
        for name in ("video", "mask", "transitions", "score", "difficulty"):
            if name not in template:
                continue
            first = np.asarray(template[name])
            array = np.zeros((slots, *first.shape), dtype=first.dtype)
            for slot, item in enumerate(exemplars):
                array[slot] = item[name]
            stacked[name] = array
        stacked["valid"] = np.arange(slots) < len(exemplars)
        stacked["key"] = [item["key"] for item in exemplars] + [""] * (slots - len(exemplars))
        stacked["dive_number"] = dive_number
        return stacked


__all__ = [
    "ANNOTATIONS_DIR",
    "ANNOTATION_FILE",
    "ANNOTATION_FILE_NAMES",
    "COARSE_ANNOTATION_FILE",
    "ClipFiles",
    "ClipSample",
    "DataError",
    "DataPaths",
    "FRAMES_DIR",
    "FRAMES_DIR_NAMES",
    "FineDivingIndex",
    "MASKS_DIR",
    "MASKS_DIR_NAMES",
    "PairDataset",
    "TrainShifts",
    "SampleInfo",
    "SampleKey",
    "TEST_SPLIT_FILE",
    "TRAIN_SPLIT_FILE",
    "TestDataset",
    "clip_item",
    "format_key",
    "load_annotation_pickle",
]
