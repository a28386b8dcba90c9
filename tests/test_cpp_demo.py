"""cpp_demo/: the C++ scorer's library, held to the Python implementation it mirrors.

Builds cpp_demo's library, fineparser_tool and unit tests with CMake (Release, into build/cpp_demo or
$FINEPARSER_CPP_BUILD; incremental after the first build), runs the C++ unit tests (ctest), then
compares the C++ side with the Python side on inputs made here: preprocessing of decoded video frames,
filter weights, frame sampling, the exported bank.bin, exemplar selection, timecodes, number rounding,
score events, and the whole scoring loop with a stand-in backend. Events are held to one written
contract, docs/events.schema.json: both sides' events validate against it and their numbers agree within
NUMBER_TOLERANCE; how either side spells a number is its own business. Skips, with the reason, where cmake,
a C++ compiler, OpenCV's or nlohmann_json's development files are missing (`.ci/run` installs them).
The TensorRT executable itself needs TensorRT and a GPU; `test_tensorrt_sources_compile` compiles its
sources against TensorRT headers named by $FINEPARSER_TRT_INCLUDE.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from jsonschema import Draft202012Validator

from fineparser import preprocess
from fineparser.package import ExemplarBank, PackageError, load_package, read_bank_bin, write_manifest
from runtime.cli import LiveOptions, run_live
from runtime.events import EventBus
from runtime.scorer import DiveScorer
from runtime.segments import Dive, SegmentError, read_timecodes
from runtime.sources import CapturedFrame

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "cpp_demo"
EVENT_SCHEMA = REPO / "docs" / "events.schema.json"
BUILD = Path(os.environ.get("FINEPARSER_CPP_BUILD", REPO / "build" / "cpp_demo"))

MAX_LEVEL_DIFF = 1
"""Preprocessing tolerance in uint8 levels. The C++ sums each output as fused multiply-adds in input
order, which is what OpenBLAS's sgemm does for numpy's matmul except in its dot-product kernel for
the last 1..8 columns of a 16-column tile (SkylakeX small-matrix path): those sums can differ in the
last bit, which flips the rounding of a value lying at x.5 by one level."""
MAX_DIFF_FRACTION = 1e-3
"""At most this fraction of the bytes may differ by that one level (measured: 0 to 3 values of a 112x112x3 frame
on the Intel machines, 4 to 24 on an AMD EPYC one, 9 in 10 of them lower in C++: 6.4e-4 at most)."""


def _run(args: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def build() -> dict:
    """Configure and build cpp_demo (library, fineparser_tool, unit tests); skip with the reason when it cannot."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found: install cmake (apt-get install cmake) to build cpp_demo/")
    if not any(shutil.which(cxx) for cxx in (os.environ.get("CXX", "c++"), "c++", "g++", "clang++")):
        pytest.skip("no C++ compiler found (c++, g++, clang++): install g++ to build cpp_demo/")
    # An existing build folder keeps its generator (make cpp and this test share it).
    generator = ["-G", "Ninja"] if shutil.which("ninja") and not (BUILD / "CMakeCache.txt").exists() else []
    configure = _run([cmake, "-S", SOURCE, "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release", *generator])
    log = configure.stdout + configure.stderr
    if configure.returncode != 0:
        flat = " ".join(log.split())  # CMake wraps long messages
        for missing in ("OpenCV (core, imgproc, videoio, imgcodecs) not found", "nlohmann_json not found"):
            if missing in flat:
                pytest.skip(f"cpp_demo: {missing}: apt-get install libopencv-dev nlohmann-json3-dev (.ci/run does)")
        pytest.fail(f"cmake configure of cpp_demo failed:\n{log[-4000:]}")
    built = _run([cmake, "--build", BUILD, "--parallel", "2", "--target", "fineparser_tool", "fineparser_unit_tests"])
    assert built.returncode == 0, f"cpp_demo build failed:\n{(built.stdout + built.stderr)[-6000:]}"
    warnings = [line for line in (built.stdout + built.stderr).splitlines() if "warning:" in line]
    return {"tool": BUILD / "fineparser_tool", "configure_log": log, "warnings": warnings}


