"""fineparser-live: capture, segmentation, scoring, events, bad inputs, HTTP, live UDP (tiny package, CPU)."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.backends import BackendError, choose_backend, load_backend
from runtime.cli import LiveOptions, main, run_live
from runtime.events import EventBus
from runtime.segments import SegmentError, read_start_list, read_timecodes
from runtime.sources import CapturedFrame, FrameBuffer

REAL_CLIPS = Path(__file__).resolve().parents[2] / "shared" / "real_clips"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def package(tmp_path_factory, tiny_model, synth_root) -> Path:
    """The tiny model exported with a bank from the synthetic training split (no masks graph: export time)."""
    from export.cli import main as export_main
    from fineparser.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("runtime_pkg")
    checkpoint = save_checkpoint(root / "tiny.pt", tiny_model)
    rc = export_main([str(checkpoint), "--out", str(root / "pkg"), "--data-root", str(synth_root),
                      "--exemplars-per-dive", "3", "--parity-clips", "1", "--no-masks-graph"])
    assert rc == 0
    return root / "pkg"


@pytest.fixture(scope="module")
def broadcast(tmp_path_factory) -> Path:
    """A 2-dive 320x180 25 fps synthetic broadcast: broadcasts/broadcast_000.{mp4,json}, start_list_000.csv."""
    from synth import generate_broadcasts

    out = tmp_path_factory.mktemp("runtime_bc")
    generate_broadcasts(out, 1, seed=0, size=(320, 180), fps=25.0, dives_per_broadcast=2, idle_seconds=(0.5, 1.0),
                        score_seconds=1.0, replay_probability=0.0, progress=False)
    return out / "broadcasts"


@pytest.fixture(scope="module")
def ort_backend(package):
    return load_backend("onnxruntime", __import__("fineparser.package").package.load_package(package))


def collect(bus: EventBus) -> list[dict]:
    events: list[dict] = []
    bus.subscribe(events.append)
    return events


def small_video(path: Path, frames: int = 100, fps: float = 25.0) -> Path:
    """A moving square, mp4v, 160x90."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 90))
    for i in range(frames):
        image = np.full((90, 160, 3), 40, np.uint8)
        cv2.rectangle(image, (10 + i, 20), (30 + i, 60), (200, 180, 160), -1)
        writer.write(image)
    writer.release()
    return path


# --------------------------------------------------------------------------- scoring a broadcast


def test_broadcast_timecodes_one_score_per_dive(package, broadcast, ort_backend, tmp_path):
    truth = json.loads((broadcast / "broadcast_000.json").read_text())
    options = LiveOptions(source=str(broadcast / "broadcast_000.mp4"), package=package,
                          segment=f"timecodes:{broadcast / 'broadcast_000.json'}",
                          start_list=broadcast / "start_list_000.csv", events=tmp_path / "events.jsonl",
                          overlay=tmp_path / "overlay.mp4")
    report = run_live(options, backend=ort_backend, table=False)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    scores = [e for e in events if e["type"] == "score"]
    assert [e["dive"] for e in scores] == [1, 2] and len(report.scores) == 2
    assert [e["dive_number"] for e in scores] == [d["dive_number"] for d in truth["dives"]]
    assert [e["ground_truth_score"] for e in scores] == [d["final_score"] for d in truth["dives"]]
    for event, dive in zip(scores, truth["dives"]):
        assert dive["start_s"] <= event["transitions_s"][0] <= event["transitions_s"][1] < dive["end_s"]
        assert sum(event["step_deltas"].values()) == pytest.approx(event["mean_delta"], abs=1e-4)
        deltas = [x["delta"] for x in event["exemplars"]]
        assert event["score"] == pytest.approx(np.mean([x["score"] for x in event["exemplars"]]) + np.mean(deltas),
                                               abs=1e-3)
        assert event["latency_ms"] > 0 and event["backend"].startswith("onnxruntime")
    kinds = [e["type"] for e in events]
    assert kinds.index("dive_start") < kinds.index("dive_end") < kinds.index("score")
    assert {e.get("status") for e in events if e["type"] == "stream"} >= {"backend", "opened", "ended"}
    assert report.dropped == 0 and report.frames == truth["num_frames"]
    overlay = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == truth["num_frames"]  # every programme frame, in order
    overlay.release()


