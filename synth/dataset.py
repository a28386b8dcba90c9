"""Write synthetic dives in the exact FineDiving / FineDiving-HM on-disk layout.

Records, names and numbering are those of the real files (synth/finediving_facts.py): the AQA
annotation holds lists [dive_number, final_score, difficulty, steps_transit_frames, frames_labels],
clip ids count from 0 inside a competition, frames are named by their frame number in the
competition's untrimmed video (six digits past 99999), dive numbers are lower case, and the coarse
and fine-grained annotations and the sub-action table are written under their real names.

Dive ``i`` of seed ``s`` depends only on ``(s, i)`` (and on the options that change pixels, such as
the frame height): its competition is ``i // dives_per_competition`` and every random choice comes
from numpy Generators seeded with ``(s, i, stream)`` (competition-level ones with ``(s,
competition, stream)``), so asking for more dives never changes the earlier ones.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from fineparser.data import (  # the reader owns the layout names; the generator writes them
    ANNOTATION_FILE,
    ANNOTATIONS_DIR,
    COARSE_ANNOTATION_FILE,
    FRAMES_DIR,
    MASKS_DIR,
    TEST_SPLIT_FILE,
    TRAIN_SPLIT_FILE,
)
from synth.dives import (
    DIVE_FREQUENCY,
    FACTOR_SPREAD,
    HEIGHTS,
    QUALITY_WEIGHTS,
    STEP_OF_TYPE,
    STEP_TYPES,
    DiveInfo,
    Quality,
    difficulty,
    expected_judge_award,
    final_score,
    parse_dive_number,
    sample_judge_scores,
    sample_quality,
)
from synth.finediving_facts import FRAME_NAME, GAP_QUANTILES, START_FRAME_QUANTILES, from_quantiles
from synth.render import (
    DivePlan,
    RenderedDive,
    Scene,
    frame_labels,
    make_geometry,
    make_scene,
    plan_dive,
    render_dive,
    render_frames,
    sample_clip_length,
)

log = logging.getLogger(__name__)

SYNTH_VERSION = "2.1"
METADATA_FILE = "synth.json"
FINE_GRAINED_ANNOTATION_FILE = "FineDiving_fine-grained_annotation.pkl"
SUB_ACTION_TABLE_FILE = "Sub_action_Types_Table.pkl"
GENERATED = (FRAMES_DIR, MASKS_DIR, ANNOTATIONS_DIR, METADATA_FILE)
"""Entries of an output folder that generate_dataset writes (and --overwrite replaces)."""

DIVES_PER_COMPETITION = 24
TEST_SHARE = 0.25
MASK_JPEG_QUALITY = 100  # thresholding the decoded mask at 128 gives back the exact mask
PICKLE_PROTOCOL = 4

_STREAM_CHOICE, _STREAM_QUALITY, _STREAM_JUDGES, _STREAM_RENDER = range(4)
_STREAM_VENUE = 4  # competition-level stream: the venue every dive of that competition shares
_STREAM_LENGTH = 5  # dive-level stream: the clip length alone (the frame numbers of later clips need it)
_STREAM_FRAMES = 6  # competition-level stream: where the first clip starts and the gaps between clips
_FIRST = (
    "Ana",
    "Ben",
    "Chen",
    "Dara",
    "Eli",
    "Fei",
    "Gus",
    "Hana",
    "Ivo",
    "Jun",
    "Kai",
    "Lena",
    "Mio",
    "Nia",
    "Oto",
    "Pia",
    "Quan",
    "Rui",
    "Sia",
    "Tom",
    "Uma",
    "Vik",
    "Wen",
    "Yui",
    "Zoe",
)
_LAST = (
    "Arden",
    "Bosko",
    "Castell",
    "Duarte",
    "Eklund",
    "Fontaine",
    "Garza",
    "Hoshino",
    "Ilves",
    "Jansen",
    "Kowal",
    "Lindqvist",
    "Moreau",
    "Novak",
    "Okafor",
    "Petrov",
    "Quist",
    "Rossi",
    "Sato",
    "Tanaka",
    "Ulloa",
    "Varga",
    "Weber",
    "Yilmaz",
    "Zhou",
)
_COUNTRIES = ("AUS", "BRA", "CAN", "CHN", "ESP", "FRA", "GBR", "GER", "ITA", "JPN", "MEX", "UKR", "USA")


@dataclass(frozen=True)
class Competition:
    """One synthetic event: a board, a round and a judging panel."""

    index: int
    name: str
    board: str
    num_judges: int
    judge_bias: tuple[float, ...]


def competition(seed: int, index: int, num_judges: int = 7) -> Competition:
    """The index-th competition of a seed (names never repeat: year, event and round vary)."""
    year = 2026 + index // 12
    combo = index % 12
    board = HEIGHTS[combo % 2]  # consecutive competitions alternate platform and springboard
    gender = ("Women", "Men")[(combo // 2) % 2]
    round_name = ("final", "semifinal", "preliminary")[combo // 4]
    rng = np.random.default_rng([seed, index, 0xC0])
    bias = tuple(round(float(b), 4) for b in rng.normal(0.0, 0.2, size=num_judges))
    return Competition(
        index, f"SynthWorldChampionships{year}_{gender}{board}_{round_name}", board, num_judges, bias
    )


@dataclass(frozen=True)
class SynthDive:
    """One planned synthetic dive with its judging (render it with :meth:`render`)."""

    index: int
    competition: Competition
    clip_id: int
    start_frame: int  # frame number of the clip's first frame in the competition's untrimmed video
    diver: str
    dive_number: str
    difficulty: float
    quality: Quality
    expected_award: float
    judge_scores: tuple[float, ...]
    final_score: float
    plan: DivePlan
    scene: Scene

    @property
    def key(self) -> tuple[str, int]:
        """Annotation key (competition, clip id)."""
        return self.competition.name, self.clip_id

    @property
    def end_frame(self) -> int:
        """Frame number of the clip's last frame (inclusive, as the real coarse annotation)."""
        return self.start_frame + self.plan.num_frames - 1

    def frame_names(self) -> list[str]:
        """JPEG names of the clip's frames: their frame numbers in the untrimmed video ('00095.jpg', '100231.jpg')."""
        return [FRAME_NAME.format(self.start_frame + t) for t in range(self.plan.num_frames)]

    def render(self) -> RenderedDive:
        """All frames, masks and step labels in memory."""
        return render_dive(self.plan, self.scene)

    def metadata(self) -> dict:
        """JSON-ready description: quality factors, step boundaries and judging."""
        plan = self.plan
        return {
            "index": self.index,
            "competition": self.competition.name,
            "clip_id": self.clip_id,
            "start_frame": self.start_frame,
            "end_frame": self.end_frame,
            "diver": self.diver,
            "dive_number": self.dive_number,
            "board": plan.board,
            "difficulty": self.difficulty,
            "quality": self.quality.as_dict(),
            "expected_award": round(self.expected_award, 4),
            "judge_scores": list(self.judge_scores),
            "final_score": self.final_score,
            "num_frames": plan.num_frames,
            "takeoff_end": plan.takeoff_end,
            "entry_start": plan.entry_start,
            "flight_phases": plan.phase_boundaries(),
            "entry_error_deg": round(plan.entry_error, 3),
            "takeoff_style": plan.takeoff_style,
            "scene_style": self.scene.style,
        }


