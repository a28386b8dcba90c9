"""fineparser-calibrate PKG --data-root DIR: add FP16 and INT8 variants to a model package.

    fineparser-calibrate demo/package --data-root data/synth [--precision fp16,int8]
        [--method entropy|percentile|max] [--clips 32] [--eval-clips 0] [--cache-dir DIR] [--engine]
    fineparser-calibrate demo/package --engine [--dry-run]    # TensorRT engines of the variants present
    fineparser-calibrate demo/package --segmenter --data-root BROADCASTS    # tune --segment auto's decisions
    fineparser-calibrate demo/package --spotter --data-root BROADCASTS [--precision fp16,int8]   # spotter variants

Exit status: 0 every variant met its goals and was recorded (and its engines built); 1 a variant
missed its goals (not recorded unless --accept-drift) or an engine build failed; 2 bad arguments,
package or data root; 3 NVIDIA ModelOpt missing, or TensorRT / a GPU missing for --engine.
The recommended precision (the most compressed variant that met its goals) is recorded in the
manifest for the runtime's ``--precision auto``.  Engines are built by export's public
``export.tensorrt.run_engine_step`` (one per graph and per precision present).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("fineparser.calibrate")

PRECISIONS = ("fp16", "int8")
DEFAULT_CLIPS = 32


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    from calibration.variants import METHODS

    parser = argparse.ArgumentParser(prog="fineparser-calibrate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path, help="model package directory written by fineparser-export")
    parser.add_argument("--data-root", type=Path,
                        help="FineDiving-layout data root: train split calibrates, test split measures drift "
                             "(required unless --engine only builds engines for the variants present)")
    parser.add_argument("--precision", default="fp16,int8", help="variants to make (default: fp16,int8)")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="INT8 activation ranges (default: max)")
    parser.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default: 99.99)")
    parser.add_argument("--clips", type=int, default=DEFAULT_CLIPS,
                        help="calibration clips from the train split, spread over dive numbers "
                             f"(default: {DEFAULT_CLIPS})")
    parser.add_argument("--eval-clips", type=int, default=0,
                        help="held-out clips from the test split for the drift report (default 0: all)")
    parser.add_argument("--int8-high-precision", choices=("fp16", "fp32"), default="fp32",
                        help="precision of what INT8 leaves unquantized (default: fp32; fp16 is faster on TensorRT "
                             "but drifted 1.1 points on the demo model)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where prepared clips are cached as .npy (default: ~/.cache/fineparser/calibration)")
    parser.add_argument("--no-cache", action="store_true", help="prepare clips without reading or writing the cache")
    parser.add_argument("--accept-drift", action="store_true",
                        help="record a variant even when it misses its drift goals (the manifest says so)")
    parser.add_argument("--engine", action="store_true",
                        help="then build TensorRT engines, one per graph and per precision present (needs tensorrt "
                             "+ GPU); without --data-root, only that")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --engine: print the engine plan and stop (nothing calibrated or built)")
    parser.add_argument("--spotter", action="store_true",
                        help="instead: FP16/INT8 variants of the package's spotter, calibrated and measured on the "
                             "annotated broadcasts under --data-root (not those the spotter trained on)")
    parser.add_argument("--segmenter", action="store_true",
                        help="instead: tune the spotter's thresholds and the auto segmenter's holds on the annotated "
                             "broadcasts under --data-root (not those the spotter trained on) and record them")
    parser.add_argument("--max-end-delay", type=float, default=None, metavar="SECONDS",
                        help="with --segmenter: a latency budget; a tuning dive whose dive_end is decided more "
                             "than this many stream seconds after its true end costs as much as a missed dive "
                             "(default: none)")
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _pair_head_npz(path: Path, reference: dict[str, np.ndarray], bank: Any, dive_number: str, k: int) -> None:
    from fineparser.scoring import pair_feeds, select_exemplars

    indices, _ = select_exemplars(bank, dive_number, k)
    np.savez(path, **pair_feeds(reference, bank.pair_head_inputs(indices)))


def _fp32_outputs(encoder: Path, frames: np.ndarray) -> dict[str, np.ndarray]:
    from fineparser.onnx_session import CPU_PROVIDERS, onnx_session
    from fineparser.package import ENCODER_INPUT, ENCODER_OUTPUTS

    session = onnx_session(encoder, providers=CPU_PROVIDERS)
    return dict(zip(ENCODER_OUTPUTS, session.run(list(ENCODER_OUTPUTS), {ENCODER_INPUT: frames[None]})))


def make_variant(precision: str, args: argparse.Namespace, package: Any, work: Path, calib: list, held_out: list,
                 reference: Any, bank: Any, voter_number: int,
                 guess: Any = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write one variant's graphs into `work` and measure them; returns (manifest record, files)."""
    from calibration.drift import drift_report, run_variant
    from calibration.variants import FP32_OP_TYPES, make_fp16, make_int8
    from fineparser.package import ENCODER_INPUT
    from fineparser.precision import VARIANT_FILES

    start = time.perf_counter()
    frames = np.stack([c.frames for c in calib])
    if precision == "int8":
        encoder = work / VARIANT_FILES["int8"]["encoder"]
        log.info("int8: ModelOpt PTQ of %s on %d clips (%s)", package.encoder_path.name, len(calib), args.method)
        info = {"encoder": make_int8(package.encoder_path, encoder, {ENCODER_INPUT: frames}, method=args.method,
                                     percentile=args.percentile, high_precision=args.int8_high_precision),
                "pair_head": {"precision": "fp32", "why": "0.1% of the compute; kept exact"}}
        files = {"encoder": encoder}
        pair_head = package.pair_head_path
        report = drift_report("int8", reference,
                              run_variant(encoder, pair_head, held_out, bank, voter_number, "int8 drift"), held_out,
                              guess)
    else:
        calib_npz, pair_npz = work / "encoder_calib.npz", work / "pair_head_calib.npz"
        np.savez(calib_npz, **{ENCODER_INPUT: frames[:1]})
        # K=1: ModelOpt's reference runner slices every input by the first one's batch.
        _pair_head_npz(pair_npz, _fp32_outputs(package.encoder_path, frames[0]), bank, calib[0].dive_number, 1)
        encoder, pair_head = work / VARIANT_FILES["fp16"]["encoder"], work / VARIANT_FILES["fp16"]["pair_head"]
        report = info = None
        for attempt, fp32_ops in enumerate(((), FP32_OP_TYPES)):
            log.info("fp16: ModelOpt AutoCast of encoder and pair head%s",
                     "" if not fp32_ops else f", keeping {len(fp32_ops)} op types in fp32 (second attempt)")
            info = {"encoder": make_fp16(package.encoder_path, encoder, calib_npz, fp32_op_types=fp32_ops),
                    "pair_head": make_fp16(package.pair_head_path, pair_head, pair_npz, fp32_op_types=fp32_ops)}
            report = drift_report("fp16", reference,
                                  run_variant(encoder, pair_head, held_out, bank, voter_number, "fp16 drift"),
                                  held_out, guess)
            if report.passed or attempt == 1:
                break
            log.warning("fp16 attempt 1 missed its goals (%s): retrying with norms and softmax in fp32",
                        "; ".join(report.failures))
        files = {"encoder": encoder, "pair_head": pair_head}
    record = {"name": precision, "precision": precision,
              "files": {"encoder": files["encoder"].name, "pair_head": files.get("pair_head", pair_head).name},
              "how": info, "drift": report.to_dict(), "accepted_with_drift": not report.passed,
              "seconds": round(time.perf_counter() - start, 1)}
    return record, files


