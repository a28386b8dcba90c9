"""Precision across the toolkit: the engine plan, engine records, the recommended precision, --precision auto.

Everything here runs without TensorRT or a GPU: the plan is a pure function of the manifest, engine
records are checked against the package's hashes, and the precision rule is torch-free.  What needs
TensorRT (building and running engines) skips with a printed reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.engine_plan import (
    K_PROFILE,
    PENDING_SHA,
    UNKNOWN_DEVICE,
    DeviceIdentity,
    format_plan,
    plan_engines,
    planned_graphs,
    prospective_manifest,
)
from export.tensorrt import MISSING_MESSAGE, EngineRecord, tensorrt_available
from fineparser.package import (
    PackageError,
    engine_key,
    load_package,
    read_manifest,
    sha256_file,
    write_manifest,
)
from fineparser.precision import (
    RECOMMENDED_KEY,
    VARIANT_FILES,
    PrecisionError,
    met_goals,
    recommendation,
    recommended_precision,
    resolve_precision,
)
from runtime.backends import BackendError, choose_backend, has_engines, load_backend, parse_device
from runtime.backends.ort import provider_options, runnable_precisions
from runtime.backends.trt import chunk_ranges, engine_precisions, select_engines, shape_problem

H200 = DeviceIdentity("NVIDIA H200", "sm90", "10.13.0.35")
ORIN = DeviceIdentity("Orin", "sm87", "10.3.0.30")
D, T = 128, 16  # tiny preset widths
SPOTTER_INPUTS = [{"name": "frame", "dtype": "uint8", "shape": [1, 90, 160, 3]},
                  {"name": "state", "dtype": "float32", "shape": [1, 128]}]


def drift(passed: bool) -> dict:
    return {"passed": passed, "failures": [] if passed else ["mean |delta| 0.9 > 0.5"], "mean_abs_delta": 0.1}


def fake_package(root: Path, *, variants: dict[str, bool] | None = None, spotter: bool = False,
                 accepted_with_drift: tuple[str, ...] = ()) -> Path:
    """A package directory whose ONNX files are placeholder bytes: enough for plans, hashes and records."""
    root.mkdir(parents=True)
    graphs = planned_graphs(D, T, 12, with_masks=True)
    files = [g["file"] for g in graphs.values()]
    manifest = {"graphs": graphs, "parity": {"passed": True}, "engines": [],
                "variants": [{"name": "fp32", "precision": "fp32", "files": {g: s["file"] for g, s in graphs.items()},
                              "parity": {"passed": True}}]}
    for name, passed in (variants or {}).items():
        manifest["variants"].append({"name": name, "precision": name, "files": dict(VARIANT_FILES[name]),
                                     "drift": drift(passed), "accepted_with_drift": name in accepted_with_drift})
        files += list(VARIANT_FILES[name].values())
    if spotter:
        (root / "spotter.onnx").write_bytes(b"spotter graph")
        manifest["spotter"] = {"file": "spotter.onnx", "sha256": sha256_file(root / "spotter.onnx"),
                               "graph": {"inputs": SPOTTER_INPUTS}}
    for name in dict.fromkeys(files):
        (root / name).write_bytes(f"onnx bytes of {name}".encode())
    manifest["format"] = "fineparser-package"
    write_manifest(root, manifest, list(dict.fromkeys(files)))
    return root


def record_engines(root: Path, device: DeviceIdentity, precisions=None) -> list[dict]:
    """What run_engine_step records after a build, with placeholder engine files (no TensorRT)."""
    manifest = read_manifest(root)
    plan = plan_engines(manifest, device=device, precisions=precisions)
    (root / "engines").mkdir(exist_ok=True)
    records = []
    for entry in plan:
        (root / entry.engine).write_bytes(b"engine")
        records.append(EngineRecord(
            graph=entry.graph, precision=entry.precision, onnx=entry.onnx, onnx_sha256=entry.onnx_sha256,
            engine=entry.engine, layers=entry.layers, key=entry.key, gpu=device.gpu,
            compute_capability=device.compute_capability, tensorrt=device.tensorrt, size=6, seconds=0.0,
            reused=entry.shared_with is not None,
            profile={n: [list(s) for s in shapes] for n, shapes in entry.profile.items()}).to_dict())
    manifest["engines"] = records
    write_manifest(root, manifest)
    return records


# --------------------------------------------------------------------------- the engine plan


def test_plan_without_variants_is_one_strongly_typed_engine_per_graph(tmp_path):
    root = fake_package(tmp_path / "pkg")
    plan = plan_engines(read_manifest(root), device=H200)
    assert [(p.precision, p.graph) for p in plan] == [("fp32", "encoder"), ("fp32", "encoder_masks"),
                                                      ("fp32", "pair_head")]
    manifest = read_manifest(root)
    for entry in plan:
        assert entry.network_flags == ("STRONGLY_TYPED",) and entry.builder_flags == ()
        digest = manifest["files"][entry.onnx]["sha256"]
        assert entry.onnx_sha256 == digest and entry.key == engine_key("NVIDIA H200", "sm90", "10.13.0.35", digest)
        assert entry.key == f"nvidia-h200_sm90_trt10.13.0.35_{digest[:12]}"
        assert entry.engine == f"engines/{entry.key}.engine" and entry.layers == f"engines/{entry.key}.layers.json"
        assert entry.shared_with is None and entry.buildable
    encoder, masks, pair = plan
    assert encoder.static and masks.static and encoder.inputs == {"frames": [1, 96, 112, 112, 3]}
    assert set(pair.profile) == {"exemplar_window_features", "exemplar_transitions", "exemplar_static_tokens"}
    assert pair.profile["exemplar_window_features"] == ((1, 9, D), (10, 9, D), (32, 9, D))
    assert pair.profile["exemplar_static_tokens"] == tuple((k, 12, T) for k in K_PROFILE)
    assert pair.profile["exemplar_transitions"] == ((1, 2), (10, 2), (32, 2))


def test_plan_with_variants_and_spotter_shares_equal_graphs(tmp_path):
    root = fake_package(tmp_path / "pkg", variants={"fp16": True, "int8": True}, spotter=True)
    plan = plan_engines(read_manifest(root), device=H200)
    by = {(p.precision, p.graph): p for p in plan}
    assert list(by) == [("fp32", "encoder"), ("fp32", "encoder_masks"), ("fp32", "pair_head"), ("fp32", "spotter"),
                        ("fp16", "encoder"), ("fp16", "pair_head"), ("int8", "encoder"), ("int8", "pair_head")]
    assert by["fp16", "encoder"].onnx == "encoder_fp16.onnx" and by["int8", "encoder"].onnx == "encoder_int8.onnx"
    # int8 keeps the fp32 pair head: the same bytes, so the same engine, built once.
    assert by["int8", "pair_head"].engine == by["fp32", "pair_head"].engine
    assert by["int8", "pair_head"].shared_with == "fp32 pair_head"
    assert len({p.engine for p in plan}) == 7 and sum(p.shared_with is None for p in plan) == 7
    spotter = by["fp32", "spotter"]
    assert spotter.static and spotter.inputs["frame"] == [1, 90, 160, 3] and spotter.onnx == "spotter.onnx"
    # A subset of precisions plans only those; an absent variant plans nothing.
    assert {p.precision for p in plan_engines(read_manifest(root), precisions=["int8"])} == {"int8"}
    assert plan_engines(read_manifest(fake_package(tmp_path / "bare")), precisions=["fp16"]) == []


def test_spotter_variants_join_the_plan_of_their_precision(tmp_path):
    root = fake_package(tmp_path / "pkg", variants={"fp16": True}, spotter=True)
    manifest = read_manifest(root)
    (root / "spotter_fp16.onnx").write_bytes(b"fp16 spotter")
    (root / "spotter_int8.onnx").write_bytes(b"int8 spotter")
    manifest["spotter"]["variants"] = {"fp16": {"file": "spotter_fp16.onnx"}, "int8": {"file": "spotter_int8.onnx"}}
    write_manifest(root, manifest, ["spotter_fp16.onnx", "spotter_int8.onnx"])
    by = {(p.precision, p.graph): p for p in plan_engines(read_manifest(root), device=H200)}
    assert by["fp16", "spotter"].onnx == "spotter_fp16.onnx" and by["fp16", "spotter"].shared_with is None
    assert by["fp16", "spotter"].inputs["frame"] == [1, 90, 160, 3] and by["fp16", "spotter"].buildable
    assert by["fp32", "spotter"].onnx == "spotter.onnx"
    assert ("int8", "spotter") not in by  # no int8 variant of the package: nothing int8 is planned


def test_plan_of_files_not_written_yet_and_of_an_unknown_device(tmp_path):
    root = fake_package(tmp_path / "pkg")
    pending = prospective_manifest(read_manifest(root), precisions=["int8"])
    plan = plan_engines(pending)  # no device: this machine has neither GPU nor TensorRT
    by = {(p.precision, p.graph): p for p in plan}
    assert by["int8", "encoder"].onnx_sha256 is None and by["int8", "encoder"].key == f"{UNKNOWN_DEVICE}_{PENDING_SHA}"
    assert by["int8", "pair_head"].shared_with == "fp32 pair_head"  # the fp32 file calibration does not rewrite
    assert by["fp32", "encoder"].key.startswith(UNKNOWN_DEVICE) and not any(p.buildable for p in plan)
    text = format_plan(plan, package=str(root))
    assert "encoder_int8.onnx (to be written)" in text and "none visible here" in text
    assert "profile K = 1 / 10 / 32 (min / opt / max)" in text and "the same engine as fp32 pair_head" in text
    assert "STRONGLY_TYPED" in text and "no precision builder flags" in text
    # An export that has not run: everything pending, masks graph as asked.
    fresh = plan_engines(prospective_manifest(graphs=planned_graphs(D, T, 12, with_masks=False),
                                              precisions=["fp32", "fp16"]))
    assert [(p.precision, p.graph) for p in fresh] == [("fp32", "encoder"), ("fp32", "pair_head"),
                                                       ("fp16", "encoder"), ("fp16", "pair_head")]
    assert all(p.onnx_sha256 is None and p.shared_with is None for p in fresh)


def test_export_engine_dry_run_prints_the_plan_and_writes_nothing(tmp_path, tiny_model, capsys):
    from export.cli import main as export_main
    from fineparser.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "tiny.pt", tiny_model)
    out = tmp_path / "pkg"
    assert export_main([str(checkpoint), "--out", str(out), "--precision", "fp16,int8", "--dry-run"]) == 2
    assert "--engine" in capsys.readouterr().err
    rc = export_main([str(checkpoint), "--out", str(out), "--precision", "fp16,int8", "--engine", "--dry-run"])
    printed = capsys.readouterr().out
    assert rc == 0 and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]
    assert "dry run: nothing was exported, calibrated or built" in printed
    for line in ("encoder_masks.onnx (to be written)", "encoder_fp16.onnx (to be written)",
                 "pair_head_fp16.onnx (to be written)", "encoder_int8.onnx (to be written)",
                 f"exemplar_window_features [K, 9, {tiny_model.config.feature_dim}]"):
        assert line in printed, line


def test_calibrate_engine_dry_run_and_missing_tensorrt(tmp_path, capsys):
    from calibration.cli import main as calibrate_main

    root = fake_package(tmp_path / "pkg", variants={"fp16": True}, spotter=True)
    before = (root / "manifest.json").read_bytes()
    assert calibrate_main([str(root), "--engine", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "fp16       pair_head" in printed and "spotter" in printed and "dry run: nothing was built" in printed
    # With --data-root, the variants it would (re)make show as pending; nothing is calibrated.
    assert calibrate_main([str(root), "--engine", "--dry-run", "--data-root", str(tmp_path / "nowhere"),
                           "--precision", "int8"]) == 0
    assert "encoder_int8.onnx (to be written)" in capsys.readouterr().out
    assert (root / "manifest.json").read_bytes() == before and not (root / "engines").exists()
    assert calibrate_main([str(root)]) == 2  # neither --data-root nor --engine
    assert "--data-root DIR is required" in capsys.readouterr().err
    if tensorrt_available():
        print("skipping the missing-TensorRT half: tensorrt is importable here")
        return
    assert calibrate_main([str(root), "--engine"]) == 3
    assert capsys.readouterr().err.strip().splitlines() == [MISSING_MESSAGE.format(package=root)]


# --------------------------------------------------------------------------- engine records


def test_manifest_round_trip_with_engine_records_per_precision(tmp_path):
    root = fake_package(tmp_path / "pkg", variants={"fp16": True, "int8": True})
    record_engines(root, H200)
    package = load_package(root)  # engines are not hashed: the package still verifies
    assert {r["precision"] for r in package.engine_records()} == {"fp32", "fp16", "int8"}
    int8 = {r["graph"]: r for r in package.engine_records("int8")}
    assert set(int8) == {"encoder", "pair_head"} and int8["encoder"]["onnx"] == "encoder_int8.onnx"
    for record in package.engine_records():
        for field in ("precision", "gpu", "compute_capability", "tensorrt", "onnx_sha256", "key", "engine"):
            assert record[field], field
        assert package.engine_problem(record, H200.as_tuple()) is None
    assert engine_precisions(package) == ["fp32", "fp16", "int8"] and has_engines(package, "int8")
    assert select_engines(package, "int8", H200.as_tuple())["pair_head"]["engine"] == \
        select_engines(package, "fp32")["pair_head"]["engine"]
    # Records of engines built before precision was recorded are fp32.
    manifest = read_manifest(root)
    for record in manifest["engines"]:
        if record["precision"] == "fp32":
            del record["precision"]
    write_manifest(root, manifest)
    assert {r["graph"] for r in load_package(root).engine_records("fp32")} == {"encoder", "encoder_masks",
                                                                               "pair_head"}


def test_a_stale_engine_record_is_detected_and_refused(tmp_path):
    root = fake_package(tmp_path / "pkg", variants={"int8": True})
    record_engines(root, H200)
    # Re-calibration rewrites encoder_int8.onnx: its engine no longer matches.
    (root / "encoder_int8.onnx").write_bytes(b"a new int8 encoder")
    write_manifest(root, read_manifest(root))
    package = load_package(root)
    stale = next(r for r in package.engine_records("int8") if r["graph"] == "encoder")
    problem = package.engine_problem(stale)
    assert problem and "stale" in problem and "encoder_int8.onnx" in problem and stale["engine"] in problem
    assert engine_precisions(package) == ["fp32"] and not has_engines(package, "int8")
    with pytest.raises(BackendError, match="stale.*rebuild the engines"):
        select_engines(package, "int8")
    # Another GPU or TensorRT version: refused with both sides named.
    fresh = next(r for r in package.engine_records("fp32") if r["graph"] == "encoder")
    assert "built for NVIDIA H200 sm90 with TensorRT 10.13.0.35; this is Orin sm87" in \
        package.engine_problem(fresh, ORIN.as_tuple())
    # A record whose key no longer follows from its fields (edited by hand) is stale too.
    manifest = read_manifest(root)
    manifest["engines"][0]["key"] = "something-else"
    write_manifest(root, manifest)
    assert "key something-else no longer matches" in load_package(root).engine_problem(
        load_package(root).engine_records()[0])
    # A missing engine file.
    (root / fresh["engine"]).unlink()
    assert "missing" in load_package(root).engine_problem(fresh)


# --------------------------------------------------------------------------- the precision rule


def test_recommended_precision_is_the_most_compressed_that_met_its_goals(tmp_path):
    both = read_manifest(fake_package(tmp_path / "a", variants={"fp16": True, "int8": True}))
    assert recommendation(both)["precision"] == "int8" and recommended_precision(both) == "int8"
    missed = read_manifest(fake_package(tmp_path / "b", variants={"fp16": True, "int8": False}))
    assert recommended_precision(missed) == "fp16"
    assert "mean |delta| 0.9 > 0.5" in recommendation(missed)["missed_goals"]["int8"]
    accepted = read_manifest(fake_package(tmp_path / "c", variants={"fp16": False, "int8": True},
                                          accepted_with_drift=("int8",)))
    assert not met_goals(accepted, "int8") and recommended_precision(accepted) == "fp32"
    assert recommended_precision(read_manifest(fake_package(tmp_path / "d"))) == "fp32"
    # The recorded choice is what the runtime reads; one naming a variant that is gone is recomputed.
    both[RECOMMENDED_KEY] = {"precision": "fp16"}
    assert recommended_precision(both) == "fp16"
    missed[RECOMMENDED_KEY] = {"precision": "int8"}
    missed["variants"] = [v for v in missed["variants"] if v["name"] != "int8"]
    assert recommended_precision(missed) == "fp16"


def test_calibration_records_the_recommendation_in_the_manifest(tmp_path):
    from calibration.cli import _record_recommendation

    root = fake_package(tmp_path / "pkg", variants={"fp16": True, "int8": False})
    _record_recommendation(root)
    package = load_package(root)  # still verifies: only the manifest changed
    assert package.manifest[RECOMMENDED_KEY]["precision"] == "fp16" == package.recommended_precision
    assert package.manifest[RECOMMENDED_KEY]["met_goals"] == ["fp32", "fp16"]


def test_precision_auto_on_cpu_and_on_a_declared_gpu_backend(tmp_path):
    manifest = read_manifest(fake_package(tmp_path / "pkg", variants={"fp16": True, "int8": True}))
    everything = ("fp32", "fp16", "int8")
    cpu = resolve_precision("auto", manifest, backend="onnxruntime", on_gpu=False, runnable=everything)
    assert cpu.precision == "fp32" and "CPU" in cpu.reason
    trt = resolve_precision("auto", manifest, backend="tensorrt", on_gpu=True, runnable=everything)
    assert trt.precision == "int8" and "recommendation" in trt.reason
    # The CUDA provider runs up to fp16; engines built for fp32 only step down to fp32.
    assert resolve_precision("auto", manifest, backend="cuda", on_gpu=True,
                             runnable=runnable_precisions(["CUDAExecutionProvider"], everything)).precision == "fp16"
    assert resolve_precision("auto", manifest, backend="tensorrt", on_gpu=True, runnable=["fp32"]).precision == "fp32"
    # torch on CUDA: fp16 autocast stands in when the fp16 variant met its goals; never bf16 unasked.
    assert resolve_precision("auto", manifest, backend="torch", on_gpu=True, runnable=("fp32", "fp16")).precision \
        == "fp16"
    missed = read_manifest(fake_package(tmp_path / "missed", variants={"fp16": False, "int8": True}))
    assert resolve_precision("auto", missed, backend="cuda", on_gpu=True, runnable=("fp32", "fp16")).precision \
        == "fp32"
    # Told otherwise, it is used as given (the backend refuses what it cannot run).
    assert resolve_precision("int8", manifest, backend="onnxruntime", on_gpu=False, runnable=["fp32"]).precision \
        == "int8"
    with pytest.raises(PrecisionError, match="known: auto, fp32, fp16, int8, bf16"):
        resolve_precision("int4", manifest, backend="tensorrt", on_gpu=True, runnable=everything)


def test_onnxruntime_provider_options_match_the_precision(tmp_path):
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    int8 = provider_options(providers, "int8", tmp_path, device_index=1)
    trt, cuda, cpu = int8
    assert trt[0] == "TensorrtExecutionProvider" and trt[1]["trt_int8_enable"] and not trt[1]["trt_fp16_enable"]
    assert trt[1]["trt_engine_cache_enable"] and trt[1]["trt_engine_cache_path"] == str(tmp_path)
    assert trt[1]["device_id"] == 1 and cuda == ("CUDAExecutionProvider", {"device_id": 1})
    assert cpu == "CPUExecutionProvider"
    fp16 = provider_options(providers, "fp16", None)[0][1]
    assert fp16["trt_fp16_enable"] and not fp16["trt_int8_enable"] and "trt_engine_cache_path" not in fp16
    assert provider_options(["CPUExecutionProvider"], "int8") == ["CPUExecutionProvider"]
    assert runnable_precisions(providers, ["fp32", "fp16", "int8"]) == ["fp32", "fp16", "int8"]
    assert runnable_precisions(providers[1:], ["fp32", "fp16", "int8"]) == ["fp32", "fp16"]
    assert runnable_precisions(["CPUExecutionProvider"], ["fp32", "int8"]) == ["fp32"]


def test_device_values():
    assert parse_device(None) == ("auto", 0) and parse_device("cpu") == ("cpu", 0)
    assert parse_device("CUDA:1") == ("cuda", 1)
    with pytest.raises(BackendError, match="--device gpu7"):
        parse_device("gpu7")


# --------------------------------------------------------------------------- the TensorRT backend's pure parts


def test_tensorrt_backend_chunks_k_and_checks_shapes():
    assert chunk_ranges(10, 32) == [(0, 10)] and chunk_ranges(70, 32) == [(0, 32), (32, 64), (64, 70)]
    assert chunk_ranges(0, 32) == []
    profile = ((1, 9, D), (10, 9, D), (32, 9, D))
    assert shape_problem("exemplar_window_features", (10, 9, D), profile, (-1, 9, D)) is None
    assert "outside the engine's optimisation profile [1, 9, 128] .. [32, 9, 128]" in shape_problem(
        "exemplar_window_features", (33, 9, D), profile, (-1, 9, D))
    assert "the engine takes [1, 96, 112, 112, 3]" in shape_problem("frames", (2, 96, 112, 112, 3), None,
                                                                     (1, 96, 112, 112, 3))


# --------------------------------------------------------------------------- real packages (CPU)


@pytest.fixture(scope="module")
def package(tmp_path_factory, tiny_model, synth_root) -> Path:
    from export.cli import main as export_main
    from fineparser.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("precision_pkg")
    checkpoint = save_checkpoint(root / "tiny.pt", tiny_model)
    assert export_main([str(checkpoint), "--out", str(root / "pkg"), "--data-root", str(synth_root),
                        "--exemplars-per-dive", "2", "--parity-clips", "1", "--no-masks-graph"]) == 0
    return root / "pkg"


def test_runtime_auto_on_cpu_runs_fp32_whatever_the_package_recommends(package, tmp_path):
    copy = Path(shutil.copytree(package, tmp_path / "pkg"))
    manifest = read_manifest(copy)
    manifest[RECOMMENDED_KEY] = {"precision": "int8"}  # no int8 variant: recomputed to fp32 anyway
    write_manifest(copy, manifest)
    pkg = load_package(copy)
    backend = load_backend("onnxruntime", pkg, device="cpu")
    assert backend.precision == "fp32" and "fp32" in backend.description and "CPU" in backend.precision_reason
    chosen, skipped = choose_backend("auto", pkg, device="cpu")
    assert chosen.name == "onnxruntime" and skipped == ["tensorrt: --device cpu"]
    with pytest.raises(BackendError, match="torch autocast"):
        load_backend("onnxruntime", pkg, precision="bf16")
    with pytest.raises(BackendError, match="tensorrt backend runs on a CUDA GPU"):
        load_backend("tensorrt", pkg, device="cpu")


def test_torch_backend_on_cpu_scores_like_onnxruntime(package):
    from fineparser import scoring

    pkg = load_package(package)
    torch_backend = load_backend("torch", pkg, precision="auto", device="cpu")
    ort_backend = load_backend("onnxruntime", pkg, device="cpu")
    assert torch_backend.precision == "fp32" and str(torch_backend.device) == "cpu"
    assert not torch_backend.cuda_graph and not torch_backend.channels_last
    frames = np.random.default_rng(3).integers(0, 256, (1, 96, 112, 112, 3), dtype=np.uint8)
    a, b = torch_backend.encode(frames), ort_backend.encode(frames)
    assert np.array_equal(a["transitions"], b["transitions"])
    np.testing.assert_allclose(a["window_features"], b["window_features"], rtol=1e-5, atol=1e-4)
    bank = pkg.bank()
    indices = np.arange(min(len(bank), 5))
    feeds_a = scoring.pair_feeds(a, bank.pair_head_inputs(indices))
    feeds_b = scoring.pair_feeds(b, bank.pair_head_inputs(indices))
    delta_a, steps_a = torch_backend.pair_head(feeds_a)
    delta_b, steps_b = ort_backend.pair_head(feeds_b)
    assert delta_a.shape == (len(indices),) and steps_a.shape == (len(indices), 3)
    score_a = float(np.mean(bank.final_score[indices] + delta_a))
    score_b = float(np.mean(bank.final_score[indices] + delta_b))
    assert abs(score_a - score_b) <= 1e-3  # the export's fp32 parity tolerance
    np.testing.assert_allclose(steps_a, steps_b, atol=1e-4)
    for precision in ("fp16", "bf16"):
        with pytest.raises(BackendError, match="needs --device cuda.*onnxruntime backend"):
            load_backend("torch", pkg, precision=precision, device="cpu")
    with pytest.raises(BackendError, match="int8 runs on the onnxruntime backend"):
        load_backend("torch", pkg, precision="int8", device="cpu")


def test_recommended_precision_survives_a_package_round_trip(package, tmp_path):
    copy = Path(shutil.copytree(package, tmp_path / "pkg"))
    assert load_package(copy).recommended_precision == "fp32"  # fp32 export: nothing else measured
    manifest = read_manifest(copy)
    manifest["variants"].append({"name": "fp16", "precision": "fp16", "files": {"encoder": "encoder.onnx",
                                 "pair_head": "pair_head.onnx"}, "drift": drift(True)})
    manifest[RECOMMENDED_KEY] = recommendation(manifest)
    write_manifest(copy, manifest)
    again = load_package(copy)
    assert again.recommended_precision == "fp16"
    assert json.loads((copy / "manifest.json").read_text())[RECOMMENDED_KEY]["met_goals"] == ["fp32", "fp16"]
    with pytest.raises(PackageError):
        again.variant_files("int8")


# --------------------------------------------------------------------------- needs TensorRT


def test_tensorrt_engines_per_precision_build_and_run(package, tmp_path):
    if not tensorrt_available():
        print("skipping: python package 'tensorrt' is not importable on this machine (no TensorRT, no GPU)")
        pytest.skip("tensorrt is not importable here (TensorRT engines need NVIDIA's wheel and a CUDA GPU)")
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed on this machine")
    from export.tensorrt import run_engine_step

    copy = Path(shutil.copytree(package, tmp_path / "pkg"))
    assert run_engine_step(copy) == 0
    pkg = load_package(copy)
    assert engine_precisions(pkg) == ["fp32"]
    backend = load_backend("tensorrt", pkg, precision="auto")
    reference = load_backend("onnxruntime", pkg, device="cpu")
    frames = np.random.default_rng(0).integers(0, 256, (1, 96, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_allclose(backend.encode(frames)["window_features"],
                               reference.encode(frames)["window_features"], atol=1e-3)
    backend.close()


# --------------------------------------------------------------------------- the TensorRT backend, on stand-ins


class FakeCuda:
    """pycuda.driver as the backend uses it: device memory is host bytes, the context stack is counted."""

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.allocations = self.frees = self.depth = self.detached = 0
        outer = self

        class Allocation:
            def __init__(self, nbytes: int) -> None:
                outer.allocations += 1
                self.address = 4096 * outer.allocations
                outer.memory[self.address] = np.zeros(nbytes, np.uint8)

            def __int__(self) -> int:
                return self.address

            def free(self) -> None:
                outer.frees += 1
                del outer.memory[self.address]

        class PrimaryContext:
            def push(self) -> None:
                outer.depth += 1

            def detach(self) -> None:
                outer.detached += 1

        class Device:
            count = staticmethod(lambda: 1)

            def __init__(self, index: int) -> None:
                self.index = index

            def name(self) -> str:
                return H200.gpu

            def compute_capability(self) -> tuple[int, int]:
                return 9, 0

            def retain_primary_context(self) -> PrimaryContext:
                return PrimaryContext()

        class Context:
            @staticmethod
            def pop() -> None:
                outer.depth -= 1

        class Stream:
            handle = 7

            def synchronize(self) -> None:
                assert outer.depth == 1, "a CUDA call outside the pushed context"

        self.Allocation, self.Device, self.Context, self.Stream = Allocation, Device, Context, Stream

    def init(self) -> None:
        pass

    def mem_alloc(self, nbytes: int):
        return self.Allocation(nbytes)

    def pagelocked_empty(self, count: int, dtype) -> np.ndarray:
        return np.empty(count, dtype)

    def memcpy_htod_async(self, device, host: np.ndarray, stream) -> None:
        self.memory[int(device)][:host.nbytes] = np.ascontiguousarray(host).reshape(-1).view(np.uint8)

    def memcpy_dtoh_async(self, host: np.ndarray, device, stream) -> None:
        host.reshape(-1).view(np.uint8)[:] = self.memory[int(device)][:host.nbytes]


class FakeTensorRT:
    """tensorrt as the backend uses it; an engine file is JSON naming its graph. Encoder: window_features =
    mean of the frames + window index; pair head: delta[k] = mean of exemplar k's window features."""

    __version__ = H200.tensorrt

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    nptype = staticmethod(lambda dtype: dtype)

    def __init__(self, cuda: FakeCuda) -> None:
        trt = self

        class Context:
            def __init__(self, engine) -> None:
                self.engine, self.shapes, self.addresses = engine, {}, {}

            def set_input_shape(self, name, shape) -> bool:
                low, _, high = self.engine.profile(name)
                if any(d < lo or d > hi for d, lo, hi in zip(shape, low, high)):
                    return False
                self.shapes[name] = tuple(shape)
                return True

            def get_tensor_shape(self, name):
                return self.shapes.get(name) or self.engine.output_shape(name, self.shapes)

            def set_tensor_address(self, name, address) -> bool:
                self.addresses[name] = address
                return True

            def infer_shapes(self):
                return []

            def read(self, name):
                dtype, shape = self.engine.tensors[name][1], self.get_tensor_shape(name)
                raw = cuda.memory[self.addresses[name]][:int(np.prod(shape)) * np.dtype(dtype).itemsize]
                return raw.view(dtype).reshape(shape)

            def write(self, name, value) -> None:
                raw = np.ascontiguousarray(value, self.engine.tensors[name][1]).reshape(-1).view(np.uint8)
                cuda.memory[self.addresses[name]][:raw.size] = raw

            def execute_async_v3(self, handle) -> bool:
                trt.executions.append(self.engine.graph)
                if self.engine.graph == "encoder":
                    frames = self.read("frames")
                    self.write("window_features", frames.mean() + np.arange(9)[None, :, None] * np.ones((1, 9, D)))
                    self.write("transitions", np.array([[10, 60]]))
                    self.write("transition_probs", np.zeros((1, 96, 2)))
                    self.write("static_tokens", np.ones((1, 12, T)))
                else:
                    delta = self.read("exemplar_window_features").mean(axis=(1, 2))
                    self.write("delta", delta)
                    self.write("step_deltas", np.repeat(delta[:, None] / 3, 3, 1))
                return True

        class Engine:
            def __init__(self, graph: str) -> None:
                self.graph = graph
                i, o = FakeTensorRT.TensorIOMode.INPUT, FakeTensorRT.TensorIOMode.OUTPUT
                f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
                if graph == "encoder":
                    self.tensors = {"frames": (i, np.dtype(np.uint8), (1, 96, 112, 112, 3)),
                                    "window_features": (o, f32, (1, 9, D)), "transitions": (o, i64, (1, 2)),
                                    "transition_probs": (o, f32, (1, 96, 2)), "static_tokens": (o, f32, (1, 12, T))}
                else:
                    self.tensors = {"query_window_features": (i, f32, (1, 9, D)), "query_transitions": (i, i64, (1, 2)),
                                    "query_static_tokens": (i, f32, (1, 12, T)),
                                    "exemplar_window_features": (i, f32, (-1, 9, D)),
                                    "exemplar_transitions": (i, i64, (-1, 2)),
                                    "exemplar_static_tokens": (i, f32, (-1, 12, T)),
                                    "delta": (o, f32, (-1,)), "step_deltas": (o, f32, (-1, 3))}
                self.num_io_tensors = len(self.tensors)

            def get_tensor_name(self, index: int) -> str:
                return list(self.tensors)[index]

            def get_tensor_mode(self, name):
                return self.tensors[name][0]

            def get_tensor_dtype(self, name):
                return self.tensors[name][1]

            def get_tensor_shape(self, name):
                return self.tensors[name][2]

            def profile(self, name):
                shape = self.tensors[name][2]
                return [tuple(k if d < 0 else d for d in shape) for k in K_PROFILE] if -1 in shape else [shape] * 3

            def get_tensor_profile_shape(self, name, index):
                return self.profile(name)

            def output_shape(self, name, inputs):
                k = inputs.get("exemplar_window_features", (1,))[0]
                return tuple(k if d < 0 else d for d in self.tensors[name][2])

            def create_execution_context(self):
                return Context(self)

        class Runtime:
            def __init__(self, logger) -> None:
                pass

            def deserialize_cuda_engine(self, blob: bytes):
                return Engine(json.loads(blob)["graph"])

        self.Runtime, self.executions = Runtime, []


