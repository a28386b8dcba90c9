"""`fineparser-export CKPT --out PKG`: a trained checkpoint -> a self-describing model package.

    fineparser-export runs/hm/best.pt --out packages/hm --data-root /data/FineDiving
    fineparser-export best.pth --official --preset full --out packages/paper --data-root /data/FineDiving
    fineparser-export runs/hm/best.pt --out packages/hm --data-root /data/FineDiving --engine
    fineparser-export runs/hm/best.pt --out packages/hm --precision fp16,int8 --engine --dry-run
    fineparser-export runs/hm2/best.pt --out packages/hm2 --spotter-from packages/hm

Exit codes: 0 done; 1 the export failed its parity check or an engine build failed; 2 bad input
(checkpoint, data root, output directory); 3 --engine asked for but TensorRT is not available
(the package itself was written).  --engine --dry-run prints the engine plan and writes nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fineparser import spec
from fineparser.package import (
    BANK_BIN_FILE,
    BANK_NPZ_FILE,
    ENCODER_FILE,
    ENCODER_MASKS_FILE,
    EXEMPLAR_DIM,
    FALLBACK_ORDER,
    MANIFEST_FILE,
    PACKAGE_FORMAT,
    PACKAGE_FORMAT_VERSION,
    PAIR_HEAD_FILE,
    PackageError,
    read_manifest,
    sha256_file,
    write_manifest,
)
from fineparser.preprocess import center_crop_top
from fineparser.scoring import EDGE_AVERAGE_OFFSETS, EDGE_OFFSETS_KEY, EdgeOffsets

log = logging.getLogger("export")

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_PARITY_CLIPS = 3


class ExportError(RuntimeError):
    """An export that cannot go on; `code` is the process exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    """The command line of fineparser-export."""
    from fineparser.config import FineParserConfig

    parser = argparse.ArgumentParser(prog="fineparser-export", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path,
                        help="checkpoint in our format (or the paper's best.pth with --official)")
    parser.add_argument("--out", type=Path, required=True, help="package directory to write (replaced if it is one)")
    parser.add_argument("--official", action="store_true", help="CKPT is the paper's best.pth (module state dicts)")
    parser.add_argument("--preset", default="full", choices=FineParserConfig.preset_names(),
                        help="architecture of an --official checkpoint (default: full, the paper's)")
    parser.add_argument("--data-root", type=Path, help="FineDiving root: bank from its training split, parity "
                        "clips from its test split (without it: no bank, random parity clips)")
    parser.add_argument("--exemplars-per-dive", type=int, metavar="K",
                        help="keep K exemplars per dive number, spread over their scores (default: all)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    parser.add_argument("--no-masks-graph", action="store_true", help="skip encoder_masks.onnx (overlay masks)")
    parser.add_argument("--parity-clips", type=int, default=DEFAULT_PARITY_CLIPS, metavar="N",
                        help=f"query clips of the parity check (default {DEFAULT_PARITY_CLIPS})")
    parser.add_argument("--engine", action="store_true",
                        help="also build TensorRT engines, one per graph and per precision (needs tensorrt + GPU)")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --engine: print the engine plan (files, profiles, flags, cache keys) and stop; "
                             "nothing is exported, calibrated or built")
    parser.add_argument("--precision", default="fp32",
                        help="comma list of fp32,fp16,int8; fp16/int8 are made by fineparser-calibrate after the "
                             "export, on --data-root (default fp32)")
    parser.add_argument("--spotter", type=Path, metavar="SPOTTER_CKPT",
                        help="a spotter checkpoint (python -m train --config configs/spotter_synthetic.yaml): adds "
                             "spotter.onnx, so fineparser-live finds dives itself (--segment auto)")
    parser.add_argument("--spotter-from", type=Path, metavar="PKG",
                        help="copy the spotter of package PKG as it is (graph, precision variants, tuned thresholds, "
                             "holds and start state); default: the spotter of the package that --out replaces, if "
                             "it has one")
    parser.add_argument("--no-spotter", action="store_true",
                        help="export without a spotter, even where the package --out replaces has one")
    parser.add_argument("--add-spotter", action="store_true",
                        help="CKPT is a spotter checkpoint: add its graph to the existing package --out (replacing "
                             "one it has); nothing else is exported")
    parser.add_argument("--edge-average", action="store_true",
                        help="score each dive as the mean over 6 segments with its start moved by -0.08, 0, +0.08 s "
                             "and its end by -0.08, 0 s (manifest scoring.edge_offsets_s): scores move half as much "
                             "with 2-frame boundary errors, for 6 times the scoring work (docs/runtime.md); default: "
                             "each dive once, on its segment as found")
    parser.add_argument("--calib-clips", type=int, default=32, metavar="N",
                        help="calibration clips for fp16/int8 (fineparser-calibrate --clips; default 32)")
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _tool_version() -> str:
    try:
        return metadata.version("fineparser")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _versions(opset: int) -> dict[str, Any]:
    import onnx
    import torch

    versions: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__,
                                "torch": torch.__version__, "onnx": onnx.__version__, "opset": opset}
    versions["fineparser"] = _tool_version()
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def _input_spec() -> dict[str, Any]:
    return {
        "name": "frames", "dtype": "uint8", "shape": [1, spec.NUM_FRAMES, spec.FRAME_SIZE, spec.FRAME_SIZE, 3],
        "layout": "[clip, frame, height, width, channel]", "color": "RGB",
        "frame_sampling": f"{spec.NUM_FRAMES} frames at linspace(first, last, {spec.NUM_FRAMES}) over the dive",
        "resize_hw": list(spec.RESIZE_HW), "resize": "antialiased bilinear (PIL-equivalent), aspect not kept",
        "crop": {"size": spec.FRAME_SIZE, "top": center_crop_top(spec.RESIZE_HW[0]), "left": 0, "mode": "centre"},
        "reference_implementation": "fineparser.preprocess.prepare_frame",
    }


