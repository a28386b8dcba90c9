"""fineparser-export: the model package, its verification, parity, audit and the CLI's failure modes."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from export import parity
from export.audit import audit_graph, load_supported_ops
from export.cli import main
from export.tensorrt import MISSING_MESSAGE, tensorrt_available
from fineparser.checkpoint import save_checkpoint
from fineparser.data import DataPaths, FineDivingIndex, format_key
from fineparser.model import QueryFeatures
from fineparser.package import (
    BANK_BIN_MAGIC,
    ExemplarBank,
    PackageError,
    add_variant,
    load_package,
    read_manifest,
)
from fineparser.preprocess import normalize_clip
from fineparser.scoring import EDGE_AVERAGE_OFFSETS, EDGE_OFFSETS_KEY, EdgeOffsets

ONNX_FILES = ("encoder.onnx", "encoder_masks.onnx", "pair_head.onnx")
PACKAGE_FILES = (*ONNX_FILES, "bank.npz", "bank.bin", "manifest.json")
CHEAP = ["--no-masks-graph", "--parity-clips", "1"]
"""Options of the exports that only test the CLI's behaviour (no bank, one random parity clip)."""


def ort_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", tiny_model)


@pytest.fixture(scope="module")
def package(tmp_path_factory, checkpoint, synth_root) -> Path:
    """One full export of the tiny model with a bank from the synthetic training split."""
    out = tmp_path_factory.mktemp("export") / "pkg"
    rc = main([str(checkpoint), "--out", str(out), "--data-root", str(synth_root), "--exemplars-per-dive", "3",
               "--parity-clips", "2"])
    assert rc == 0
    return out


def features(bank: ExemplarBank, indices: np.ndarray) -> QueryFeatures:
    return QueryFeatures(torch.from_numpy(bank.window_features[indices]), torch.from_numpy(bank.transitions[indices]),
                         None, torch.from_numpy(bank.static_tokens[indices]))


def test_package_round_trip_scores_like_pytorch(package, tiny_model, synth_root):
    assert all((package / name).is_file() for name in PACKAGE_FILES)
    pkg = load_package(package)
    assert set(pkg.manifest["files"]) == set(PACKAGE_FILES) - {"manifest.json"}
    for name in ONNX_FILES:
        onnx.checker.check_model(str(package / name))
    assert pkg.manifest["parity"]["passed"] and pkg.manifest["parity"]["score_drift"]["max"] <= 1e-3
    assert pkg.manifest["input"]["shape"] == [1, 96, 112, 112, 3] and pkg.manifest["input"]["color"] == "RGB"
    assert pkg.manifest["model"]["config"] == tiny_model.config.to_dict()

    index = FineDivingIndex(DataPaths.discover(synth_root))
    bank = pkg.bank()
    assert sum(pkg.manifest["bank"]["dive_numbers"].values()) == len(bank) <= 3 * len(index.dive_numbers)
    # The bank holds the PyTorch encodings of its training clips.
    key = next(k for k in index.train_keys if format_key(k) == bank.clip_id[0])
    with torch.no_grad():
        exemplar = tiny_model.encode(torch.from_numpy(normalize_clip(index.load_clip(key, train=False).frames))[None])
    np.testing.assert_allclose(bank.window_features[0], exemplar.window_features[0].numpy(), atol=1e-5)

    # The box's path (uint8 frames -> ONNX encoder -> ONNX pair head vs bank) scores like model.score.
    sample = index.load_clip(index.test_keys[-1], train=False)
    indices, note = bank.select(sample.dive_number, k=tiny_model.config.voter_number)
    assert note is None and len(indices) >= 1
    encoded = ort_session(pkg.encoder_path).run(None, {"frames": sample.frames[None]})
    names = [o.name for o in ort_session(pkg.encoder_path).get_outputs()]
    query = dict(zip(names, encoded))
    feed = {"query_window_features": query["window_features"], "query_transitions": query["transitions"],
            "query_static_tokens": query["static_tokens"], **bank.pair_head_inputs(indices)}
    delta, step_deltas = ort_session(pkg.pair_head_path).run(["delta", "step_deltas"], feed)
    assert delta.shape == (len(indices),) and step_deltas.shape == (len(indices), 3)
    np.testing.assert_allclose(step_deltas.sum(1), delta, atol=1e-5)
    score_onnx = float(np.mean(bank.final_score[indices] + delta))
    reference = tiny_model.score(torch.from_numpy(normalize_clip(sample.frames))[None], features(bank, indices),
                                 torch.from_numpy(bank.final_score[indices]))
    assert abs(score_onnx - float(reference.score)) <= 1e-3
    # K is dynamic: one exemplar works as well.
    single = ort_session(pkg.pair_head_path).run(["delta"], {**feed, **bank.pair_head_inputs(indices[:1])})[0]
    assert single.shape == (1,) and abs(float(single[0]) - float(delta[0])) < 1e-5


