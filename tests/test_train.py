"""The trainer: DDP on gloo, exact resume, learning, clear errors, SIGTERM and NaN safety."""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fineparser.checkpoint import load_checkpoint, load_model
from fineparser.config import ConfigError
from train.__main__ import main as train_main
from train.config import load_config
from train.evaluate import eval_due, update_best
from train.trainer import TrainingError, check_pretrained_weights, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic_tiny.yaml"
PAPER_CONFIG = ROOT / "configs" / "finediving_hm.yaml"
# A narrower `tiny` for the tests whose subject is the loop, not the network (same graph, seconds per run).
MICRO = ["model.i3d_width=0.0625", "model.side_channels=2", "model.sve_channels=[8,16,32,64]", "model.token_dim=8",
         "model.decoder_heads=2", "model.decoder_depth=1", "model.regressor_hidden=[16,8]"]
FAST = ["data.num_workers=0", "batch_size=1", "accumulation=1", "model.voter_number=2", "eval_max_queries=2",
        "optim.parser_refit_steps=0"]


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
                       "--max-steps", "2", *FAST, "data.use_masks=true", "loss.window_timing=10"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    end = events(out, "end")[-1]
    assert end["loss_window_timing"] > 0  # the training-only head trained on both ranks (DDP wraps it too)
    assert events(out, "start")[0]["world"] == 2
    assert end["steps"] == 2 and end["weights_identical_across_ranks"] is True
    assert len(set(end["rank_weight_digests"])) == 1 and len(end["rank_weight_digests"]) == 2
    # Mask metrics both ways, gathered from the two ranks' shards: ours (pooled) and the paper's (per pair).
    assert 0 <= end["mask_iou"] <= 1 and 0 <= end["paper_mask_iou"] <= 1 and end["eval_dives"] == 2
    model, data = load_model(out / "last.pt")
    assert data["trainer"]["step"] == 2 and model.config.preset == "tiny"


def test_resume_continues_exactly(synth_root, tmp_path):
    # With the training-only window-timing head: its weights must come back too, or the resumed run drifts.
    base = [*FAST, *MICRO, "eval_at_end=false", "data.use_masks=true", "optim.backbone_lr_factor=0.5",
            "loss.window_timing=10"]
    cfg = load_config(CONFIG, [*base, f"data.root={synth_root}", "max_steps=4"])
    straight = train(cfg, tmp_path / "straight")
    cfg_half = load_config(CONFIG, [*base, f"data.root={synth_root}", "max_steps=2"])
    train(cfg_half, tmp_path / "resumed")
    resumed = train(cfg, tmp_path / "resumed", resume=True)
    assert straight["steps"] == resumed["steps"] == 4
    a_ckpt = load_checkpoint(tmp_path / "straight" / "last.pt")
    b_ckpt = load_checkpoint(tmp_path / "resumed" / "last.pt")
    a, b = a_ckpt["model"], b_ckpt["model"]
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    heads_a, heads_b = a_ckpt["trainer"]["training_heads"], b_ckpt["trainer"]["training_heads"]
    assert sorted(heads_a) == ["timing_head.bias", "timing_head.weight"]
    assert max((heads_a[k] - heads_b[k]).abs().max().item() for k in heads_a) <= 1e-6
    # Each part at its configured rate: the I3D trunk, the parser, the head (lr x 30 by default), the rest.
    rates = [g["initial_lr"] for g in a_ckpt["trainer"]["optimizer"]["param_groups"]]
    assert rates == pytest.approx([cfg.optim.lr * 0.5, cfg.optim.lr, cfg.optim.lr * 30, cfg.optim.lr])
    # The model's weights are FineParser's only: the package and an official-layout load never see the head.
    assert not any("timing" in k for k in a)
    # Resuming with another objective is another recipe: refused, naming the setting; and even when asked for,
    # it would silently drop (or invent) the head: one clear error instead.
    cfg_other = load_config(CONFIG, [*base, "loss.window_timing=0", f"data.root={synth_root}", "max_steps=6"])
    with pytest.raises(TrainingError, match=r"loss\.window_timing: 10 -> 0"):
        train(cfg_other, tmp_path / "resumed", resume=True)
    with pytest.raises(TrainingError, match="training heads .*loss.window_timing"):
        train(cfg_other, tmp_path / "resumed", resume=True, allow_config_change=True)