def _normalisation() -> dict[str, Any]:
    return {"in_graph": True, "scale": "1/255", "mean": list(spec.IMAGENET_MEAN), "std": list(spec.IMAGENET_STD),
            "formula": "(x / 255 - mean) / std per RGB channel, then [1,3,96,112,112]"}


def load_source_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The model to export, the manifest's `source` and `training` sections; CheckpointError on a wrong file."""
    from fineparser.checkpoint import import_official, load_model
    from fineparser.config import FineParserConfig

    start = time.perf_counter()
    path = args.checkpoint
    if args.official:
        model = import_official(path, FineParserConfig.from_preset(args.preset))
        kind = "official"
        training = {"status": "not recorded", "reason": "official FineParser checkpoint"}
    else:
        model, data = load_model(path)
        kind = "fineparser-checkpoint"
        training = training_record(data, model.config.voter_number)
    source = {"checkpoint": str(path.resolve()), "sha256": sha256_file(path), "kind": kind}
    log.info("loaded %s checkpoint %s (preset %s, %.1f M parameters, %.1f s)", kind, path, model.config.preset,
             sum(p.numel() for p in model.parameters()) / 1e6, time.perf_counter() - start)
    return model, source, training


def training_record(checkpoint: dict[str, Any], voter_number: int) -> dict[str, Any]:
    """The manifest's `training` section: the metrics the checkpoint was evaluated with, and their voters."""
    trainer = checkpoint.get("trainer") or {}
    metrics = checkpoint.get("metrics")
    if not metrics:
        return {"status": "not evaluated", "reason": "the checkpoint's weights carry no evaluation (best.pt does)",
                "step": trainer.get("step"), "epoch": trainer.get("epoch")}
    # Non-finite values (rho of constant predictions) become null: manifest.json stays strict JSON.
    metrics = {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in metrics.items()}
    # Checkpoints written before voter_number moved into the model config kept it in the trainer's config.
    measured_with = metrics.pop("voter_number", (trainer.get("train_config") or {}).get("voter_number"))
    if measured_with != voter_number:
        log.warning("the checkpoint's metrics were measured with %s voters; the package scores with %d "
                    "(model.voter_number)", measured_with, voter_number)
    return {"status": "evaluated", "metrics": metrics, "voter_number": measured_with,
            "step": trainer.get("step"), "epoch": trainer.get("epoch")}


def _open_index(data_root: Path, voter_number: int) -> Any:
    from fineparser.data import DataError, DataPaths, FineDivingIndex

    try:
        return FineDivingIndex(DataPaths.discover(data_root), voter_number=voter_number)
    except DataError as exc:
        raise ExportError(f"error: --data-root {data_root}: {_one_line(exc)}", 2) from exc


