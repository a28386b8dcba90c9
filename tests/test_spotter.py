"""The spotter: its ONNX step graph equals the torch model, it is causal, its spec and weights load safely."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from conftest import randomise_batchnorm  # noqa: E402

from fineparser import spotter_spec  # noqa: E402
from fineparser.spotter import (  # noqa: E402
    IGNORE_INDEX,
    Spotter,
    SpotterConfig,
    SpotterConfigError,
    frame_logits,
    load_trunk_weights,
    step_targets,
    summarise_spotter,
)
from fineparser.spotter_spec import SpotterSpec, SpotterSpecError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMALL = SpotterConfig(input_height=48, input_width=80, feature_dim=24, hidden_size=16, lookahead=2)
"""A spotter small enough that every test runs in about a second on 2 cores."""


@pytest.fixture(scope="module")
def small_spotter():
    """An eval-mode small spotter with random weights and batch-norm statistics (do not modify it)."""
    torch.manual_seed(7)
    model = Spotter(SMALL)
    randomise_batchnorm(model, seed=7)
    return model.eval()


def random_frames(count: int, hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *hw, 3), dtype=np.uint8)


def test_onnx_step_by_step_equals_torch_sequence_forward(small_spotter, tmp_path):
    from export.spotter import export_spotter
    from fineparser.onnx_session import CPU_PROVIDERS, onnx_session
    from fineparser.package import sha256_file

    record = export_spotter(small_spotter, tmp_path, parity_frame_count=12)
    path = tmp_path / spotter_spec.SPOTTER_FILE
    assert record["file"] == spotter_spec.SPOTTER_FILE and record["sha256"] == sha256_file(path)
    assert record["parity"]["passed"] and record["parity"]["max_abs_probs"] <= 1e-4
    assert record["audit"]["passed"], record["audit"]["problems"]
    spec = SpotterSpec.from_manifest({"spotter": record})
    assert spec.lookahead == SMALL.lookahead and spec.input_hw == SMALL.input_hw
    assert [(t["name"], t["dtype"], t["shape"]) for t in record["graph"]["inputs"]] == [
        ("frame", "uint8", [1, 48, 80, 3]), ("state", "float32", [1, 16])]
    assert [(t["name"], t["shape"]) for t in record["graph"]["outputs"]] == [("probs", [1, 5]), ("state_out", [1, 16])]

    # Independently of the export's own check: a sequence that continues from a non-zero state.
    frames = random_frames(10, SMALL.input_hw, seed=3)
    start = torch.rand(1, SMALL.hidden_size) * 2 - 1
    with torch.no_grad():
        logits, torch_state = small_spotter(torch.from_numpy(frames)[None], start)
    session = onnx_session(path, providers=CPU_PROVIDERS)
    state = start.numpy()
    for t, frame in enumerate(frames):
        probs, state = session.run(None, {"frame": frame[None], "state": state})
        np.testing.assert_allclose(probs[0], torch.softmax(logits[0, t], -1).numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(state, torch_state.numpy(), rtol=0, atol=1e-4)


def test_step_equals_sequence_forward_in_torch(small_spotter):
    frames = torch.from_numpy(random_frames(6, SMALL.input_hw, seed=4))[None]
    with torch.no_grad():
        logits, final = small_spotter(frames)
        state = small_spotter.initial_state(1)
        for t in range(frames.shape[1]):
            step_logits, probs, state = small_spotter.step(frames[:, t], state)
            torch.testing.assert_close(step_logits, logits[:, t], rtol=0, atol=1e-5)
            torch.testing.assert_close(probs.sum(-1), torch.ones(1))
    torch.testing.assert_close(state, final, rtol=0, atol=1e-6)


def test_label_of_frame_t_ignores_frames_after_t_plus_lookahead(small_spotter):
    lookahead, frame_t, steps = SMALL.lookahead, 3, 10
    frames = torch.from_numpy(random_frames(steps, SMALL.input_hw, seed=5))[None]
    changed = frames.clone()
    changed[:, frame_t + lookahead + 1:] = torch.from_numpy(random_frames(steps - frame_t - lookahead - 1,
                                                                          SMALL.input_hw, seed=6))
    with torch.no_grad():
        before = frame_logits(small_spotter(frames)[0], lookahead)
        after = frame_logits(small_spotter(changed)[0], lookahead)
    assert before.shape == (1, steps - lookahead, len(spotter_spec.CLASS_NAMES))
    torch.testing.assert_close(after[:, :frame_t + 1], before[:, :frame_t + 1], rtol=0, atol=1e-6)
    # ... while the labels of the frames whose look-ahead window saw the change do move.
    assert (after[:, frame_t + 1:] - before[:, frame_t + 1:]).abs().max() > 1e-4


def test_training_targets_are_delayed_by_the_lookahead():
    labels = torch.tensor([[0, 1, 2, 3, 4, 0]])
    assert step_targets(labels, 2).tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 0, 1, 2, 3]]
    assert step_targets(labels, 0).tolist() == labels.tolist()
    assert spotter_spec.labelled_frame(5, 2) == 3 and spotter_spec.labelled_frame(1, 2) == -1


def test_spotter_spec_imports_and_prepares_frames_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\n"
            "import numpy as np\n"
            "from fineparser import spotter_spec as s\n"
            "spec = s.SpotterSpec.from_dict(s.SpotterSpec().to_dict())\n"
            "frame = spec.prepare(np.full((720, 1280, 3), 200, np.uint8))\n"
            "assert frame.shape == (*s.INPUT_HW, 3) and frame.dtype == np.uint8 and (frame == 200).all()\n"
            "assert spec.start_state().shape == (1, spec.hidden_size)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_spotter_frame_is_an_area_resize_of_rgb_uint8():
    import cv2

    from fineparser.preprocess import box_reduce_frame

    frame = random_frames(1, (1080, 1920), seed=8)[0]
    out = spotter_spec.spotter_frame(frame, (90, 160))
    assert out.shape == (90, 160, 3)
    # From the model frame's box reduction (what the capture thread has anyway)...
    reduced = box_reduce_frame(frame)
    np.testing.assert_array_equal(out, cv2.resize(reduced, (160, 90), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(spotter_spec.spotter_frame(frame, (90, 160), reduced=reduced), out)
    # ...which is the full frame's area average up to the rounding in the middle.
    direct = cv2.resize(frame, (160, 90), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - direct.astype(int)).max() <= 1
    # An input larger than the reduction is made from the full frame, not upscaled from the reduction.
    large = spotter_spec.spotter_frame(frame, (600, 400), reduced=reduced)
    np.testing.assert_array_equal(large, cv2.resize(frame, (400, 600), interpolation=cv2.INTER_AREA))
    with pytest.raises(ValueError, match=r"uint8 RGB frame \[H, W, 3\].*float32"):
        spotter_spec.spotter_frame(frame.astype(np.float32))


def test_trunk_weights_load_from_a_timm_state_dict(tmp_path):
    import timm

    torch.manual_seed(11)
    source = timm.create_model(SMALL.trunk, pretrained=False, num_classes=1000)
    randomise_batchnorm(source, seed=11)
    # As ImageNet checkpoints ship: wrapped in "state_dict", keys saved from DataParallel, with a classifier.
    path = tmp_path / "imagenet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = Spotter(SMALL)
    load_trunk_weights(model, path)
    loaded = model.trunk.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("classifier."):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_trunk_weights_of_another_network_are_a_clear_error(tmp_path):
    import timm

    from fineparser.checkpoint import CheckpointError

    wrong = tmp_path / "regnet.pth"
    torch.save(timm.create_model("regnety_002", pretrained=False).state_dict(), wrong)
    with pytest.raises(CheckpointError, match=r"regnet\.pth -> spotter trunk \(needs timm mobilenetv3_small_050.*"
                                              r"(missing|unexpected) key"):
        load_trunk_weights(Spotter(SMALL), wrong)
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match=r"notes\.txt: cannot be loaded as weights"):
        load_trunk_weights(Spotter(SMALL), text)


def test_spec_and_config_reject_unknown_keys_listing_the_known_ones():
    values = {**SpotterSpec().to_dict(), "fps": 25}
    with pytest.raises(SpotterSpecError, match=r"unknown spotter spec key\(s\) fps; known keys: classes, "):
        SpotterSpec.from_dict(values)
    with pytest.raises(SpotterSpecError, match=r"unknown spotter threshold\(s\) start; known: live_enter"):
        SpotterSpec.from_dict({"thresholds": {"start": 0.5}})
    with pytest.raises(SpotterSpecError, match="lookahead 9 is outside 0..8"):
        SpotterSpec.from_dict({"lookahead": 9})
    with pytest.raises(SpotterConfigError, match=r"unknown spotter config key\(s\) depth; known keys: trunk"):
        SpotterConfig.from_dict({"depth": 3})
    with pytest.raises(SpotterConfigError, match="unknown spotter trunk 'resnet50'; known: mobilenetv3_small_050"):
        SpotterConfig.from_dict({"trunk": "resnet50"})
    spec = SMALL.to_spec({"live_enter": 0.7})
    assert SpotterSpec.from_dict(spec.to_dict()) == spec and spec.thresholds["live_exit"] == 0.3
    with pytest.raises(SpotterSpecError, match="has no spotter"):
        SpotterSpec.from_manifest({"format": "fineparser-package"})


def test_a_stream_starts_from_the_specs_initial_state_or_zeros():
    spec = SpotterSpec(hidden_size=3)
    assert spec.start_state().tolist() == [[0.0, 0.0, 0.0]]
    warm = SpotterSpec.from_dict({**spec.to_dict(), "initial_state": [0.5, -1.0, 0.25]})
    assert warm.start_state().dtype == np.float32 and warm.start_state().tolist() == [[0.5, -1.0, 0.25]]
    with pytest.raises(SpotterSpecError, match=r"initial_state has 2 values .*hidden_size 3.*fineparser-calibrate"):
        SpotterSpec.from_dict({**spec.to_dict(), "initial_state": [0.5, 1.0]})
    with pytest.raises(SpotterSpecError, match="initial_state has 3 values"):
        SpotterSpec.from_dict({**spec.to_dict(), "initial_state": [0.5, float("nan"), 1.0]})


def test_summary_reports_parameters_flops_and_input(capsys):
    from fineparser.summary import main

    figures = summarise_spotter(SMALL)
    assert figures["input_hw"] == [48, 80] and figures["flops_per_frame"] > 1e6
    assert figures["params_total"] == sum(p.numel() for p in Spotter(SMALL).parameters())
    assert main(["--spotter"]) == 0
    out = capsys.readouterr().out
    assert "input 90x160" in out and "FLOPs per frame" in out and "mobilenetv3_small_050" in out


def test_a_spotter_is_added_to_an_existing_package(small_spotter, tmp_path, capsys):
    import json
    import shutil

    from export.cli import main as export_main
    from fineparser.package import load_package
    from fineparser.spotter import save_spotter
    from runtime.spotter import has_spotter

    package = tmp_path / "pkg"
    shutil.copytree(REPO / "demo" / "package", package)
    checkpoint = save_spotter(tmp_path / "spotter.pt", small_spotter)
    before = json.loads((package / "manifest.json").read_text())
    assert export_main([str(checkpoint), "--add-spotter", "--out", str(package)]) == 0
    loaded = load_package(package)  # every file, spotter.onnx included, matches its recorded hash
    assert has_spotter(loaded) and "spotter.onnx" in loaded.manifest["files"]
    assert loaded.manifest["spotter"]["parity"]["passed"]
    assert loaded.manifest["bank"] == before["bank"] and loaded.manifest["graphs"] == before["graphs"]
    # A file that is not a spotter checkpoint: one error line, the package untouched.
    (package / "spotter.onnx").unlink()
    manifest_text = (package / "manifest.json").read_text()
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    assert export_main([str(tmp_path / "other.pt"), "--add-spotter", "--out", str(package)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "other.pt" in err[0]
    assert (package / "manifest.json").read_text() == manifest_text
