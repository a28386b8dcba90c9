"""All GPU measurements of the project in one short run (see bench/gpu_check.sh); prints a table last.

Needs CUDA; run from the source tree with PYTHONPATH=. on a machine with torch preinstalled.
"""

from __future__ import annotations

import statistics
import time

import torch

from fineparser.config import FineParserConfig
from fineparser.model import FineParser


def cuda_ms(fn, runs: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of `fn()` on CUDA, synchronised."""
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


@torch.inference_mode()
def encode_latency() -> list[tuple[str, str, float]]:
    """`full` encode latency per clip in fp32 and under bf16/fp16 autocast."""
    model = FineParser(FineParserConfig.preset("full")).cuda().eval()
    clip = torch.randn(1, 3, 96, 112, 112, device="cuda")
    rows = [("encode full", "fp32", cuda_ms(lambda: model.encode(clip)))]
    for dtype, name in ((torch.bfloat16, "bf16 autocast"), (torch.float16, "fp16 autocast")):
        with torch.autocast("cuda", dtype=dtype):
            rows.append(("encode full", name, cuda_ms(lambda: model.encode(clip))))
    return rows


def _train_step(dtype: torch.dtype | None) -> tuple[float, float]:
    """Median ms of one `full` training step (one pair, both directions, masks on) and peak GiB."""
    import torch.nn.functional as F

    torch.cuda.reset_peak_memory_stats()
    model = FineParser(FineParserConfig.preset("full")).cuda().train()
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

    ms = cuda_ms(step, runs=5, warmup=2)
    return ms, torch.cuda.max_memory_allocated() / 2**30


def train_steps() -> list[tuple[str, str, float]]:
    """`full` training step time and peak memory on one GPU, fp32 vs bf16 autocast."""
    rows = []
    for name, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        ms, peak = _train_step(dtype)
        rows += [("train step full (1 pair)", name, ms), ("  peak memory (GiB)", name, peak)]
    return rows


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible; nothing measured")
    rows = encode_latency() + train_steps()
    print(f"\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'measurement':<28}{'precision':<16}{'ms (median)':>12}")
    for what, precision, ms in rows:
        print(f"{what:<28}{precision:<16}{ms:>12.2f}")


if __name__ == "__main__":
    main()