def export_package(model: Any, package_dir: Path, *, source: dict[str, Any], index: Any = None,
                   exemplars_per_dive: int | None = None, opset: int | None = None, with_masks: bool = True,
                   parity_clip_count: int = DEFAULT_PARITY_CLIPS, training: dict[str, Any] | None = None,
                   spotter: Any = None, spotter_from: Path | None = None,
                   edge_offsets: EdgeOffsets | None = None) -> dict[str, Any]:
    """Write every package file and manifest.json into `package_dir`; returns the manifest.

    `spotter` (a Spotter) is exported into the package; `spotter_from` (a package directory) gives the
    spotter of another package instead, copied as it was tuned."""
    from export.audit import audit_files
    from export.bank import build_bank, choose_exemplars, write_bank
    from export.onnx_export import DEFAULT_OPSET, export_encoder, export_pair_head
    from export.parity import format_parity_table, parity_clips, run_parity

    opset = opset or DEFAULT_OPSET
    model = model.eval()
    graphs = {"encoder": {"file": ENCODER_FILE, **export_encoder(model, package_dir / ENCODER_FILE, opset)}}
    if with_masks:
        graphs["encoder_masks"] = {"file": ENCODER_MASKS_FILE, "use": "overlays only",
                                   **export_encoder(model, package_dir / ENCODER_MASKS_FILE, opset, with_masks=True)}
    graphs["pair_head"] = {"file": PAIR_HEAD_FILE, "dynamic_dims": {EXEMPLAR_DIM: "number of exemplars"},
                           **export_pair_head(model, package_dir / PAIR_HEAD_FILE, opset)}
    files = [g["file"] for g in graphs.values()]

    bank = None
    if index is not None:
        bank = build_bank(model, index, choose_exemplars(index, exemplars_per_dive))
        if exemplars_per_dive is not None:
            bank.metadata["exemplars_per_dive"] = exemplars_per_dive
        write_bank(bank, package_dir, BANK_NPZ_FILE, BANK_BIN_FILE)
        files += [BANK_NPZ_FILE, BANK_BIN_FILE]
        bank_section = {"status": "bank", "file": BANK_NPZ_FILE, "binary": BANK_BIN_FILE, **bank.summary()}
    else:
        log.warning("no --data-root: the package has no exemplar bank and cannot score dives until one is built "
                    "(re-export with --data-root DIR)")
        bank_section = {"status": "no bank", "reason": "exported without --data-root",
                        "how_to_add": "fineparser-export CKPT --out PKG --data-root DIR"}

    clips = parity_clips(index, parity_clip_count)
    parity = run_parity(model, {name: package_dir / g["file"] for name, g in graphs.items()}, clips, bank,
                        model.config.voter_number)
    print(format_parity_table(parity), flush=True)

    start = time.perf_counter()
    audit = audit_files({name: (package_dir / g["file"], list(g.get("dynamic_dims", {})))
                         for name, g in graphs.items()})
    log.info("TensorRT-readiness audit %s in %.1f s", "passed" if audit["passed"] else "FAILED",
             time.perf_counter() - start)

    manifest = {
        "format": PACKAGE_FORMAT,
        "format_version": PACKAGE_FORMAT_VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {"config": model.config.to_dict(), "preset": model.config.preset,
                  "parameters": int(sum(p.numel() for p in model.parameters()))},
        "source": source,
        "training": training or {"status": "not recorded"},
        "input": _input_spec(),
        "normalisation": _normalisation(),
        "windows": {"starts": list(spec.WINDOW_STARTS), "length": spec.WINDOW_LENGTH},
        "steps": {"names": list(spec.STEP_NAMES), "weights": list(spec.STEP_WEIGHTS)},
        "graphs": graphs,
        "scoring": {"rule": "score = mean over k of (final_score[k] + delta[k])",
                    "voter_number": model.config.voter_number, "exemplar_choice": "ExemplarBank.select",
                    "fallback_order": list(FALLBACK_ORDER),
                    EDGE_OFFSETS_KEY: (edge_offsets or EdgeOffsets()).to_scoring()},
        "bank": bank_section,
        "parity": parity,
        "audit": audit,
        "variants": [{"name": "fp32", "precision": "fp32",
                      "files": {name: g["file"] for name, g in graphs.items()},
                      "parity": {"score_drift": parity["score_drift"]["max"],
                                 "tolerance": parity["score_drift"]["tolerance"], "passed": parity["passed"],
                                 "report": "manifest['parity']"}}],
        "engines": [],
        "versions": _versions(opset),
    }
    if spotter is not None:
        from export.spotter import export_spotter

        manifest["spotter"] = export_spotter(spotter.eval(), package_dir, opset=opset)
        if not manifest["spotter"]["parity"]["passed"]:
            raise ExportError(f"error: spotter.onnx stepped frame by frame does not reproduce the spotter "
                              f"({manifest['spotter']['parity']}); nothing was written", 1)
        files.append(manifest["spotter"]["file"])
    elif spotter_from is not None:
        from export.spotter import copy_spotter, spotter_files

        manifest["spotter"] = copy_spotter(spotter_from, package_dir)
        files += spotter_files(manifest["spotter"])
    start = time.perf_counter()
    write_manifest(package_dir, manifest, files)
    log.info("saved %s (%d files hashed, %.1f s)", MANIFEST_FILE, len(files), time.perf_counter() - start)
    return read_manifest(package_dir)