def test_the_package_says_which_segments_a_dive_is_averaged_over(package):
    scoring = load_package(package).manifest["scoring"]
    assert scoring[EDGE_OFFSETS_KEY] == {"start": [0.0], "end": [0.0]}  # by default each dive is scored once
    assert load_package(package).edge_offsets() == EdgeOffsets()


def test_bank_bin_holds_the_same_bank_for_cpp(package):
    npz = ExemplarBank.from_npz(package / "bank.npz")
    binary = ExemplarBank.from_bin(package / "bank.bin")
    for name in ("window_features", "transitions", "static_tokens", "final_score", "difficulty", "dive_number",
                 "clip_id"):
        np.testing.assert_array_equal(getattr(binary, name), getattr(npz, name))
    raw = (package / "bank.bin").read_bytes()
    assert raw[:8] == BANK_BIN_MAGIC
    (length,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[16:16 + length])
    data_start = -(-(16 + length) // 64) * 64
    entry = next(a for a in header["arrays"] if a["name"] == "final_score")
    assert entry["dtype"] == "float32" and (data_start + entry["offset"]) % 64 == 0
    values = np.frombuffer(raw, "<f4", count=entry["shape"][0], offset=data_start + entry["offset"])
    np.testing.assert_array_equal(values, npz.final_score)


@pytest.mark.parametrize("name", ["pair_head.onnx", "bank.npz"])
def test_a_corrupted_file_is_refused_by_name(package, tmp_path, name):
    copy = Path(shutil.copytree(package, tmp_path / "pkg"))
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(PackageError, match=name.replace(".", r"\.")) as info:
        load_package(copy)
    assert "re-export" in str(info.value)
    assert load_package(copy, verify=False).manifest["format"] == "fineparser-package"
    (copy / name).unlink()
    with pytest.raises(PackageError, match="missing"):
        load_package(copy)


def test_a_later_tool_adds_a_variant_and_the_package_still_verifies(package, tmp_path):
    copy = Path(shutil.copytree(package, tmp_path / "pkg"))
    shutil.copy(copy / "encoder.onnx", copy / "encoder_fp16.onnx")
    manifest = add_variant(copy, {"name": "fp16", "precision": "fp16", "files": {"encoder": "encoder_fp16.onnx"}},
                           ["encoder_fp16.onnx"])
    assert [v["name"] for v in manifest["variants"]] == ["fp32", "fp16"]
    assert load_package(copy).has("encoder_fp16.onnx")


def test_audit_passes_for_every_exported_graph(package):
    audit = read_manifest(package)["audit"]
    ops = load_supported_ops()
    assert audit["passed"] and audit["op_list_source"] == ops["source"] and "onnx-tensorrt" in ops["source"]
    for name, dynamic in (("encoder.onnx", ()), ("encoder_masks.onnx", ()), ("pair_head.onnx", ("K",))):
        result = audit_graph(package / name, ops, dynamic)
        assert result.passed, result.problems
        assert not result.symbolic_dims and not result.unresolved and result.opset == 17


def test_audit_names_an_unsupported_op_and_a_stray_symbolic_dim():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    det = helper.make_model(helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "det", [x], [y]),
                            opset_imports=[helper.make_opsetid("", 17)])
    result = audit_graph(det)
    assert not result.passed and result.unsupported_ops == ["Det"] and "Det" in result.problems[0]

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    relu = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17)])
    result = audit_graph(relu, dynamic_dims=("K",))
    assert not result.passed and "N" in result.symbolic_dims
    assert audit_graph(relu, dynamic_dims=("N",)).passed


