"""fineparser-calibrate: FP16/INT8 variants through ModelOpt, drift reports, the manifest, the cache."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("modelopt", reason="nvidia-modelopt[onnx] is not installed (pip install 'fineparser[calib]')")
onnx = pytest.importorskip("onnx", reason="onnx is not installed")

from calibration import cli as calibrate_cli  # noqa: E402
from calibration.clips import load_clips, spread_keys  # noqa: E402
from calibration.drift import VariantRun, drift_report, format_report  # noqa: E402
from calibration.variants import CalibrationError, percentile_cache  # noqa: E402
from export.cli import main as export_main  # noqa: E402
from fineparser.checkpoint import save_checkpoint  # noqa: E402
from fineparser.data import DataPaths, FineDivingIndex  # noqa: E402
from fineparser.package import load_package, sha256_file  # noqa: E402


@pytest.fixture(scope="module")
def fresh_package(tmp_path_factory, tiny_model, synth_root):
    """A factory of freshly exported tiny packages with a bank (the export runs once, copies are cheap)."""
    import shutil

    base = tmp_path_factory.mktemp("calib")
    ckpt = save_checkpoint(base / "tiny.pt", tiny_model)
    master = base / "master"
    assert export_main([str(ckpt), "--out", str(master), "--data-root", str(synth_root), "--exemplars-per-dive", "2",
                        "--parity-clips", "1", "--no-masks-graph"]) == 0
    counter = iter(range(100))

    def make() -> Path:
        copy = base / f"pkg{next(counter)}"
        shutil.copytree(master, copy)
        return copy

    return make


@pytest.fixture(scope="module")
def calibrated(fresh_package, synth_root, tmp_path_factory):
    """One full fineparser-calibrate run (fp16 and int8) on a tiny package."""
    pkg = fresh_package()
    fp32_hashes = {name: sha256_file(pkg / name) for name in ("encoder.onnx", "pair_head.onnx")}
    cache = tmp_path_factory.mktemp("cache")
    rc = calibrate_cli.main([str(pkg), "--data-root", str(synth_root), "--clips", "2", "--eval-clips", "3",
                             "--cache-dir", str(cache), "--accept-drift"])
    return pkg, rc, fp32_hashes, cache


def test_calibrate_records_fp16_and_int8_variants(calibrated):
    pkg, rc, fp32_hashes, _ = calibrated
    assert rc == 0
    package = load_package(pkg, verify=True)  # every file, the new ones included, matches its hash
    variants = {v["name"]: v for v in package.variants}
    assert set(variants) == {"fp32", "fp16", "int8"}
    for name in ("fp16", "int8"):
        drift = variants[name]["drift"]
        for key in ("rho_vs_fp32", "mean_abs_delta", "max_abs_delta", "transition_agreement", "clips", "goals"):
            assert key in drift, (name, key)
        assert drift["clips"] == 3
        assert drift["max_abs_delta"] >= drift["mean_abs_delta"] >= 0
        assert 0.0 <= drift["transition_agreement"] <= 1.0
        for graph, file in variants[name]["files"].items():
            assert package.has(file), (name, graph, file)
    # The fp32 graphs are not touched (ModelOpt rewrites the file it is given: it gets a copy).
    assert {n: sha256_file(pkg / n) for n in fp32_hashes} == fp32_hashes


def test_int8_graph_has_explicit_qdq_and_fp16_keeps_io_types(calibrated):
    pkg, _, _, _ = calibrated
    package = load_package(pkg)
    int8 = onnx.load(str(package.variant_files("int8")["encoder"]))
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    # The default leaves the temporal parser's head and the late I3D blocks in fp32 and records how much is int8.
    how = next(v for v in package.variants if v["name"] == "int8")["how"]["encoder"]
    assert how["method"] == "max" and 0.1 < how["int8_macs_share"] < 0.6
    dequantized = {o for n in int8.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8_convs = {n.name for n in int8.graph.node if n.op_type == "Conv" and n.input[0] in dequantized}
    assert any(name.startswith("/video_encoder/backbone/layer1/") for name in int8_convs)
    assert not any(name.startswith(("/psnet_model/", "/base_model/backbone/mixed_", "/segmenter/mixed_"))
                   for name in int8_convs)
    fp16_files = package.variant_files("fp16")
    for graph in ("encoder", "pair_head"):
        fp16 = onnx.load(str(fp16_files[graph]))
        fp32 = onnx.load(str(package.variant_files("fp32")[graph]))
        io = lambda m: [(v.name, v.type.tensor_type.elem_type) for v in (*m.graph.input, *m.graph.output)]  # noqa: E731
        assert io(fp16) == io(fp32), graph
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer), graph


def test_runtime_backend_runs_each_variant(calibrated):
    from runtime.backends import load_backend

    pkg, _, _, _ = calibrated
    package = load_package(pkg)
    frames = np.random.default_rng(0).integers(0, 256, (1, 96, 112, 112, 3), dtype=np.uint8)
    outputs = {}
    for precision in ("fp32", "fp16", "int8"):
        backend = load_backend("onnxruntime", package, precision=precision)
        assert precision in backend.description
        outputs[precision] = backend.encode(frames)
        assert outputs[precision]["window_features"].shape == outputs["fp32"]["window_features"].shape
        assert np.isfinite(outputs[precision]["window_features"]).all()


def test_cached_clips_are_read_back_identical(synth_root, tmp_path):
    index = FineDivingIndex(DataPaths.discover(synth_root), voter_number=2)
    keys = spread_keys(index, index.train_keys, 2)
    first, hits_first = load_clips(index, keys, tmp_path)
    second, hits_second = load_clips(index, keys, tmp_path)
    assert (hits_first, hits_second) == (0, 2)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    for a, b in zip(first, second, strict=True):
        assert a.key == b.key and np.array_equal(a.frames, b.frames)
        assert np.array_equal(a.transitions, b.transitions) and a.final_score == b.final_score
    # A damaged cache file is prepared again, not trusted.
    victim = sorted(tmp_path.glob("*.npy"))[0]
    victim.write_bytes(b"not a numpy file")
    third, hits_third = load_clips(index, keys, tmp_path)
    assert hits_third == 1 and all(np.array_equal(a.frames, c.frames) for a, c in zip(first, third, strict=True))


def test_spread_keys_covers_every_dive_number_first(synth_root):
    index = FineDivingIndex(DataPaths.discover(synth_root), voter_number=2)
    numbers = {index.info(k).dive_number for k in index.train_keys}
    chosen = spread_keys(index, index.train_keys, len(numbers))
    assert {index.info(k).dive_number for k in chosen} == numbers
    assert spread_keys(index, index.train_keys, 0) == list(index.train_keys)


def _run(scores, transitions) -> VariantRun:
    return VariantRun(np.asarray(scores, float), np.asarray(transitions, np.int64), 1.0, 1.0)


def test_drift_report_figures_and_goals():
    from calibration.clips import Clip

    clips = [Clip(f"c{i}", np.zeros((1,), np.uint8), "107B", s, np.array([10, 80])) for i, s in
             enumerate((50.0, 60.0, 70.0, 80.0))]
    reference = _run([50, 60, 70, 80], [[10, 80]] * 4)
    close = drift_report("int8", reference, _run([50.2, 60.1, 70.4, 80.3], [[10, 80]] * 4), clips)
    assert close.rho_vs_fp32 == pytest.approx(1.0)
    assert close.mean_abs_delta == pytest.approx(0.25) and close.max_abs_delta == pytest.approx(0.4)
    assert close.transition_agreement == 1.0 and close.transition_max_frames == 0
    assert close.passed and not close.failures
    shifted = drift_report("int8", reference, _run([50, 60, 70, 80], [[10, 80], [10, 80], [11, 80], [10, 80]]),
                           clips)
    assert shifted.transition_agreement == pytest.approx(7 / 8) and shifted.transition_max_frames == 1
    assert shifted.failures == ["transition_agreement 0.875 (goal >= 0.97)"]
    jump = drift_report("int8", reference, _run([50, 60, 70, 83.5], [[10, 80]] * 4), clips)  # mean 0.875, max 3.5
    assert {f.split()[0] for f in jump.failures} == {"mean_abs_delta", "max_abs_delta"}
    far = drift_report("int8", reference, _run([80, 70, 60, 50], [[10, 80]] * 4), clips)
    assert not far.passed and any("rho_vs_fp32" in f for f in far.failures)
    assert drift_report("fp16", reference, _run([50.1, 60, 70, 80], [[10, 80]] * 4), clips).passed  # mean 0.025
    fp16 = drift_report("fp16", reference, _run([50.4, 60, 70, 80], [[10, 80]] * 4), clips)  # mean 0.1
    assert not fp16.passed and "mean_abs_delta" in fp16.failures[0]


def test_drift_report_gives_transitions_against_the_truth_and_the_constant_guess():
    from calibration.clips import Clip
    from fineparser.metrics import ConstantTransitionGuess

    # Reader transitions [9, 79] are [10, 80] in the training convention.
    clips = [Clip(f"c{i}", np.zeros((1,), np.uint8), "107b", s, np.array([9 + i, 79])) for i, s in
             enumerate((50.0, 60.0, 70.0, 80.0))]
    reference = _run([50, 60, 70, 80], [[10, 80], [11, 80], [12, 80], [13, 80]])  # exact
    variant = _run([50, 60, 70, 80], [[10, 80], [11, 81], [12, 83], [13, 80]])
    report = drift_report("int8", reference, variant, clips, ConstantTransitionGuess(10, 80))
    truth = report.vs_truth
    assert truth["fp32"]["median"] == 0 and truth["fp32"]["within_1"] == 1 and truth["fp32"]["aiou_75"] == 1
    assert truth["variant"]["within_1"] == pytest.approx(7 / 8) and truth["variant"]["within_2"] == pytest.approx(7 / 8)
    guess = truth["constant_guess"]  # errors 0 0 1 0 2 0 3 0
    assert guess["median"] == 0
    assert guess["within_1"] == pytest.approx(6 / 8) and guess["within_2"] == pytest.approx(7 / 8)
    table = format_report([report])
    assert "constant guess" in table and "transitions against the truth" in table


def test_exactly_one_onnxruntime_is_installed():
    """onnxruntime and onnxruntime-gpu install the same module; two of them overwrite each other's files."""
    names = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-training")
    installed = []
    for name in names:
        try:
            installed.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    assert len(installed) == 1, f"expected exactly one onnxruntime distribution, found: {installed}"


