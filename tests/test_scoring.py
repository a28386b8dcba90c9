"""The one scoring rule and the one onnxruntime session factory, on numbers and graphs the tests make."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fineparser import onnx_session as sessions
from fineparser.package import ExemplarBank, PackageError, load_package, write_manifest
from fineparser.scoring import (
    EDGE_OFFSETS_KEY,
    NO_DIVE_NUMBER_NOTE,
    EdgeOffsets,
    final_score,
    frame_interval,
    pair_feeds,
    score_dive,
    select_exemplars,
    step_means,
)

REPO = Path(__file__).resolve().parents[1]


def make_bank(dive_numbers: list[str], scores: list[float]) -> ExemplarBank:
    """A bank with made-up encoder outputs (only scores and dive numbers matter for scoring)."""
    n = len(scores)
    rng = np.random.default_rng(0)
    return ExemplarBank(rng.normal(size=(n, 9, 8)), np.tile([30, 60], (n, 1)), rng.normal(size=(n, 12, 4)),
                        np.asarray(scores), np.full(n, 3.0), dive_numbers, [f"clip/{i}" for i in range(n)])


# --------------------------------------------------------------------------- the rule


def test_final_score_is_mean_of_exemplar_score_plus_delta():
    scores = np.array([50.0, 60.0, 70.0])
    delta = np.array([1.0, -2.0, 4.0])
    assert float(final_score(scores, delta)) == pytest.approx((51.0 + 58.0 + 74.0) / 3)
    scored = score_dive(scores.astype(np.float32), delta.astype(np.float32))
    assert scored.final == pytest.approx(61.0) and scored.mean_delta == pytest.approx(1.0)
    assert scored.deltas.dtype == np.float64 and scored.step_means is None


def test_final_score_works_on_torch_tensors_in_their_dtype():
    torch = pytest.importorskip("torch")
    scores = torch.tensor([50.0, 60.0, 70.0])
    delta = torch.tensor([1.0, -2.0, 4.0], requires_grad=True)
    value = final_score(scores, delta)
    assert isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.ndim == 0
    assert float(value.detach()) == pytest.approx(61.0)
    value.backward()  # model.score stays differentiable through the shared rule
    assert torch.allclose(delta.grad, torch.full((3,), 1 / 3))


def test_step_means_sum_to_the_mean_delta():
    rng = np.random.default_rng(1)
    step_deltas = rng.normal(size=(7, 3)).astype(np.float32)
    delta = step_deltas.sum(axis=1)  # the pair head's delta is the sum of its three steps (in float32)
    scored = score_dive(rng.uniform(40, 90, size=7), delta, step_deltas)
    np.testing.assert_allclose(scored.step_means, step_deltas.astype(np.float64).mean(axis=0), rtol=1e-12)
    assert scored.step_means.sum() == pytest.approx(scored.mean_delta, abs=1e-6)
    np.testing.assert_allclose(step_means(step_deltas), step_deltas.mean(axis=0))


def test_score_dive_rejects_mismatched_exemplar_counts():
    with pytest.raises(ValueError, match="3 exemplar scores but 2 pair-head deltas"):
        score_dive(np.zeros(3), np.zeros(2))


def test_pair_feeds_have_the_graph_dtypes():
    bank = make_bank(["101B", "101B"], [50.0, 60.0])
    query = {"window_features": np.ones((1, 9, 8)), "transitions": np.array([[30, 60]], dtype=np.int32),
             "static_tokens": np.ones((1, 12, 4)), "transition_probs": np.ones((1, 96, 2))}
    feeds = pair_feeds(query, bank.pair_head_inputs([0, 1]))
    assert feeds["query_window_features"].dtype == np.float32 and feeds["query_static_tokens"].dtype == np.float32
    assert feeds["query_transitions"].dtype == np.int64
    assert "query_transition_probs" not in feeds and "transition_probs" not in feeds
    assert feeds["exemplar_window_features"].shape == (2, 9, 8)


# --------------------------------------------------------------------------- exemplar choice


def test_missing_dive_number_uses_any_dive_with_the_note():
    bank = make_bank(["101B", "101B", "405C", "5253B"], [40.0, 50.0, 60.0, 70.0])
    for missing in (None, ""):
        indices, note = select_exemplars(bank, missing, voter_number=3)
        assert note == NO_DIVE_NUMBER_NOTE
        assert len(indices) == 3 and set(indices) <= {0, 1, 2, 3}


def test_known_dive_number_selects_its_own_exemplars_up_to_voter_number():
    bank = make_bank(["101B", "101B", "101B", "405C"], [40.0, 50.0, 60.0, 70.0])
    indices, note = select_exemplars(bank, "101B", voter_number=2)
    assert note is None and len(indices) == 2 and set(indices) <= {0, 1, 2}
    indices, note = select_exemplars(bank, "307C", voter_number=10)
    assert note is not None and note != NO_DIVE_NUMBER_NOTE and "307c" in note.lower()


# --------------------------------------------------------------------------- torch-free


def test_scoring_and_session_factory_import_without_torch_or_onnxruntime():
    # Same technique as tests/test_runtime.py: a None entry in sys.modules makes the import fail.
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnxruntime'] = None\n"
            "import fineparser, fineparser.scoring, fineparser.onnx_session\n"
            "s = fineparser.scoring.score_dive([50.0, 60.0], [1.0, 3.0], [[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])\n"
            "assert s.final == 57.0 and list(s.step_means) == [0.5, 1.5, 0.0], s\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- onnxruntime sessions


@pytest.fixture
def add_one_graph(tmp_path) -> Path:
    """y = x + 1 as an ONNX file."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "add_one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "add_one.onnx"
    onnx.save(model, str(path))
    return path