def clip_length(seed: int, index: int, namespace: int = 0) -> int:
    """Frames of dive ``index`` of ``seed`` (drawn from the real clip lengths, on its own stream)."""
    return sample_clip_length(np.random.default_rng([seed, index, _STREAM_LENGTH, namespace]))


def clip_start_frame(
    seed: int, competition_index: int, clip_id: int, first_index: int, namespace: int = 0
) -> int:
    """Frame number of the first frame of clip ``clip_id`` in its competition's untrimmed video.

    The first clip starts where real clips start (their start frames, 95 to 290k); each later one
    starts a real gap (208 to 51k frames, median 1357) after the previous clip's last frame.
    ``first_index`` is the dive index of the competition's clip 0.
    """
    rng = np.random.default_rng([seed, competition_index, _STREAM_FRAMES, namespace])
    start = int(round(float(from_quantiles(START_FRAME_QUANTILES, rng.random()))))
    gaps = np.rint(from_quantiles(GAP_QUANTILES, rng.random(clip_id))).astype(np.int64)
    for j in range(clip_id):
        start += clip_length(seed, first_index + j, namespace) - 1 + int(gaps[j])
    return start


def dive_number_at(board: str, u: float, dive_pool: int | None = None) -> str:
    """The dive number at quantile ``u`` in [0, 1) of a height's real dive-number frequencies.

    Numbers are ordered from the most dived; ``dive_pool`` keeps only the first N of them.
    """
    frequency = DIVE_FREQUENCY[board]
    names = sorted(frequency, key=lambda n: (-frequency[n], n))[: dive_pool or None]
    cumulative = np.cumsum([frequency[n] for n in names])
    return names[int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))]


