"""A runtime-only install (`pip install '.[runtime]'`) scores a dive: no torch, no ffmpeg wheel, nothing else.

The environment is built honestly from the installed distributions' own metadata: the dependency closure of
`fineparser[runtime]` is linked into one folder, and `python -S` (no site-packages) runs fineparser-live with
only that folder and the source tree on its path. A runtime module that imports anything outside the
closure fails here, as it would on an edge box.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest
import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
NEVER_ON_AN_EDGE_BOX = {"torch", "torchvision", "timm", "imageio-ffmpeg", "einops", "nvidia-modelopt", "onnx"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(extra: str) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][extra]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": extra})]


def _closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """Installed distributions needed by `requirements`, following each one's own Requires-Dist."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(requirements)
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if name in found:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req.name} (needed by the runtime extra) is not installed in this environment")
        found[name] = dist
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return found


def test_runtime_extra_pulls_no_torch_and_no_ffmpeg():
    names = set(_closure(_requirements("runtime")))
    assert not names & NEVER_ON_AN_EDGE_BOX, sorted(names & NEVER_ON_AN_EDGE_BOX)
    assert {"numpy", "opencv-python-headless"} <= names
    assert names & {"onnxruntime", "onnxruntime-gpu"}


def _link_closure(dists: dict[str, metadata.Distribution], into: Path) -> None:
    """Symlink every top-level file and folder the distributions installed into one site folder."""
    into.mkdir()
    for dist in dists.values():
        for file in dist.files or []:
            top = file.parts[0]
            if top.endswith((".dist-info", ".data")) or top in ("..", "__pycache__"):
                continue
            source = Path(dist.locate_file(top))
            target = into / top
            if source.exists() and not target.exists():
                target.symlink_to(source)


def test_fineparser_live_runs_from_a_runtime_only_install(tmp_path):
    site = tmp_path / "site"
    _link_closure(_closure(_requirements("runtime")), site)
    video = tmp_path / "dive.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (160, 90))
    for i in range(60):
        image = np.full((90, 160, 3), 40, np.uint8)
        cv2.rectangle(image, (10 + i, 20), (30 + i, 60), (200, 180, 160), -1)
        writer.write(image)
    writer.release()
    events = tmp_path / "events.jsonl"
    # -S: no site-packages at all; the path is the runtime closure and the source tree, nothing else.
    env = {"PYTHONPATH": f"{site}:{REPO}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    probe = subprocess.run([sys.executable, "-S", "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0, "torch is importable in the runtime-only environment: the test proves nothing"
    run = subprocess.run([sys.executable, "-S", "-m", "runtime.cli", str(video),
                          "--package", str(REPO / "demo/package"), "--segment", "clip", "--backend", "onnxruntime",
                          "--events", str(events)],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    scores = [e for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "score"]
    assert len(scores) == 1 and np.isfinite(scores[0]["score"])