def test_tensorrt_backend_buffers_chunks_contexts_and_release_order(tmp_path, monkeypatch):
    """The backend's own logic (not TensorRT's) on stand-ins: one allocation per tensor at the profile's maximum,
    K split at the profile's maximum, the context pushed and popped around every call, everything freed by close."""
    import runtime.backends.trt as trt_module

    root = fake_package(tmp_path / "pkg", variants={"int8": True})
    for record in record_engines(root, H200):
        (root / record["engine"]).write_text(json.dumps({"graph": "encoder" if "encoder" in record["graph"]
                                                         else "pair_head"}))
    cuda = FakeCuda()
    trt = FakeTensorRT(cuda)
    monkeypatch.setattr(trt_module, "_import", lambda: (trt, cuda))
    package = load_package(root)
    backend = trt_module.TensorRTBackend(package, precision="auto")  # GPU: the recommended int8 engines
    assert backend.precision == "int8" and backend.max_k == 32 and backend.has_masks
    assert "tensorrt 10.13.0.35 NVIDIA H200 sm90 int8" == backend.description
    allocated = cuda.allocations
    frames = np.full((1, 96, 112, 112, 3), 3, np.uint8)
    query = backend.encode(frames)
    assert query["transitions"].dtype == np.int64 and np.allclose(query["window_features"][0, :, 0], 3 + np.arange(9))
    rng = np.random.default_rng(0)
    exemplars = {"exemplar_window_features": rng.standard_normal((70, 9, D)).astype(np.float32),
                 "exemplar_transitions": np.tile([[20, 60]], (70, 1)),
                 "exemplar_static_tokens": rng.standard_normal((70, 12, T)).astype(np.float32)}
    trt.executions.clear()
    delta, steps = backend.pair_head({"query_window_features": query["window_features"],
                                      "query_transitions": query["transitions"],
                                      "query_static_tokens": query["static_tokens"], **exemplars})
    assert trt.executions == ["pair_head"] * 3  # 32 + 32 + 6
    np.testing.assert_allclose(delta, exemplars["exemplar_window_features"].mean(axis=(1, 2)), rtol=1e-5)
    assert steps.shape == (70, 3) and cuda.allocations == allocated and cuda.depth == 0
    with pytest.raises(BackendError, match="outside the engine's optimisation profile"):
        backend.pair.run({"exemplar_window_features": np.zeros((33, 9, D), np.float32)}, ["delta"])
    assert cuda.depth == 0  # popped on the error path too
    backend.close()
    assert cuda.frees == cuda.allocations and not cuda.memory and cuda.detached == 1
    # Explicit precisions pick their own records; a record for another GPU is refused by name.
    with trt_module.TensorRTBackend(load_package(root), precision="fp32") as fp32:
        assert fp32.precision == "fp32" and cuda.depth == 0
    for record in record_engines(root, DeviceIdentity(H200.gpu, "sm87", H200.tensorrt)):
        (root / record["engine"]).write_text(json.dumps({"graph": "encoder" if "encoder" in record["graph"]
                                                         else "pair_head"}))
    with pytest.raises(BackendError, match="built for NVIDIA H200 sm87 .* this is NVIDIA H200 sm90"):
        trt_module.TensorRTBackend(load_package(root), precision="fp32")
    assert cuda.depth == 0 and not cuda.memory
