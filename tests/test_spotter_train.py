"""Training the spotter with `python -m train` (task: spotter): checkpoints, exact resume, data errors, evaluation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fineparser.config import ConfigError
from fineparser.spotter import load_spotter
from fineparser.spotter_spec import CLASS_NAMES, IDLE
from train.__main__ import main as train_main
from train.config import load_config
from train.spotter_data import SpotterDataError, frame_cache, load_broadcasts
from train.spotter_eval import evaluate_spotter, frame_metrics
from train.trainer import TrainingError, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "spotter_synthetic.yaml"
TINY = ["spotter.input_height=48", "spotter.input_width=80", "spotter.feature_dim=16", "spotter.hidden_size=16",
        "spotter.lookahead=2", "spotter_data.window=16", "spotter_data.windows_per_epoch=4",
        "spotter_data.eval_chunk=64", "batch_size=2", "data.num_workers=0", "log_every=1"]
"""A spotter and windows small enough that a run of a few steps takes seconds on 2 cores."""


@pytest.fixture(scope="module")
def broadcasts_root(tmp_path_factory) -> Path:
    """Two short synthetic broadcasts at 160x90 (one dive each, with their per-frame ground truth)."""
    from synth.broadcast import generate_broadcasts

    root = tmp_path_factory.mktemp("spotdata")
    generate_broadcasts(root, 2, seed=1, size=(160, 90), dives_per_broadcast=1, idle_seconds=(0.5, 1.0),
                        score_seconds=1.0, progress=False)
    return root


def tiny_config(root: Path, *overrides: str):
    return load_config(CONFIG, [*TINY, f"data.root={root}", *overrides])


def events(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == kind]


def test_the_spotter_task_trains_and_writes_its_checkpoints_and_metrics(broadcasts_root, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config(broadcasts_root, "epochs=2", "keep_evaluated=true"), run)
    assert summary["steps"] == 4 and summary["epochs_done"] == 2
    assert {"last.pt", "best.pt", "metrics.jsonl", "config.yaml"} <= {p.name for p in run.iterdir()}
    evals = events(run, "eval")
    assert [e["epoch"] for e in evals] == [1, 2]
    assert all(0.0 <= e["macro_f1"] <= 1.0 for e in evals)
    assert all(0.0 <= e["dive_f1"] <= 1.0 and e["dive_dives"] == 1 for e in evals)
    # keep_evaluated: every evaluated checkpoint stays, with the metrics it was evaluated with.
    assert sorted(p.name for p in run.glob("eval-*.pt")) == [f"eval-{e['step']}.pt" for e in evals]
    for e in evals:
        kept = load_spotter(run / f"eval-{e['step']}.pt")[1]["metrics"]
        assert kept["macro_f1"] == e["macro_f1"] and kept["dive_cost"] == e["dive_cost"]
    assert events(run, "start")[0]["test_videos"] == 1 and events(run, "train")
    model, data = load_spotter(run / "best.pt")
    assert model.config.hidden_size == 16 and model.config.lookahead == 2 and not model.training
    assert data["spotter_config"]["input_width"] == 80
    assert data["metrics"]["macro_f1"] == max(e["macro_f1"] for e in evals)
    assert data["trainer"]["train_config"]["task"] == "spotter"


def test_resume_of_the_spotter_is_exact(broadcasts_root, tmp_path):
    straight = train(tiny_config(broadcasts_root, "max_steps=5", "eval_at_end=false", "epochs=3"), tmp_path / "a")
    train(tiny_config(broadcasts_root, "max_steps=3", "eval_at_end=false", "epochs=3"), tmp_path / "b")
    resumed = train(tiny_config(broadcasts_root, "max_steps=5", "eval_at_end=false", "epochs=3"), tmp_path / "b",
                    resume=True)
    assert straight["steps"] == resumed["steps"] == 5
    a = load_spotter(tmp_path / "a" / "last.pt")[1]["model"]
    b = load_spotter(tmp_path / "b" / "last.pt")[1]["model"]
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst


def test_resume_refuses_settings_other_than_the_runs_own_unless_asked(broadcasts_root, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(broadcasts_root, "max_steps=1", "eval_at_end=false", "seed=3"), run)
    before = sorted(p.name for p in run.iterdir())
    # The recipe's command line without the run's own seed override: another data order, another recipe.
    with pytest.raises(TrainingError, match=r"seed: 3 -> 10086.*--allow-config-change"):
        train(tiny_config(broadcasts_root, "max_steps=2", "eval_at_end=false"), run, resume=True)
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written for a refused resume
    # Without --config, --resume reads the run's config.yaml; stopping later and logging more are free to change.
    assert train_main(["--resume", "--out", str(run), "max_steps=2", "log_every=5"]) == 0
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["steps"] == 2
    assert train_main(["--resume", "--out", str(run), "max_steps=3", "optim.lr=0.01"]) == 2
    assert "optim.lr: 0.002 -> 0.01" in capsys.readouterr().err
    assert train_main(["--resume", "--out", str(run), "max_steps=3", "optim.lr=0.01", "--allow-config-change"]) == 0
    assert "--resume with changed settings" in (run / "train.log").read_text()


def test_a_bad_annotation_names_its_file_and_line(broadcasts_root, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    shutil.copy(broadcasts_root / "broadcasts" / "broadcast_000.mp4", user / "final.mp4")
    shutil.copy(broadcasts_root / "broadcasts" / "broadcast_001.mp4", user / "heat.mp4")
    (user / "heat.json").write_text('{"dives": [{"start_s": 1.0, "end_s": 2.5}]}\n')
    (user / "final.csv").write_text("kind,start,end,takeoff_end,entry_start\n"
                                    "dive,1.0,2.5,1.2,2.2\n"
                                    "dive,5.0,abc,,\n")
    with pytest.raises(SpotterDataError, match=r"final\.csv, line 3: end 'abc' is not a number"):
        train(tiny_config(user), tmp_path / "run")
    code = train_main(["--config", str(CONFIG), "--data-root", str(user), "--out", str(tmp_path / "cli"), *TINY])
    assert code == 2
    assert "final.csv, line 3" in capsys.readouterr().err


def test_unknown_spotter_config_keys_are_errors_listing_the_known_ones(broadcasts_root):
    with pytest.raises(ConfigError, match=r"unknown spotter config key\(s\) hiden_size; known keys: trunk, .*"
                                          r"hidden_size"):
        tiny_config(broadcasts_root, "spotter.hiden_size=8")
    with pytest.raises(ConfigError, match=r"spotter_data\.windw.*known keys under spotter_data: window"):
        tiny_config(broadcasts_root, "spotter_data.windw=8")
    with pytest.raises(ConfigError, match="task must be fineparser or spotter"):
        tiny_config(broadcasts_root, "task=spoter")


class ReplayLabels(torch.nn.Module):
    """A stand-in spotter that reads each frame's class from its pixels and outputs it `lookahead` steps later."""

    def __init__(self, lookahead: int) -> None:
        super().__init__()
        self.config = type("Config", (), {"lookahead": lookahead})()

    def forward(self, frames: torch.Tensor, state: torch.Tensor | None = None):
        classes = frames[0, :, 0, 0, 0].long() // 40
        delayed = torch.cat([torch.zeros(self.config.lookahead, dtype=torch.long) if state is None else state,
                             classes])
        logits = 20.0 * torch.nn.functional.one_hot(delayed[:len(classes)], len(CLASS_NAMES)).float()[None]
        return logits, delayed[len(classes):]


