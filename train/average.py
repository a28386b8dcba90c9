"""`python -m train.average RUN [--last N | --steps S,S,...] [--out FILE]`: the mean of a run's evaluated weights.

A run trained with ``keep_evaluated: true`` keeps ``eval-<step>.pt`` at every evaluation (docs/train.md). This
writes one checkpoint whose weights are the element-wise mean of the last N of them (or of the steps named), as
stochastic weight averaging does with the weights of a run's last epochs (Izmailov et al., 2018): the points a
run passes through near its end differ most in what they learnt by chance, and their mean keeps what they
share. Floating-point tensors are averaged (BatchNorm running statistics too); integer ones (BatchNorm's batch
counter) are the newest's. Any task (FineParser or spotter): the checkpoint keeps the newest's format and model
config, so ``fineparser-export`` and ``python -m train --eval-only`` take it as they take best.pt.

The checkpoints must come from one run: the same format and model config and the same tensors; anything else is
one error line naming the file. The result is written atomically, and records what it averages
(``averaged_from``: steps and files). It carries no metrics until evaluated.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

from fineparser.checkpoint import CheckpointError, _torch_load, atomic_torch_save

log = logging.getLogger("train.average")

EVAL_FILE = re.compile(r"^eval-(\d+)\.pt$")
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
    last = last or 3
    if last < 1 or last > len(found):
        raise AverageError(f"--last {last}: {run_dir} has {len(found)} evaluated checkpoint(s) (steps "
                           f"{', '.join(map(str, found))})")
    return dict(list(found.items())[-last:])


def average(paths: dict[int, Path]) -> dict[str, Any]:
    """The averaged checkpoint (a dict like the newest one's, its `model` the mean) of `paths` (step -> file)."""
    loaded = {}
    for step, path in paths.items():
        try:
            loaded[step] = _torch_load(path)
        except CheckpointError as exc:
            raise AverageError(str(exc)) from None
        if not isinstance(loaded[step], dict) or not isinstance(loaded[step].get("model"), dict):
            raise AverageError(f"{path} is not a checkpoint of this toolkit (no model weights)")
    newest_step = max(loaded)
    newest, newest_path = loaded[newest_step], paths[newest_step]
    for step, data in loaded.items():
        for key in ("format", *CONFIG_KEYS):
            if data.get(key) != newest.get(key):
                raise AverageError(f"{paths[step]}: its {key} differs from {newest_path}'s: only checkpoints of one "
                                   "run (one model) can be averaged")
        shapes = {k: tuple(v.shape) for k, v in data["model"].items()}
        expected = {k: tuple(v.shape) for k, v in newest["model"].items()}
        if shapes != expected:
            differ = sorted(set(shapes) ^ set(expected)) or sorted(k for k in shapes if shapes[k] != expected[k])
            raise AverageError(f"{paths[step]}: its tensors differ from {newest_path}'s ({', '.join(differ[:4])}): "
                               "only checkpoints of one model can be averaged")
    weights = {}
    for name, tensor in newest["model"].items():
        if tensor.is_floating_point():
            total = sum(data["model"][name].double() for data in loaded.values())
            weights[name] = (total / len(loaded)).to(tensor.dtype)
        else:
            weights[name] = tensor.clone()
    trainer = newest.get("trainer") or {}
    out = {k: v for k, v in newest.items() if k not in ("model", "trainer", "metrics")}
    # No optimizer state: an averaged checkpoint is for export and evaluation, not for --resume.
    out["trainer"] = {k: trainer[k] for k in ("train_config", "step", "epoch") if k in trainer}
    out["model"] = weights
    out["metrics"] = {}
    out["averaged_from"] = {"steps": list(loaded), "files": [paths[s].name for s in loaded]}
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
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()] if args.steps else None
    except ValueError:
        print(f"error: --steps {args.steps!r} is not a comma-separated list of steps", file=sys.stderr)
        return 2
    out = args.out or args.run / "averaged.pt"
    try:
        chosen = choose(evaluated_checkpoints(args.run), args.run, args.last, steps)
        payload = average(chosen)
    except AverageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    atomic_torch_save(payload, out)
    log.info("wrote %s: the mean of the weights of steps %s (%s); evaluate it with `python -m train --config "
             "%s --eval-only %s`", out, ", ".join(map(str, chosen)), ", ".join(p.name for p in chosen.values()),
             args.run / "config.yaml", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
