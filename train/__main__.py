"""`python -m train --config CFG [--data-root DIR] [--out RUN_DIR] [--gpus N | --nproc N] [key=value ...]`.

--gpus N / --nproc N spawn N workers through torch's elastic launcher (NCCL on GPUs, gloo on CPU);
the same module runs unchanged under `torchrun --nproc-per-node N -m train ...`, multi-node included.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fineparser.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the trainer."""
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="training config YAML (configs/*.yaml)")
    p.add_argument("--data-root", help="dataset root (FineDiving layout or fineparser-synth output; task spotter: "
                                        "annotated broadcasts, docs/spotter.md)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--gpus", type=int, help="spawn N GPU workers (NCCL)")
    group.add_argument("--nproc", type=int, help="spawn N CPU workers (gloo)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="device of each worker (auto: cuda when available)")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly where RUN_DIR/last.pt stopped (without --config: with RUN_DIR/config.yaml)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: go on with settings that differ from the checkpoint's (no longer exact)")
    p.add_argument("--eval-only", type=Path, metavar="CKPT", help="evaluate a checkpoint on the test split")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")
    return p


def spawn(n: int, device: str, argv: list[str]) -> int:
    """Run this module in N workers through torch.distributed.run (torchrun's own launcher)."""
    from torch.distributed.run import parse_args, run

    worker_argv = []
    skip = False
    for arg in argv:  # drop --gpus/--nproc (and their value): workers are single processes
        if skip:
            skip = False
            continue
        if arg in ("--gpus", "--nproc"):
            skip = True
            continue
        if arg.startswith(("--gpus=", "--nproc=")):
            continue
        worker_argv.append(arg)
    launcher = parse_args(["--standalone", f"--nproc-per-node={n}", "--module", "train", *worker_argv,
                           "--device", device])
    try:
        run(launcher)
    except Exception as exc:  # ChildFailedError carries the failing rank's exit code and error file
        failures = getattr(exc, "failures", {})
        code = next((f.exitcode for f in failures.values()), 1) if failures else 1
        print(f"error: a training worker failed (exit code {code}); see its messages above", file=sys.stderr)
        return code if code > 0 else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m train`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    in_launcher = "LOCAL_RANK" in os.environ
    if args.gpus is not None and not in_launcher:
        import torch

        if not torch.cuda.is_available():
            print(f"error: --gpus {args.gpus} asks for GPU workers but no CUDA device is visible "
                  "(torch.cuda.is_available() is False); use --nproc N for CPU workers", file=sys.stderr)
            return 2
        if args.gpus > torch.cuda.device_count():
            print(f"error: --gpus {args.gpus} but only {torch.cuda.device_count()} CUDA device(s) visible",
                  file=sys.stderr)
            return 2
        return spawn(args.gpus, "cuda", argv)
    if args.nproc is not None and not in_launcher:
        if args.nproc < 1:
            print("error: --nproc must be >= 1", file=sys.stderr)
            return 2
        return spawn(args.nproc, "cpu", argv)

    from fineparser.data import DataError
    from train.config import load_config
    from train.trainer import TrainingError, close_logging, setup_logging, train

    rank = int(os.environ.get("RANK", "0"))
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    run_dir = args.out or Path("runs") / (args.config.stem if args.config else "default")
    config = args.config
    if config is None and args.resume and (run_dir / "config.yaml").is_file():
        config = run_dir / "config.yaml"  # the settings the run was started with
    handlers = setup_logging(run_dir, rank == 0)
    try:
        cfg = load_config(config, overrides)
        train(cfg, run_dir, device_kind=args.device, resume=args.resume, eval_only=args.eval_only,
              allow_config_change=args.allow_config_change)
    except (ConfigError, DataError, TrainingError) as exc:
        logging.getLogger("train").error("%s", exc)
        return 2
    finally:
        close_logging(handlers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