def test_evaluation_realigns_the_lookahead_across_chunks_and_reports_the_trivial_guesses(broadcasts_root):
    broadcast = load_broadcasts(broadcasts_root, (48, 80), progress=False)[0]
    truth = np.clip(broadcast.targets, 0, None)
    broadcast._frames = np.broadcast_to((truth * 40).astype(np.uint8)[:, None, None, None],
                                        (len(truth), 48, 80, 3))
    metrics = evaluate_spotter(ReplayLabels(3), [broadcast], torch.device("cpu"), chunk=7, progress=False)
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0
    assert metrics["eval_frames"] == len(truth) - 3
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (5, 5) and confusion.sum() == len(truth) - 3
    # Dive level, through the runtime's state machine: the broadcast's one dive, found to the frame.
    assert metrics["dive_dives"] == 1 and metrics["dive_f1"] == 1.0
    assert metrics["dive_missed"] == metrics["dive_false_dives"] == 0
    assert metrics["dive_start_err_median"] == metrics["dive_end_err_median"] == 0.0

    # A spotter that calls the dive a replay finds no dive: the dive figures see what the frame figures
    # weigh as a third of one class.
    replay = np.where(np.isin(truth, [1, 2, 3]), 4, truth)
    broadcast._frames = np.broadcast_to((replay * 40).astype(np.uint8)[:, None, None, None],
                                        (len(truth), 48, 80, 3))
    metrics = evaluate_spotter(ReplayLabels(3), [broadcast], torch.device("cpu"), chunk=7, progress=False)
    assert metrics["dive_f1"] == 0.0 and metrics["dive_missed"] == 1 and metrics["dive_false_dives"] == 0
    assert np.isnan(metrics["dive_start_err_median"])

    counts = np.array([60, 5, 10, 10, 15])
    guess = frame_metrics(np.diag(counts))
    assert guess["macro_f1"] == 1.0
    assert guess["trivial_idle_accuracy"] == pytest.approx(0.6)
    assert guess["trivial_idle_macro_f1"] == pytest.approx((2 * 60 / (60 + 100)) / 5)
    prior = counts / counts.sum()
    assert guess["trivial_prior_accuracy"] == pytest.approx(float((prior ** 2).sum()))
    assert guess["trivial_prior_macro_f1"] == pytest.approx(float(prior.mean()))
    assert guess[f"f1_{CLASS_NAMES[IDLE]}"] == 1.0