def run(args: argparse.Namespace) -> int:
    from calibration.clips import default_cache_dir, load_clips, spread_keys
    from calibration.drift import format_report, run_variant
    from calibration.variants import CalibrationError, modelopt_version
    from fineparser.data import DataError, DataPaths, FineDivingIndex
    from fineparser.metrics import ConstantTransitionGuess
    from fineparser.package import PackageError, add_variant, load_package
    from fineparser.spec import target_transitions

    if args.segmenter:
        return _segmenter(args)
    if args.max_end_delay is not None:
        raise CliError("error: --max-end-delay is a budget of --segmenter's tuning; add --segmenter", 2)
    precisions = [p.strip().lower() for p in args.precision.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise CliError(f"error: --precision {args.precision}: unknown {', '.join(unknown) or '(none given)'} "
                       f"(known: {', '.join(PRECISIONS)})", 2)
    if args.spotter:
        return _spotter(args, precisions)
    from calibration.variants import INT8_DEFAULT_METHOD

    args.method = args.method or INT8_DEFAULT_METHOD
    if args.dry_run and not args.engine:
        raise CliError("error: --dry-run prints the TensorRT engine plan: give it with --engine", 2)
    if args.data_root is None and not args.engine:
        raise CliError("error: --data-root DIR is required to calibrate (or give --engine alone to build TensorRT "
                       "engines for the variants the package has)", 2)
    if args.data_root is None or args.dry_run:
        return _engines(args, pending=precisions if args.data_root is not None else ())
    if args.clips < 1:
        raise CliError(f"error: --clips must be >= 1, got {args.clips}", 2)
    if not 0 < args.percentile <= 100:
        raise CliError(f"error: --percentile must be in (0, 100], got {args.percentile}", 2)
    try:
        version = modelopt_version()
    except CalibrationError as exc:
        raise CliError(f"error: {_one_line(exc)}", 3) from exc
    try:
        package = load_package(args.package, verify=True)
        bank = package.bank()
    except PackageError as exc:
        raise CliError(f"error: {_one_line(exc)}", 2) from exc
    voter_number = int(package.manifest.get("scoring", {}).get("voter_number", 10))
    try:
        index = FineDivingIndex(DataPaths.discover(args.data_root), voter_number=voter_number)
    except DataError as exc:
        raise CliError(f"error: --data-root {args.data_root}: {_one_line(exc)}", 2) from exc
    if not index.train_keys or not index.test_keys:
        raise CliError(f"error: --data-root {args.data_root}: calibration needs clips in both the train split "
                       f"({len(index.train_keys)}) and the test split ({len(index.test_keys)})", 2)
    log.info("fineparser-calibrate: %s with ModelOpt %s, data %s", package.root, version, args.data_root)
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    try:
        calib, hits = load_clips(index, spread_keys(index, index.train_keys, args.clips), cache, "calibration clips")
        log.info("%d calibration clips from the train split (%d from the cache %s)", len(calib), hits, cache)
        held_out, hits = load_clips(index, spread_keys(index, index.test_keys, args.eval_clips), cache,
                                    "held-out clips")
        log.info("%d held-out clips from the test split (%d from the cache)", len(held_out), hits)
        guess = ConstantTransitionGuess.fit([target_transitions(index.test_transitions(k)) for k in index.train_keys])
    except DataError as exc:
        raise CliError(f"error: {_one_line(exc)}", 2) from exc
    start = time.perf_counter()
    reference = run_variant(package.encoder_path, package.pair_head_path, held_out, bank, voter_number, "fp32")
    log.info("fp32 reference scored %d clips in %.1f s", len(held_out), time.perf_counter() - start)

    reports, failed = [], []
    for precision in precisions:
        # Variants are written in a work directory beside the package and renamed in only when kept.
        with tempfile.TemporaryDirectory(prefix=f".calibrate-{precision}-", dir=package.root) as tmp:
            try:
                record, files = make_variant(precision, args, package, Path(tmp), calib, held_out, reference, bank,
                                             voter_number, guess)
            except CalibrationError as exc:
                log.error("%s: %s", precision, _one_line(exc))
                failed.append(precision)
                continue
            drift = record["drift"]
            reports.append(_as_report(drift))
            if not drift["passed"] and not args.accept_drift:
                log.error("%s missed its goals (%s): not recorded; try --method max/percentile, more --clips, "
                          "or --accept-drift", precision, "; ".join(drift["failures"]))
                failed.append(precision)
                continue
            for path in files.values():
                os.replace(path, package.root / path.name)
            add_variant(package.root, record, [p.name for p in files.values()])
            for path in files.values():
                size = (package.root / path.name).stat().st_size / 1e6
                log.info("wrote %s (%.2f MB)", package.root / path.name, size)
            log.info("%s recorded in %s (%.1f s)", precision, package.root / "manifest.json", record["seconds"])
    if reports:
        print(format_report(reports))
    if len(failed) < len(precisions):
        _record_recommendation(package.root)
    code = 1 if failed else 0
    if args.engine:
        engine_code = _engines(args)
        code = code or engine_code
    return code


def _record_recommendation(root: Path) -> None:
    """Write the manifest's recommended precision (the most compressed variant that met its goals)."""
    from fineparser.package import read_manifest, write_manifest
    from fineparser.precision import RECOMMENDED_KEY, recommendation

    manifest = read_manifest(root)
    manifest[RECOMMENDED_KEY] = recommendation(manifest)
    write_manifest(root, manifest)
    log.info("recommended precision: %s (%s; met: %s)", manifest[RECOMMENDED_KEY]["precision"],
             manifest[RECOMMENDED_KEY]["rule"], ", ".join(manifest[RECOMMENDED_KEY]["met_goals"]))


def _engines(args: argparse.Namespace, pending: Any = ()) -> int:
    """The --engine step (export's public run_engine_step): plan, print, build unless --dry-run."""
    from export.tensorrt import run_engine_step

    return run_engine_step(args.package, dry_run=args.dry_run, pending=list(pending))


def _as_report(drift: dict[str, Any]) -> Any:
    from calibration.drift import DriftReport

    return DriftReport(**drift)


def _broadcasts_error(args: argparse.Namespace, flag: str) -> None:
    if args.data_root is None:
        raise CliError(f"error: {flag} needs --data-root: a folder of annotated broadcasts the spotter did not "
                       "train on (fineparser-synth --broadcasts N with a new --seed writes some)", 2)


def _spotter(args: argparse.Namespace, precisions: list[str]) -> int:
    """--spotter: FP16/INT8 variants of the package's spotter (calibration/spotter_variants.py)."""
    from calibration.spotter_variants import format_records
    from calibration.spotter_variants import run as spotter_variants
    from calibration.variants import CalibrationError, modelopt_version
    from fineparser.package import PackageError
    from fineparser.spotter_runner import SpotterError
    from train.spotter_data import SpotterDataError

    _broadcasts_error(args, "--spotter")
    try:
        modelopt_version()
    except CalibrationError as exc:
        raise CliError(f"error: {_one_line(exc)}", 3) from exc
    try:
        records = spotter_variants(args.package, args.data_root, precisions, method=args.method,
                                   accept_drift=args.accept_drift)
    except (PackageError, SpotterError, SpotterDataError, CalibrationError) as exc:
        raise CliError(f"error: {_one_line(exc)}", 2) from exc
    print(format_records(records))
    return 0 if all(r["drift"]["passed"] for r in records.values()) else 1


def _segmenter(args: argparse.Namespace) -> int:
    """--segmenter: tune and record the auto segmenter's settings (calibration/segmenter.py)."""
    from calibration.segmenter import format_record
    from calibration.segmenter import run as tune_segmenter
    from fineparser.package import PackageError
    from fineparser.spotter_runner import SpotterError
    from train.spotter_data import SpotterDataError

    _broadcasts_error(args, "--segmenter")
    if args.max_end_delay is not None and not args.max_end_delay >= 0:
        raise CliError(f"error: --max-end-delay {args.max_end_delay:g} must be a number of seconds >= 0", 2)
    try:
        record = tune_segmenter(args.package, args.data_root, max_end_delay_s=args.max_end_delay)
    except (PackageError, SpotterError, SpotterDataError) as exc:
        raise CliError(f"error: {_one_line(exc)}", 2) from exc
    print(format_record(record))
    log.info("recorded the tuned settings in %s/manifest.json (spotter.spec.thresholds, spotter.segmenter)",
             args.package)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run fineparser-calibrate; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    start = time.perf_counter()
    try:
        code = run(args)
    except CliError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    log.info("fineparser-calibrate done in %.1f s (exit %d)", time.perf_counter() - start, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