DEMO_PACKAGE = REPO / "demo" / "package"
DEMO_MIN_RHO = 0.7
DEMO_TRANSITION_MARGIN = 0.75  # the model's median transition error at most this share of the guess's


@pytest.fixture(scope="module")
def demo_broadcast(tmp_path_factory) -> tuple[list[dict], list[dict], float]:
    """The bundled package run on a fresh 24-dive broadcast (true timecodes): its score events, the true dives, fps."""
    if not (DEMO_PACKAGE / "manifest.json").is_file():
        pytest.skip(f"{DEMO_PACKAGE} is absent: `make demo-model` builds it")
    from synth import generate_broadcasts

    tmp_path = tmp_path_factory.mktemp("demo_broadcast")
    generate_broadcasts(tmp_path, 1, seed=11, size=(320, 180), fps=25.0, dives_per_broadcast=24,
                        idle_seconds=(0.3, 0.5), score_seconds=0.5, replay_probability=0.0, progress=False)
    folder = tmp_path / "broadcasts"
    truth = json.loads((folder / "broadcast_000.json").read_text())
    # A buffer that holds the whole programme: the file decodes faster than the dives are scored, and on a busy
    # machine the default 60 s buffer once dropped a dive's frames (the drop policy has tests of its own).
    options = LiveOptions(source=str(folder / "broadcast_000.mp4"), package=DEMO_PACKAGE, backend="onnxruntime",
                          segment=f"timecodes:{folder / 'broadcast_000.json'}",
                          start_list=folder / "start_list_000.csv", events=tmp_path / "events.jsonl",
                          buffer_frames=truth["num_frames"] + 1)
    run_live(options, table=False)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["type"] == "score"], truth["dives"], 25.0


def test_demo_package_scores_correlate_with_the_judges(demo_broadcast):
    """The bundled model reads quality: on a fresh 24-dive broadcast (dives it never saw), its scores rank the
    dives like the judges, and clearly better than the dive-number baseline (the mean score of the exemplars
    used, i.e. what a model that only recognises the dive would say)."""
    from fineparser.metrics import spearman_rho

    scores, dives, _ = demo_broadcast
    truth = [d["final_score"] for d in dives]
    assert len(scores) == len(truth) == 24
    rho = spearman_rho([e["score"] for e in scores], truth)
    baseline = spearman_rho([np.mean([x["score"] for x in e["exemplars"]]) for e in scores], truth)
    print(f"demo package on 24 unseen broadcast dives: rho {rho:.3f}, exemplar-mean baseline {baseline:.3f}")
    assert rho >= baseline + 0.2, (rho, baseline)
    # Packages record the synthetic world their bank (and model) came from.  A model is held to the full goal
    # on the world it was trained on; on another world (new clip lengths, dive numbers, judges) it must still
    # clearly beat the guess above.
    from synth.dataset import SYNTH_VERSION

    manifest = json.loads((DEMO_PACKAGE / "manifest.json").read_text())
    trained_on = manifest.get("bank", {}).get("world_version", "1.1")
    if trained_on.split(".")[0] == SYNTH_VERSION.split(".")[0]:
        assert rho >= DEMO_MIN_RHO, (rho, baseline)
    else:
        print(f"the demo model was made on world {trained_on}, this broadcast is world {SYNTH_VERSION}: "
              f"rho {rho:.3f} is held to the baseline margin only (`make demo-model` retrains it)")


def test_demo_package_transitions_read_the_dive_better_than_a_constant_guess(demo_broadcast):
    """The explanation's step boundaries are read off each dive: on the same fresh broadcast, the predicted
    take-off end and entry start are closer to the truth than the constant guess (each transition at its
    median relative position in the dive, fitted here on these very dives, which only helps the guess), and
    they differ from dive to dive."""
    scores, dives, fps = demo_broadcast
    pred = np.array([e["transitions_s"] for e in scores])
    true = np.array([[d["takeoff_end_s"], d["entry_start_s"]] for d in dives])
    start, end = np.array([d["start_s"] for d in dives]), np.array([d["end_s"] for d in dives])
    relative = np.median((true - start[:, None]) / (end - start)[:, None], axis=0)
    guess = start[:, None] + relative[None] * (end - start)[:, None]
    model_err, guess_err = np.abs(pred - true) * fps, np.abs(guess - true) * fps
    distinct = len({tuple(e["transition_frames"]) for e in scores})
    print(f"demo package transitions on 24 unseen dives: median error {np.median(model_err):.1f} broadcast frames "
          f"({np.mean(model_err <= 2):.0%} within 2), constant guess {np.median(guess_err):.1f} "
          f"({np.mean(guess_err <= 2):.0%}); {distinct} distinct transition pairs")
    assert np.median(model_err) <= DEMO_TRANSITION_MARGIN * np.median(guess_err), (model_err, guess_err)
    assert distinct >= len(scores) // 2


