"""The trainer: DDP on gloo, exact resume, learning, clear errors, SIGTERM and NaN safety."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fineparser.checkpoint import load_checkpoint, load_model
from train.__main__ import main as train_main
from train.config import load_config
from train.trainer import TrainingError, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic_tiny.yaml"
# A narrower `tiny` for the tests whose subject is the loop, not the network (same graph, seconds per run).
MICRO = ["model.i3d_width=0.0625", "model.side_channels=2", "model.sve_channels=[8,16,32,64]", "model.token_dim=8",
         "model.decoder_heads=2", "model.decoder_depth=1", "model.regressor_hidden=[16,8]"]
FAST = ["data.num_workers=0", "batch_size=1", "accumulation=1", "voter_number=2", "eval_max_queries=2"]


def events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == kind]


def run_module(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, **kw)


def test_two_gloo_workers_end_with_identical_weights(synth_root, tmp_path):
    out = tmp_path / "ddp"
    proc = run_module(["--config", str(CONFIG), "--data-root", str(synth_root), "--out", str(out), "--nproc", "2",
                       "--max-steps", "2", *FAST, "data.use_masks=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    end = events(out, "end")[-1]
    assert events(out, "start")[0]["world"] == 2
    assert end["steps"] == 2 and end["weights_identical_across_ranks"] is True
    assert len(set(end["rank_weight_digests"])) == 1 and len(end["rank_weight_digests"]) == 2
    model, data = load_model(out / "last.pt")
    assert data["trainer"]["step"] == 2 and model.config.preset == "tiny"


def test_resume_continues_exactly(synth_root, tmp_path):
    base = [*FAST, *MICRO, "eval_at_end=false", "data.use_masks=true"]
    cfg = load_config(CONFIG, [*base, f"data.root={synth_root}", "max_steps=4"])
    straight = train(cfg, tmp_path / "straight")
    cfg_half = load_config(CONFIG, [*base, f"data.root={synth_root}", "max_steps=2"])
    train(cfg_half, tmp_path / "resumed")
    resumed = train(cfg, tmp_path / "resumed", resume=True)
    assert straight["steps"] == resumed["steps"] == 4
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst


def test_loss_decreases_when_overfitting_a_fixed_pair(tmp_path):
    from fineparser.synth import generate_dataset

    root = tmp_path / "pair"
    summary = generate_dataset(root, 3, seed=11, dive_pool=1, progress=False)
    assert summary.num_train == 2  # each training dive is the other's only exemplar: a fixed pair
    cfg = load_config(CONFIG, [*FAST, *MICRO, f"data.root={root}", "max_steps=12", "epochs=100", "log_every=1",
                               "eval_at_end=false", "optim.warmup_epochs=0", "optim.lr=0.005", "optim.lr_factor=1.0",
                               "data.use_masks=true", "eval_every=1000"])
    train(cfg, tmp_path / "overfit")
    records = events(tmp_path / "overfit", "train")
    assert len(records) == 12
    # The transition BCE (2 positives among 192 outputs) falls slowest; the others fall fast.
    for name, factor in (("loss_total", 0.8), ("loss_score", 0.8), ("loss_mask", 0.8), ("loss_transition", 0.95)):
        values = [r[name] for r in records]
        first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
        assert last < factor * first, (name, values)


def test_config_errors_are_clear_messages(tmp_path, capsys):
    import logging

    before = list(logging.getLogger().handlers)
    assert train_main(["--config", str(CONFIG), "--out", str(tmp_path / "a"), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "known keys under optim" in err
    # Called in-process, main() leaves no handler on this test's (soon closed) stderr, nor train.log open.
    assert not [h for h in logging.getLogger().handlers if h not in before]
    assert train_main(["--config", str(CONFIG), "--out", str(tmp_path / "b")]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert train_main(["--config", str(CONFIG), "--data-root", str(tmp_path / "nowhere"), "--out",
                       str(tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert train_main(["--config", str(CONFIG), "--gpus", "4"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_sigterm_leaves_a_loadable_last_checkpoint(synth_root, tmp_path):
    out = tmp_path / "term"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "train", "--config", str(CONFIG), "--data-root", str(synth_root),
                             "--out", str(out), "--max-steps", "1000", *FAST, *MICRO, "log_every=1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and events(out, "train"):
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    data = load_checkpoint(out / "last.pt")
    assert data["trainer"]["step"] >= 1
    assert events(out, "end")[-1]["stopped_by_signal"] is True
    assert "--resume" in err


def test_non_finite_loss_stops_naming_step_and_sample(synth_root, tmp_path):
    root = tmp_path / "nan"
    shutil.copytree(synth_root, root)
    ann_path = root / "Annotations" / "fine-grained_annotation_aqa.pkl"
    ann = pickle.loads(ann_path.read_bytes())
    for key, record in ann.items():
        ann[key] = (record[0], float("nan"), *record[2:])
    ann_path.write_bytes(pickle.dumps(ann))
    cfg = load_config(CONFIG, [*FAST, *MICRO, f"data.root={root}", "max_steps=3"])
    with pytest.raises(TrainingError) as info:
        train(cfg, tmp_path / "run")
    msg = str(info.value)
    assert "non-finite loss at step 0" in msg and "query SynthWorld" in msg
    assert not (tmp_path / "run" / "last.pt").exists()
