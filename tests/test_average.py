"""`python -m train.average`: the mean of a run's evaluated weights, for export and evaluation; clear refusals."""

from __future__ import annotations

from pathlib import Path

import torch

from fineparser.spotter import Spotter, SpotterConfig, load_spotter, save_spotter
from train.average import main

SMALL = SpotterConfig(input_height=48, input_width=80, feature_dim=24, hidden_size=16, lookahead=2)


def evaluated_run(run: Path, values: dict[int, float], config: SpotterConfig = SMALL, seed: int = 1) -> Spotter:
    """eval-<step>.pt files as keep_evaluated writes them, every float tensor of step s filled with values[s]."""
    run.mkdir(parents=True, exist_ok=True)
    model = Spotter(config)
    for step, value in values.items():
        with torch.no_grad():
            for tensor in model.state_dict().values():
                tensor.fill_(value if tensor.is_floating_point() else step)
        save_spotter(run / f"eval-{step}.pt", model, {"train_config": {"seed": seed}, "step": step, "epoch": step // 10,
                                                      "optimizer": {"state": {}}}, metrics={"macro_f1": value})
    return model


def test_the_last_evaluations_are_averaged_into_a_checkpoint_export_reads(tmp_path):
    run = tmp_path / "run"
    evaluated_run(run, {100: 1.0, 200: 2.0, 300: 3.0, 400: 13.0})
    assert main([str(run)]) == 0  # the last 3: 2, 3, 13 (mean 6, median 3)
    model, data = load_spotter(run / "averaged.pt")
    state = model.state_dict()
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(torch.allclose(v, torch.full_like(v, 6.0)) for v in floats)
    counters = [v for v in state.values() if not v.is_floating_point()]
    assert counters and all(int(v.flatten()[0]) == 400 for v in counters)  # integer buffers: the newest's
    assert data["averaged_from"] == {"steps": [200, 300, 400], "files": ["eval-200.pt", "eval-300.pt", "eval-400.pt"]}
    assert data["metrics"] == {} and "optimizer" not in data["trainer"] and data["trainer"]["step"] == 400

    assert main([str(run), "--steps", "100,300,400", "--out", str(tmp_path / "three.pt")]) == 0
    three, _ = load_spotter(tmp_path / "three.pt")  # 1, 3, 13: mean 17 / 3
    assert all(torch.allclose(v, torch.full_like(v, 17 / 3)) for v in three.state_dict().values()
               if v.is_floating_point())


def test_what_cannot_be_averaged_is_one_line_naming_the_file(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "has no eval-<step>.pt: train with keep_evaluated=true" in capsys.readouterr().err

    run = tmp_path / "run"
    evaluated_run(run, {100: 1.0, 200: 2.0})
    for bad in ("3", "0"):
        assert main([str(run), "--last", bad]) == 2
        assert f"--last {bad}: " in capsys.readouterr().err
    assert main([str(run), "--steps", ","]) == 2
    assert "is not a comma-separated list of steps" in capsys.readouterr().err
    assert main([str(run), "--steps", "100,150"]) == 2
    assert "no eval-<step>.pt for step(s) 150; it has 100, 200" in capsys.readouterr().err

    # An older run's evaluation left in the folder: another seed, or another model.
    evaluated_run(run, {300: 3.0}, seed=2)
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval-100.pt was trained with other settings than" in err
    assert "seed: 1 -> 2" in err
    evaluated_run(run, {300: 3.0}, SpotterConfig(input_height=48, input_width=80, feature_dim=24, hidden_size=8,
                                                  lookahead=2))
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval-100.pt: its spotter_config differs from" in err and "eval-300.pt" in err
    assert not (run / "averaged.pt").exists()
    (run / "eval-500.pt").write_text("not weights")
    assert main([str(run)]) == 2
    assert "eval-500.pt: cannot be loaded as weights" in capsys.readouterr().err


def test_fineparser_checkpoints_average_the_same_way(tmp_path):
    from fineparser.checkpoint import load_model, save_checkpoint
    from fineparser.config import FineParserConfig
    from fineparser.model import FineParser

    run = tmp_path / "run"
    model = FineParser(FineParserConfig(preset="tiny"))
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for step, scale in ((10, 1.0), (20, 3.0), (30, 11.0)):
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if tensor.is_floating_point():
                    tensor.copy_(reference[name] * scale)
        save_checkpoint(run / f"eval-{step}.pt", model, {"step": step}, metrics={"rho": 0.5})
    assert main([str(run)]) == 0
    averaged, data = load_model(run / "averaged.pt")
    for name, tensor in averaged.state_dict().items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, reference[name] * 5.0, atol=1e-4), name
    assert data["averaged_from"]["steps"] == [10, 20, 30]