def test_timecodes_csv_and_start_list_parsing(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("start,end,dive_number\n1.0,2.5,107B\n4,6\n")
    dives = read_timecodes(path)
    assert [(d.start, d.end, d.dive_number) for d in dives] == [(1.0, 2.5, "107b"), (4.0, 6.0, None)]
    path.write_text("start,end\n1.0,abc\n")
    with pytest.raises(SegmentError, match=r"t.csv, line 2: end 'abc' is not a number"):
        read_timecodes(path)
    listing = tmp_path / "s.csv"
    listing.write_text("order,diver,dive_number,difficulty\n2,B,207C,3.3\n1,A,107B,3.0\n")
    assert read_start_list(listing) == ["107b", "207c"]  # canonical spelling


# --------------------------------------------------------------------------- back-pressure


class SlowBackend:
    """A test double: correct output shapes, `delay` seconds per encode of a real clip (warm-up is instant)."""

    name = "slow"
    description = "slow test double"
    has_masks = False

    def __init__(self, bank, delay: float) -> None:
        self.bank, self.delay = bank, delay
        self.calls = 0

    def encode(self, frames, with_masks=False):
        if frames.any():
            self.calls += 1
            time.sleep(self.delay)
        return {"window_features": self.bank.window_features[:1], "transitions": np.array([[30, 70]]),
                "transition_probs": np.zeros((1, 96, 2), np.float32), "static_tokens": self.bank.static_tokens[:1]}

    def pair_head(self, feeds):
        k = len(feeds["exemplar_transitions"])
        return np.zeros(k, np.float32), np.zeros((k, 3), np.float32)

    def close(self):
        pass


def test_slow_backend_never_stalls_capture(package, broadcast, tmp_path):
    from fineparser.package import load_package

    delay = 3.0
    backend = SlowBackend(load_package(package).bank(), delay)
    bus = EventBus()
    events = collect(bus)
    capacity = 40
    options = LiveOptions(source=str(broadcast / "broadcast_000.mp4"), package=package,
                          segment=f"timecodes:{broadcast / 'broadcast_000.json'}", buffer_frames=capacity)
    start = time.monotonic()
    report = run_live(options, backend=backend, bus=bus, table=False)
    total = time.monotonic() - start
    # Capture reached the end of the file while the first dive was still being scored.
    assert report.capture_seconds < delay < total
    assert report.frames == json.loads((broadcast / "broadcast_000.json").read_text())["num_frames"]
    assert report.dropped > 0 and report.buffer_max <= capacity
    drops = [e for e in events if e["type"] == "warning" and e["kind"] == "frames_dropped"]
    assert drops and drops[-1]["dropped_total"] == report.dropped
    assert sum(e["dropped"] for e in drops) == report.dropped


def test_frame_buffer_drops_oldest_unread():
    buffer = FrameBuffer(3)
    frame = np.zeros((112, 112, 3), np.uint8)
    for i in range(5):
        buffer.append(CapturedFrame(i, i / 25, frame))
    assert len(buffer) == 3 and buffer.dropped == 2
    assert [buffer.read_next(0.01).seq for _ in range(3)] == [2, 3, 4]
    buffer.append(CapturedFrame(5, 5 / 25, frame))  # evicts frame 2, already read: not a drop
    assert buffer.dropped == 2


def test_capture_thread_makes_the_model_frame_and_the_spotter_input_of_each_frame(tmp_path):
    # A 720p source: the thread reduces each frame once for both, and what it hands over must be what the
    # one-call definitions make of the full frame (the model frame bit for bit; the spotter's input as
    # training and calibration make it).
    from fineparser.preprocess import prepare_frame_bgr
    from fineparser.spotter_spec import spotter_frame
    from runtime.sources import CaptureThread, parse_source

    path = tmp_path / "hd.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (1280, 720))
    rng = np.random.default_rng(3)
    for i in range(6):
        image = cv2.GaussianBlur(rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8), (7, 7), 2)
        cv2.rectangle(image, (100 + 40 * i, 200), (300 + 40 * i, 500), (200, 180, 160), -1)
        writer.write(image)
    writer.release()
    capture = cv2.VideoCapture(str(path))
    decoded = [capture.read()[1] for _ in range(6)]
    capture.release()
    buffer = FrameBuffer(16)
    thread = CaptureThread(parse_source(str(path)), buffer, lambda *a, **k: None, spotter_hw=(90, 160))
    thread.start()
    thread.join(timeout=60)
    items = [buffer.read_next(0.01) for _ in range(6)]
    for item, bgr in zip(items, decoded):
        np.testing.assert_array_equal(item.frame, prepare_frame_bgr(bgr))
        np.testing.assert_array_equal(item.spotter, spotter_frame(bgr, (90, 160)))
        assert item.preview is None  # no overlay asked for


