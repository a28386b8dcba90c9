"""Where the INT8 encoder's error comes from: per-group sensitivity, then the cheapest exclusion that meets the goals.

    python bench/int8_sensitivity.py PKG --data-root DATA [--clips 32] [--eval-clips 32] [--out runs/int8_sens]

The encoder's quantizable nodes (Conv, MatMul, Gemm) are grouped by the first three parts of their ONNX
name (``/base_model/backbone/mixed_4b``, ``/segmenter/mixed_3c``, ...; the temporal parser's head
``/psnet_model`` is always excluded, as by default).  For each group, an INT8 encoder quantizes **that
group only** (ModelOpt PTQ, ``--method`` ranges, default max; the rest fp32) and is scored on held-out
clips beside fp32 (``calibration.drift``): the error each group brings alone.  Then groups are left in
fp32 from the most harmful down, one more each step, until the issue's goals hold (rho vs fp32 >=
0.995, mean |delta| <= 0.25, max |delta| <= 3 points, transition agreement >= 0.97), and the share
of the encoder's multiply-adds that stays INT8 is printed beside each step.  Numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration.clips import default_cache_dir, load_clips, spread_keys  # noqa: E402
from calibration.drift import run_variant  # noqa: E402
from calibration.variants import INT8_DEFAULT_METHOD, make_int8, node_macs  # noqa: E402
from fineparser.data import DataPaths, FineDivingIndex  # noqa: E402
from fineparser.metrics import spearman_rho  # noqa: E402
from fineparser.package import ENCODER_INPUT, load_package  # noqa: E402

GOALS = {"rho_vs_fp32": 0.995, "mean_abs_delta": 0.25, "max_abs_delta": 3.0, "transition_agreement": 0.97}
INT8_EXCLUDE = ("/psnet_model/.*",)
"""Left in fp32 in every run here: the temporal parser's head (the study starts from the old default)."""


def group_of(name: str) -> str:
    """A node's block: its name up to the first I3D/U-Net block part (mixed_4b, conv3d_2c_3x3, down5...)."""
    parts = name.split("/")
    for i, part in enumerate(parts):
        if re.match(r"(mixed_|conv3d_|conv\d|layer\d|inc\d|down\d|up\d)", part):
            return "/".join(parts[:i + 1])
    return "/".join(parts[:3])


def drift(reference, run) -> dict[str, float]:
    delta = np.abs(run.scores - reference.scores)
    return {"rho_vs_fp32": float(spearman_rho(run.scores, reference.scores)), "mean_abs_delta": float(delta.mean()),
            "max_abs_delta": float(delta.max()),
            "transition_agreement": float(np.mean(run.transitions == reference.transitions))}


