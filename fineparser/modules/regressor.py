"""Delta regressors (`regressor_delta1/2`): one score difference per token."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fineparser.config import FineParserConfig


class DeltaRegressor(nn.Module):
    """MLP token_dim -> h0 -> h1 -> 1 with ReLU (256, 64 in the paper)."""

    def __init__(self, config: FineParserConfig) -> None:
        super().__init__()
        h0, h1 = config.regressor_hidden
        self.layer1 = nn.Linear(config.token_dim, h0)
        self.layer2 = nn.Linear(h0, h1)
        self.layer3 = nn.Linear(h1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.layer1(x))
        x = torch.relu(self.layer2(x))
        return self.layer3(x)
