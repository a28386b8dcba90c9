"""Read the real FineDiving annotation pickles with the project's reader and check them against our facts.

    python bench/check_real_annotations.py PATH_TO_ANNOTATIONS

PATH_TO_ANNOTATIONS is the folder of the released pickles (fine-grained_annotation_aqa.pkl,
train_split.pkl, test_split.pkl; FineDiving_coarse_annotation.pkl and Sub_action_Types_Table.pkl
when present).  They are read with fineparser.data's restricted unpickler and FineDivingIndex
(no frames are needed), then every count the toolkit and the synthetic world rely on
(synth/finediving_facts.py) is printed beside what the files say; disagreements are listed last.
The files themselves are never committed.  Exit status 1 when anything disagrees.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineparser import spec  # noqa: E402
from fineparser.data import (  # noqa: E402
    ANNOTATION_FILE,
    COARSE_ANNOTATION_FILE,
    TEST_SPLIT_FILE,
    TRAIN_SPLIT_FILE,
    DataError,
    DataPaths,
    FineDivingIndex,
    load_annotation_pickle,
)
from fineparser.preprocess import sample_frame_indices, transitions_from_labels  # noqa: E402
from synth import finediving_facts as facts  # noqa: E402

SUB_ACTION_FILE = "Sub_action_Types_Table.pkl"


class Report:
    """Rows of (what, found, expected); a row whose expectation is not met is a disagreement."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, bool]] = []

    def add(self, what: str, found, expected=None) -> None:
        if expected is None:
            ok = True
        elif (isinstance(found, list) and isinstance(expected, list) and len(found) == len(expected)
              and all(isinstance(v, (int, float)) for v in [*found, *expected])):
            ok = bool(np.allclose(found, expected, rtol=1e-3, atol=1e-3))  # quantile tables: rounding only
        else:
            ok = found == expected
        self.rows.append((what, str(found), "" if expected is None else str(expected), ok))

    def print(self) -> int:
        width = max(len(r[0]) for r in self.rows)
        print(f"{'fact':<{width}}  {'real files':<28}  expected")
        for what, found, expected, ok in self.rows:
            print(f"{what:<{width}}  {found:<28}  {expected}{'' if ok else '   <-- DISAGREES'}")
        bad = [r for r in self.rows if not r[3]]
        print(f"\n{len(bad)} disagreement(s)" + ("" if not bad else ":"))
        for what, found, expected, _ in bad:
            print(f"  {what}: files say {found}, we expect {expected}")
        return 1 if bad else 0


def quantiles(values, n: int = 21) -> list[float]:
    """Evenly spaced quantiles, rounded for printing."""
    return [round(float(v), 4) for v in np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, n))]


