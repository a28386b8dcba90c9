"""Checkpoint I/O: our format, official import, foreign weights, and refusal of pickled code."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from fineparser.checkpoint import (
    CheckpointError,
    import_official,
    load_checkpoint,
    load_imagenet_resnet,
    load_kinetics_i3d,
    load_model,
    save_checkpoint,
)
from fineparser.config import FineParserConfig
from fineparser.convert import main as convert_main
from fineparser.model import FineParser

TINY = FineParserConfig.from_preset("tiny")


def clip(seed: int, n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 96, 112, 112, generator=torch.Generator().manual_seed(seed))


def official_layout(model: FineParser) -> dict:
    """A checkpoint as the paper's trainer writes it: DDP-prefixed module state dicts and extras."""
    ckpt = {}
    for name, module in model.named_children():
        state = {f"module.{k}": v.clone() for k, v in module.state_dict().items()}
        if name == "video_encoder":
            state["module.backbone.fc.weight"] = torch.randn(1000, model.config.sve_dim)
            state["module.backbone.fc.bias"] = torch.randn(1000)
        ckpt[name] = state
    ckpt["regressor_delta3"] = {f"module.{k}": v.clone() for k, v in model.regressor_delta1.state_dict().items()}
    ckpt.update(optimizer={"state": {}, "param_groups": []}, epoch=211, epoch_best_aqa=180,
                rho_best=np.float64(0.9435), L2_min=np.float64(0.21), RL2_min=np.float64(0.0021))
    return ckpt


@pytest.fixture(scope="module")
def source_model(tiny_model):
    return tiny_model


def test_our_checkpoint_round_trip(tmp_path, source_model):
    path = save_checkpoint(tmp_path / "run" / "last.pt", source_model, trainer={"step": 7})
    model, data = load_model(path)
    assert data["trainer"]["step"] == 7 and model.config == source_model.config
    for (k, a), b in zip(source_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob("run/.*tmp")), "temporary file left behind"


def test_official_import_round_trip_scores_identically(tmp_path, source_model):
    path = tmp_path / "best.pth"
    torch.save(official_layout(source_model), path)
    imported = import_official(path, TINY)
    query, exemplars, scores = clip(0), clip(1, 2), torch.tensor([70.0, 55.5])
    a = source_model.score(query, exemplars, scores).score
    b = imported.score(query, exemplars, scores).score
    assert torch.equal(a, b)
    # The converter writes our format, which then loads on its own.
    assert convert_main([str(path), str(tmp_path / "ours.pt"), "--preset", "tiny"]) == 0
    assert load_model(tmp_path / "ours.pt")[0].config == TINY


def test_official_import_names_renamed_and_missing_keys(tmp_path, source_model):
    ckpt = official_layout(source_model)
    state = ckpt["decoder2"]
    state["module.model.0.attn.q_mapx.weight"] = state.pop("module.model.0.attn.q_map.weight")
    torch.save(ckpt, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError) as info:
        import_official(tmp_path / "renamed.pth", TINY)
    msg = str(info.value)
    assert "decoder2" in msg and "model.0.attn.q_map.weight" in msg and "model.0.attn.q_mapx.weight" in msg

    ckpt = official_layout(source_model)
    del ckpt["psnet_model"]
    torch.save(ckpt, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="psnet_model"):
        import_official(tmp_path / "missing.pth", TINY)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_weights_only_refuses_a_pickle_that_would_run_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "fineparser-checkpoint", "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(path)
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_RunsCode(), f)
    with pytest.raises(CheckpointError):
        import_official(tmp_path / "evil.pkl", TINY)


def test_foreign_files_get_a_message_that_says_what_to_do(tmp_path, source_model):
    torch.save(official_layout(source_model), tmp_path / "best.pth")
    with pytest.raises(CheckpointError, match="fineparser.convert"):
        load_checkpoint(tmp_path / "best.pth")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a FineParser checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")


def test_kinetics_i3d_weights_load_into_both_trunks(tmp_path):
    torch.manual_seed(3)
    donor = FineParser(TINY).base_model.backbone.state_dict()
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in donor.items() if "num_batches" not in k}
    state["conv3d_0c_1x1.conv3d.weight"] = torch.randn(400, 128, 1, 1, 1)
    state["conv3d_0c_1x1.conv3d.bias"] = torch.randn(400)
    torch.save(state, tmp_path / "model_rgb.pth")
    model = FineParser(TINY)
    side_before = model.segmenter.upsample4.weight.clone()
    load_kinetics_i3d(model, tmp_path / "model_rgb.pth")
    key = "mixed_4f.branch_1.1.conv3d.weight"
    assert torch.equal(model.base_model.backbone.state_dict()[key], state[key])
    assert torch.equal(model.segmenter.state_dict()[key], state[key])
    assert torch.equal(model.segmenter.upsample4.weight, side_before)  # side branches keep their init
    del state["mixed_3b.branch_0.conv3d.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="mixed_3b.branch_0.conv3d.weight"):
        load_kinetics_i3d(FineParser(TINY), tmp_path / "broken.pth")


def test_imagenet_resnet_loads_into_the_static_encoder(tmp_path):
    model = FineParser(TINY)
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in model.video_encoder.backbone.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 128), torch.randn(1000)
    torch.save(state, tmp_path / "resnet.pth")
    load_imagenet_resnet(model, tmp_path / "resnet.pth")
    assert torch.equal(model.video_encoder.backbone.conv1.weight, state["conv1.weight"])
    state["layer1.0.conv1.weight"] = torch.randn(3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"layer1.0.conv1.weight has shape \[3, 3\]"):
        load_imagenet_resnet(FineParser(TINY), tmp_path / "bad.pth")
