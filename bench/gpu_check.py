"""All GPU measurements of the project in one short run (see bench/gpu_check.sh); prints one table last.

On one CUDA GPU, the `full` preset (random weights, fixed seed):

- **dive end -> score** through the runtime's torch backend (``runtime.backends.torch_backend``,
  the GPU reference path): uint8 frames on the host -> encode -> pair head over K = 10 exemplars ->
  ``fineparser.scoring.score_dive``; median ms over repeated dives for fp32, bf16 and fp16
  autocast, each eager and with the encoder replayed from a CUDA graph, bf16 with and without
  channels-last memory; peak GPU memory of each; the score's distance to onnxruntime fp32 (CPU,
  the package's graphs exported here) on the same clips, beside the spread of the fp32 scores
  (what a constant guess would miss by) and the drift goal it is held to;
- **training**: one pair step (both directions, masks on, Adam) in fp32 and under bf16 autocast:
  ms per step, steps per second, peak memory.

Needs CUDA; run from the source tree with PYTHONPATH=. (bench/gpu_check.sh does).  Options:
``--runs N`` timed dives per row (default 20), ``--no-onnx`` skips the onnxruntime comparison.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fineparser.config import FineParserConfig
from fineparser.model import FineParser
from fineparser.scoring import pair_feeds, score_dive

K = 10
CLIPS = 3
FP32_GOAL = 1e-3  # the export's fp32 parity tolerance (score points)
REDUCED_GOAL = 0.05  # calibration.drift.GOALS["fp16"]["mean_abs_delta"] (score points)


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 3) -> float:
    """Median wall milliseconds of `fn()` (which returns host data, so it ends synchronised)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def make_bank(config: FineParserConfig, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """K exemplars' pair-head feeds (random features, plausible transitions) and their scores."""
    rng = np.random.default_rng(seed)
    first = rng.integers(10, 45, K)
    feeds = {"exemplar_window_features": rng.standard_normal((K, 9, config.feature_dim)).astype(np.float32),
             "exemplar_transitions": np.stack([first, first + rng.integers(20, 45, K)], 1).astype(np.int64),
             "exemplar_static_tokens": rng.standard_normal((K, 12, config.token_dim)).astype(np.float32)}
    return feeds, rng.uniform(40, 90, K).astype(np.float32)


def dive_to_score(backend, frames: np.ndarray, bank: dict[str, np.ndarray], scores: np.ndarray) -> float:
    """What the runtime does at a dive's end (runtime.scorer.DiveScorer.score, minus the event)."""
    query = backend.encode(frames)
    delta, steps = backend.pair_head(pair_feeds(query, bank))
    return score_dive(scores, delta, steps).final


def onnx_scores(model: FineParser, clips: np.ndarray, bank: dict[str, np.ndarray], scores: np.ndarray) -> list[float]:
    """Scores of the clips through the package's graphs (exported here) in onnxruntime's CPU provider."""
    from export.onnx_export import DEFAULT_OPSET, export_encoder, export_pair_head
    from fineparser.onnx_session import CPU_PROVIDERS, onnx_session
    from fineparser.package import ENCODER_OUTPUTS

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        encoder, pair = Path(tmp) / "encoder.onnx", Path(tmp) / "pair_head.onnx"
        export_encoder(model, encoder, DEFAULT_OPSET)
        export_pair_head(model, pair, DEFAULT_OPSET)
        enc, head = onnx_session(encoder, providers=CPU_PROVIDERS), onnx_session(pair, providers=CPU_PROVIDERS)
        out = []
        for clip in clips:
            query = dict(zip(ENCODER_OUTPUTS, enc.run(list(ENCODER_OUTPUTS), {"frames": clip[None]})))
            delta, steps = head.run(["delta", "step_deltas"], pair_feeds(query, bank))
            out.append(score_dive(scores, delta, steps).final)
    return out


def inference_rows(model: FineParser, runs: int, with_onnx: bool) -> tuple[list[list[str]], str]:
    """One row per torch backend configuration: dive end -> score ms, peak memory, drift vs onnxruntime fp32."""
    from runtime.backends.torch_backend import TorchBackend

    bank, scores = make_bank(model.config)
    clips = np.random.default_rng(1).integers(0, 256, (CLIPS, 96, 112, 112, 3), dtype=np.uint8)
    reference, note = None, "onnxruntime comparison skipped (--no-onnx)"
    if with_onnx:
        start = time.perf_counter()
        reference = onnx_scores(model, clips, bank, scores)
        note = (f"onnxruntime fp32 (CPU) reference: {CLIPS} clips exported and scored in "
                f"{time.perf_counter() - start:.0f} s; spread of its scores (std) {np.std(reference):.4f}")
    configs = [("fp32", False, None), ("fp32", True, None), ("bf16", False, False), ("bf16", False, True),
               ("bf16", True, True), ("fp16", False, True), ("fp16", True, True)]
    rows = []
    for precision, graph, channels_last in configs:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        backend = TorchBackend(None, model=copy.deepcopy(model), precision=precision, device="cuda",
                               cuda_graph=graph, channels_last=channels_last)
        got = [dive_to_score(backend, clip[None], bank, scores) for clip in clips]
        ms = median_ms(functools.partial(dive_to_score, backend, clips[0][None], bank, scores), runs)
        peak = torch.cuda.max_memory_allocated() / 2**30
        goal = FP32_GOAL if precision == "fp32" else REDUCED_GOAL
        if reference is None:
            drift = "-"
        else:
            worst = max(abs(a - b) for a, b in zip(got, reference))
            drift = f"{worst:.2e} {'<=' if worst <= goal else '>'} {goal:g}"
        setup = precision + (" +graph" if backend.cuda_graph else "") + (" +NDHWC" if backend.channels_last else "")
        rows.append(["dive end -> score (K=10)", setup, f"{ms:.2f}", "", f"{peak:.2f}", drift])
        backend.close()
    return rows, note


def _train_step(model: FineParser, dtype: torch.dtype | None, runs: int) -> tuple[float, float]:
    """Median ms of one training step (one pair, both directions, masks on, Adam) and peak GiB."""
    import torch.nn.functional as F

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = copy.deepcopy(model).cuda().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    a, b = torch.randn(2, 1, 3, 96, 112, 112, device="cuda")
    t = torch.tensor([[20, 70]], device="cuda")
    target = torch.ones(1, device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(a, b, t, t)
            loss = F.mse_loss(out.delta_12.float(), target) + out.mask_logits.float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms = median_ms(step, runs=runs, warmup=2)
    return ms, torch.cuda.max_memory_allocated() / 2**30


def train_rows(model: FineParser, runs: int) -> list[list[str]]:
    """Training step time, steps per second and peak memory on one GPU, fp32 vs bf16 autocast (AMP)."""
    rows = []
    for name, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        ms, peak = _train_step(model, dtype, runs)
        rows.append(["train step (1 pair, both ways)", name, f"{ms:.1f}", f"{1000 / ms:.2f}", f"{peak:.2f}", ""])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed dives per inference row (default 20)")
    parser.add_argument("--train-runs", type=int, default=5, help="timed steps per training row (default 5)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime fp32 comparison")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible; nothing measured")
    start = time.perf_counter()
    torch.manual_seed(0)
    model = FineParser(FineParserConfig.from_preset("full")).eval()
    rows, note = inference_rows(model, args.runs, not args.no_onnx)
    rows += train_rows(model, args.train_runs)
    header = ["measurement", "setup", "ms (median)", "steps/s", "peak GiB", "|score - ort fp32| vs goal"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) + 2 for i in range(len(header))]
    print(f"\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  preset full (random weights)  "
          f"{time.perf_counter() - start:.0f} s")
    print(note)
    for row in [header, *rows]:
        print("".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