def test_gpu_providers_are_asked_for_only_with_a_gpu():
    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert sessions.usable_providers(listed, gpus=0) == ["CPUExecutionProvider"]
    assert sessions.usable_providers(listed, gpus=1)[-2:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_session_on_a_machine_without_gpu_runs_on_the_cpu(add_one_graph, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(sessions, "cuda_device_count", lambda: 0)
    session = sessions.onnx_session(add_one_graph, threads=1, optimization="basic")
    assert session.get_providers() == ["CPUExecutionProvider"]
    (y,) = session.run(["y"], {"x": np.array([1.0, 2.0], dtype=np.float32)})
    np.testing.assert_array_equal(y, [2.0, 3.0])


def test_missing_or_corrupt_graph_is_an_error_naming_the_file(tmp_path):
    pytest.importorskip("onnxruntime")
    missing = tmp_path / "nowhere" / "encoder.onnx"
    with pytest.raises(sessions.OnnxSessionError, match=r"no ONNX graph at .*nowhere.encoder\.onnx"):
        sessions.onnx_session(missing)
    corrupt = tmp_path / "pair_head.onnx"
    corrupt.write_bytes(b"this is not a protobuf \x00\xff" * 8)
    with pytest.raises(sessions.OnnxSessionError, match=r"cannot load .*pair_head\.onnx"):
        sessions.onnx_session(corrupt, providers=sessions.CPU_PROVIDERS)


def test_unknown_optimisation_level_lists_the_known_ones(add_one_graph):
    with pytest.raises(ValueError, match="known: disable, basic, extended, all"):
        sessions.onnx_session(add_one_graph, optimization="max")


# --------------------------------------------------------------------------- edge-averaged scores


def test_edge_offsets_become_frame_spans_clipped_to_the_frames_given():
    offsets = EdgeOffsets(start=(-0.08, 0.0, 0.08), end=(-0.08, 0.0))
    assert offsets.lead_s == 0.08
    # 25 fps, 3 frames before the start, 50 in the dive (indices 3..52): 0.08 s is 2 frames; the dive as found first
    assert offsets.spans(3, 50, 0.04) == [(3, 52), (1, 50), (1, 52), (3, 50), (5, 50), (5, 52)]
    # nothing before the start (the stream began with the dive): earlier starts collapse onto it and count once
    assert offsets.spans(0, 50, 0.04) == [(0, 49), (0, 47), (2, 47), (2, 49)]
    # 50 fps: 4 frames; a 3-frame dive keeps at least one frame in every span
    assert offsets.spans(0, 3, 0.02) == [(0, 2), (0, 0), (2, 2)]
    assert offsets.spans(4, 1, 0.0) == [(4, 4)]  # one frame, no frame rate to convert with
    assert EdgeOffsets().spans(2, 10, 0.04) == [(2, 11)]
    assert frame_interval([0.0, 0.25, 0.5, 1.0]) == 0.25 and frame_interval([1.0, 1.5, 2.5]) == 0.75
    assert frame_interval([3.0]) == 0.0


@pytest.mark.parametrize("raw, message", [
    ({"start": [-0.1], "end": [0.0]}, "must contain 0"),
    ({"start": [0.0], "end": [0.0, 0.1]}, "must be <= 0"),
    ({"start": [0.0, 2.0], "end": [0.0]}, "within 1.0 s"),
    ({"start": [], "end": [0.0]}, "non-empty list of finite seconds"),
    ({"start": [0.0, float("nan")], "end": [0.0]}, "non-empty list of finite seconds"),
    ({"start": [0.0]}, "must be {\"start\""),
    ([0.0], "must be {\"start\""),
])
def test_malformed_edge_offsets_are_refused_naming_the_manifest(tmp_path, raw, message):
    assert EdgeOffsets.from_scoring({"voter_number": 5}) == EdgeOffsets()  # absent: the one segment as found
    assert EdgeOffsets.from_scoring({EDGE_OFFSETS_KEY: {"start": [0, -0.1], "end": [0.0]}}).start == (0, -0.1)
    with pytest.raises(ValueError, match=re.escape(message)):
        EdgeOffsets.from_scoring({EDGE_OFFSETS_KEY: raw})
    write_manifest(tmp_path, {"scoring": {EDGE_OFFSETS_KEY: raw}})
    with pytest.raises(PackageError, match=re.escape(f"{tmp_path / 'manifest.json'}: ") + ".*" + re.escape(message)):
        load_package(tmp_path).edge_offsets()


class SegmentBackend:
    """Encoder outputs that name the segment: transitions = (first frame's value, last frame's value) of the 96
    (every frame of the programme is filled with its own index); the pair head's delta follows them."""

    name = "segments"
    description = "segments (tests/test_scoring.py)"
    has_masks = True

    def __init__(self) -> None:
        self.encoded: list[tuple[int, int, bool]] = []

    def encode(self, frames: np.ndarray, with_masks: bool = False) -> dict[str, np.ndarray]:
        first, last = int(frames[0, 0, 0, 0, 0]), int(frames[0, -1, 0, 0, 0])
        self.encoded.append((first, last, with_masks))
        out = {"window_features": np.zeros((1, 9, 8), np.float32), "transitions": np.array([[first, last]]),
               "transition_probs": np.zeros((1, 96, 2), np.float32), "static_tokens": np.zeros((1, 12, 4), np.float32)}
        if with_masks:
            out["mask_logits"] = np.zeros((1, 9, 16, 112, 112), np.float32)
        return out

    def pair_head(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        k = len(feeds["exemplar_transitions"])
        first, last = (int(v) for v in feeds["query_transitions"].reshape(-1))
        delta = (np.arange(k) + 0.1 * first - 0.05 * last).astype(np.float32)
        return delta, delta[:, None] * np.float32([0.3, 0.5, 0.2])


def test_a_dive_is_scored_as_the_mean_over_its_segments_and_explained_by_the_one_found():
    from runtime.scorer import DiveScorer
    from runtime.segments import Dive
    from runtime.sources import CapturedFrame

    bank = make_bank(["107B"] * 4, [50.0, 60.0, 70.0, 80.0])
    programme = [CapturedFrame(i, 0.04 * i, np.full((112, 112, 3), i, np.uint8)) for i in range(200)]
    lead, dive_frames = programme[97:100], programme[100:150]  # the dive: frames 100..149, 3 frames before it
    backend = SegmentBackend()
    scorer = DiveScorer(backend, bank, 4, with_masks=True, edge_offsets=EdgeOffsets((-0.08, 0.0, 0.08), (-0.08, 0.0)))
    result = scorer.score(Dive(1, 4.0, 6.0, "107B"), dive_frames, ended_at=0.0, lead=lead)
    segments = [(98, 147), (98, 149), (100, 147), (102, 147), (102, 149)]  # 2 frames either way at 25 fps
    assert [(first, last) for first, last, _ in backend.encoded] == [(100, 149), *segments]
    assert [masks for *_, masks in backend.encoded] == [True] + [False] * 5  # masks of the dive as found only
    one = [score_dive(bank.final_score, *backend.pair_head({"exemplar_transitions": np.zeros((4, 2)),
                                                             "query_transitions": np.array([[a, b]])}))
           for a, b in [(100, 149), *segments]]
    assert result.event["segments"] == 6
    assert result.event["score"] == pytest.approx(np.mean([s.final for s in one]), abs=1e-4)
    assert result.event["score"] != pytest.approx(one[0].final, abs=1e-3)  # the segments did count
    steps = np.mean([s.step_means for s in one], axis=0)
    assert list(result.event["step_deltas"].values()) == pytest.approx(steps, abs=1e-6)
    assert sum(result.event["step_deltas"].values()) == pytest.approx(result.event["mean_delta"], abs=1e-5)
    # the explanation is the dive as found: its 96 frames, its transitions (clipped into them), its masks
    assert result.sampled[0].seq == 100 and result.sampled[-1].seq == 149 and result.mask_logits is not None
    assert result.event["transition_frames"] == [95, 95] and result.event["frames_in_dive"] == 50
    # without frames before the start, the earlier starts are the dive's own first frame
    backend.encoded.clear()
    assert scorer.score(Dive(1, 4.0, 6.0, "107B"), dive_frames, ended_at=0.0).event["segments"] == 4
    assert [(first, last) for first, last, _ in backend.encoded] == [(100, 149), (100, 147), (102, 147), (102, 149)]
