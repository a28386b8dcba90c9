"""Can the pair head learn quality when the encoder is fixed?  Train the pair head alone on cached features.

    python bench/probe_pair_head.py DATA_ROOT [--steps 1000] [--batch 2] [--lr 1e-3] [--score-scale 100]

A freshly initialised `tiny` FineParser encodes every train and test clip of DATA_ROOT once in eval mode
(test-mode frames, ground-truth transitions given to the static encoder and used for the pair windows).
Then only the pair head (dim reducers, decoders, regressors) trains, in training mode and with both
sides of a pair in one BN batch as `FineParser.forward` does, on random same-dive-number pairs of
training features with the paper's score loss (MSE of the delta, both directions); every
`--steps`/4 steps the test split is scored the paper's way (mean over up to 5 training exemplars of
exemplar score + delta).  Without any clip encoding per step, thousands of
steps take minutes: this separates "the pair head cannot learn it" from "too few steps".
A diagnostic, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineparser.data import DataPaths, FineDivingIndex, clip_item  # noqa: E402
from fineparser.metrics import spearman_rho  # noqa: E402

PAIR_HEAD_PARTS = ("dim_reducer1", "dim_reducer2", "dim_reducer3", "decoder1", "decoder2", "decoder3", "decoder4",
                   "regressor_delta1", "regressor_delta2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--score-scale", type=float, default=100.0)
    args = parser.parse_args()
    import torch

    from fineparser.config import FineParserConfig
    from fineparser.model import FineParser, QueryFeatures

    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = FineParserConfig.from_preset("tiny")
    config.score_scale = args.score_scale
    model = FineParser(config).eval()
    index = FineDivingIndex(DataPaths.discover(args.data_root), voter_number=5)

    def encode(keys):
        feats, scores, numbers = [], [], []
        for key in keys:
            clip = index.load_clip(key, train=False)
            video = torch.from_numpy(clip_item(clip, with_masks=False)["video"])[None]
            with torch.no_grad():
                feats.append(model.encode(video, transitions=torch.from_numpy(clip.transitions)[None]))
            scores.append(clip.final_score)
            numbers.append(clip.dive_number)
        cat = QueryFeatures(*(torch.cat([getattr(f, name) for f in feats]) for name in
                              ("window_features", "transitions", "transition_probs", "static_tokens")))
        return cat, torch.tensor(scores, dtype=torch.float32), np.array(numbers)

    start = time.perf_counter()
    train, train_s, train_n = encode(index.train_keys)
    test, test_s, test_n = encode(index.test_keys)
    print(f"encoded {len(train_s)} train + {len(test_s)} test clips in {time.perf_counter() - start:.0f} s")
    pools = {n: np.flatnonzero(train_n == n) for n in np.unique(train_n)}
    params = [p for name in PAIR_HEAD_PARTS for p in getattr(model, name).parameters()]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    rng = np.random.default_rng(0)

    def evaluate() -> float:
        model.eval()
        preds = []
        with torch.no_grad():
            for i in range(len(test_s)):
                pool = pools.get(test_n[i], np.arange(len(train_s)))[:5]
                out = model.pair_head(test.select(i), train.select(torch.from_numpy(pool)))
                preds.append(float((train_s[pool] + out.delta).mean()))
        model.train()
        return spearman_rho(preds, test_s.numpy())

    def both_directions(q: QueryFeatures, e: QueryFeatures):
        out_12, out_21 = model.pair_both_ways(torch.cat([q.window_features, e.window_features]),
                                              torch.cat([q.static_tokens, e.static_tokens]), q.transitions,
                                              e.transitions)
        return out_12.delta, out_21.delta

    print(f"step 0: test rho {evaluate():.3f}")
    model.train()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        q = rng.integers(0, len(train_s), args.batch)
        e = np.array([rng.choice(pools[train_n[i]]) for i in q])
        qi, ei = torch.from_numpy(q), torch.from_numpy(e)
        d12, d21 = both_directions(train.select(qi), train.select(ei))
        target = train_s[qi] - train_s[ei]
        loss = torch.mean((d12 - target) ** 2) + torch.mean((d21 + target) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 4) == 0:
            print(f"step {step}: loss {loss.item():.1f}  test rho {evaluate():.3f}  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
