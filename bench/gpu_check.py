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


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible; nothing measured")
    rows = encode_latency()
    print(f"\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'measurement':<24}{'precision':<16}{'ms (median)':>12}")
    for what, precision, ms in rows:
        print(f"{what:<24}{precision:<16}{ms:>12.2f}")


if __name__ == "__main__":
    main()
