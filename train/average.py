"""`python -m train.average RUN [--last N | --steps S,S,...] [--out FILE]`: the mean of a run's evaluated weights.

A run trained with ``keep_evaluated: true`` keeps ``eval-<step>.pt`` at every evaluation (docs/train.md). This
writes one checkpoint whose weights are the element-wise mean of the last N of them (or of the steps named), as
stochastic weight averaging does with the weights of a run's last epochs (Izmailov et al., 2018): the points a run
passes through near its end differ most in what they learnt by chance, and their mean keeps what they share.
Floating-point tensors are averaged, BatchNorm's running statistics too (SWA proper recomputes them with a pass
over the training data; the mean of the running statistics is what this measures, docs/spotter.md); integer ones
(BatchNorm's batch counter) are the newest's. Any task (FineParser or spotter): the checkpoint keeps the newest's
format and model config, so ``fineparser-export`` and ``python -m train --eval-only`` take it as they take best.pt.

The checkpoints must come from one run: the same format, model config and tensors, and the same training settings
(``train.config.config_changes``, the rule ``--resume`` checks with; where the data is and what is logged may
differ); anything else is one error line naming the file. The result is written atomically, and records what it
averages (``averaged_from``: steps and files). It carries no metrics until evaluated.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

from fineparser.checkpoint import CheckpointError, _torch_load, atomic_torch_save
from train.config import config_changes
from train.trainer import EVALUATED_CHECKPOINT

log = logging.getLogger("train.average")

EVAL_FILE = re.compile("^" + re.escape(EVALUATED_CHECKPOINT).replace(re.escape("{step}"), r"(\d+)") + "$")
CONFIG_KEYS = ("config", "spotter_config")
"""Where a checkpoint keeps its model config (FineParser, spotter): the averaged ones must agree on it."""


class AverageError(ValueError):
    """Checkpoints that cannot be averaged; the message names the file and what to do."""


def evaluated_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """step -> ``eval-<step>.pt`` of a run directory, in step order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AverageError(f"{run_dir}: no such run directory")
    found = {int(m.group(1)): p for p in run_dir.iterdir() if (m := EVAL_FILE.match(p.name))}
    return dict(sorted(found.items()))


def choose(found: dict[int, Path], run_dir: Path, last: int | None, steps: list[int] | None) -> dict[int, Path]:
    """The checkpoints to average: the last `last` evaluations, or the `steps` named."""
    if not found:
        raise AverageError(f"{run_dir} has no eval-<step>.pt: train with keep_evaluated=true (docs/train.md), which "
                           "keeps the weights of every evaluation")
    if steps:
        missing = [s for s in steps if s not in found]
        if missing:
            raise AverageError(f"{run_dir} has no eval-<step>.pt for step(s) {', '.join(map(str, missing))}; it has "
                               f"{', '.join(map(str, found))}")
        return {s: found[s] for s in sorted(set(steps))}
    last = 3 if last is None else last
    if last < 1 or last > len(found):
        raise AverageError(f"--last {last}: {run_dir} has {len(found)} evaluated checkpoint(s) (steps "
                           f"{', '.join(map(str, found))})")
    return dict(list(found.items())[-last:])


def _load(path: Path) -> dict[str, Any]:
    try:
        data = _torch_load(path)
    except CheckpointError as exc:
        raise AverageError(str(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise AverageError(f"{path} is not a checkpoint of this toolkit (no model weights)")
    return data


def _check_same_run(data: dict[str, Any], path: Path, newest: dict[str, Any], newest_path: Path) -> None:
    for key in ("format", "format_version", *CONFIG_KEYS):
        if data.get(key) != newest.get(key):
            raise AverageError(f"{path}: its {key} differs from {newest_path}'s: only checkpoints of one run (one "
                               "model) can be averaged")
    changes = config_changes((data.get("trainer") or {}).get("train_config") or {},
                             (newest.get("trainer") or {}).get("train_config") or {})
    if changes:
        listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in changes[:4])
        raise AverageError(f"{path} was trained with other settings than {newest_path} ({listed}): only evaluations "
                           "of one run can be averaged (an old run's eval-<step>.pt left in the folder?)")
    shapes = {k: tuple(v.shape) for k, v in data["model"].items()}
    expected = {k: tuple(v.shape) for k, v in newest["model"].items()}
    if shapes != expected:
        differ = sorted(set(shapes) ^ set(expected)) or sorted(k for k in shapes if shapes[k] != expected[k])
        raise AverageError(f"{path}: its tensors differ from {newest_path}'s ({', '.join(differ[:4])}): only "
                           "checkpoints of one model can be averaged")


def average(paths: dict[int, Path]) -> dict[str, Any]:
    """The averaged checkpoint (a dict like the newest one's, its `model` the mean) of `paths` (step -> file).

    One checkpoint is held at a time besides the newest and the running sums."""
    newest_step = max(paths)
    newest_path = paths[newest_step]
    newest = _load(newest_path)
    sums = {k: v.double().clone() for k, v in newest["model"].items() if v.is_floating_point()}
    for step, path in paths.items():
        if step == newest_step:
            continue
        data = _load(path)
        _check_same_run(data, path, newest, newest_path)
        for name in sums:
            sums[name] += data["model"][name].double()
        del data
    weights = {name: (sums[name] / len(paths)).to(tensor.dtype) if name in sums else tensor.clone()
               for name, tensor in newest["model"].items()}
    trainer = newest.get("trainer") or {}
    out = {k: v for k, v in newest.items() if k not in ("model", "trainer", "metrics")}
    # No optimizer state: an averaged checkpoint is for export and evaluation, not for --resume.
    out["trainer"] = {k: trainer[k] for k in ("train_config", "step", "epoch") if k in trainer}
    out["model"] = weights
    out["metrics"] = {}
    out["averaged_from"] = {"steps": sorted(paths), "files": [paths[s].name for s in sorted(paths)]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.average", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run directory with eval-<step>.pt (keep_evaluated: true)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--last", type=int, help="average the last N evaluations (default 3)")
    group.add_argument("--steps", help="average these steps' eval-<step>.pt, e.g. 1280,1536,1792")
    parser.add_argument("--out", type=Path, help="output checkpoint (default: RUN/averaged.pt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    steps = None
    if args.steps is not None:
        try:
            steps = [int(s) for s in args.steps.split(",") if s.strip()]
        except ValueError:
            steps = []
        if not steps:
            print(f"error: --steps {args.steps!r} is not a comma-separated list of steps", file=sys.stderr)
            return 2
    out = args.out or args.run / "averaged.pt"
    try:
        chosen = choose(evaluated_checkpoints(args.run), args.run, args.last, steps)
        payload = average(chosen)
    except AverageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        atomic_torch_save(payload, out)
    except OSError as exc:
        print(f"error: cannot write {out} ({exc.strerror or exc}): choose another --out", file=sys.stderr)
        return 2
    log.info("wrote %s: the mean of the weights of steps %s (%s); evaluate it with `python -m train --config "
             "%s --eval-only %s --out DIR`", out, ", ".join(map(str, chosen)),
             ", ".join(p.name for p in chosen.values()), args.run / "config.yaml", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