def test_package_module_imports_and_reads_a_package_without_torch(package):
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from fineparser.package import load_package\n"
        "pkg = load_package(sys.argv[1])\n"
        "bank = pkg.bank()\n"
        "indices, note = bank.select(bank.dive_number[0], k=2)\n"
        "assert len(indices) >= 1 and note is None\n"
        "assert sys.modules['torch'] is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(package)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_exemplar_bank_select_falls_back_in_the_stated_order():
    numbers = ["107B", "107B", "107B", "105B", "5253B", "205C"]
    scores = [60.0, 80.0, 70.0, 50.0, 65.0, 75.0]
    n = len(numbers)
    bank = ExemplarBank(np.zeros((n, 9, 8)), np.tile([[20, 60]], (n, 1)), np.zeros((n, 12, 4)), scores,
                        np.full(n, 3.0), numbers, [f"c/{i}" for i in range(n)])
    same_dive, note = bank.select("107B")
    assert list(same_dive) == [0, 1, 2] and note is None
    spread, note = bank.select("107B", k=2)
    assert sorted(bank.final_score[spread]) == [60.0, 80.0] and note is None  # lowest and highest kept
    same_group, note = bank.select("109B")
    assert list(same_group) == [0, 1, 2, 3] and "group 1 position B" in note and "109b" in note
    anything, note = bank.select("405C")
    assert list(anything) == list(range(n)) and "any dive" in note
    assert len(bank.select("405C", k=3)[0]) == 3
    empty = bank.subset([])
    with pytest.raises(PackageError, match="empty"):
        empty.select("107B")


