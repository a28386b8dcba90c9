"""Live dive detection on held-out broadcasts: `--segment auto` against the broadcasts' own ground truth.

    python bench/bench_spotter.py --package PKG --out runs/bench_spotter [--sets default:101,fps2997:102]

Renders held-out synthetic broadcasts (seeds never used in training; named settings, some absent from
the training set), runs `fineparser-live --segment auto` and `--segment timecodes:TRUTH` on each, and
reports, per set and overall: dive detection F1 at temporal IoU >= 0.5, replays and cutaways detected as
dives, start/end error in frames (and the end error's floor: the package's entry_tail_s after each true
entry, what a spotter that finds every entry to the frame would reach), how long after the true end of
a dive its `dive_end` was decided (stream seconds), |score(auto) - score(timecodes)| per dive, Spearman
rho of both against the judges, per-frame phase macro-F1 (from the `phase` events) beside the always-idle
guess, and the spotter's cost per frame. `--sensitivity` adds the score difference that moved true
boundaries alone make (2 frames inwards; the end at the true entry + entry_tail_s), no spotter involved.
Start errors are also given signed (median of found - true, > 0 late) and per take-off
style (`synth.render.takeoff_style`: a standing diver holds still for the first 35 % of the take-off), beside
their floor: a detector that finds every first moving frame exactly, knows the take-off style and dates a
standing diver's start one constant lead before it (the set's median still span, fitted on the same dives) is
off by |still frames - lead| on a standing take-off and by 0 on the others (they move from their first frame);
`start_floor_blind_*`: the same detector blind to the style, one lead for every dive (the median still span of
all dives, 0 for those that move from their first frame).
`--ingest-1080p` adds the ingest + spotter rate on a 1080p50 H.264 programme (no scoring), as fast as
possible and with `--realtime` (frames dropped; `--sets ""` measures only that). report.json also keeps every
broadcast's matched dives (`broadcasts`: errors, scores, when the end was decided) for paired comparisons.
Numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineparser.broadcast_labels import read_broadcast_labels  # noqa: E402
from fineparser.metrics import match_detections  # noqa: E402
from fineparser.package import load_package  # noqa: E402
from fineparser.spotter_spec import CLASS_NAMES, IDLE  # noqa: E402
from runtime.backends import load_backend  # noqa: E402
from runtime.cli import LiveOptions, run_live  # noqa: E402
from runtime.events import EventBus  # noqa: E402
from runtime.spotter import SpotterRunner, spotter_segmenter_settings  # noqa: E402
from synth import generate_broadcasts  # noqa: E402
from synth.dataset import SYNTH_VERSION  # noqa: E402
from synth.dives import parse_dive_number  # noqa: E402
from synth.render import STANDING_STILL, takeoff_style  # noqa: E402

# name -> generate_broadcasts settings; "default" is the training set's, the others each change one thing.
SETTINGS = {
    "default": {},
    "fps2997": {"fps": "30000/1001"},
    "fps50": {"fps": 50},
    "follow_all": {"camera_follow_probability": 1.0, "replay_banner_probability": 0.0},
    "slow_replays": {"replay_speed": 0.25, "max_replays": 3, "replay_probability": 1.0,
                     "replay_banner_probability": 0.0},
}


TAKEOFF_STYLES = ("standing", "approach", "armstand")
"""synth.render.takeoff_style's answers: the start error is reported per style (standing divers hold still first)."""


def _rendered_in_this_world(truth_json: Path) -> bool:
    """Whether a broadcast cached by an earlier run exists and was rendered by this world version."""
    return truth_json.is_file() and json.loads(truth_json.read_text()).get("world_version") == SYNTH_VERSION


def _spearman(a: list[float], b: list[float]) -> float:
    if len(a) < 3:
        return float("nan")
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _session(video: Path, package: Path, backend, segment: str | None, start_list: Path | None) -> list[dict]:
    """One `fineparser-live` run over a recorded programme, its events. The buffer holds the whole programme:
    a file decodes faster than dives are scored, and a dropped frame (the live policy for a slow consumer)
    would change what is measured; a run that dropped one anyway is an error, not a figure."""
    bus = EventBus()
    events: list[dict] = []
    bus.subscribe(events.append)
    capture = cv2.VideoCapture(str(video))
    capacity = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 1) + 64  # the count is an estimate: a margin
    capture.release()
    report = run_live(LiveOptions(source=str(video), package=package, segment=segment, start_list=start_list,
                                  buffer_frames=capacity), backend=backend, bus=bus, table=False)
    bus.flush()
    if report.dropped:
        raise RuntimeError(f"{video}: {report.dropped} frame(s) dropped with a {capacity}-frame buffer")
    return events


