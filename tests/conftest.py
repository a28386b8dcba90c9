"""Shared fixtures: tiny models with non-trivial batch-norm statistics, made by the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REAL_CLIPS = Path(__file__).resolve().parents[2] / "shared" / "real_clips"


def randomise_batchnorm(model, seed: int = 0) -> None:
    """Give every BatchNorm random running statistics and affine weights, as a trained model has."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)


@pytest.fixture(scope="session")
def tiny_model():
    """An eval-mode tiny FineParser with random weights and BN statistics (do not modify it)."""
    import torch

    from fineparser.config import FineParserConfig
    from fineparser.model import FineParser

    torch.manual_seed(1234)
    model = FineParser(FineParserConfig.from_preset("tiny"))
    randomise_batchnorm(model)
    return model.eval()


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic dataset (12 dives, two dive numbers per board: repeats in train and test)."""
    from synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, 12, seed=3, dive_pool=2, progress=False)
    return root