def test_dive_figures_of_distributed_shards_pool_like_one_evaluation():
    from calibration.segmenter import Matched, matched_figures, merged

    a = Matched(tp=2, fp=1, fn=0, on_replay=1, starts=[1.0, 3.0], ends=[2.0, 2.0], after_s=[0.1, 0.2], fps=[25, 25])
    b = Matched(tp=1, fp=0, fn=1, on_replay=0, starts=[8.0], ends=[4.0], after_s=[0.3], fps=[50])
    pooled = merged([a, b])
    assert (pooled.tp, pooled.fp, pooled.fn, pooled.on_replay) == (3, 1, 1, 1)
    assert pooled.starts == [1.0, 3.0, 8.0] and pooled.fps == [25, 25, 50]
    figures = matched_figures(pooled)
    assert figures["f1"] == pytest.approx(6 / 8) and figures["start_err_median"] == 3.0
    assert a.tp == 2 and a.starts == [1.0, 3.0]  # the shards are left as they were


def test_the_frame_cache_is_decoded_once_and_redone_when_the_video_changes(broadcasts_root, tmp_path):
    video = Path(shutil.copy(broadcasts_root / "broadcasts" / "broadcast_001.mp4", tmp_path / "heat.mp4"))
    cache = frame_cache(video, (40, 64), progress=False)
    first = cache.stat().st_mtime_ns
    frames = np.load(cache)
    assert frames.dtype == np.uint8 and frames.shape[1:] == (40, 64, 3)
    assert frame_cache(video, (40, 64), progress=False).stat().st_mtime_ns == first
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))
    assert frame_cache(video, (40, 64), progress=False).stat().st_mtime_ns != first


def test_windows_are_placed_around_live_and_replay_frames_in_their_shares(tmp_path):
    from fineparser.spotter_spec import FLIGHT, REPLAY
    from train.config import SpotterDataConfig
    from train.spotter_data import Broadcast, SpotterWindows

    targets = np.full(2000, IDLE, np.int64)
    targets[300:340] = FLIGHT
    targets[1500:1560] = REPLAY
    frames = np.zeros((len(targets), 4, 4, 3), np.uint8)
    broadcast = Broadcast("b", tmp_path / "b.mp4", tmp_path / "b.json", targets, tmp_path / "b.npy", frames)

    def share(live: float, replay: float, cls: int) -> float:
        config = SpotterDataConfig(window=32, windows_per_epoch=200, live_fraction=live, replay_fraction=replay,
                                   augment=False)
        windows = SpotterWindows([broadcast], config, seed=3)
        return float(np.mean([(windows[i]["labels"] == cls).any().item() for i in range(len(windows))]))

    assert share(0.0, 1.0, REPLAY) == 1.0 and share(1.0, 0.0, FLIGHT) == 1.0
    assert share(0.5, 0.0, REPLAY) < 0.2  # replays are 3% of this broadcast: rare unless asked for
    assert 0.4 < share(0.0, 0.5, REPLAY) < 0.7
    assert "replay_fraction 0.6 is outside [0, 1 - live_fraction 0.5]" in " ".join(
        SpotterDataConfig(live_fraction=0.5, replay_fraction=0.6).problems(lookahead=2))
