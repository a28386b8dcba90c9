"""Inception-I3D trunk in the kinetics_i3d_pytorch key layout (no logits layer).

TensorFlow "SAME" padding is reproduced exactly: symmetric padding goes into the convolution,
asymmetric padding (the strided 7x7x7 stem) into an explicit zero pad, as the released Kinetics
weights expect.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fineparser.config import FineParserConfig


def same_padding(kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> tuple[int, ...]:
    """TensorFlow SAME padding for (t, h, w) as torch pad order (w0, w1, h0, h1, t0, t1)."""
    pads = []
    for k, s in zip(reversed(kernel), reversed(stride)):
        total = max(k - s, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class Unit3D(nn.Module):
    """Conv3d (no bias) -> BatchNorm3d -> ReLU with TF SAME padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        pads = same_padding(kernel, stride)
        symmetric = all(pads[i] == pads[i + 1] for i in range(0, 6, 2))
        self.pad = None if symmetric else nn.ConstantPad3d(pads, 0.0)
        conv_pad = (pads[4], pads[2], pads[0]) if symmetric else 0
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=conv_pad, bias=False)
        # He init keeps activations at unit scale even where BN is the identity (fresh running statistics,
        # eval mode or frozen BN).  PyTorch's default shrinks them ~2.5x per layer: a fresh trunk's features
        # come out near 1e-6, where the BN epsilon of the layers after it swamps them.
        nn.init.kaiming_normal_(self.conv3d.weight, mode="fan_in", nonlinearity="relu")
        self.batch3d = nn.BatchNorm3d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = self.pad(x)
        return torch.relu(self.batch3d(self.conv3d(x)))


class MaxPool3dSame(nn.Module):
    """Max pooling with TF SAME zero padding and ceil mode (inputs are post-ReLU, so zeros are safe)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.pad = nn.ConstantPad3d(same_padding(kernel, stride), 0.0)
        self.pool = nn.MaxPool3d(kernel, stride, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.pad(x))


class Mixed(nn.Module):
    """Inception block: 1x1 | 1x1->3x3 | 1x1->3x3 | pool->1x1, concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.branch_0 = Unit3D(in_channels, widths[0])
        self.branch_1 = nn.Sequential(Unit3D(in_channels, widths[1]), Unit3D(widths[1], widths[2], (3, 3, 3)))
        self.branch_2 = nn.Sequential(Unit3D(in_channels, widths[3]), Unit3D(widths[3], widths[4], (3, 3, 3)))
        self.branch_3 = nn.Sequential(MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(in_channels, widths[5]))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), self.branch_3(x)], 1)


class I3DTrunk(nn.Module):
    """The I3D trunk: [N,3,16,112,112] -> feature map [N,D,2,4,4] and pooled feature [N,D]."""

    TAP_NAMES = ("conv3d_1a_7x7", "conv3d_2c_3x3", "mixed_3c", "mixed_4f")
    """Layers whose outputs feed the spatial parser's side branches."""

    def __init__(self, config: FineParserConfig) -> None:
        super().__init__()
        stem, mixed = config.i3d_stem(), config.i3d_mixed()
        self.conv3d_1a_7x7 = Unit3D(3, stem["conv3d_1a_7x7"], (7, 7, 7), (2, 2, 2))
        self.maxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.conv3d_2b_1x1 = Unit3D(stem["conv3d_1a_7x7"], stem["conv3d_2b_1x1"])
        self.conv3d_2c_3x3 = Unit3D(stem["conv3d_2b_1x1"], stem["conv3d_2c_3x3"], (3, 3, 3))
        self.maxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = stem["conv3d_2c_3x3"]
        self.tap_channels: dict[str, int] = {"conv3d_1a_7x7": stem["conv3d_1a_7x7"], "conv3d_2c_3x3": channels}
        for name in ("mixed_3b", "mixed_3c", "maxPool3d_4a_3x3", "mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e",
                     "mixed_4f", "maxPool3d_5a_2x2", "mixed_5b", "mixed_5c"):
            if name == "maxPool3d_4a_3x3":
                setattr(self, name, MaxPool3dSame((3, 3, 3), (2, 2, 2)))
            elif name == "maxPool3d_5a_2x2":
                setattr(self, name, MaxPool3dSame((2, 2, 2), (2, 2, 2)))
            else:
                setattr(self, name, Mixed(channels, mixed[name]))
                channels = config.mixed_out(mixed[name])
                self.tap_channels[name] = channels
        self.feature_dim = channels
        self.avg_pool = nn.AvgPool3d((2, 4, 4), (1, 1, 1))

    _ORDER = ("conv3d_1a_7x7", "maxPool3d_2a_3x3", "conv3d_2b_1x1", "conv3d_2c_3x3", "maxPool3d_3a_3x3",
              "mixed_3b", "mixed_3c", "maxPool3d_4a_3x3", "mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e",
              "mixed_4f", "maxPool3d_5a_2x2", "mixed_5b", "mixed_5c")

    def forward_trunk(self, x: Tensor, taps: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Feature map and pooled feature; appends the side-branch taps to `taps` when given."""
        for name in self._ORDER:
            x = getattr(self, name)(x)
            if taps is not None and name in self.TAP_NAMES:
                taps.append(x)
        return x, self.avg_pool(x).flatten(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_trunk(x)


class I3DBackbone(nn.Module):
    """The paper's `base_model`: an I3D trunk under the name `backbone`."""

    def __init__(self, config: FineParserConfig) -> None:
        super().__init__()
        self.backbone = I3DTrunk(config)

    def forward(self, windows: Tensor) -> Tensor:
        """Pooled window features [N, D] of window clips [N,3,16,112,112]."""
        return self.backbone(windows)[1]
