"""Temporal action parser (TAP, `psnet_model`): window features -> per-frame transition probabilities."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fineparser.config import FineParserConfig
from fineparser.modules.conv1d import Down1d, InConv1d
from fineparser.spec import NUM_FRAMES, NUM_WINDOWS


class TransitionHead(nn.Module):
    """MLP over the pooled length: tas_dim -> 2 tas_dim -> tas_dim -> 2, sigmoid."""

    def __init__(self, tas_dim: int) -> None:
        super().__init__()
        self.layer1 = nn.Linear(tas_dim, 2 * tas_dim)
        self.layer2 = nn.Linear(2 * tas_dim, tas_dim)
        self.layer3 = nn.Linear(tas_dim, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.layer1(x))
        x = torch.relu(self.layer2(x))
        return torch.sigmoid(self.layer3(x))


class TemporalActionParser(nn.Module):
    """Conv1d U-down over [B, 9 windows (channels), D (length)] -> [B, 96, 2] probabilities."""

    def __init__(self, config: FineParserConfig) -> None:
        super().__init__()
        self.inc1 = InConv1d(NUM_WINDOWS, 12)
        self.down4 = Down1d(12, 24)
        self.down5 = Down1d(24, 48)
        self.down6 = Down1d(48, NUM_FRAMES)
        self.down7 = Down1d(NUM_FRAMES, NUM_FRAMES)
        self.tas = TransitionHead(config.tas_dim)

    def forward(self, window_features: Tensor) -> Tensor:
        x = self.inc1(window_features)
        x = self.down7(self.down6(self.down5(self.down4(x))))
        return self.tas(x)


def transitions_from_probs(probs: Tensor) -> Tensor:
    """Transition frames [B,2] (int64): argmax of column 0 in rows 0..47, 48 + argmax of column 1 in 48..95."""
    half = probs.shape[1] // 2
    first = probs[:, :half, 0].argmax(1)
    second = probs[:, half:, 1].argmax(1) + half
    return torch.stack([first, second], 1)