# --------------------------------------------------------------------------- bad inputs


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return rc, out, err


def test_bad_inputs_are_one_line_errors(package, broadcast, tmp_path, capsys):
    video = str(broadcast / "broadcast_000.mp4")
    rc, _, err = run_cli(capsys, [str(tmp_path / "missing.mp4"), "--package", str(package)])
    assert rc == 2 and f"cannot open source {tmp_path / 'missing.mp4'}" in err

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    rc, _, err = run_cli(capsys, [str(garbage), "--package", str(package), "--quiet"])
    assert rc == 2 and f"cannot open source {garbage}" in err

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    rc, _, err = run_cli(capsys, [video, "--package", str(package), "--start-list", str(empty)])
    assert rc == 2 and f"start list {empty} is empty" in err

    malformed = tmp_path / "malformed.csv"
    malformed.write_text("order,diver,dive_number,difficulty\n1,A,107B,3.0\n2,B\n")
    rc, _, err = run_cli(capsys, [video, "--package", str(package), "--start-list", str(malformed)])
    assert rc == 2 and f"start list {malformed}, line 3" in err

    tampered = tmp_path / "pkg"
    shutil.copytree(package, tampered)
    data = bytearray((tampered / "pair_head.onnx").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "pair_head.onnx").write_bytes(bytes(data))
    rc, _, err = run_cli(capsys, [video, "--package", str(tampered)])
    assert rc == 2 and "pair_head.onnx" in err and "does not match the manifest" in err

    rc, _, err = run_cli(capsys, [video, "--package", str(package), "--segment", "timecodes:" + str(empty)])
    assert rc == 2 and f"{empty}: no dives" in err

    rc, _, err = run_cli(capsys, ["--demo", "--package", str(tmp_path / "nopkg")])
    assert rc == 2 and "make demo-model" in err


def test_corrupt_frames_and_unknown_dive_number(package, ort_backend, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(30):
        image = np.full((90, 160, 3), 60 + i, np.uint8)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), image)
    (folder / "00010.jpg").write_bytes(b"\xff\xd8 truncated")
    listing = tmp_path / "start.csv"
    listing.write_text("order,diver,dive_number,difficulty\n1,A,9999Z,3.0\n")
    bus = EventBus()
    events = collect(bus)
    report = run_live(LiveOptions(source=str(folder), package=package, start_list=listing), backend=ort_backend,
                      bus=bus, table=False)
    assert report.corrupt == 1 and report.frames == 29 and len(report.scores) == 1
    warnings = [e for e in events if e["type"] == "warning"]
    assert any(e["kind"] == "corrupt_frame" and "00010.jpg" in e["message"] for e in warnings)
    assert "no exemplar of dive 9999z" in report.scores[0]["exemplar_fallback"]
    assert any(e["kind"] == "exemplar_fallback" for e in warnings)


# --------------------------------------------------------------------------- real clips


def test_real_broadcast_gifs_score_in_clip_mode(package, ort_backend):
    gifs = sorted(REAL_CLIPS.glob("*.gif")) if REAL_CLIPS.is_dir() else []
    if not gifs:
        print(f"skipping: no real clips at {REAL_CLIPS}")
        pytest.skip(f"real broadcast clips not found at {REAL_CLIPS}")
    for gif in gifs:
        report = run_live(LiveOptions(source=str(gif), package=package), backend=ort_backend, table=False)
        assert report.frames == 96 and report.corrupt == 0 and report.error is None, gif.name
        (score,) = report.scores
        assert np.isfinite(score["score"]) and score["frames_in_dive"] == 96, gif.name
        assert 0.0 <= score["transitions_s"][0] <= score["transitions_s"][1] <= score["end_s"]