def _phase_frames(events: list[dict], fps: float, num_frames: int) -> np.ndarray:
    """Per-frame class ids from the `phase` events (each phase holds from its at_s to the next one's)."""
    labels = np.full(num_frames, IDLE, np.int64)
    changes = [e for e in events if e["type"] == "phase"]
    for i, change in enumerate(changes):
        start = int(round(change["at_s"] * fps))
        end = int(round(changes[i + 1]["at_s"] * fps)) if i + 1 < len(changes) else num_frames
        labels[start:end] = CLASS_NAMES.index(change["phase"])
    return labels


def _macro_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    keep = truth >= 0
    truth, pred = truth[keep], pred[keep]
    scores = []
    for c in range(len(CLASS_NAMES)):
        tp = np.sum((pred == c) & (truth == c))
        fp = np.sum((pred == c) & (truth != c))
        fn = np.sum((pred != c) & (truth == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


SHIFT_FRAMES = 2
"""--sensitivity moves both true boundaries of every dive this many frames inwards (the start/end error goal)."""


def score_sensitivity(video: Path, truth_json: Path, start_list: Path, package: Path, backend,
                      true_scores: dict, entry_tail_s: float, folder: Path) -> dict[str, list[float]]:
    """|score - score with the true timecodes| per dive when only the boundaries move, no spotter involved:

    ``shifted``: start SHIFT_FRAMES later and end SHIFT_FRAMES earlier than the truth (a segmenter meeting
    the start/end goal exactly); ``entry_tail``: the true start, the end at the true entry + the package's
    entry_tail_s (a spotter that finds every entry to the frame).  What the scorer itself makes of small
    boundary changes, to read the auto-vs-timecodes score difference against."""
    truth = json.loads(truth_json.read_text())
    fps = float(truth["fps"])
    out: dict[str, list[float]] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("shifted", "entry_tail"):
        if name == "entry_tail" and entry_tail_s <= 0:
            continue
        moved = json.loads(truth_json.read_text())
        for dive in moved["dives"]:
            if name == "shifted":
                dive["start_s"] += SHIFT_FRAMES / fps
                dive["end_s"] -= SHIFT_FRAMES / fps
            else:
                dive["end_s"] = dive["entry_start_s"] + entry_tail_s
        path = folder / f"{truth_json.parent.parent.name}_{truth_json.stem}_{name}.json"
        path.write_text(json.dumps(moved))
        scores = {e["dive"]: e["score"] for e in _session(video, package, backend, f"timecodes:{path}", start_list)
                  if e["type"] == "score"}
        out[name] = [abs(scores[k] - v["score"]) for k, v in true_scores.items() if k in scores]
    return out


def evaluate_broadcast(video: Path, truth_json: Path, start_list: Path, package: Path, backend,
                       entry_tail_s: float = 0.0, sensitivity_dir: Path | None = None) -> dict:
    """One broadcast: auto vs truth detection, timing, scores, per-frame phases.

    With the package's ``entry_tail_s`` > 0, each matched dive also gets the end error that the same tail
    would give after the true entry (``end_err_floor_frames``): what a spotter that finds every entry to
    the frame would reach, since no frame shows where the annotation ends a dive."""
    labels = read_broadcast_labels(truth_json)
    fps = labels.fps
    truth = json.loads(truth_json.read_text())
    live = [((d.start_frame) / fps, (d.end_frame + 1) / fps) for d in labels.dives]
    replays = [((r.start_frame) / fps, (r.end_frame + 1) / fps) for r in labels.replays]
    auto = _session(video, package, backend, "auto", start_list)
    timed = _session(video, package, backend, f"timecodes:{truth_json}", start_list)
    ends = {e["dive"]: e for e in auto if e["type"] == "dive_end"}
    auto_scores = {e["dive"]: e for e in auto if e["type"] == "score"}
    true_scores = {e["dive"]: e for e in timed if e["type"] == "score"}
    detected = [(e["start_s"], e["end_s"], e["dive"]) for e in ends.values()]
    # true dive index (0-based) -> detected dive number
    matched = {i: detected[j][2] for i, j in match_detections(live, [(s, t) for s, t, _ in detected]).items()}
    false_dives = [d for s, t, d in detected if d not in matched.values()]
    on_replay = sum(1 for s, t, d in detected if d in false_dives and any(min(t, b) > max(s, a) for a, b in replays))
    rows = []
    for i, dive_id in matched.items():
        start_true, end_true = live[i]
        end = ends[dive_id]
        row = {"start_err_frames": abs(end["start_s"] - start_true) * fps,
               "end_err_frames": abs(end["end_s"] - end_true) * fps,
               "start_late_frames": (end["start_s"] - start_true) * fps,  # signed: > 0 found after the true start
               "end_late_frames": (end["end_s"] - end_true) * fps,
               "dive_number": truth["dives"][i]["dive_number"],
               "takeoff": takeoff_style(parse_dive_number(truth["dives"][i]["dive_number"]), truth["board"]),
               "end_decided_after_s": end.get("decided_s", float("nan")) - end_true,
               "judges": truth["dives"][i].get("final_score")}
        if row["takeoff"] == "standing" and truth["dives"][i].get("takeoff_end_s") is not None:
            row["still_frames"] = STANDING_STILL * (truth["dives"][i]["takeoff_end_s"] - start_true) * fps
        elif row["takeoff"] != "standing":
            row["still_frames"] = 0.0
        entry_true = truth["dives"][i].get("entry_start_s")
        if entry_tail_s > 0 and entry_true is not None:
            row["end_err_floor_frames"] = abs(entry_true + entry_tail_s - end_true) * fps
        if dive_id in auto_scores and (i + 1) in true_scores:
            row["auto_score"] = auto_scores[dive_id]["score"]
            row["timecodes_score"] = true_scores[i + 1]["score"]
            row["complete"] = auto_scores[dive_id].get("complete", True)
        rows.append(row)
    pred = _phase_frames(auto, fps, labels.num_frames)
    sensitivity = {}
    if sensitivity_dir is not None:
        sensitivity = score_sensitivity(video, truth_json, start_list, package, backend, true_scores, entry_tail_s,
                                        sensitivity_dir)
    return {"video": video.name, "settings": labels.settings, "true_dives": len(live), "detected": len(detected),
            "matched": len(matched), "false_dives": len(false_dives), "false_on_replay": on_replay, "rows": rows,
            "sensitivity": sensitivity,
            "macro_f1": _macro_f1(labels.classes, pred),
            "macro_f1_idle_guess": _macro_f1(labels.classes, np.full_like(pred, IDLE))}


def summarise(results: list[dict]) -> dict:
    """Pooled figures over broadcasts."""
    rows = [r for res in results for r in res["rows"]]
    tp = sum(r["matched"] for r in results)
    fp = sum(r["false_dives"] for r in results)
    fn = sum(r["true_dives"] - r["matched"] for r in results)
    scored = [r for r in rows if "auto_score" in r and r["judges"] is not None]

    def q(values: list[float], p: float) -> float:
        return float(np.percentile(values, p)) if values else float("nan")

    starts = [r["start_err_frames"] for r in rows]
    ends = [r["end_err_frames"] for r in rows]
    floors = [r["end_err_floor_frames"] for r in rows if "end_err_floor_frames" in r]
    still = [r["still_frames"] for r in rows if "still_frames" in r]
    lead = q([f for f in still if f], 50)  # standing take-offs only: the others need none
    start_floors = [abs(f - lead) if f else 0.0 for f in still]
    blind_floors = [abs(f - q(still, 50)) for f in still]  # one lead for every dive
    return {
        "dives": sum(r["true_dives"] for r in results), "f1_tiou50": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "false_dives": fp, "false_on_replay": sum(r["false_on_replay"] for r in results),
        "start_err_median": q(starts, 50), "start_err_p95": q(starts, 95),
        "end_err_median": q(ends, 50), "end_err_p95": q(ends, 95),
        "end_floor_median": q(floors, 50), "end_floor_p95": q(floors, 95),
        "start_floor_median": q(start_floors, 50), "start_floor_p95": q(start_floors, 95),
        "start_floor_blind_median": q(blind_floors, 50), "start_floor_blind_p95": q(blind_floors, 95),
        "start_late_median": q([r["start_late_frames"] for r in rows], 50),
        "end_late_median": q([r["end_late_frames"] for r in rows], 50),
        **{f"start_err_median_{style}": q([r["start_err_frames"] for r in rows if r["takeoff"] == style], 50)
           for style in TAKEOFF_STYLES},
        **{f"dives_{style}": sum(r["takeoff"] == style for r in rows) for style in TAKEOFF_STYLES},
        "end_decided_after_s_max": max((r["end_decided_after_s"] for r in rows), default=float("nan")),
        "end_decided_after_s_median": q([r["end_decided_after_s"] for r in rows], 50),
        "score_diff_median": q([abs(r["auto_score"] - r["timecodes_score"]) for r in scored], 50),
        "rho_auto": _spearman([r["auto_score"] for r in scored], [r["judges"] for r in scored]),
        "rho_timecodes": _spearman([r["timecodes_score"] for r in scored], [r["judges"] for r in scored]),
        **{f"score_diff_{name}_median": q([d for r in results for d in r["sensitivity"].get(name, [])], 50)
           for name in ("shifted", "entry_tail") if any(name in r["sensitivity"] for r in results)},
        "macro_f1": statistics.mean(r["macro_f1"] for r in results),
        "macro_f1_idle_guess": statistics.mean(r["macro_f1_idle_guess"] for r in results),
    }


def spotter_cost_ms(package: Path, frames: int = 300) -> float:
    """Median ms of one spotter step (preprocessing excluded) on 2 threads."""
    runner = SpotterRunner.from_package(load_package(package))
    frame = np.random.default_rng(0).integers(0, 255, (*runner.spec.input_hw, 3), dtype=np.uint8)
    for _ in range(20):
        runner.step(frame)
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        runner.step(frame)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def tail_sweep(package: Path, folders: list[Path], tails: list[float]) -> list[dict]:
    """The end of dives against ``entry_tail_s``: each value replayed through the auto segmenter's state machine.

    The spotter is stepped once over every broadcast (fresh stream, the package's start state) and its outputs
    are fed to ``DiveStateMachine`` with the package's thresholds and durations, only ``entry_tail_s`` changed
    (the offline path ``fineparser-calibrate --segmenter`` tunes on; the live session runs the same machine on
    the same outputs).  Per value: F1, end error in frames, and how long after the true end ``dive_end`` is
    decided (stream seconds, over matched dives), the latency goal's figure."""
    from calibration.segmenter import match, record_broadcasts

    loaded = load_package(package)
    runner = SpotterRunner.from_package(loaded)
    base = {**runner.spec.thresholds, **spotter_segmenter_settings(loaded)}
    recordings = [r for folder in folders for r in record_broadcasts(runner, folder / "broadcasts", progress=False)]
    rows = []
    for tail in tails:
        m = match(recordings, runner.spec.lookahead, {**base, "entry_tail_s": tail})
        rows.append({"entry_tail_s": tail, "dives": m.tp + m.fn, "matched": m.tp, "f1": m.f1,
                     "end_err_median": float(np.median(m.ends)) if m.ends else float("nan"),
                     "end_err_p95": float(np.percentile(m.ends, 95)) if m.ends else float("nan"),
                     "end_decided_after_s_median": float(np.median(m.after_s)) if m.after_s else float("nan"),
                     "end_decided_after_s_max": max(m.after_s, default=float("nan")),
                     "decided_later_than_0_5_s": sum(a > 0.5 for a in m.after_s)})
    return rows


def ingest_1080p(package: Path, out: Path, seconds: float, backend) -> dict:
    """Frames/s of capture + spotter on a 1080p50 H.264 programme, and drops with --realtime."""
    folder = out / "ingest1080"
    if not _rendered_in_this_world(folder / "broadcasts" / "broadcast_000.json"):
        generate_broadcasts(folder, 1, seed=999, size=(1920, 1080), fps=50.0, dives_per_broadcast=1,
                            idle_seconds=(seconds / 2, seconds / 2), score_seconds=0.5, replay_probability=0.0,
                            cutaway_probability=0.0, overwrite=True, progress=False)
    video = folder / "broadcasts" / "broadcast_000.mp4"
    figures = {}
    for realtime in (False, True):
        report = run_live(LiveOptions(source=str(video), package=package, segment="auto", realtime=realtime),
                          backend=backend, table=False)
        figures["realtime" if realtime else "fast"] = {"frames": report.frames, "dropped": report.dropped,
                                                      "fps": report.frames / max(report.capture_seconds, 1e-9)}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_spotter"))
    parser.add_argument("--sets", default="default:101,fps2997:102,follow_all:103,slow_replays:104",
                        help="NAME:SEED,... (names: " + ", ".join(SETTINGS) + "); \"\" for none")
    parser.add_argument("--broadcasts", type=int, default=2, help="broadcasts per set")
    parser.add_argument("--dives", type=int, default=4, help="dives per broadcast")
    parser.add_argument("--size", default="320x180")
    parser.add_argument("--ingest-1080p", type=float, default=0.0, metavar="SECONDS",
                        help="also measure ingest + spotter on a 1080p50 programme of about this length")
    parser.add_argument("--sensitivity", action="store_true",
                        help="also score every dive with its true boundaries moved (2 frames inwards; the end at the "
                             "true entry + entry_tail_s): the score difference that boundaries alone make")
    parser.add_argument("--tail-sweep", metavar="S,S,...",
                        help="also replay the sets' spotter outputs with each entry_tail_s (s; 0: off): end error "
                             "against how late dive_end is decided")
    args = parser.parse_args(argv)
    items = [item for item in args.sets.split(",") if item]  # --sets "": none (e.g. only --ingest-1080p)
    if not items and (args.tail_sweep or args.sensitivity):
        parser.error("--tail-sweep and --sensitivity measure the sets' dives: name at least one set with --sets")
    width, height = (int(v) for v in args.size.split("x"))
    loaded = load_package(args.package)
    backend = load_backend("onnxruntime", loaded)
    entry_tail_s = float(spotter_segmenter_settings(loaded).get("entry_tail_s", 0.0))
    report: dict = {"package": str(args.package), "sets": {}}
    every: list[dict] = []
    for item in items:
        name, seed = item.split(":")
        folder = args.out / f"{name}_{seed}"
        if not _rendered_in_this_world(folder / "broadcasts" / "broadcast_000.json"):
            generate_broadcasts(folder, args.broadcasts, seed=int(seed), size=(width, height),
                                dives_per_broadcast=args.dives, overwrite=True, progress=False, **SETTINGS[name])
        results = []
        for truth_json in sorted((folder / "broadcasts").glob("broadcast_*.json")):
            n = truth_json.stem.split("_")[-1]
            results.append(evaluate_broadcast(truth_json.with_suffix(".mp4"), truth_json,
                                              truth_json.parent / f"start_list_{n}.csv", args.package, backend,
                                              entry_tail_s, args.out / "sensitivity" if args.sensitivity else None))
        for result in results:
            result["set"] = f"{name}:{seed}"
        every += results
        report["sets"][f"{name}:{seed}"] = summarise(results)
    if every:
        report["all"] = summarise(every)
        report["broadcasts"] = every  # per broadcast and per matched dive (rows): errors, scores, decisions
    report["spotter_ms_per_frame"] = spotter_cost_ms(args.package)
    if args.tail_sweep:
        folders = [args.out / item.replace(":", "_") for item in items]
        report["tail_sweep"] = tail_sweep(args.package, folders, [float(v) for v in args.tail_sweep.split(",")])
    if args.ingest_1080p > 0:
        report["ingest_1080p50"] = ingest_1080p(args.package, args.out, args.ingest_1080p, backend)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    if every:
        keys = list(report["all"])
        print(f"{'set':<22}" + "".join(f"{k[:14]:>15}" for k in keys))
        for name, figures in [*report["sets"].items(), ("all", report["all"])]:
            print(f"{name:<22}" + "".join(f"{figures[k]:>15.3f}" if isinstance(figures[k], float) else
                                          f"{figures[k]:>15}" for k in keys))
    print(f"spotter: {report['spotter_ms_per_frame']:.2f} ms/frame (median, onnxruntime CPU)")
    if "tail_sweep" in report:
        print(f"{'entry_tail_s':>12}{'f1':>7}{'end err median / p95':>22}{'dive_end decided after, s: median':>36}"
              f"{'max':>7}{'> 0.5 s':>9}")
        for r in report["tail_sweep"]:
            print(f"{r['entry_tail_s']:>12.2f}{r['f1']:>7.3f}{r['end_err_median']:>13.1f} / {r['end_err_p95']:<6.1f}"
                  f"{r['end_decided_after_s_median']:>36.2f}{r['end_decided_after_s_max']:>7.2f}"
                  f"{r['decided_later_than_0_5_s']:>6d} of {r['matched']}")
    if "ingest_1080p50" in report:
        print("ingest 1080p50 + spotter:", json.dumps(report["ingest_1080p50"]))
    print(f"report: {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