def test_the_window_timing_readout_asks_each_window_frame_which_side_of_each_transition_it_is():
    from train.trainer import window_timing_loss, window_timing_targets

    targets = window_timing_targets(torch.tensor([[20, 76]]))  # first frames of flight and entry
    assert targets.shape == (1, 9, 16, 2)
    # Window 1 holds frames 10..25: frames 10..19 are before flight, 20..25 in it; none is in the entry yet.
    assert targets[0, 1, :, 0].tolist() == [0.0] * 10 + [1.0] * 6 and not targets[0, 1, :, 1].any()
    # Window 7 holds frames 70..85: all after the first transition, from frame 76 on after the second.
    assert targets[0, 7, :, 0].all() and targets[0, 7, :, 1].tolist() == [0.0] * 6 + [1.0] * 10
    # The loss is ~0 for logits that say exactly that, and large for the same logits one frame off.
    logits = (targets * 2 - 1).reshape(1, 9, 32) * 30
    assert float(window_timing_loss(logits, torch.tensor([[20, 76]]))) < 1e-6
    assert float(window_timing_loss(logits, torch.tensor([[21, 76]]))) > 0.1


def test_loss_decreases_when_overfitting_a_fixed_pair(tmp_path):
    from synth import generate_dataset

    root = tmp_path / "pair"
    summary = generate_dataset(root, 3, seed=11, dive_pool=1, progress=False)
    assert summary.num_train == 2  # each training dive is the other's only exemplar: a fixed pair
    # Both pairs in every step, no edge shift: what still varies from step to step is the flip and the crop.
    cfg = load_config(CONFIG, [*FAST, *MICRO, f"data.root={root}", "max_steps=16", "epochs=100", "log_every=1",
                               "eval_at_end=false", "optim.warmup_epochs=0", "optim.lr=0.003", "optim.lr_factor=1.0",
                               "data.use_masks=true", "eval_every=1000", "batch_size=2", "data.train_end_shift=[0,0]"])
    train(cfg, tmp_path / "overfit")
    records = events(tmp_path / "overfit", "train")
    assert len(records) == 16
    # Medians of the first and last 4 steps. The score loss falls fast to the pair's mean, then jumps with the
    # flip and crop of each step (last/first 0.10-0.59 over seeds 1-3 and 10086 on an AMD EPYC machine: the
    # end-of-run average of 3 steps of batch 1 was not enough there); the focal mask loss falls steadily
    # (0.80-0.85); the transition loss (listwise: BCE + which-frame cross-entropy) slowest (0.97-0.98): the
    # temporal parser needs thousands of steps (docs/train.md).
    for name, factor in (("loss_total", 0.85), ("loss_score", 0.7), ("loss_mask", 0.9), ("loss_transition", 0.99)):
        values = [r[name] for r in records]
        first, last = statistics.median(values[:4]), statistics.median(values[-4:])
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
    assert train_main(["--config", str(CONFIG), "--out", str(tmp_path / "d"), "voter_number=5"]) == 2
    assert "moved to model.voter_number" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert train_main(["--config", str(CONFIG), "--gpus", "4"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("to_group", [False, True], ids=["to-the-trainer", "to-its-group-with-a-loader-worker"])
def test_sigterm_leaves_a_loadable_last_checkpoint(synth_root, tmp_path, to_group):
    # To the group: the loader worker gets the signal too (Ctrl-C, a scheduler, pkill -f); it must not take the
    # trainer down before it saves.
    out = tmp_path / "term"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = ["data.num_workers=1"] if to_group else []
    proc = subprocess.Popen([sys.executable, "-m", "train", "--config", str(CONFIG), "--data-root", str(synth_root),
                             "--out", str(out), "--max-steps", "1000", *FAST, *MICRO, *workers, "log_every=1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=to_group)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and events(out, "train"):
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    if to_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
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


def test_voter_number_is_the_model_configs_alone(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("model: {preset: tiny}\nvoter_number: 5\n")
    with pytest.raises(ConfigError, match=r"voter_number is no longer a training setting, it moved to model\.voter"):
        load_config(old)
    # The value the trainer evaluates with is the one the checkpoint (and so the package) carries.
    assert load_config(CONFIG).model_config().voter_number == 5
    assert load_config(ROOT / "configs" / "finediving_hm.yaml").model_config().voter_number == 10


@pytest.fixture(scope="module")
def three_pairs(tmp_path_factory):
    """4 dives of one dive number: 3 training pairs (an odd epoch of batches of 1) and 1 test dive."""
    from synth import generate_dataset

    root = tmp_path_factory.mktemp("three_pairs")
    summary = generate_dataset(root, 4, seed=11, dive_pool=1, progress=False)
    assert summary.num_train == 3
    return root


class Killed(Exception):
    """Stands for the process dying (SIGKILL, out of memory) in the middle of an evaluation."""


def test_a_kill_during_evaluation_keeps_the_epoch_and_resume_evaluates_it(three_pairs, tmp_path, monkeypatch):
    import train.trainer as trainer_module

    real_evaluate = trainer_module.evaluate

    def killed(*args, **kwargs):
        raise Killed

    cfg = load_config(CONFIG, [*FAST, *MICRO, f"data.root={three_pairs}", "epochs=2", "eval_at_end=false"])
    run = tmp_path / "run"
    monkeypatch.setattr(trainer_module, "evaluate", killed)
    with pytest.raises(Killed):
        train(cfg, run)
    saved = load_checkpoint(run / "last.pt")
    assert saved["trainer"]["epoch"] == 1 and saved["trainer"]["step"] == 3
    assert saved["trainer"]["batch_in_epoch"] == 0 and saved["trainer"]["eval_pending"] is True
    assert not events(run, "eval")

    weights_evaluated = []

    def recording(model, *args, **kwargs):
        weights_evaluated.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", recording)
    summary = train(cfg, run, resume=True)
    # First the missed evaluation of epoch 1, on exactly the saved weights; then epoch 2 and its evaluation.
    assert [(e["epoch"], e["step"]) for e in events(run, "eval")] == [(1, 3), (2, 6)]
    assert all(torch.equal(weights_evaluated[0][k], v) for k, v in saved["model"].items())
    assert summary["steps"] == 6 and summary["epochs_done"] == 2
    last = load_checkpoint(run / "last.pt")
    assert last["trainer"]["eval_pending"] is False and last["metrics"]["voter_number"] == 2
    # Each metric's own best over both evaluations travels in last.pt and the summary; with one test dive the
    # score metrics are NaN, and a NaN never counts as a best.
    assert set(summary["best_each"]) == {"aiou_50", "aiou_75", "tr_median", "tr_within_2"}
    assert last["trainer"]["best_each"] == summary["best_each"]
    assert all(entry["epoch"] in (1, 2) for entry in summary["best_each"].values())


def test_resume_and_eval_only_keep_the_runs_config_and_record_their_own(synth_root, tmp_path):
    run = tmp_path / "run"
    base = ["--config", str(CONFIG), "--data-root", str(synth_root), "--out", str(run), *FAST, *MICRO,
            "eval_at_end=false"]
    assert train_main([*base, "--max-steps", "1"]) == 0
    original = (run / "config.yaml").read_text()
    assert train_main([*base, "--max-steps", "2", "--resume"]) == 0
    assert train_main([*base, "--eval-only", str(run / "last.pt")]) == 0
    assert train_main([*base, "--max-steps", "3", "--resume"]) == 0
    assert (run / "config.yaml").read_text() == original and yaml.safe_load(original)["max_steps"] == 1
    resumed = [yaml.safe_load((run / f"config.resume-{n}.yaml").read_text()) for n in (1, 2)]
    assert [r["max_steps"] for r in resumed] == [2, 3]
    assert (run / "config.eval-1.yaml").is_file() and not (run / "config.eval-2.yaml").exists()
    assert [e["config"] for e in events(run, "start")] == ["config.yaml", "config.resume-1.yaml",
                                                             "config.resume-2.yaml"]
    assert events(run, "eval")[-1]["config"] == "config.eval-1.yaml"
    assert load_checkpoint(run / "last.pt")["trainer"]["step"] == 3


def test_a_short_last_accumulation_group_gets_the_unaccumulated_gradient(three_pairs, tmp_path):
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    grads: list[list[torch.Tensor]] = []

    def record(optimizer, args, kwargs):
        grads.append([p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]
                      if p.grad is not None])

    # 3 micro-steps per epoch; with accumulation 2 the epoch's steps take micro-steps [0, 1] and [2].
    # At lr 0 the weights never move, so micro-step i has the same gradient in both runs.
    common = [*FAST, *MICRO, f"data.root={three_pairs}", "epochs=1", "eval_every=1000",
              "eval_at_end=false", "log_every=1", "optim.lr=0", "optim.warmup_epochs=0", "optim.grad_clip=0"]
    handle = register_optimizer_step_pre_hook(record)
    try:
        train(load_config(CONFIG, [*common, "accumulation=1"]), tmp_path / "plain")
        plain = grads[:]
        grads.clear()
        train(load_config(CONFIG, [*common, "accumulation=2"]), tmp_path / "accumulated")
        accumulated = grads[:]
    finally:
        handle.remove()
    assert len(plain) == 3 and len(accumulated) == 2
    scale = max(g.abs().max().item() for g in plain[2])
    assert scale > 0
    for a, g0, g1 in zip(accumulated[0], plain[0], plain[1], strict=True):
        torch.testing.assert_close(a, (g0 + g1) / 2, rtol=1e-5, atol=1e-6 * scale)
    for a, g2 in zip(accumulated[1], plain[2], strict=True):  # divided by 1, its real size, not by 2
        torch.testing.assert_close(a, g2, rtol=1e-6, atol=1e-7 * scale)
    # A train record's losses are the mean over the micro-steps since the previous record.
    p, a = events(tmp_path / "plain", "train"), events(tmp_path / "accumulated", "train")
    assert a[0]["loss_total"] == pytest.approx((p[0]["loss_total"] + p[1]["loss_total"]) / 2, rel=1e-5)
    assert a[1]["loss_total"] == pytest.approx(p[2]["loss_total"], rel=1e-6)


def test_the_package_records_the_training_metrics_and_their_voter_number(synth_root, tmp_path):
    from export.cli import main as export_main

    run = tmp_path / "run"
    # One step, then the evaluation at the end (all 3 test dives) that best.pt records.
    train(load_config(CONFIG, [*FAST, *MICRO, f"data.root={synth_root}", "max_steps=1", "eval_max_queries=0"]), run)
    best = load_checkpoint(run / "best.pt")
    assert best["metrics"]["voter_number"] == best["config"]["voter_number"] == 2
    assert export_main([str(run / "best.pt"), "--out", str(tmp_path / "pkg"), "--no-masks-graph",
                        "--parity-clips", "1"]) == 0
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    training = manifest["training"]
    assert training["status"] == "evaluated" and training["step"] == best["trainer"]["step"]
    assert training["voter_number"] == manifest["scoring"]["voter_number"] == 2
    assert training["metrics"]["rho"] == pytest.approx(best["metrics"]["rho"])
    assert training["metrics"]["eval_dives"] == 3


def test_training_targets_are_the_first_frames_of_the_second_and_last_steps():
    from fineparser.model import PairForward
    from fineparser.preprocess import transitions_from_labels
    from train.trainer import compute_losses, training_transitions

    # Four steps starting at frames 0, 20, 45, 76; a second clip whose last step is its last frame.
    labels_q = np.array([3] * 20 + [8] * 25 + [11] * 31 + [14] * 20)
    labels_e = np.array([3] * 40 + [9] * 55 + [14] * 1)
    reader = np.stack([transitions_from_labels(labels_q), transitions_from_labels(labels_e)])
    assert reader.tolist() == [[19, 75], [39, 94]]  # the reader: last frame before the second / last step
    batch = {"query": {"transitions": torch.from_numpy(reader[:1]), "key": ["q"], "score": torch.tensor([60.0])},
             "exemplar": {"transitions": torch.from_numpy(reader[1:]), "key": ["e"], "score": torch.tensor([50.0])}}
    assert training_transitions(batch) == 0
    # What the trainer feeds the model (static encoder, pair windows) and the loss: the steps' first frames.
    assert batch["query"]["transitions"].tolist() == [[20, 76]]
    assert batch["exemplar"]["transitions"].tolist() == [[40, 95]]
    # The transition BCE is ~0 exactly when the maps put their mass on those frames.
    probs = torch.zeros(2, 96, 2)
    probs[0, 20, 0] = probs[0, 76, 1] = probs[1, 40, 0] = probs[1, 95, 1] = 1.0
    out = PairForward(delta_12=torch.tensor([10.0]), delta_21=torch.tensor([-10.0]), transition_probs=probs,
                      predicted_transitions=torch.zeros(2, 2, dtype=torch.long), mask_logits=None)
    losses = compute_losses(out, batch, load_config(CONFIG), use_masks=False)
    assert float(losses["transition"]) < 1e-5 and float(losses["score"]) == 0.0
    # A transition on a clip's last frame (not from this reader) would target frame 96: clamped and counted.
    late = {"query": {"transitions": torch.tensor([[30, 95]]), "key": ["late"]},
            "exemplar": {"transitions": torch.tensor([[30, 60]]), "key": ["fine"]}}
    assert training_transitions(late) == 1 and late["query"]["transitions"].tolist() == [[31, 95]]


def test_the_listwise_transition_loss_pushes_the_true_frame_where_bce_alone_barely_does():
    from train.trainer import transition_loss

    # Near 1/96 everywhere is where per-frame BCE settles with one positive among 96: its pull on the true
    # frame is divided among 192 outputs.  The listwise term pulls the true frame up against its half.
    target = torch.tensor([[30, 70], [12, 90]])
    pulls = {}
    for form in ("paper", "listwise"):
        logits = torch.full((2, 96, 2), -4.55, requires_grad=True)  # sigmoid ~ 1/96
        transition_loss(torch.sigmoid(logits), target, form).backward()
        grad = logits.grad
        assert grad[0, 30, 0] < 0 and grad[1, 90, 1] < 0  # both raise the true frames
        pulls[form] = float(-grad[0, 30, 0])
        # The loss is lowest when the true frame wins the argmax of its half.
        right = torch.full((2, 96, 2), 0.01)
        right[0, 30, 0] = right[0, 70, 1] = right[1, 12, 0] = right[1, 90, 1] = 0.9
        wrong = right.clone()
        wrong[0, 30, 0], wrong[0, 31, 0] = 0.01, 0.9
        assert transition_loss(right, target, form) < transition_loss(wrong, target, form)
    assert pulls["listwise"] > 50 * pulls["paper"], pulls
    with pytest.raises(ValueError, match="paper, listwise"):
        transition_loss(torch.full((1, 96, 2), 0.5), torch.tensor([[1, 60]]), "focal")


def test_the_parser_is_refit_before_each_training_evaluation_and_eval_reports_the_guesses(synth_root, tmp_path):
    cfg = load_config(CONFIG, [*FAST, *MICRO, f"data.root={synth_root}", "max_steps=1", "eval_max_queries=0",
                               "optim.parser_refit_steps=100", "optim.parser_refit_lr=0.003"])
    run = tmp_path / "run"
    train(cfg, run)
    record = events(run, "eval")[-1]
    assert record["parser_refit_loss_after"] < record["parser_refit_loss_before"]
    # Next to each learned figure, its trivial guess: the exemplar mean for rho, the constant transition guess
    # (fitted on the train split) for AIoU and the transition error in frames.
    for key in ("rho", "baseline_rho", "aiou_75", "guess_aiou_75", "tr_median", "tr_within_1", "tr_within_2",
                "tr_median_1", "tr_median_2", "guess_tr_median", "guess_tr_within_1", "guess_tr_within_2",
                "guess_tr_median_1", "guess_tr_median_2"):
        assert key in record, key
    assert 0 <= record["tr_within_1"] <= record["tr_within_2"] <= 1
    # --eval-only judges the checkpoint as it is: no refit.
    cfg_eval = load_config(CONFIG, [*FAST, *MICRO, f"data.root={synth_root}", "eval_max_queries=0",
                                    "optim.parser_refit_steps=40"])
    train(cfg_eval, tmp_path / "eval", eval_only=run / "best.pt")
    assert "parser_refit_loss_after" not in events(tmp_path / "eval", "eval")[-1]


def test_a_new_run_without_pretrained_weights_refuses_in_one_line_unless_from_scratch(synth_root, tmp_path, capsys):
    args = ["--config", str(PAPER_CONFIG), "--data-root", str(synth_root)]
    assert train_main([*args, "--out", str(tmp_path / "a")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in ("i3d_weights=PATH", "model_rgb.pth", "kinetics_i3d_pytorch", "resnet_weights=PATH",
                   "resnet34-b627a593.pth", "download.pytorch.org", "from_scratch=true"):
        assert needle in lines[0], needle
    check_pretrained_weights(load_config(PAPER_CONFIG, ["i3d_weights=model_rgb.pth", "resnet_weights=r34.pth"]))
    check_pretrained_weights(load_config(CONFIG))  # the tiny CPU config says from_scratch: true
    # The paper's config itself trains from scratch when told so on purpose (narrowed for a CPU step; its
    # separate static batch, masks, single-worker sync_bn and paper eval schedule included).
    run = tmp_path / "scratch"
    assert train_main([*args, "--out", str(run), "--max-steps", "1", "from_scratch=true", "model.preset=tiny",
                       *FAST, *MICRO]) == 0
    assert load_checkpoint(run / "last.pt")["trainer"]["step"] == 1
    assert events(run, "end")[-1]["transition_targets_clamped"] == 0


def test_training_with_use_masks_refuses_to_start_without_masks(synth_root, tmp_path):
    from fineparser.data import MASKS_DIR_NAMES, DataPaths

    root = tmp_path / "no_masks"
    root.mkdir()
    for child in synth_root.iterdir():
        if child.name not in MASKS_DIR_NAMES:
            (root / child.name).symlink_to(child)
    note = DataPaths.discover(root).masks_note
    assert note and str(root / "diving_mask_annotation") in note
    cfg = load_config(CONFIG, [*FAST, *MICRO, f"data.root={root}", "data.use_masks=true", "max_steps=1"])
    with pytest.raises(TrainingError) as info:
        train(cfg, tmp_path / "run")
    message = str(info.value)
    assert note in message and "data.mask_root=DIR" in message and "data.use_masks=false" in message
    assert "\n" not in message and not (tmp_path / "run" / "last.pt").exists()


def test_the_paper_eval_schedule_and_eval_every_n():
    paper = [n for n in range(1, 61) if eval_due(n, "paper")]
    # The paper's runner, 0-based epoch e: e < 50 and (e+1) % 4 == 0, or e >= 50 and (e+1) % 2 == 0.
    assert paper == [e + 1 for e in range(60) if (e < 50 and (e + 1) % 4 == 0) or (e >= 50 and (e + 1) % 2 == 0)]
    assert paper[:13] == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52] and paper[13:15] == [54, 56]
    assert sum(eval_due(n, "paper") for n in range(1, 401)) == 12 + 175
    assert [n for n in range(1, 10) if eval_due(n, 3)] == [3, 6, 9]
    assert load_config(PAPER_CONFIG).eval_every == "paper" and load_config(CONFIG).eval_every == 1
    for bad in ("weekly", 0, True):
        with pytest.raises(ConfigError, match="eval_every must be an integer >= 1 or 'paper'"):
            load_config(CONFIG, [f"eval_every={str(bad).lower()}"])


def test_edge_shift_settings_reach_the_training_pairs_and_bad_ones_name_their_key():
    cfg = load_config(CONFIG, ["data.train_start_shift=[0,4]", "data.train_end_shift=[-4,0]"])
    assert (cfg.data.shifts().start, cfg.data.shifts().end) == ((0, 4), (-4, 0))
    paper = load_config(CONFIG).data.shifts()
    assert (paper.start, paper.end) == ((0, 0), (-3, 0))  # unset: the paper's
    for override, words in (("data.train_start_shift=[-2,0]", "data.train_start_shift must be >= 0"),
                            ("data.train_end_shift=[0,2]", "data.train_end_shift must be <= 0"),
                            ("data.train_end_shift=3", "data.train_end_shift must be two integers")):
        with pytest.raises(ConfigError, match=words):
            load_config(CONFIG, [override])


def test_each_metric_keeps_its_own_best_beside_the_best_rho_evaluation():
    evals = [{"rho": 0.50, "l2": 90.0, "rl2_x100": 1.2, "aiou_50": 0.70, "mask_iou": 0.40, "eval_dives": 9},
             {"rho": 0.62, "l2": 95.0, "rl2_x100": 1.1, "aiou_50": float("nan"), "mask_iou": 0.38},
             {"rho": 0.58, "l2": 80.0, "rl2_x100": 1.3, "aiou_50": 0.65, "paper_mask_iou": 0.33}]
    best: dict = {}
    for epoch, metrics in enumerate(evals, start=1):
        previous = copy.deepcopy(best)
        updated = update_best(best, metrics, epoch, epoch * 100)
        assert best == previous  # a new dict: no state kept anywhere but in the trainer's checkpointed state
        best = updated
    assert best["rho"] == {"value": 0.62, "epoch": 2, "step": 200}
    assert best["l2"] == {"value": 80.0, "epoch": 3, "step": 300}  # lower is better
    assert best["rl2_x100"]["epoch"] == 2 and best["aiou_50"]["epoch"] == 1  # a NaN never counts
    assert best["mask_iou"]["epoch"] == 1 and best["paper_mask_iou"]["epoch"] == 3
    assert "eval_dives" not in best


def test_resume_compares_only_settings_the_checkpoint_knows_and_leaves_the_free_ones():
    from train.config import config_changes

    saved = load_config(CONFIG, ["seed=1", "data.root=/old/place"]).to_dict()
    del saved["data"]["train_start_shift"]  # a checkpoint from before that setting trained with its default
    current = load_config(CONFIG, ["seed=1", "data.root=/new/place", "data.train_start_shift=[0,2]",
                                   "log_every=1", "max_steps=9"]).to_dict()
    assert config_changes(saved, current) == []
    current["data"]["train_end_shift"] = [-4, 0]
    current["optim"]["lr"] = 0.5
    assert [c[0] for c in config_changes(saved, current)] == ["data.train_end_shift", "optim.lr"]
