"""1-D convolution blocks of the temporal parser, static towers and dim reducers.

Submodule names follow the official checkpoint (`conv.0.weight`, `mpconv.1.conv.0.weight`), so an
official state dict loads without renaming.
"""

from __future__ import annotations

from torch import Tensor, nn


class DoubleConv1d(nn.Module):
    """(Conv1d k3 -> BN -> ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm1d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv1d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm1d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class InConv1d(nn.Module):
    """Entry double convolution (`inconv` in the paper)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv1d(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Down1d(nn.Module):
    """MaxPool1d(2) then a double convolution (`down` in the paper): halves the length."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.mpconv = nn.Sequential(nn.MaxPool1d(2), DoubleConv1d(in_channels, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.mpconv(x)