def test_a_foreign_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    rc = main([str(tmp_path / "other.pt"), "--out", str(tmp_path / "pkg")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "not a FineParser checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "pkg").exists()


def test_an_official_checkpoint_exports_with_official(tmp_path, tiny_model):
    from test_checkpoint import official_layout

    torch.save(official_layout(tiny_model), tmp_path / "best.pth")
    assert main([str(tmp_path / "best.pth"), "--out", str(tmp_path / "pkg"), *CHEAP]) == 2  # needs --official
    rc = main([str(tmp_path / "best.pth"), "--official", "--preset", "tiny", "--out", str(tmp_path / "pkg"),
               "--precision", "fp32", "--edge-average", *CHEAP])
    assert rc == 0
    pkg = load_package(tmp_path / "pkg")
    assert pkg.edge_offsets() == EDGE_AVERAGE_OFFSETS  # --edge-average: the mean over 6 segments
    assert pkg.manifest["source"]["kind"] == "official" and pkg.manifest["bank"]["status"] == "no bank"
    assert pkg.encoder_masks_path is None and not pkg.has_bank
    assert pkg.manifest["parity"]["score_drift"]["bank"] == "parity clips as a mini bank"
    with pytest.raises(PackageError, match="--data-root"):
        pkg.bank()


def test_engine_without_tensorrt_says_so_after_writing_the_package(tmp_path, checkpoint, capsys):
    if tensorrt_available():
        pytest.skip("tensorrt is importable here: the missing-TensorRT path cannot be exercised")
    out = tmp_path / "pkg"
    rc = main([str(checkpoint), "--out", str(out), "--engine", *CHEAP])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 3 and err == [MISSING_MESSAGE.format(package=out)]
    pkg = load_package(out)
    assert pkg.encoder_path.is_file() and pkg.pair_head_path.is_file() and pkg.manifest["engines"] == []


def test_failed_parity_fails_the_export_and_leaves_nothing(tmp_path, checkpoint, capsys, monkeypatch):
    real = parity.run_parity

    def drifting(*args, **kwargs):
        report = real(*args, **kwargs)
        report["score_drift"]["max"], report["passed"] = 0.5, False
        return report

    monkeypatch.setattr(parity, "run_parity", drifting)
    rc = main([str(checkpoint), "--out", str(tmp_path / "pkg"), *CHEAP])
    assert rc == 1 and "score drift 5.00e-01 exceeds 1e-03" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the package nor its staging directory


def test_out_must_be_a_package_or_absent(tmp_path, checkpoint, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    assert main([str(checkpoint), "--out", str(tmp_path / "notes")]) == 2
    assert "not a model package" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_tensorrt_engines_build_and_are_cached(package, tmp_path):
    if not tensorrt_available():
        print("skipping: python package 'tensorrt' is not importable on this machine")
        pytest.skip("tensorrt is not importable here (TensorRT engines need NVIDIA's wheel and a CUDA GPU)")
    from export.tensorrt import build_package_engines

    copy = Path(shutil.copytree(package, tmp_path / "pkg"))
    records = build_package_engines(copy, {"encoder": "encoder.onnx", "pair_head": "pair_head.onnx"})
    assert all((copy / r.engine).is_file() and (copy / r.layers).is_file() for r in records)
    assert all(r.onnx_sha256[:12] in r.engine for r in records)
    again = build_package_engines(copy, {"pair_head": "pair_head.onnx"})
    assert again[0].reused


def _package_with_a_tuned_spotter(root: Path) -> Path:
    """A copy of the bundled package (its spotter tuned) with an fp16 spotter variant recorded beside it."""
    from fineparser.package import write_manifest

    shutil.copytree(Path(__file__).resolve().parents[1] / "demo" / "package", root)
    shutil.copy2(root / "spotter.onnx", root / "spotter_fp16.onnx")
    manifest = read_manifest(root)
    manifest["spotter"]["variants"] = {"fp16": {"file": "spotter_fp16.onnx", "precision": "fp16"}}
    write_manifest(root, manifest, ["spotter_fp16.onnx"])
    return root


def test_a_re_export_keeps_the_tuned_spotter_of_the_package_it_replaces(tmp_path, checkpoint, capsys):
    out = _package_with_a_tuned_spotter(tmp_path / "pkg")
    before = read_manifest(out)
    spotter_bytes = {name: (out / name).read_bytes() for name in ("spotter.onnx", "spotter_fp16.onnx")}
    assert main([str(checkpoint), "--out", str(out), "--engine", "--dry-run"]) == 0
    assert "spotter.onnx" in capsys.readouterr().out  # the spotter it would keep is in the engine plan
    assert main([str(checkpoint), "--out", str(out), *CHEAP]) == 0
    after = load_package(out)  # every file, the spotter's included, matches its recorded hash
    assert after.manifest["source"]["sha256"] != before["source"]["sha256"]  # the scorer is the new one ...
    assert after.manifest["spotter"] == before["spotter"]  # ... the spotter, its tuning and variants as they were
    assert after.manifest["spotter"]["tuning"] and after.manifest["spotter"]["spec"]["initial_state"]
    assert {name: (out / name).read_bytes() for name in spotter_bytes} == spotter_bytes

    # --spotter-from takes it from another package; --no-spotter exports without one.
    other = tmp_path / "other"
    assert main([str(checkpoint), "--out", str(other), "--spotter-from", str(out), *CHEAP]) == 0
    assert load_package(other).manifest["spotter"] == before["spotter"]
    assert main([str(checkpoint), "--out", str(other), "--no-spotter", *CHEAP]) == 0
    assert "spotter" not in load_package(other).manifest and not (other / "spotter.onnx").exists()

    # A source without a spotter, a spotter file that changed, two sources: one line each, nothing written.
    capsys.readouterr()
    assert main([str(checkpoint), "--out", str(tmp_path / "new"), "--spotter-from", str(other), *CHEAP]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--spotter-from {other}" in err[0] and "has no spotter" in err[0]
    assert not (tmp_path / "new").exists()
    (out / "spotter_fp16.onnx").write_bytes(b"not a graph")
    manifest_text = (out / "manifest.json").read_text()
    assert main([str(checkpoint), "--out", str(out), *CHEAP]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "spotter_fp16.onnx" in err[0] and "--no-spotter" in err[0]
    assert (out / "manifest.json").read_text() == manifest_text
    assert main([str(checkpoint), "--out", str(other), "--no-spotter", "--spotter-from", str(out), *CHEAP]) == 2
    assert "give one" in capsys.readouterr().err
