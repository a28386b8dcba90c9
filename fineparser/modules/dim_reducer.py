"""Dim reducer (`dim_reducer1/2/3`, the paper's C_channel): 4 resampled windows -> 12 tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fineparser.config import FineParserConfig
from fineparser.modules.conv1d import DoubleConv1d, InConv1d


class DimReducer(nn.Module):
    """[B, 4, D] -> [B, 12, token_dim]: 4->8->12 channel convs, then D -> D/2 -> D/4 -> token_dim."""

    def __init__(self, config: FineParserConfig) -> None:
        super().__init__()
        d = config.feature_dim
        self.inc = InConv1d(4, 8)
        self.down1 = DoubleConv1d(8, 12)
        self.layer0 = nn.Linear(d, d // 2)
        self.layer1 = nn.Linear(d // 2, d // 4)
        self.layer2 = nn.Linear(d // 4, config.token_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down1(self.inc(x))
        x = torch.relu(self.layer0(x))
        x = torch.relu(self.layer1(x))
        return torch.relu(self.layer2(x))