def tool(build: dict, *args, check: bool = True) -> subprocess.CompletedProcess:
    out = _run([build["tool"], *args])
    if check:
        assert out.returncode == 0, f"fineparser_tool {' '.join(map(str, args))} failed:\n{out.stderr}"
    return out


def tool_json(build: dict, *args):
    return json.loads(tool(build, *args).stdout)


def natural_frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """BGR frames with smooth gradients, texture, noise and hard edges that move from frame to frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(count):
        image = np.empty((height, width, 3), np.float32)
        for c in range(3):
            image[..., c] = 128 + 60 * np.sin((x + 7 * t) / (17 + 5 * c) + y / (23 + 3 * c))
        image += rng.normal(0, 12, (height, width, 3))
        for _ in range(6):
            top, left = rng.integers(0, max(height - 20, 1)), rng.integers(0, max(width - 20, 1))
            image[top:top + int(rng.integers(5, 60)), left:left + int(rng.integers(3, 40))] = rng.integers(0, 255, 3)
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return frames


def stamped_frames(frames: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """`frames` (up to 112, 320x180) with a flat block of a level of their own where the model frame's centre
    pixel comes from: preprocessing keeps a flat area exactly on both sides, so the stand-in backends, which
    look at that pixel, see the same levels whatever the one-level differences elsewhere."""
    assert len(frames) <= 112 and frames[0].shape == (180, 320, 3)
    levels = np.random.default_rng(seed).permutation(np.arange(16, 240, 2))
    stamped = [frame.copy() for frame in frames]
    for frame, level in zip(stamped, levels):
        frame[70:110, 130:190] = level
        assert (preprocess.prepare_frame_bgr(frame)[54:59, 54:59] == level).all()
    return stamped


def lossless_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """FFV1 in Matroska: both OpenCVs decode exactly the pixels written (even sizes only)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (width, height))
    assert writer.isOpened(), "OpenCV cannot write FFV1 video here"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def python_decode(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def compare_levels(got: np.ndarray, want: np.ndarray, what: str) -> int:
    """Assert the tolerance (see MAX_LEVEL_DIFF); returns the number of differing bytes."""
    assert got.shape == want.shape, f"{what}: C++ gave {got.shape}, Python {want.shape}"
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    differing = int(np.count_nonzero(diff))
    print(f"{what}: {differing} of {diff.size} bytes differ, max {int(diff.max())} level(s)")
    assert diff.max() <= MAX_LEVEL_DIFF, f"{what}: C++ and Python differ by {diff.max()} levels"
    assert differing <= MAX_DIFF_FRACTION * diff.size, f"{what}: {differing} bytes differ"
    return differing


# --------------------------------------------------------------------------- build and unit tests


def test_cmake_builds_without_warnings_and_says_what_it_skipped(build):
    assert build["warnings"] == [], "\n".join(build["warnings"])
    line = next(x for x in build["configure_log"].splitlines() if "fineparser_demo (TensorRT):" in x)
    assert "yes (TensorRT" in line or "SKIPPED: " in line
    print(line.strip())


def test_cpp_unit_tests_pass(build):
    out = _run(["ctest", "--output-on-failure"], cwd=BUILD) if shutil.which("ctest") else None
    if out is None:
        out = _run([BUILD / "fineparser_unit_tests"])
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("width, height, count", [(640, 360, 4), (1280, 720, 2), (1920, 1080, 2), (454, 256, 3)])
def test_video_preprocessing_matches_python(build, tmp_path, width, height, count):
    video = lossless_video(tmp_path / "clip.mkv", natural_frames(count, height, width, seed=width))
    decoded = python_decode(video)
    tool(build, "prepare", "--stage", "decode", "--out", tmp_path / "decoded.bin", video)
    cpp_decoded = np.fromfile(tmp_path / "decoded.bin", np.uint8)
    # Both sides read the same pixels, so any difference below is the preprocessing's.
    np.testing.assert_array_equal(cpp_decoded, np.stack(decoded).reshape(-1))
    tool(build, "prepare", "--out", tmp_path / "frames.bin", video)
    got = np.fromfile(tmp_path / "frames.bin", np.uint8).reshape(-1, 112, 112, 3)
    want = np.stack([preprocess.prepare_frame_bgr(frame) for frame in decoded])
    compare_levels(got, want, f"prepare_frame_bgr {width}x{height}")


@pytest.mark.parametrize("width, height", [(455, 256), (333, 187), (97, 113), (3840, 2160), (1283, 719), (640, 1000),
                                           (454, 1080)])
def test_image_resize_and_crop_match_python(build, tmp_path, width, height):
    frames = natural_frames(2, height, width, seed=height)
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), frame)
    tool(build, "prepare", "--stage", "resize", "--out", tmp_path / "resized.bin", *paths)
    resized = np.fromfile(tmp_path / "resized.bin", np.uint8).reshape(-1, 200, 112, 3)
    compare_levels(resized, np.stack([preprocess.resize_frame(f) for f in frames]), f"resize_frame {width}x{height}")
    tool(build, "prepare", "--out", tmp_path / "prepared.bin", *paths)
    prepared = np.fromfile(tmp_path / "prepared.bin", np.uint8).reshape(-1, 112, 112, 3)
    compare_levels(prepared, np.stack([preprocess.prepare_frame_bgr(f) for f in frames]), f"prepare {width}x{height}")