def synth_dive(
    seed: int,
    index: int,
    *,
    num_judges: int = 7,
    frame_height: int = 256,
    frame_width: int | None = None,
    dives_per_competition: int = DIVES_PER_COMPETITION,
    plain_background: bool = False,
    dive_number: str | None = None,
    quality: Quality | None = None,
    num_frames: int | None = None,
    event: Competition | None = None,
    namespace: int = 0,
    dive_pool: int | None = None,
) -> SynthDive:
    """Plan dive ``index`` of ``seed`` (deterministic); dive number, quality and event may be forced.

    Dive numbers are drawn in the proportions of the real annotations at the competition's height.
    ``namespace`` separates independent families of dives (the dataset uses 0, broadcasts others).
    ``dive_pool`` limits each board to its N most frequent dive numbers (small sets that still
    have several dives per dive number, e.g. for tests).
    """
    comp = competition(seed, index // dives_per_competition, num_judges) if event is None else event
    streams = [np.random.default_rng([seed, index, s, namespace]) for s in range(4)]
    choice = streams[_STREAM_CHOICE]
    drawn = dive_number_at(comp.board, choice.random(), dive_pool)
    diver = (
        f"{_FIRST[int(choice.integers(len(_FIRST)))]} {_LAST[int(choice.integers(len(_LAST)))]} "
        f"({_COUNTRIES[int(choice.integers(len(_COUNTRIES)))]})"
    )
    number = drawn if dive_number is None else dive_number
    info: DiveInfo = parse_dive_number(number)
    dd = difficulty(info.number, comp.board)
    drawn_quality = sample_quality(streams[_STREAM_QUALITY])
    quality = drawn_quality if quality is None else quality
    award = expected_judge_award(quality)
    judges = sample_judge_scores(award, streams[_STREAM_JUDGES], num_judges, comp.judge_bias)
    rng = streams[_STREAM_RENDER]
    # One venue per competition (camera framing, hall, lighting), as in a broadcast: the background
    # then tells a model which competition a dive is from, not which dive it is.
    venue = np.random.default_rng([seed, comp.index, _STREAM_VENUE, namespace])
    geometry = make_geometry(frame_height, comp.board, venue, width=frame_width)
    length = clip_length(seed, index, namespace) if num_frames is None else int(num_frames)
    plan = plan_dive(info, comp.board, quality, rng, geometry, num_frames=length)
    scene = make_scene(geometry, rng, plain=plain_background, venue_rng=venue)
    clip_id = index % dives_per_competition  # from 0, as the real round videos
    start_frame = clip_start_frame(seed, comp.index, clip_id, index - clip_id, namespace)
    return SynthDive(
        index,
        comp,
        clip_id,
        start_frame,
        diver,
        info.number,
        dd,
        quality,
        award,
        judges,
        final_score(judges, dd),
        plan,
        scene,
    )


def render_synthetic_dive(seed: int = 0, index: int = 0, **options) -> tuple[SynthDive, RenderedDive]:
    """Plan and render one dive in memory: frames uint8 RGB [T,H,W,3], masks 0/1 [T,H,W], labels [T]."""
    dive = synth_dive(seed, index, **options)
    return dive, dive.render()


# ----------------------------------------------------------------------------- splits


def make_splits(
    keys: Sequence[tuple[str, int]], dive_numbers: Sequence[str], seed: int, test_share: float = TEST_SHARE
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """About 75/25 train/test; a dive number goes to test only if train keeps at least two of it."""
    rng = np.random.default_rng([seed, 0x5B117])
    by_number: dict[str, list[int]] = {}
    for i, number in enumerate(dive_numbers):
        by_number.setdefault(number, []).append(i)
    test_idx: set[int] = set()
    for number in sorted(by_number):
        members = by_number[number]
        n_test = int(np.floor(len(members) * test_share + 0.5))
        n_test = min(n_test, len(members) - 2)  # exemplars of every test dive number stay in train
        if n_test > 0:
            chosen = rng.permutation(len(members))[:n_test]
            test_idx.update(members[int(c)] for c in chosen)
    train = [keys[i] for i in range(len(keys)) if i not in test_idx]
    test = [keys[i] for i in range(len(keys)) if i in test_idx]
    return train, test


# ----------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class DatasetSummary:
    """What generate_dataset wrote."""

    out_dir: str
    num_dives: int
    num_frames: int
    num_train: int
    num_test: int
    bytes_written: int
    seconds: float
    competitions: tuple[str, ...] = field(default_factory=tuple)

    @property
    def frames_per_second(self) -> float:
        """Frames rendered and written per wall-clock second."""
        return self.num_frames / max(self.seconds, 1e-9)


def prepare_out_dir(out_dir: Path, entries: Sequence[str], overwrite: bool) -> None:
    """Refuse a non-empty output folder unless overwriting; overwriting removes only our own entries."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {out_dir} exists and is not empty (use --overwrite)")
        for name in entries:
            path = out_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_dive(job: tuple) -> dict:
    """Render one dive and write its frames and masks; returns its annotation record (worker-safe)."""
    out_dir, seed, index, options, jpeg_quality = job
    cv2.setNumThreads(1)  # one dive per core; OpenCV's own threads would only fight the workers
    dive = synth_dive(seed, index, **options)
    comp, clip = dive.key
    frame_dir = Path(out_dir) / FRAMES_DIR / comp / str(clip)
    mask_dir = Path(out_dir) / MASKS_DIR / comp / str(clip)
    frame_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    frame_params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    mask_params = [cv2.IMWRITE_JPEG_QUALITY, MASK_JPEG_QUALITY]
    size = 0
    names = dive.frame_names()
    for i, (frame, mask) in enumerate(render_frames(dive.plan, dive.scene)):
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), frame_params)
        ok2, mjpg = cv2.imencode(".jpg", mask * np.uint8(255), mask_params)
        if not (ok and ok2):
            raise RuntimeError(f"JPEG encoding failed for {comp}/{clip} frame {i}")
        (frame_dir / names[i]).write_bytes(jpg.tobytes())
        (mask_dir / names[i]).write_bytes(mjpg.tobytes())
        size += jpg.size + mjpg.size
    return {"meta": dive.metadata(), "labels": frame_labels(dive.plan), "bytes": size}


def steps_transit_frames(labels: np.ndarray) -> np.ndarray:
    """The last frame of every step but the last, as the real records store it (int64 [steps - 1])."""
    labels = np.asarray(labels)
    return np.flatnonzero(labels[1:] != labels[:-1]).astype(np.int64)


def annotation_files(records: Sequence[dict]) -> tuple[dict, dict, dict]:
    """The AQA, coarse and fine-grained annotations of written dives, in the real files' layouts."""
    annotations, coarse, fine = {}, {}, {}
    for rec in records:
        m = rec["meta"]
        # Canonical objects (interned strings, fresh int64 arrays): pickle memoises by identity, so
        # this makes the bytes the same whether records came from this process or from workers.
        key = (sys.intern(m["competition"]), int(m["clip_id"]))
        number = sys.intern(m["dive_number"])
        labels = np.array(rec["labels"].tolist(), dtype=np.int64)
        transits = steps_transit_frames(labels)
        annotations[key] = [number, float(m["final_score"]), float(m["difficulty"]), transits, labels]
        coarse[key] = {
            "action_type": number,
            "start_frame": int(m["start_frame"]),
            "end_frame": int(m["end_frame"]),
            "dive_score": float(m["final_score"]),
            "difficulty": float(m["difficulty"]),
            "judge_scores": [float(s) for s in m["judge_scores"]],
        }
        order = list(dict.fromkeys(labels.tolist()))
        fine[key] = {
            "action_type": number,
            "dive_score": float(m["final_score"]),
            "difficulty": float(m["difficulty"]),
            "steps_transit_frames": transits.copy(),
            "frames_labels": labels.copy(),
            "sub-action_types": {np.int64(i): STEP_TYPES[i] for i in order},
        }
    return annotations, coarse, fine


def generate_dataset(
    out_dir: str | os.PathLike,
    num_dives: int,
    seed: int = 0,
    *,
    num_judges: int = 7,
    frame_height: int = 256,
    jpeg_quality: int = 90,
    dives_per_competition: int = DIVES_PER_COMPETITION,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    dive_pool: int | None = None,
) -> DatasetSummary:
    """Render ``num_dives`` dives into ``out_dir`` in the FineDiving layout with annotations and splits."""
    if num_dives < 1:
        raise ValueError("num_dives must be at least 1")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError("jpeg_quality must be in 1..100")
    out = Path(out_dir)
    prepare_out_dir(out, GENERATED, overwrite)
    options = {
        "num_judges": num_judges,
        "frame_height": frame_height,
        "dives_per_competition": dives_per_competition,
    }
    if dive_pool:
        options["dive_pool"] = dive_pool
    jobs = [(str(out), seed, i, options, jpeg_quality) for i in range(num_dives)]
    start = time.perf_counter()
    log.info("rendering %d dives into %s (seed %d, %d worker(s))", num_dives, out, seed, workers)
    bar = tqdm(total=num_dives, unit="dive", disable=not progress, desc="synth dives")
    records: list[dict] = []
    if workers <= 1:
        for job in jobs:
            records.append(_write_dive(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for record in pool.map(_write_dive, jobs, chunksize=2):
                records.append(record)
                bar.update()
    bar.close()
    annotations, coarse, fine = annotation_files(records)
    keys = list(annotations)
    train, test = make_splits(keys, [annotations[k][0] for k in keys], seed)
    ann_dir = out / ANNOTATIONS_DIR
    ann_dir.mkdir(exist_ok=True)
    files = (
        (ANNOTATION_FILE, annotations),
        (COARSE_ANNOTATION_FILE, coarse),
        (FINE_GRAINED_ANNOTATION_FILE, fine),
        (SUB_ACTION_TABLE_FILE, dict(STEP_TYPES)),
        (TRAIN_SPLIT_FILE, train),
        (TEST_SPLIT_FILE, test),
    )
    for name, obj in files:
        (ann_dir / name).write_bytes(pickle.dumps(obj, protocol=PICKLE_PROTOCOL))
    metadata = {
        "generator": "fineparser-synth",
        "version": SYNTH_VERSION,
        "seed": seed,
        "arguments": {"num_dives": num_dives, "jpeg_quality": jpeg_quality, **options},
        "layout": {
            "frames": FRAMES_DIR,
            "masks": MASKS_DIR,
            "annotations": f"{ANNOTATIONS_DIR}/{ANNOTATION_FILE}",
            "coarse_annotations": f"{ANNOTATIONS_DIR}/{COARSE_ANNOTATION_FILE}",
        },
        "step_types": {str(i): name for i, name in STEP_TYPES.items()},
        "coarse_step_of_type": {str(i): step for i, step in STEP_OF_TYPE.items()},
        "quality_weights": dict(QUALITY_WEIGHTS),
        "quality_factor_spread": FACTOR_SPREAD,
        "splits": {"train": len(train), "test": len(test)},
        "dives": [rec["meta"] for rec in records],
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=1, sort_keys=True) + "\n")
    seconds = time.perf_counter() - start
    frames = sum(rec["meta"]["num_frames"] for rec in records)
    size = sum(rec["bytes"] for rec in records)
    log.info(
        "wrote %d dives (%d frames, %.1f MB) in %.1f s: %.0f frames/s",
        num_dives,
        frames,
        size / 1e6,
        seconds,
        frames / max(seconds, 1e-9),
    )
    comps = tuple(dict.fromkeys(m["meta"]["competition"] for m in records))
    return DatasetSummary(str(out), num_dives, frames, len(train), len(test), size, seconds, comps)