def check(folder: Path) -> int:
    """Print the facts of the annotation files in ``folder``; 1 when any disagrees with ours."""
    report = Report()
    paths = DataPaths(
        frames_root=folder,  # not read: the index needs only the annotation and the splits
        annotation=folder / ANNOTATION_FILE,
        train_split=folder / TRAIN_SPLIT_FILE,
        test_split=folder / TEST_SPLIT_FILE,
    )
    index = FineDivingIndex(paths, voter_number=10)
    raw = load_annotation_pickle(paths.annotation)
    keys = [*index.train_keys, *index.test_keys]
    infos = [index.info(key) for key in keys]

    # ---- the AQA annotation and the splits, as the reader sees them
    report.add("clips", len(raw), facts.NUM_CLIPS)
    report.add("train / test clips", f"{len(index.train_keys)} / {len(index.test_keys)}",
               f"{facts.NUM_TRAIN} / {facts.NUM_TEST}")
    report.add("dive numbers (train pools)", len(index.dive_numbers), facts.NUM_DIVE_NUMBERS)
    record_types = Counter(type(record).__name__ for record in raw.values())
    report.add("record types", dict(record_types), {"list": facts.NUM_CLIPS})
    field_types = Counter(
        tuple(type(value).__name__ for value in record) for record in raw.values()
    )
    report.add("record field types", dict(field_types),
               {("str", "float", "float", "ndarray", "ndarray"): facts.NUM_CLIPS})
    numbers = [record[0] for record in raw.values()]
    report.add("dive numbers already canonical", sum(n == spec.canonical_dive_number(n) for n in numbers),
               facts.NUM_CLIPS)
    report.add("competitions (videos)", len({k[0] for k in raw}), facts.NUM_COMPETITIONS)
    by_competition: dict[str, list[int]] = {}
    for competition, clip_id in raw:
        by_competition.setdefault(competition, []).append(clip_id)
    report.add("videos whose clip ids are 0..n-1",
               sum(sorted(ids) == list(range(len(ids))) for ids in by_competition.values()))
    lengths = np.array([len(info.frame_labels) for info in infos])
    report.add("clip length min / max", f"{lengths.min()} / {lengths.max()}",
               f"{facts.CLIP_LENGTH_QUANTILES[0]} / {facts.CLIP_LENGTH_QUANTILES[-1]}")
    report.add("clips shorter than 96 frames", int((lengths < spec.NUM_FRAMES).sum()), 489)
    report.add("clip length quantiles (21)", quantiles(lengths), list(facts.CLIP_LENGTH_QUANTILES))
    report.add("difficulty values", len({info.difficulty for info in infos}), facts.NUM_DIFFICULTIES)
    used = sorted({int(v) for info in infos for v in np.unique(info.frame_labels)})
    report.add("step types used", len(used), facts.NUM_STEP_TYPES_USED)

    # ---- transitions: our rule on the labels against the files' steps_transit_frames
    agree = sum(
        list(np.asarray(record[3])) == list(np.flatnonzero(np.diff(record[4]) != 0)) for record in raw.values()
    )
    report.add("steps_transit_frames == label changes", agree, 2993)
    ours_vs_file = 0
    relative = []
    out_of_halves = [0, 0]
    for record in raw.values():
        labels = np.asarray(record[4])
        t1, t2 = transitions_from_labels(labels)  # our rule on every frame
        transit = np.asarray(record[3])
        ours_vs_file += int(len(transit) > 0 and t1 == transit[0] and t2 == transit[-1])
        relative.append((t1 / (len(labels) - 1), t2 / (len(labels) - 1)))
        s1, s2 = transitions_from_labels(labels[sample_frame_indices(0, len(labels) - 1)])
        out_of_halves[0] += int(s1 > spec.NUM_FRAMES // 2 - 1)
        out_of_halves[1] += int(s2 < spec.NUM_FRAMES // 2)
    report.add("our transitions == first/last transit", ours_vs_file)
    relative = np.array(relative)
    report.add("take-off end / (frames-1) quantiles", quantiles(relative[:, 0]), list(facts.TAKEOFF_END_QUANTILES))
    report.add("entry - 1 / (frames-1) quantiles", quantiles(relative[:, 1]), list(facts.ENTRY_END_QUANTILES))
    report.add("sampled t1 > 47 / sampled t2 < 48", tuple(out_of_halves), facts.OUT_OF_HALVES)

    # ---- dive numbers and difficulty
    counts = Counter(info.dive_number for info in infos)
    world = Counter()
    for table in facts.DIVES.values():
        for number, (count, _) in table.items():
            world[number] += count
    missing = sorted(set(counts) - set(world))
    report.add("dive numbers not in the synthetic world", missing, ["636c"])
    differ = {n: f"{world[n]} vs {counts.get(n, 0)}" for n in sorted(world) if world[n] != counts.get(n, 0)}
    report.add("world clip counts unlike the files' (board undecided)", differ)

    # ---- the coarse annotation: frame numbering and judging
    coarse_path = folder / COARSE_ANNOTATION_FILE
    if coarse_path.is_file():
        coarse = load_annotation_pickle(coarse_path, "coarse annotation")
        report.add("coarse keys == AQA keys", set(coarse) == set(raw), True)
        fields = Counter(tuple(record) for record in coarse.values())
        report.add("coarse fields", dict(fields), {tuple(facts.COARSE_FIELDS): facts.NUM_CLIPS})
        starts = np.array([coarse[k]["start_frame"] for k in raw])
        ends = np.array([coarse[k]["end_frame"] for k in raw])
        span_ok = sum(int(coarse[k]["end_frame"] - coarse[k]["start_frame"] + 1 == len(raw[k][4])) for k in raw)
        report.add("end - start + 1 == frame labels", span_ok, facts.NUM_CLIPS)
        report.add("start frame min / end frame max", f"{starts.min()} / {ends.max()}",
                   f"{facts.START_FRAME_QUANTILES[0]} / 290470")
        report.add("clips named with six digits", int((starts > 99999).sum()), 531)
        report.add("clips crossing frame 99999", int(((starts <= 99999) & (ends > 99999)).sum()), 0)
        report.add("start frame quantiles (21)", quantiles(starts), list(facts.START_FRAME_QUANTILES))
        same = sum(
            coarse[k]["action_type"] == raw[k][0]
            and abs(coarse[k]["dive_score"] - raw[k][1]) < 1e-6
            and abs(coarse[k]["difficulty"] - raw[k][2]) < 1e-9
            for k in raw
        )
        report.add("coarse agrees with AQA (number, score, DD)", same, facts.NUM_CLIPS)
        panels = Counter(len(coarse[k]["judge_scores"]) for k in raw)
        report.add("judge panel sizes", dict(sorted(panels.items())), dict(sorted(facts.JUDGE_PANELS.items())))
        rules = Counter()
        for k in raw:
            judges = sorted(float(s) for s in coarse[k]["judge_scores"])
            dd, score = coarse[k]["difficulty"], coarse[k]["dive_score"]
            n = len(judges)
            if n == 7:
                expected = sum(judges[2:5]) * dd
            elif n == 3:
                expected = sum(judges) * dd
            else:
                expected = sum(judges) * dd * 0.6
            rules[(n, abs(expected - score) < 0.051)] += 1
        report.add("final score rule holds (panel, ok)", dict(sorted(rules.items())))
    else:
        print(f"({coarse_path.name} not found: frame numbering and judges not checked)")

    sub_path = folder / SUB_ACTION_FILE
    if sub_path.is_file():
        table = load_annotation_pickle(sub_path, "sub-action table")
        report.add("sub-action table == ours", dict(table) == dict(facts.SUB_ACTION_TYPES), True)
    return report.print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("annotations", type=Path, help="folder of the real annotation pickles")
    args = parser.parse_args(argv)
    try:
        return check(args.annotations)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