def meets(figures: dict[str, float]) -> bool:
    return all(figures[k] >= v if k in ("rho_vs_fp32", "transition_agreement") else figures[k] <= v
               for k, v in GOALS.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--clips", type=int, default=32, help="calibration clips (train split)")
    parser.add_argument("--eval-clips", type=int, default=32, help="held-out clips (test split)")
    parser.add_argument("--method", default=INT8_DEFAULT_METHOD)
    parser.add_argument("--min-share", type=float, default=0.02,
                        help="blocks with less of the encoder's MACs are grouped per network (default 0.02)")
    parser.add_argument("--max-steps", type=int, default=8, help="groups left in fp32 at most in the greedy pass")
    parser.add_argument("--out", type=Path, default=Path("runs/int8_sensitivity"))
    args = parser.parse_args(argv)
    package = load_package(args.package)
    bank = package.bank()
    voter = int(package.manifest.get("scoring", {}).get("voter_number", 10))
    index = FineDivingIndex(DataPaths.discover(args.data_root), voter_number=voter)
    cache = default_cache_dir()
    calib, _ = load_clips(index, spread_keys(index, index.train_keys, args.clips), cache, "calibration clips")
    held, _ = load_clips(index, spread_keys(index, index.test_keys, args.eval_clips), cache, "held-out clips")
    frames = np.stack([c.frames for c in calib])
    reference = run_variant(package.encoder_path, package.pair_head_path, held, bank, voter, "fp32")
    macs = node_macs(package.encoder_path)
    blocks: dict[str, int] = {}
    for name, value in macs.items():
        if not any(re.match(p, name) for p in INT8_EXCLUDE):
            blocks[group_of(name)] = blocks.get(group_of(name), 0) + value
    total = sum(macs.values())
    # Blocks of >= --min-share of the MACs are groups of their own; the rest join one group per network.
    members: dict[str, list[str]] = {}
    for block, value in blocks.items():
        group = block if value >= args.min_share * total else "/" + block.split("/")[1] + "/(small blocks)"
        members.setdefault(group, []).append(block)
    patterns = {g: [re.escape(block) + "/.*" for block in bs] for g, bs in members.items()}
    # Nodes outside every block (pools, pads, the resampling arithmetic): a group of their own, named one by one.
    import onnx

    glue = [n.name for n in onnx.load(str(package.encoder_path)).graph.node
            if n.name and not any(re.match(p, n.name) for p in [*INT8_EXCLUDE, *sum(patterns.values(), [])])]
    members["(outside blocks)"], patterns["(outside blocks)"] = glue, [re.escape(n) + "$" for n in glue]
    groups = {g: sum(blocks.get(b, 0) for b in bs) for g, bs in members.items()}
    print(f"{len(held)} held-out clips, {len(calib)} calibration clips, {len(groups)} groups, "
          f"{total / 1e9:.2f} GMACs in Conv/MatMul/Gemm", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"package": str(args.package), "data_root": str(args.data_root), "goals": GOALS,
                    "clips": len(calib), "held_out": len(held), "total_macs": total,
                    "members": {g: m if len(m) < 20 else [*m[:20], f"... {len(m) - 20} more"]
                                for g, m in members.items()}, "groups": {},
                    "greedy": []}

    def quantized(exclude: list[str]) -> tuple[dict[str, float], float]:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=args.out) as tmp:
            out = Path(tmp) / "encoder_int8.onnx"
            make_int8(package.encoder_path, out, {ENCODER_INPUT: frames}, method=args.method, exclude=exclude)
            run = run_variant(out, package.pair_head_path, held, bank, voter, "int8")
        return {**drift(reference, run), "encoder_ms": run.encoder_ms}, time.perf_counter() - start

    def int8_share(kept_fp32: list[str]) -> float:
        return sum(groups[g] for g in groups if g not in kept_fp32) / total

    def escape(group: str) -> list[str]:
        return patterns[group]

    everything, seconds = quantized(list(INT8_EXCLUDE))
    report["all_groups"] = {**everything, "int8_share": int8_share([])}
    print(f"all groups int8: {json.dumps({k: round(v, 4) for k, v in everything.items()})} ({seconds:.0f} s)",
          flush=True)
    for group in sorted(groups, key=lambda g: g != "(outside blocks)"):
        others = [p for g in groups if g != group for p in escape(g)]
        figures, seconds = quantized([*INT8_EXCLUDE, *others])
        report["groups"][group] = {**figures, "macs_share": groups[group] / total}
        print(f"only {group:<42} share {groups[group] / total:6.3f}  mean|d| {figures['mean_abs_delta']:.4f}  "
              f"max|d| {figures['max_abs_delta']:.3f}  tr {figures['transition_agreement']:.3f}  ({seconds:.0f} s)",
              flush=True)
    order = sorted(groups, key=lambda g: -report["groups"][g]["mean_abs_delta"])
    kept: list[str] = []
    for group in order[:args.max_steps]:
        kept.append(group)
        figures, seconds = quantized([*INT8_EXCLUDE, *(p for g in kept for p in escape(g))])
        step = {"fp32_groups": list(kept), **figures, "int8_share": int8_share(kept), "meets_goals": meets(figures)}
        report["greedy"].append(step)
        print(f"fp32 also {group:<40} int8 share {step['int8_share']:.3f}  rho {figures['rho_vs_fp32']:.4f}  "
              f"mean|d| {figures['mean_abs_delta']:.4f}  max|d| {figures['max_abs_delta']:.3f}  "
              f"tr {figures['transition_agreement']:.3f}  goals {'met' if step['meets_goals'] else 'missed'}",
              flush=True)
        if step["meets_goals"]:
            break
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"report: {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
