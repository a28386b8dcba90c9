"""Can the judges' award be read off a clip?  Ridge probes on raw pixels and on encoder features.

    python bench/probe_quality.py DATA_ROOT [--checkpoint CKPT ...] [--init-preset tiny]

DATA_ROOT is a synthetic set (fineparser-synth; its synth.json holds each dive's expected award).
Every train and test clip is prepared as the trainer's test mode does (96 frames, 112x112).  Three
kinds of features, each fitted by ridge regression on the train split and scored by Spearman's rho
against the expected award on the test split, for several ridge strengths:
- pixels: grey levels average-pooled to 12 time chunks x 8 x 8 (768 numbers per clip);
- each --checkpoint: the encoder's window features and mean static token of that model;
- --init-preset: the same for a freshly initialised model of that preset (what training starts from).
A diagnostic, not a test: it says whether the world shows quality and whether training kept it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineparser.data import DataPaths, FineDivingIndex, clip_item  # noqa: E402
from fineparser.metrics import spearman_rho  # noqa: E402

LAMBDAS = (1.0, 10.0, 100.0, 1000.0)


def pixel_features(frames: np.ndarray) -> np.ndarray:
    grey = frames.astype(np.float32).mean(-1) / 255.0  # [96, 112, 112]
    return grey.reshape(12, 8, 8, 14, 8, 14).mean((1, 3, 5)).ravel()


def ridge_rho(train_x, train_y, test_x, test_y, lam: float) -> float:
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (train_y - train_y.mean()))
    return spearman_rho(b @ w + train_y.mean(), test_y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--checkpoint", action="append", default=[], help="a trained checkpoint (repeatable)")
    parser.add_argument("--init-preset", help="also probe a freshly initialised model of this preset")
    args = parser.parse_args()
    import torch

    from fineparser.checkpoint import load_model
    from fineparser.config import FineParserConfig
    from fineparser.model import FineParser

    torch.set_num_threads(2)
    award = {(d["competition"], d["clip_id"]): d["expected_award"]
             for d in json.loads((args.data_root / "synth.json").read_text())["dives"]}
    index = FineDivingIndex(DataPaths.discover(args.data_root), voter_number=5)
    models = {f"encoder {Path(c).parent.name}/{Path(c).name}": load_model(c)[0].eval() for c in args.checkpoint}
    if args.init_preset:
        torch.manual_seed(0)
        fresh = FineParser(FineParserConfig.from_preset(args.init_preset))
        models[f"encoder {args.init_preset} at init"] = fresh.eval()

    def features(keys):
        rows = {"pixels": [], **{name: [] for name in models}}
        y = []
        for key in keys:
            clip = index.load_clip(key, train=False)
            rows["pixels"].append(pixel_features(clip.frames))
            video = torch.from_numpy(clip_item(clip, with_masks=False)["video"])[None]
            for name, model in models.items():
                with torch.no_grad():
                    q = model.encode(video)
                rows[name].append(np.concatenate([q.window_features[0].ravel().numpy(),
                                                  q.static_tokens[0].mean(0).numpy()]))
            y.append(award[tuple(key)])
        return {k: np.array(v) for k, v in rows.items()}, np.array(y)

    train_x, train_y = features(index.train_keys)
    test_x, test_y = features(index.test_keys)
    print(f"{len(train_y)} train / {len(test_y)} test clips; rho(ridge prediction, expected award) on test")
    print(f"{'features':<44}" + "".join(f"{'lam=' + format(lam, 'g'):>10}" for lam in LAMBDAS))
    for name in train_x:
        rhos = [ridge_rho(train_x[name], train_y, test_x[name], test_y, lam) for lam in LAMBDAS]
        print(f"{name:<44}" + "".join(f"{r:>10.3f}" for r in rhos))


if __name__ == "__main__":
    main()
