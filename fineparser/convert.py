"""`python -m fineparser.convert OFFICIAL.pth OUT.pt`: an official checkpoint in our format."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fineparser.checkpoint import CheckpointError, import_official, save_checkpoint
from fineparser.config import FineParserConfig


def main(argv: list[str] | None = None) -> int:
    """Convert the paper's best.pth to a FineParser checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m fineparser.convert", description=__doc__)
    parser.add_argument("official", type=Path, help="the paper's checkpoint (best.pth)")
    parser.add_argument("out", type=Path, help="where to write our checkpoint (.pt)")
    parser.add_argument("--preset", default="full", choices=FineParserConfig.preset_names(),
                        help="architecture of the official file (default: full, the paper's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    start = time.perf_counter()
    try:
        model = import_official(args.official, FineParserConfig.from_preset(args.preset))
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_checkpoint(args.out, model, source={"official": str(args.official)})
    size = args.out.stat().st_size / 1e6
    logging.info("saved as %s (%.1f MB, %.1f s)", args.out, size, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