# --------------------------------------------------------------------------- torch-free, backends


def test_runtime_imports_and_help_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\n"
            "import runtime, runtime.cli, runtime.sources, runtime.segments, runtime.scorer, runtime.events\n"
            "import runtime.backends, runtime.backends.ort, runtime.backends.trt, runtime.server, runtime.overlay\n"
            "import runtime.backends.torch_backend\n"
            "sys.exit(runtime.cli.main(['--help']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "fineparser-live" in result.stdout and "--segment" in result.stdout


def test_tensorrt_backend_needs_tensorrt(package):
    from fineparser.package import load_package

    pytest.importorskip("tensorrt", reason="TensorRT is not installed on this machine (CI has no GPU)")
    pytest.importorskip("pycuda", reason="pycuda is not installed on this machine")
    with pytest.raises(BackendError, match="engine"):
        load_backend("tensorrt", load_package(package))


def test_onnxruntime_gpu_providers_only_with_a_gpu():
    """onnxruntime-gpu lists CUDA and TensorRT providers on any machine; a CPU box must not ask for them."""
    from runtime.backends.ort import usable_providers

    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert usable_providers(listed, gpus=0) == ["CPUExecutionProvider"]
    with_gpu = usable_providers(listed, gpus=1)
    assert with_gpu[-2:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert usable_providers(["CPUExecutionProvider"], gpus=1) == ["CPUExecutionProvider"]


def test_missing_precision_variant_is_a_clear_error(package):
    from fineparser.package import load_package

    with pytest.raises(BackendError, match="no int8 variant.*fineparser-calibrate"):
        load_backend("onnxruntime", load_package(package), precision="int8")
    with pytest.raises(BackendError, match="onnxruntime backend"):
        load_backend("torch", load_package(package), precision="fp16")


def test_torch_backend_matches_onnxruntime(package, ort_backend):
    from fineparser.package import load_package

    pkg = load_package(package)
    chosen, skipped = choose_backend("auto", pkg)
    assert chosen.name == "onnxruntime" and "tensorrt: the package has no engines" in skipped[0]
    reference = load_backend("torch", pkg)
    frames = np.random.default_rng(0).integers(0, 256, (1, 96, 112, 112, 3), dtype=np.uint8)
    a, b = reference.encode(frames), ort_backend.encode(frames)
    assert np.array_equal(a["transitions"], b["transitions"])
    np.testing.assert_allclose(a["window_features"], b["window_features"], rtol=1e-5, atol=1e-4)  # float32 sums


# --------------------------------------------------------------------------- HTTP


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port: int, method: str, path: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_http_operator_marks_health_and_server_sent_events(package, ort_backend, tmp_path):
    video = small_video(tmp_path / "clip.mp4", frames=100)
    port = free_port()
    # One segment per dive: the score must come while the 4 s programme still plays (the HTTP API is the subject).
    options = LiveOptions(source=str(video), package=package, segment="operator", realtime=True,
                          serve=f"127.0.0.1:{port}", single_segment=True)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(report=run_live(options, backend=ort_backend, table=False)))
    thread.start()
    received: list[dict] = []
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                status, health = request(port, "GET", "/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.05)
        assert status == 200 and set(health) >= {"backend", "frames", "drops", "dives"}
        stream = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        stream.request("GET", "/events")
        response = stream.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
        time.sleep(0.5)
        assert request(port, "POST", "/dive/start")[0] == 202
        time.sleep(1.5)
        assert request(port, "POST", "/dive/end")[0] == 202
        while not any(e["type"] == "score" for e in received):
            line = response.fp.readline().decode()
            if line.startswith("data: "):
                received.append(json.loads(line[6:]))
        stream.close()
        assert request(port, "GET", "/health")[1]["dives"] == 1
    finally:
        thread.join(timeout=30)
    report = result["report"]
    assert len(report.scores) == 1
    score = report.scores[0]
    assert 0.3 < score["end_s"] - score["start_s"] < 3.5
    marks = [e["type"] for e in received if e["type"] in ("dive_start", "dive_end", "score")]
    assert marks == ["dive_start", "dive_end", "score"]


# --------------------------------------------------------------------------- live UDP stream


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_live_udp_stream_reconnects_after_sender_restart(package, broadcast, ort_backend):
    from synth import find_ffmpeg

    ffmpeg = find_ffmpeg()
    if ffmpeg is None:
        pytest.skip("no ffmpeg binary (system or imageio-ffmpeg) to serve a stream")
    url = f"udp://127.0.0.1:{free_udp_port()}"

    def sender(seconds: float) -> subprocess.Popen:
        # Re-encoded with a keyframe every 5 frames so a receiver joining mid-stream decodes at once.
        command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-t", str(seconds), "-i",
                   str(broadcast / "broadcast_000.mp4"), "-an", "-c:v", "libx264", "-preset", "ultrafast",
                   "-tune", "zerolatency", "-g", "5", "-f", "mpegts", f"{url}?pkt_size=1316"]
        return subprocess.Popen(command, stdin=subprocess.DEVNULL)

    bus = EventBus()
    events = collect(bus)
    options = LiveOptions(source=url, package=package, give_up_after=3.0, read_timeout=1.0)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(report=run_live(options, ort_backend, bus, table=False)))
    first = sender(20.0)
    thread.start()
    second = None
    try:
        time.sleep(3.0)
        first.kill()
        first.wait(timeout=5)
        time.sleep(2.0)  # longer than the read timeout: the receiver notices and reconnects
        second = sender(3.0)
        thread.join(timeout=40)
        assert not thread.is_alive(), "the live session did not end after the sender stopped"
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=5)
    report = result["report"]
    statuses = [e.get("status") for e in events if e["type"] == "stream"]
    assert "reconnecting" in statuses and "reconnected" in statuses and statuses[-1] == "ended"
    gaps = [e for e in events if e["type"] == "warning" and e["kind"] == "gap"]
    assert gaps and gaps[0]["gap_s"] >= 1.0
    assert any(e["type"] == "warning" and e["kind"] == "source_lost" for e in events)
    assert report.frames > 40 and len(report.scores) == 1
    # The clip's one dive spans the gap: it is scored, but not as a final score.
    assert report.scores[0]["complete"] is False and "the stream was lost for" in report.scores[0]["incomplete_reason"]
    times = [e["at_s"] for e in events if e.get("status") == "reconnected"]
    assert times[0] >= gaps[0]["at_s"] + gaps[0]["gap_s"] - 0.1  # stream time continues across the gap


