"""Can the two transitions be read off a clip, and can the temporal parser (TAP) learn to read them?

    python bench/probe_transitions.py DATA_ROOT [--package PKG] [--checkpoint CKPT ...] [--init-preset tiny]

DATA_ROOT is a synthetic set (fineparser-synth).  Every train and test clip is prepared as the
trainer's test mode does (96 frames, 112x112) and its true transitions are taken in the training
convention (`fineparser.spec.target_transitions`).  For each kind of features the probe reports, on
the test split, the transition error in frames of the 96 (median, share within 1 and 2 frames):

- the constant guess fitted on the train split (`fineparser.metrics.ConstantTransitionGuess`);
- pixels: ridge regression from grey levels pooled to 96 frames x 4 x 4;
- with `--frame-probe G`: each transition read frame by frame (a ridge classifier of "after the
  transition" on one frame's grey levels and its change from the frame before, pooled to G x G, then the
  split of the 96 frames that agrees best with it): whether the pixels show the moment at all; and the
  same pixels averaged over each of the encoder's nine windows, ridge: what is left once a window is one vector;
- per encoder (`--package` ONNX encoder, `--checkpoint`, `--init-preset` fresh model): ridge from its
  nine window features, the model's own TAP, and a fresh TAP fitted on the cached window features
  with the paper's per-frame BCE and with the trainer's transition loss (`train.trainer.transition_loss`).

A diagnostic, not a test: it separates "the features do not carry the timing" from "the loss does
not teach it".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineparser.data import DataPaths, FineDivingIndex  # noqa: E402
from fineparser.metrics import ConstantTransitionGuess, transition_errors  # noqa: E402
from fineparser.spec import WINDOW_LENGTH, WINDOW_STARTS, target_transitions  # noqa: E402


def pixel_features(frames: np.ndarray) -> np.ndarray:
    grey = frames.astype(np.float32).mean(-1) / 255.0  # [96, 112, 112]
    return grey.reshape(96, 4, 28, 4, 28).mean((2, 4)).ravel()


def frame_features(frames: np.ndarray, grid: int) -> np.ndarray:
    """Per-frame pixels for the frame probe: grey levels and the change from the frame before, each pooled to
    grid x grid. [96, 2 * grid * grid]"""
    grey = frames.astype(np.float32).mean(-1) / 255.0
    cell = grey.shape[1] // grid

    def pool(x: np.ndarray) -> np.ndarray:
        x = x[:, : cell * grid, : cell * grid].reshape(len(x), grid, cell, grid, cell)
        return x.mean((2, 4)).reshape(len(x), -1)

    return np.concatenate([pool(grey), pool(np.abs(np.diff(grey, axis=0, prepend=grey[:1])))], axis=1)


def frame_probe(tr_x: np.ndarray, tr_true: np.ndarray, te_x: np.ndarray, lam: float) -> np.ndarray:
    """Transitions read frame by frame: for each transition a ridge classifier of "after it" on one frame's
    pixels, then the split of the 96 frames (in the transition's half) that agrees best with its outputs."""
    pred = np.zeros((len(te_x), 2), np.int64)
    idx = np.arange(tr_x.shape[1])
    for j, (lo, hi) in enumerate(((0, 48), (48, 96))):
        y = (idx[None] > tr_true[:, j : j + 1]).astype(np.float32)  # [clips, 96]
        score = ridge_scores(tr_x.reshape(-1, tr_x.shape[-1]), y.reshape(-1), te_x.reshape(-1, te_x.shape[-1]), lam)
        pred[:, j] = best_split(score.reshape(len(te_x), -1), lo, hi)
    return pred


def best_split(score: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """[clips, 96] "after the transition" scores (0..1) -> the split s in [lo, hi) that agrees best with them:
    frames <= s should score low, frames > s high."""
    after = np.cumsum((score - 0.5)[:, ::-1], axis=1)[:, ::-1]  # sum over frames >= i
    gain = np.concatenate([after[:, 1:], np.zeros((len(score), 1))], axis=1)  # frames > s
    return lo + gain[:, lo:hi].argmax(1)


def window_probe(tr_f: np.ndarray, tr_true: np.ndarray, te_f: np.ndarray, lam: float) -> np.ndarray:
    """Transitions read from the window features as a window sees time: one ridge map (shared by the nine
    windows) from a window's feature to "after the transition" for each of its 16 frames, each frame's
    outputs averaged over the windows that hold it, then the best split.  What the parser could read if it
    decoded the features well; the frame probe's counterpart for features [clips, 9, D]."""
    frames = np.array(WINDOW_STARTS)[:, None] + np.arange(WINDOW_LENGTH)  # [9, 16]
    cover = np.zeros(96)
    np.add.at(cover, frames.ravel(), 1.0)
    pred = np.zeros((len(te_f), 2), np.int64)
    for j, (lo, hi) in enumerate(((0, 48), (48, 96))):
        y = (frames[None] > tr_true[:, j, None, None]).astype(np.float32)  # [clips, 9, 16]
        out = ridge_scores(tr_f.reshape(-1, tr_f.shape[-1]), y.reshape(-1, WINDOW_LENGTH),
                           te_f.reshape(-1, te_f.shape[-1]), lam).reshape(len(te_f), len(WINDOW_STARTS), -1)
        score = np.zeros((len(te_f), 96))
        for k, row in enumerate(frames):
            score[:, row] += out[:, k]
        pred[:, j] = best_split(score / cover, lo, hi)
    return pred


def ridge_scores(train_x, train_y, test_x, lam: float) -> np.ndarray:
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (train_y - train_y.mean(0)))
    return b @ w + train_y.mean(0)


def ridge_predict(train_x, train_y, test_x, lam: float) -> np.ndarray:
    return np.clip(np.rint(ridge_scores(train_x, train_y, test_x, lam)), 0, 95).astype(np.int64)


def line(name: str, pred: np.ndarray, true: np.ndarray) -> str:
    s = transition_errors(pred, true)
    distinct = len({tuple(p) for p in np.asarray(pred).tolist()})
    return (f"{name:<52}{s['median']:>8.1f}{s['within_1']:>9.2f}{s['within_2']:>9.2f}"
            f"{distinct:>9d}{s['median_1']:>8.1f}{s['median_2']:>8.1f}")


def fit_tap(config, train_f, train_t, test_f, loss: str, steps: int, lr: float = 1e-3, seed: int = 0) -> np.ndarray:
    """A fresh TAP fitted on cached window features; its test predictions."""
    import torch

    from fineparser.modules.temporal_parser import TemporalActionParser, transitions_from_probs
    from train.trainer import transition_loss

    torch.manual_seed(seed)
    tap = TemporalActionParser(config)
    opt = torch.optim.Adam(tap.parameters(), lr=lr)
    x, t = torch.from_numpy(train_f).float(), torch.from_numpy(train_t).long()
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(x), size=8, replace=False))
        probs = tap(x[idx])
        value = transition_loss(probs, t[idx], loss)
        opt.zero_grad()
        value.backward()
        opt.step()
    tap.eval()
    with torch.no_grad():
        return transitions_from_probs(tap(torch.from_numpy(test_f).float())).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--package", type=Path, help="a model package: its ONNX encoder")
    parser.add_argument("--checkpoint", action="append", default=[], help="a trained checkpoint (repeatable)")
    parser.add_argument("--init-preset", help="also probe a freshly initialised model of this preset")
    parser.add_argument("--tap-steps", type=int, default=1500, help="fresh TAP fits; 0: none")
    parser.add_argument("--tap-lr", type=float, default=1e-3)
    parser.add_argument("--cache", type=Path, help="npz of the collected features: written once, then read back")
    parser.add_argument("--ridge", type=float, default=100.0)
    parser.add_argument("--frame-probe", type=int, default=0, metavar="GRID",
                        help="also read each transition frame by frame from one frame's pixels and its change from "
                             "the frame before, pooled to GRID x GRID (a ridge classifier, then the best split)")
    parser.add_argument("--data-curve", action="store_true",
                        help="also fit fresh TAPs (listwise) on 1/4, 1/2 and all of the train clips, and by 3-fold "
                             "cross-validation on the test clips: is the parser short of clips, or of features "
                             "that carry over from the clips the encoder trained on?")
    args = parser.parse_args()
    import torch

    from fineparser.checkpoint import load_model
    from fineparser.config import FineParserConfig
    from fineparser.model import FineParser

    torch.set_num_threads(2)
    index = FineDivingIndex(DataPaths.discover(args.data_root), voter_number=5)
    encoders = {}  # name -> (function frames uint8 [96,112,112,3] -> (window features [9,D], transitions [2]), config)
    if args.package:
        from fineparser.onnx_session import onnx_session
        from fineparser.package import read_manifest

        session = onnx_session(args.package / "encoder.onnx", threads=2)
        config = FineParserConfig.from_dict(read_manifest(args.package)["model"]["config"])

        def run_onnx(frames, session=session):
            out = session.run(["window_features", "transitions"], {"frames": frames[None]})
            return out[0][0], out[1][0]
        encoders[f"package {args.package.name}"] = (run_onnx, config)
    models = {f"checkpoint {Path(c).parent.name}/{Path(c).name}": load_model(c)[0].eval() for c in args.checkpoint}
    if args.init_preset:
        torch.manual_seed(0)
        models[f"{args.init_preset} at init"] = FineParser(FineParserConfig.from_preset(args.init_preset)).eval()
    for name, model in models.items():
        def run_torch(frames, model=model):
            clip = clip_item_frames(frames)
            with torch.no_grad():
                q = model.encode(clip)
            return q.window_features[0].numpy(), q.transitions[0].numpy()
        encoders[name] = (run_torch, model.config)

    def clip_item_frames(frames):
        from fineparser.preprocess import normalize_clip
        return torch.from_numpy(normalize_clip(frames))[None]

    per_frame: dict[int, list] = {}

    def collect(keys):
        pixels, true, feats, own = [], [], {n: [] for n in encoders}, {n: [] for n in encoders}
        for key in keys:
            clip = index.load_clip(key, train=False)
            pixels.append(pixel_features(clip.frames))
            if args.frame_probe:
                per_frame.setdefault(id(keys), []).append(frame_features(clip.frames, args.frame_probe))
            true.append(np.minimum(target_transitions(clip.transitions), 95))
            for name, (run, _) in encoders.items():
                f, tr = run(clip.frames)
                feats[name].append(f)
                own[name].append(tr)
        return (np.array(pixels), np.array(true), {n: np.array(v) for n, v in feats.items()},
                {n: np.array(v) for n, v in own.items()})

    if args.cache and args.cache.is_file():
        data = np.load(args.cache)
        tr_px, tr_true, te_px, te_true = data["tr_px"], data["tr_true"], data["te_px"], data["te_true"]
        tr_f = {n: data[f"tr_f/{n}"] for n in encoders}
        te_f = {n: data[f"te_f/{n}"] for n in encoders}
        te_own = {n: data[f"te_own/{n}"] for n in encoders}
    else:
        tr_px, tr_true, tr_f, _ = collect(index.train_keys)
        te_px, te_true, te_f, te_own = collect(index.test_keys)
        if args.cache:
            np.savez(args.cache, tr_px=tr_px, tr_true=tr_true, te_px=te_px, te_true=te_true,
                     **{f"tr_f/{n}": v for n, v in tr_f.items()}, **{f"te_f/{n}": v for n, v in te_f.items()},
                     **{f"te_own/{n}": v for n, v in te_own.items()})
    print(f"{len(tr_true)} train / {len(te_true)} test clips; transition error on test, frames of the 96")
    print(f"{'predictor':<52}{'median':>8}{'<=1':>9}{'<=2':>9}{'distinct':>9}{'1st':>8}{'2nd':>8}"
          "   (1st: the take-off's end; 2nd: the entry's start; median of each alone)")
    guess = ConstantTransitionGuess.fit(tr_true)
    print(line("constant guess (train medians)", guess.predict(len(te_true)), te_true))
    print(line(f"ridge on pixels (lam {args.ridge:g})", ridge_predict(tr_px, tr_true, te_px, args.ridge), te_true))
    if args.frame_probe:
        if len(per_frame) != 2:
            raise SystemExit("--frame-probe needs the clips themselves: run it without --cache")
        tr_x, te_x = (np.array(v) for v in per_frame.values())
        print(line(f"frame probe on pixels ({args.frame_probe}x{args.frame_probe}, lam {args.ridge:g})",
                   frame_probe(tr_x, tr_true, te_x, args.ridge), te_true))
        # The same pixels as the encoder's nine windows see them when a window is one vector: each window's
        # frames averaged (time inside a window gone), then ridge to the two transitions.
        tr_w, te_w = (np.stack([x[:, s : s + WINDOW_LENGTH].mean(1) for s in WINDOW_STARTS], 1) for x in (tr_x, te_x))
        print(line("same pixels averaged per window, ridge",
                   ridge_predict(tr_w.reshape(len(tr_w), -1), tr_true, te_w.reshape(len(te_w), -1), args.ridge),
                   te_true))
        print(line("same pixels averaged per window, window probe", window_probe(tr_w, tr_true, te_w, args.ridge),
                   te_true))
    for name, (_, config) in encoders.items():
        flat_tr, flat_te = tr_f[name].reshape(len(tr_true), -1), te_f[name].reshape(len(te_true), -1)
        print(line(f"{name}: own TAP", te_own[name], te_true))
        print(line(f"{name}: ridge on window features", ridge_predict(flat_tr, tr_true, flat_te, args.ridge),
                   te_true))
        print(line(f"{name}: window probe (per-frame ridge)", window_probe(tr_f[name], tr_true, te_f[name],
                                                                           args.ridge), te_true))
        for loss in ("paper", "listwise") if args.tap_steps > 0 else ():
            pred = fit_tap(config, tr_f[name], tr_true, te_f[name], loss, args.tap_steps, args.tap_lr)
            print(line(f"{name}: fresh TAP, {loss} loss ({args.tap_steps} steps, lr {args.tap_lr:g})", pred, te_true))
        if args.data_curve:
            data_curve(name, config, tr_f[name], tr_true, te_f[name], te_true, args)


def data_curve(name: str, config, tr_f, tr_true, te_f, te_true, args) -> None:
    """Fresh listwise TAPs on growing shares of the train clips, and 3-fold on the test clips (same steps)."""
    rng = np.random.default_rng(0)
    folds = np.array_split(rng.permutation(len(te_true)), 3)
    for share in (0.25, 0.5, 1.0):
        keep = rng.choice(len(tr_true), size=max(8, int(round(share * len(tr_true)))), replace=False)
        pred = fit_tap(config, tr_f[keep], tr_true[keep], te_f, "listwise", args.tap_steps, args.tap_lr)
        print(line(f"{name}: fresh TAP on {len(keep)} train clips", pred, te_true))
    pred = np.zeros_like(te_true)
    for k, fold in enumerate(folds):
        rest = np.concatenate([f for j, f in enumerate(folds) if j != k])
        pred[fold] = fit_tap(config, te_f[rest], te_true[rest], te_f[fold], "listwise", args.tap_steps, args.tap_lr)
    print(line(f"{name}: fresh TAP, 3-fold on the test clips (~{len(te_true) * 2 // 3} each)", pred, te_true))


if __name__ == "__main__":
    main()