def _replace_directory(staging: Path, target: Path) -> None:
    """Move the finished staging directory onto `target` (an older package there is replaced)."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def _check_output(out: Path) -> None:
    if out.exists() and not (out.is_dir() and (out / MANIFEST_FILE).is_file()):
        raise ExportError(f"error: --out {out} exists and is not a model package; choose another directory "
                          "(an existing package there would be replaced)", 2)
    if out.exists():
        try:
            read_manifest(out)
        except PackageError as exc:
            raise ExportError(f"error: --out {out}: {_one_line(exc)}; choose another directory", 2) from exc


def _build_engines(out: Path) -> int:
    from export.tensorrt import run_engine_step

    return run_engine_step(out)


def _engine_dry_run(args: argparse.Namespace, precisions: list[str]) -> int:
    """--engine --dry-run: the engine plan of the package this command would write; nothing is written."""
    from export.engine_plan import format_plan, plan_engines, planned_graphs, prospective_manifest
    from export.tensorrt import current_device
    from fineparser.config import FineParserConfig

    if args.official:
        config = FineParserConfig.from_preset(args.preset)
    else:
        from fineparser.checkpoint import CheckpointError, load_checkpoint

        try:
            config = FineParserConfig.from_dict(load_checkpoint(args.checkpoint)["config"])
        except CheckpointError as exc:
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return 2
    from export.onnx_export import STATIC_TOKENS

    graphs = planned_graphs(config.feature_dim, config.token_dim, STATIC_TOKENS, with_masks=not args.no_masks_graph)
    manifest = prospective_manifest(graphs=graphs, precisions=precisions)
    if args.spotter is None:  # a spotter checkpoint is not exported by a dry run; a kept spotter is planned
        from export.spotter import spotter_of

        try:
            source = _spotter_source(args, args.out)
        except ExportError as exc:
            print(str(exc), file=sys.stderr)
            return exc.code
        if source is not None:
            manifest["spotter"] = spotter_of(source)
    device = current_device()
    print(format_plan(plan_engines(manifest, device=device), package=str(args.out), device=device), flush=True)
    variants = [p for p in precisions if p != "fp32"]
    if variants:
        print(f"{'/'.join(variants)} engines are built only for variants that calibration records (those that "
              "meet their drift goals, or all with --accept-drift)", flush=True)
    print("dry run: nothing was exported, calibrated or built", flush=True)
    return 0


def _spotter_source(args: argparse.Namespace, out: Path) -> Path | None:
    """The package whose spotter the new one keeps: --spotter-from, else the package --out replaces if it has one.

    Checked before anything is exported, so a bad source costs no export."""
    from export.spotter import spotter_of

    source = args.spotter_from
    if source is None:
        if args.no_spotter or not (out / MANIFEST_FILE).is_file():
            return None
        try:
            if "spotter" not in read_manifest(out):
                return None
        except PackageError:  # not a package the export would replace: it says so itself
            return None
        source = out
    try:
        spotter_of(source)
    except PackageError as exc:
        if source == args.spotter_from:
            raise ExportError(f"error: --spotter-from {source}: {_one_line(exc)}", 2) from exc
        raise ExportError(f"error: the package --out replaces has a spotter that cannot be kept ({_one_line(exc)}); "
                          "give --no-spotter to export without it", 2) from exc
    return source


def _add_spotter(checkpoint: Path, package: Path) -> int:
    """fineparser-export SPOTTER_CKPT --add-spotter --out PKG."""
    from export.spotter import add_spotter
    from fineparser.checkpoint import CheckpointError
    from fineparser.package import PackageError
    from fineparser.spotter import load_spotter

    start = time.perf_counter()
    try:
        model, _ = load_spotter(checkpoint)
        add_spotter(package, model)
    except (CheckpointError, PackageError, RuntimeError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    log.info("added the spotter of %s to %s (%.1f s)", checkpoint, package, time.perf_counter() - start)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run fineparser-export; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.add_spotter:
        return _add_spotter(args.checkpoint, args.out)
    given = [name for name, value in (("--spotter", args.spotter), ("--spotter-from", args.spotter_from),
                                      ("--no-spotter", args.no_spotter)) if value]
    if len(given) > 1:
        print(f"error: {' and '.join(given)} each say where the package's spotter comes from: give one",
              file=sys.stderr)
        return 2
    precisions = [p.strip().lower() for p in args.precision.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        print(f"error: --precision {args.precision}: unknown {', '.join(unknown)} (known: {', '.join(PRECISIONS)})",
              file=sys.stderr)
        return 2
    variants = [p for p in dict.fromkeys(precisions) if p != "fp32"]
    if args.dry_run and not args.engine:
        print("error: --dry-run prints the TensorRT engine plan: give it with --engine", file=sys.stderr)
        return 2
    if args.dry_run:
        return _engine_dry_run(args, ["fp32", *variants])
    if variants and args.data_root is None:
        print(f"error: --precision {args.precision}: fp16/int8 are calibrated on clips of --data-root DIR; "
              "give it, or export fp32 and run `fineparser-calibrate PKG --data-root DIR` later", file=sys.stderr)
        return 2
    for option, value in (("--exemplars-per-dive", args.exemplars_per_dive), ("--parity-clips", args.parity_clips),
                          ("--calib-clips", args.calib_clips)):
        if value is not None and value < 1:
            print(f"error: {option} must be >= 1, got {value}", file=sys.stderr)
            return 2
    out: Path = args.out
    start = time.perf_counter()
    staging: Path | None = None
    try:
        _check_output(out)
        log.info("fineparser-export %s: %s -> %s", _tool_version(), args.checkpoint, out)
        from fineparser.checkpoint import CheckpointError

        try:
            model, source, training = load_source_model(args)
        except CheckpointError as exc:
            raise ExportError(f"error: {_one_line(exc)}", 2) from exc
        index = _open_index(args.data_root, model.config.voter_number) if args.data_root else None
        spotter = None
        if args.spotter is not None:
            from fineparser.spotter import load_spotter

            try:
                spotter, _ = load_spotter(args.spotter)
            except CheckpointError as exc:
                raise ExportError(f"error: {_one_line(exc)}", 2) from exc
        spotter_from = _spotter_source(args, out) if spotter is None else None
        out.parent.mkdir(parents=True, exist_ok=True)
        # Everything is written next to the target and renamed into place at the end: a crash
        # leaves no half-written package behind.
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the package from other users of the box
        manifest = export_package(model, staging, source=source, index=index,
                                  exemplars_per_dive=args.exemplars_per_dive, opset=args.opset,
                                  with_masks=not args.no_masks_graph, parity_clip_count=args.parity_clips,
                                  training=training, spotter=spotter, spotter_from=spotter_from,
                                  edge_offsets=EDGE_AVERAGE_OFFSETS if args.edge_average else EdgeOffsets())
        drift = manifest["parity"]["score_drift"]
        if not manifest["parity"]["passed"]:
            raise ExportError(f"error: fp32 score drift {drift['max']:.2e} exceeds {drift['tolerance']:.0e} "
                              "(parity table above): the ONNX graphs do not reproduce the model; "
                              f"nothing was written to {out}", 1)
        _replace_directory(staging, out)
        staging = None
    except ExportError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("package ready: %s (%.1f s)", out, time.perf_counter() - start)
    if variants:
        from calibration.cli import main as calibrate

        log.info("calibrating %s: fineparser-calibrate %s --data-root %s", ",".join(variants), out, args.data_root)
        code = calibrate([str(out), "--data-root", str(args.data_root), "--precision", ",".join(variants),
                          "--clips", str(args.calib_clips)])
        if code != 0:
            log.error("calibration ended with exit %d; the fp32 package in %s is complete", code, out)
            return code
    if args.engine:
        return _build_engines(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