def test_overlay_tints_the_mask_and_draws_phases(tmp_path):
    from runtime.overlay import OverlayWriter, mask_for_frame
    from runtime.scorer import DiveResult

    logits = np.full((9, 16, 112, 112), -1.0, np.float32)
    logits[:, :, 40:70, 50:60] = 1.0  # a "diver" in the middle of the crop
    assert mask_for_frame(logits, 95).sum() == 300
    grey = np.full((180, 320, 3), 100, np.uint8)
    frames = [CapturedFrame(i, i / 25, np.zeros((112, 112, 3), np.uint8), grey.copy()) for i in range(50)]
    event = {"dive": 1, "dive_number": "107B", "score": 50.0, "start_s": 0.0, "end_s": 2.0,
             "transitions_s": [0.5, 1.5], "step_deltas": {"approach/take-off": 0.1, "flight": -0.2, "entry": 0.0}}
    writer = OverlayWriter(tmp_path / "o.mp4", width=320)
    writer.dive_scored(DiveResult(event, frames[:1] * 96, np.array([20, 70]), logits), frames)
    writer.close()
    capture = cv2.VideoCapture(str(tmp_path / "o.mp4"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 10)
    ok, image = capture.read()
    capture.release()
    assert ok and image.shape == (180, 320, 3)
    # crop rows 40..70 of 112 map to programme rows 0.22H + (40..70) * 0.56H / 112; columns 50..60 of 112 to x
    y, x = int(0.22 * 180 + 55 * 0.56 * 180 / 112), int(55 / 112 * 320)
    assert image[y, x, 0] > 150 and abs(int(image[90, 10, 0]) - 100) < 20  # tinted inside the mask, grey outside