@pytest.mark.parametrize("in_size, out_size", [(1920, 112), (1080, 200), (455, 112), (256, 200), (100, 112),
                                               (60, 200), (3840, 112), (2160, 200), (1283, 112), (719, 200)])
def test_filter_weights_equal_numpy_bit_for_bit(build, tmp_path, in_size, out_size):
    info = tool_json(build, "weights", in_size, out_size, "--out", tmp_path / "w.bin")
    factor = preprocess._reduction_factor(in_size, out_size)
    scale = in_size / out_size / factor if factor != 1 else in_size / out_size
    assert info == {"factor": factor, "inputs": in_size // factor, "scale": scale}
    want = preprocess._triangle_weights(in_size // factor, out_size, scale).astype(np.float32)
    got = np.fromfile(tmp_path / "w.bin", np.float32).reshape(want.shape)
    np.testing.assert_array_equal(got, want)


def test_frame_sampling_equals_python(build):
    cases = [(0, last, 96, 0) for last in range(0, 400)] + [(first, first + n, 96, shift) for first in (0, 7, 1000)
                                                            for n in (3, 95, 96, 97, 250) for shift in (-3, 0)]
    cases += [(0, 9, num, 0) for num in (1, 2, 10, 33)]
    got = tool_json(build, "sample", *[",".join(map(str, case)) for case in cases])
    for case, indices in zip(cases, got):
        assert indices == preprocess.sample_frame_indices(*case).tolist(), case
    out = tool(build, "sample", "10,5,96", check=False)
    assert out.returncode == 2 and "before it starts (10)" in out.stderr


# --------------------------------------------------------------------------- package, bank, selection


DIVE_NUMBERS = ["107B"] * 9 + ["105B", "105B", "5253B", "205C"]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A package holding a bank written by the exporter's own writer (export.bank.write_bank) and manifest."""
    from export.bank import write_bank

    root = tmp_path_factory.mktemp("cpp_pkg")
    rng = np.random.default_rng(7)
    n = len(DIVE_NUMBERS)
    features = rng.normal(0, 1, (n, 9, 128)).astype(np.float32)
    features[:, 0, 0] = rng.uniform(-2, 2, n)  # the stand-in backend's delta
    bank = ExemplarBank(features, rng.integers(0, 96, (n, 2)), rng.normal(0, 1, (n, 12, 16)),
                        rng.uniform(30, 90, n).round(2), rng.uniform(1.5, 3.8, n).round(1), DIVE_NUMBERS,
                        [f"Championnats d'été 2026/{i}" for i in range(n)],
                        metadata={"source": "training split", "exemplars_per_dive": None, "note": "π ≈ 3.14"})
    write_bank(bank, root, "bank.npz", "bank.bin")
    manifest = {"format": "fineparser-package", "format_version": 1, "scoring": {"voter_number": 10},
                "bank": {"status": "bank", "file": "bank.npz", "binary": "bank.bin"}, "engines": []}
    write_manifest(root, manifest, ["bank.npz", "bank.bin"])
    return root


def test_bank_reader_returns_exactly_what_export_wrote(build, package, tmp_path):
    report = tool_json(build, "bank", package / "bank.bin", "--out", tmp_path)
    bank = ExemplarBank.from_npz(package / "bank.npz")
    dtypes = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8")}
    for entry in report["arrays"]:
        want = getattr(bank, entry["name"])
        assert entry["shape"] == list(want.shape) and dtypes[entry["dtype"]] == want.dtype.newbyteorder("<")
        stored = np.ascontiguousarray(want, want.dtype.newbyteorder("<")).tobytes()
        assert (tmp_path / f"{entry['name']}.bin").read_bytes() == stored, entry["name"]
    assert {a["name"] for a in report["arrays"]} == {"window_features", "transitions", "static_tokens", "final_score",
                                                     "difficulty"}
    assert report["dive_number"] == bank.dive_number.tolist() and report["clip_id"] == bank.clip_id.tolist()
    assert report["final_score"] == bank.final_score.tolist() and report["difficulty"] == bank.difficulty.tolist()
    assert report["transitions"] == bank.transitions.reshape(-1).tolist()
    assert report["metadata"] == bank.metadata
    assert (report["size"], report["windows"], report["feature_dim"], report["token_rows"], report["token_dim"]) == (
        len(bank), 9, 128, 12, 16)


def test_manifest_is_verified_like_python(build, package, tmp_path):
    summary = tool_json(build, "manifest", package)
    assert summary == {"voter_number": 10, "bank_bin": str(package / "bank.bin"), "verified": True, "engines": []}
    broken = tmp_path / "pkg"
    shutil.copytree(package, broken)
    with open(broken / "bank.bin", "r+b") as handle:  # same size, other bytes
        handle.seek(100)
        handle.write(b"\xff")
    out = tool(build, "manifest", broken, check=False)
    with pytest.raises(PackageError) as python_error:
        load_package(broken)
    assert out.returncode == 2 and out.stderr.strip() == f"error: {python_error.value}"
    (broken / "bank.bin").write_bytes(b"short")
    out = tool(build, "manifest", broken, check=False)
    with pytest.raises(PackageError) as python_error:
        load_package(broken)
    assert out.stderr.strip() == f"error: {python_error.value}"


def test_exemplar_selection_equals_python(build, package):
    bank = ExemplarBank.from_npz(package / "bank.npz")
    numbers = ["107B", " 107B ", "105B", "109B", "5253B", "5255B", "205C", "405C", "6245D", "107b", "", "X"]
    for k in (-1, 1, 2, 3, 10):
        got = tool_json(build, "select", package / "bank.bin", k, *numbers)
        for number, result in zip(numbers, got):
            indices, note = bank.select(number, None if k < 0 else k)
            assert (result["indices"], result["note"]) == (indices.tolist(), note), (number, k)


# --------------------------------------------------------------------------- timecodes, formatting, score events


def test_timecodes_read_like_python(build, tmp_path):
    files = {
        "plain.csv": "start,end,dive_number\n# comment\n12.5, 16.0 ,107B\n\n1,4\n\"20\",\"24.5\",\"5253B\"\n",
        "bare.csv": "0.5,2\n3,4.25,\n",
        "broadcast_000.json": json.dumps({"dives": [{"order": 1, "start_s": 0.72, "end_s": 4.72, "dive_number": "6245D",
                                                     "final_score": 77.4}, {"start_s": 6.28, "end_s": 11.28}]}),
        "list.json": json.dumps([{"start": "1.5", "end": 3, "dive_number": 107}, {"start": 0, "end": 1}]),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        got = tool_json(build, "timecodes", tmp_path / name)
        want = [{"dive": d.index, "start_s": d.start, "end_s": d.end, "dive_number": d.dive_number,
                 "ground_truth_score": d.ground_truth_score, "source": d.source}
                for d in read_timecodes(tmp_path / name)]
        assert got == want, name
    bad = {"word.csv": "1,2\n3,abc\n", "back.csv": "5,4.5\n", "empty.csv": "start,end\n", "one.csv": "1\n",
           "nostart.json": '[{"end": 3}]'}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        out = tool(build, "timecodes", tmp_path / name, check=False)
        with pytest.raises(SegmentError) as python_error:
            read_timecodes(tmp_path / name)
        assert out.returncode == 2 and out.stderr.strip() == f"error: {python_error.value}", name


def test_numbers_round_like_python(build):
    """Event values are rounded as runtime/scorer.py rounds them (exactly: the same doubles come back), and
    error messages quote numbers as Python's repr() does (segments.cpp: the timecode errors above)."""
    rng = np.random.default_rng(3)
    values = [0.0, -0.0, 1.0, 2.675, 0.125, 55.98885, 1e-05, 1.5e-07, 123456789.0, 1e16, 1.2345678901234567e+17,
              -3.0000000000000004, *rng.normal(0, 50, 40).tolist(), *(rng.normal(0, 1, 20) * 10.0 ** rng.integers(
                  -8, 18, 20)).tolist(), *rng.normal(0, 1, 20).astype(np.float32).astype(float).tolist()]
    got = tool_json(build, "format", *[repr(v) for v in values])
    for value, (text, r4, r6) in zip(values, got):
        assert (text, r4, r6) == (repr(value), round(value, 4), round(value, 6)), value


NUMBER_TOLERANCE = 1e-4
"""How far a C++ number in an event may be from Python's: one unit in the 4th decimal, the coarsest
rounding of any compared value (scores and stream times are rounded to 4 decimals, so a last-bit
difference before rounding can move a rounded value by that much). Integers must be equal."""


@pytest.fixture(scope="module")
def event_schema() -> Draft202012Validator:
    schema = json.loads(EVENT_SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_valid_event(validator: Draft202012Validator, event: dict, side: str) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(event)'}: {e.message}" for e in validator.iter_errors(event)]
    assert not errors, f"{side} event breaks {EVENT_SCHEMA.name}: {errors}\n{event}"


def assert_agree(got, want, where: str = "event") -> None:
    """C++ value `got` matches Python's `want`: same keys, same strings, numbers within NUMBER_TOLERANCE."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: fields {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_agree(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got} != {want}"
        for i, (a, b) in enumerate(zip(got, want)):
            assert_agree(a, b, f"{where}[{i}]")
    elif isinstance(want, (int, float)) and not isinstance(want, bool):
        assert isinstance(got, (int, float)) and not isinstance(got, bool), f"{where}: {got!r} is not a number"
        if isinstance(want, int) and isinstance(got, int):
            assert got == want, f"{where}: {got} != {want}"
        else:
            assert got == pytest.approx(want, rel=0, abs=NUMBER_TOLERANCE), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


class StandInBackend:
    """The Python twin of fineparser_tool's FakeBackend (tools/fineparser_tool.cpp)."""

    name = "fake"
    description = "fake (fineparser_tool)"
    has_masks = False

    def encode(self, frames: np.ndarray, with_masks: bool = False) -> dict[str, np.ndarray]:
        middle = preprocess.CROP_SIZE // 2
        centres = frames[0, :, middle, middle, 0]  # where stamped_frames puts each frame's own level
        half = len(centres) // 2
        return {"window_features": np.zeros((1, 9, 128), np.float32),
                "transitions": np.array([[np.argmax(centres[:half]), half + np.argmax(centres[half:])]], np.int64),
                "transition_probs": np.zeros((1, 96, 2), np.float32),
                "static_tokens": np.zeros((1, 12, 16), np.float32)}

    def pair_head(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        delta = stand_in_deltas(feeds["exemplar_window_features"][:, 0, 0], feeds["query_transitions"])
        return delta, delta[:, None] * np.array([0.3, 0.5, 0.2], np.float32)


def stand_in_deltas(window_feature_00: np.ndarray, transitions: np.ndarray) -> np.ndarray:
    """FakeBackend's delta: the exemplar row's window_features[0, 0] + 0.01 x the query's two transitions (float32)."""
    return (window_feature_00.astype(np.float32)
            + np.float32(0.01) * np.float32(int(np.asarray(transitions).reshape(-1)[:2].sum())))

    def close(self) -> None:
        pass


WALL_CLOCK = ("wall_time", "seq", "latency_ms", "warmup_ms")


def without_wall_clock(event: dict) -> dict:
    return {k: v for k, v in event.items() if k not in WALL_CLOCK}


@pytest.mark.parametrize("dive_number, frames, voters", [("107B", 130, 10), ("109B", 40, 10), ("405C", 96, 3),
                                                          (None, 7, 12), ("5253B", 300, 1)])
def test_score_event_agrees_with_the_python_scorer(build, package, event_schema, tmp_path, dive_number, frames,
                                                  voters):
    bank = ExemplarBank.from_npz(package / "bank.npz")
    rng = np.random.default_rng(frames)
    times = np.cumsum(rng.uniform(0.02, 0.05, frames)) + 3.0
    captured = [CapturedFrame(i, float(t), rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
                for i, t in enumerate(times)]
    dive = Dive(4, 3.01, float(times[-1]) + 0.04, dive_number, 71.25 if frames > 100 else None)
    want = DiveScorer(StandInBackend(), bank, voters).score(dive, captured, ended_at=0.0).event
    query = StandInBackend().encode(np.stack([f.frame for f in captured])[preprocess.sample_frame_indices(
        0, frames - 1)][None])
    spec = {"bank": str(package / "bank.bin"), "voter_number": voters, "frame_times": times.tolist(),
            "transitions": query["transitions"].reshape(-1).tolist(),
            "dive": {"index": 4, "start": 3.01, "end": dive.end, "dive_number": dive_number,
                     "ground_truth_score": dive.ground_truth_score},
            "deltas_by_row": stand_in_deltas(bank.window_features[:, 0, 0], query["transitions"]).tolist(),
            "step_deltas_by_row": (stand_in_deltas(bank.window_features[:, 0, 0], query["transitions"])[:, None]
                                   * np.float32([0.3, 0.5, 0.2])).tolist()}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    got = tool_json(build, "score-event", tmp_path / "spec.json")
    stamp = {"type": "score", "seq": 0, "wall_time": "2026-11-28T19:38:08.185+00:00"}
    assert_valid_event(event_schema, stamp | got, "C++")
    assert_valid_event(event_schema, stamp | want, "Python")
    assert_agree(without_wall_clock(got) | {"backend": None}, without_wall_clock(want) | {"backend": None})


# --------------------------------------------------------------------------- the whole loop


def test_scoring_loop_emits_the_python_runtime_events(build, package, event_schema, tmp_path):
    video = lossless_video(tmp_path / "programme.mkv", stamped_frames(natural_frames(90, 180, 320, seed=11), seed=11))
    (tmp_path / "dives.csv").write_text("start,end,dive_number\n0.4,1.6,107B\n2.0,2.8,\n3.2,9.0,405C\n")
    cpp = tool(build, "run", video, "--package", package, "--segment", f"timecodes:{tmp_path / 'dives.csv'}")
    got = [json.loads(line) for line in cpp.stdout.splitlines()]
    bus, want = EventBus(), []
    bus.subscribe(want.append)
    options = LiveOptions(source=str(video), package=package, segment=f"timecodes:{tmp_path / 'dives.csv'}")
    run_live(options, backend=StandInBackend(), bus=bus, table=False)
    for side, events in (("C++", got), ("Python", want)):
        for event in events:
            assert_valid_event(event_schema, event, side)
        assert [e["seq"] for e in events] == list(range(len(events))), side
    # The Python capture thread announces the end of the stream whenever it gets there; compare the
    # rest in order, and the stream events by status.
    python_events = [without_wall_clock(e) for e in want if e["type"] != "stream" or e["status"] != "backend"]
    cpp_events = [without_wall_clock(e) for e in got]
    assert_agree([e for e in cpp_events if e["type"] != "stream"], [e for e in python_events if e["type"] != "stream"])
    assert_agree({e["status"]: e for e in cpp_events if e["type"] == "stream"},
                 {e["status"]: e for e in python_events if e["type"] == "stream"}, "stream")
    scores = [e for e in got if e["type"] == "score"]
    assert [s["dive"] for s in scores] == [1, 2, 3] and scores[2]["end_s"] == 3.6  # dive 3 ends with the stream
    # --dive-number names the dives the timecodes leave without one.
    named = tool(build, "run", video, "--package", package, "--segment", f"timecodes:{tmp_path / 'dives.csv'}",
                 "--dive-number", "105B")
    numbers = [json.loads(line)["dive_number"] for line in named.stdout.splitlines() if '"score"' in line]
    assert numbers == ["107b", "105b", "405c"]  # events show the canonical spelling


def test_edge_averaged_scores_agree_with_the_python_runtime(build, package, event_schema, tmp_path):
    """A package with scoring.edge_offsets_s: both runtimes score the same segments (the stand-in's deltas depend
    on each segment's frames) and say how many they averaged; a malformed entry is one error line."""
    averaged = tmp_path / "pkg"
    shutil.copytree(package, averaged)
    manifest = json.loads((averaged / "manifest.json").read_text())
    manifest["scoring"]["edge_offsets_s"] = {"start": [-0.12, 0.0, 0.2], "end": [-0.16, 0.0]}
    write_manifest(averaged, manifest)
    video = lossless_video(tmp_path / "programme.mkv", stamped_frames(natural_frames(80, 180, 320, seed=5), seed=5))
    # the first dive starts on the first frame: its earlier starts have no frames and collapse onto the found one
    (tmp_path / "dives.csv").write_text("start,end,dive_number\n0.0,1.2,107B\n1.6,2.9,405C\n")
    segment = f"timecodes:{tmp_path / 'dives.csv'}"
    got = [json.loads(line) for line in tool(build, "run", video, "--package", averaged, "--segment", segment)
           .stdout.splitlines() if '"score"' in line]
    bus, want = EventBus(), []
    bus.subscribe(want.append)
    run_live(LiveOptions(source=str(video), package=averaged, segment=segment), backend=StandInBackend(), bus=bus,
             table=False)
    want = [e for e in want if e["type"] == "score"]
    for event in got:
        assert_valid_event(event_schema, event, "C++")
    assert [e["segments"] for e in want] == [4, 6]  # 3 x 2 offsets; the first dive has nothing before its start
    assert_agree([without_wall_clock(e) for e in got], [without_wall_clock(e) for e in want])
    # averaging changed the score: the one segment as found scores otherwise
    single = [json.loads(line) for line in tool(build, "run", video, "--package", package, "--segment", segment)
              .stdout.splitlines() if '"score"' in line]
    assert [e["segments"] for e in single] == [1, 1] and single[1]["score"] != want[1]["score"]
    # fineparser-live --single-segment on the averaged package scores as the package without offsets
    bus, plain = EventBus(), []
    bus.subscribe(plain.append)
    run_live(LiveOptions(source=str(video), package=averaged, segment=segment, single_segment=True),
             backend=StandInBackend(), bus=bus, table=False)
    assert_agree([without_wall_clock(e) for e in single],
                 [without_wall_clock(e) for e in plain if e["type"] == "score"])
    manifest["scoring"]["edge_offsets_s"] = {"start": [-0.1, 0.0], "end": [0.0, 0.1]}
    write_manifest(averaged, manifest)
    out = tool(build, "run", video, "--package", averaged, "--segment", segment, check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "edge_offsets_s.end offsets must be <= 0" in out.stderr


def test_bad_inputs_are_one_error_line(build, package, tmp_path):
    video = lossless_video(tmp_path / "v.mkv", natural_frames(3, 90, 160))
    cases = [(["run", tmp_path / "missing.mkv", "--package", package], "cannot open source"),
             (["run", video, "--package", tmp_path / "nope"], "no such package directory"),
             (["run", video, "--package", package, "--segment", "timecodes:/nonexistent.csv"],
              "cannot read timecodes file /nonexistent.csv"),
             (["run", video, "--package", package, "--segment", "operator"], "unknown --segment 'operator'"),
             (["bank", package / "bank.npz"], "not a bank.bin file (bad magic)")]
    for args, message in cases:
        out = tool(build, *args, check=False)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, (args, out.stderr)


def test_tensorrt_sources_compile(build, tmp_path):
    include = os.environ.get("FINEPARSER_TRT_INCLUDE")
    if not include:
        pytest.skip("set FINEPARSER_TRT_INCLUDE to a TensorRT include folder (e.g. NVIDIA/TensorRT's include/) to "
                    "compile fineparser_demo's TensorRT sources against it")
    out = _run(["cmake", "-S", SOURCE, "-B", tmp_path, f"-DTensorRT_INCLUDE_DIR={include}",
                "-DFINEPARSER_BUILD_TESTS=OFF"])
    assert out.returncode == 0, out.stdout + out.stderr
    if "fineparser_demo_compile_check" not in out.stdout and "fineparser_demo (TensorRT):       yes" not in out.stdout:
        pytest.skip(next(x for x in out.stdout.splitlines() if "fineparser_demo (TensorRT)" in x).strip())
    target = "fineparser_demo_compile_check" if "compile_check" in out.stdout else "fineparser_demo"
    built = _run(["cmake", "--build", tmp_path, "--parallel", "2", "--target", target])
    assert built.returncode == 0, (built.stdout + built.stderr)[-6000:]
    assert "warning:" not in built.stdout + built.stderr


def test_bank_bin_layout_is_the_documented_one(package):
    """The C++ reader's assumptions about bank.bin, stated against the file itself."""
    raw = (package / "bank.bin").read_bytes()
    assert raw[:8] == b"FPBANK01"
    (length,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[16:16 + length])
    assert header["byte_order"] == "little" and header["alignment"] == 64 and header["format_version"] == 1
    assert all(entry["offset"] % 64 == 0 for entry in header["arrays"])
    assert sys.byteorder == "little"


def damaged_banks(package: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """bank.bin damaged as a bad copy or a full disk damages it: name -> (file, what the error must say)."""
    raw = (package / "bank.bin").read_bytes()
    (length,) = struct.unpack("<Q", raw[8:16])
    assert b'"format_version":1,' in raw[16:16 + length]
    cases = {
        "bad_magic": (b"FPBANK99" + raw[8:], "not a bank.bin file (bad magic)"),
        "empty": (b"", "not a bank.bin file (bad magic)"),
        "bad_length": (raw[:8] + struct.pack("<Q", len(raw)) + raw[16:], "header runs past the end of the file"),
        "cut_in_header": (raw[:16 + length // 2], "header runs past the end of the file (truncated?)"),
        "garbled_header": (raw[:16] + b"#" + raw[17:], "bank.bin header is not JSON"),
        "newer_version": (raw.replace(b'"format_version":1,', b'"format_version":7,', 1), "bank format version 7"),
        "cut_in_arrays": (raw[:-100], "runs past the end of the file (truncated?)"),
    }
    out = {}
    for name, (data, message) in cases.items():
        (folder / f"{name}.bin").write_bytes(data)
        out[name] = (folder / f"{name}.bin", message)
    return out


def test_python_bank_reader_refuses_a_damaged_file(package, tmp_path):
    """Like the C++ reader: magic, header length, header, version, array extents; the error names the file and
    says to re-export the package."""
    for name, (path, message) in damaged_banks(package, tmp_path).items():
        with pytest.raises(PackageError) as error:
            ExemplarBank.from_bin(path)
        text = str(error.value)
        assert text.startswith(f"{path}: ") and message in text and "re-export the package" in text, (name, text)


def test_cpp_bank_reader_refuses_the_same_files(build, package, tmp_path):
    for name, (path, message) in damaged_banks(package, tmp_path).items():
        out = tool(build, "bank", path, check=False)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and str(path) in out.stderr, (name, out.stderr)
        assert message in out.stderr, (name, out.stderr)
        if name in ("bad_magic", "empty", "bad_length", "cut_in_header"):  # both say it in the same words
            with pytest.raises(PackageError) as python_error:
                read_bank_bin(path)
            assert out.stderr.strip() == f"error: {python_error.value}", name