def test_percentile_ranges_are_a_cache_modelopt_reads(fresh_package, synth_root, tmp_path):
    from modelopt.onnx.quantization.calib_utils import import_scales_from_calib_cache

    package = load_package(fresh_package())
    index = FineDivingIndex(DataPaths.discover(synth_root), voter_number=2)
    clips, _ = load_clips(index, spread_keys(index, index.train_keys, 1), None)
    cache = tmp_path / "percentile.cache"
    count = percentile_cache(package.encoder_path, {"frames": np.stack([c.frames for c in clips])}, 99.9, cache)
    scales = import_scales_from_calib_cache(str(cache))
    assert count == len(scales) > 50
    assert all(np.isfinite(v) and v > 0 for v in scales.values())


def test_calibrate_errors_are_one_line_with_exit_codes(fresh_package, synth_root, tmp_path, capsys, monkeypatch):
    pkg = fresh_package()
    assert calibrate_cli.main([str(pkg), "--data-root", str(synth_root), "--precision", "int4"]) == 2
    assert "--precision int4: unknown int4" in capsys.readouterr().err
    assert calibrate_cli.main([str(pkg), "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "--data-root" in capsys.readouterr().err
    (pkg / "bank.npz").write_bytes(b"tampered")
    assert calibrate_cli.main([str(pkg), "--data-root", str(synth_root)]) == 2
    assert "bank.npz" in capsys.readouterr().err

    def missing():
        raise CalibrationError("NVIDIA ModelOpt is not installed (test): pip install 'fineparser[calib]'")

    monkeypatch.setattr("calibration.variants.modelopt_version", missing)
    assert calibrate_cli.main([str(fresh_package()), "--data-root", str(synth_root)]) == 3
    assert "pip install 'fineparser[calib]'" in capsys.readouterr().err


def test_variant_missing_its_goal_is_not_recorded(fresh_package, synth_root, tmp_path, monkeypatch):
    import calibration.drift as drift

    pkg = fresh_package()
    before = json.loads((pkg / "manifest.json").read_text())
    monkeypatch.setitem(drift.GOALS, "int8", {"mean_abs_delta": -1.0})  # a goal nothing meets
    rc = calibrate_cli.main([str(pkg), "--data-root", str(synth_root), "--precision", "int8", "--clips", "1",
                             "--eval-clips", "2", "--cache-dir", str(tmp_path)])
    assert rc == 1
    after = json.loads((pkg / "manifest.json").read_text())
    assert after == before and not (pkg / "encoder_int8.onnx").exists()
    assert not [p for p in pkg.iterdir() if p.name.startswith(".")]  # no work directory left behind
    load_package(pkg, verify=True)


def test_calibrating_again_replaces_the_variant(calibrated, synth_root):
    pkg, _, _, cache = calibrated
    before = load_package(pkg).variant_files("int8")["encoder"]
    old_hash = sha256_file(before)
    rc = calibrate_cli.main([str(pkg), "--data-root", str(synth_root), "--precision", "int8", "--method", "max",
                             "--clips", "1", "--eval-clips", "2", "--cache-dir", str(cache), "--accept-drift"])
    assert rc == 0
    package = load_package(pkg, verify=True)
    int8 = [v for v in package.variants if v["name"] == "int8"]
    assert len(int8) == 1 and int8[0]["how"]["encoder"]["method"] == "max"
    assert sha256_file(package.variant_files("int8")["encoder"]) != old_hash
    assert {v["name"] for v in package.variants} == {"fp32", "fp16", "int8"}


def test_export_precision_runs_calibration_on_the_data_root(tmp_path, tiny_model, synth_root, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("calibration.cli.main", lambda argv: calls.append(argv) or 1)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", tiny_model)
    out = tmp_path / "pkg"
    assert export_main([str(ckpt), "--out", str(out), "--precision", "fp32,int8"]) == 2  # no --data-root
    assert "--data-root" in capsys.readouterr().err and not out.exists()
    rc = export_main([str(ckpt), "--out", str(out), "--data-root", str(synth_root), "--precision", "fp32,int8",
                      "--calib-clips", "4", "--exemplars-per-dive", "1", "--parity-clips", "1", "--no-masks-graph"])
    assert rc == 1  # the calibration's exit status is the command's
    assert calls == [[str(out), "--data-root", str(synth_root), "--precision", "int8", "--clips", "4"]]
    load_package(out, verify=True)  # the fp32 package stands whatever calibration did
