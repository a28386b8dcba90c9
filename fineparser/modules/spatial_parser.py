"""Spatial action parser (SAP, `segmenter`): a second I3D trunk with four mask side branches."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from fineparser.config import FineParserConfig
from fineparser.modules.i3d import I3DTrunk
from fineparser.modules.upsample import SubpixelConvTranspose3d

# (kernel, stride, padding) of the transposed convolutions that bring each tap back to 16x112x112.
_UPSAMPLE = (
    ((4, 4, 4), (2, 2, 2), (1, 1, 1)),
    ((4, 8, 8), (2, 4, 4), (1, 2, 2)),
    ((4, 16, 16), (2, 8, 8), (1, 4, 4)),
    ((8, 32, 32), (4, 16, 16), (2, 8, 8)),
)


def bilinear_filter(size: int) -> np.ndarray:
    """2-D bilinear interpolation kernel of the given size (FCN-style initialisation)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


class SpatialActionParser(I3DTrunk):
    """I3D trunk plus side branches: returns feature map, pooled feature and 5 mask logit maps."""

    def __init__(self, config: FineParserConfig) -> None:
        super().__init__(config)
        side = config.side_channels
        for i, (tap, (kernel, stride, pad)) in enumerate(zip(self.TAP_NAMES, _UPSAMPLE), start=1):
            setattr(self, f"side_prep{i}", nn.Conv3d(self.tap_channels[tap], side, 1, bias=False))
            setattr(self, f"score_dsn{i}", nn.Conv3d(side, 1, 1))
            setattr(self, f"upsample{i}", SubpixelConvTranspose3d(side, side, kernel, stride, pad))
            setattr(self, f"upsample{i}_", SubpixelConvTranspose3d(1, 1, kernel, stride, pad))
        self.fuse = nn.Conv3d(4 * side, 1, 1)
        self._init_side_branches()

    def _init_side_branches(self) -> None:
        # The paper's initialisation: bilinear transposed convolutions, N(0, 0.001) side convolutions.
        # The trunk keeps Unit3D's He init (see fineparser/modules/i3d.py) unless Kinetics weights are loaded.
        with torch.no_grad():
            for name, module in self.named_children():
                if isinstance(module, nn.ConvTranspose3d):
                    module.weight.zero_()
                    filt = torch.from_numpy(bilinear_filter(module.weight.shape[-1])).float()
                    for c in range(module.weight.shape[0]):
                        module.weight[c, c, :, :, :] = filt
                elif isinstance(module, nn.Conv3d) and (name.startswith(("side_prep", "score_dsn")) or name == "fuse"):
                    module.weight.normal_(0.0, 0.001)
                    if module.bias is not None:
                        module.bias.zero_()

    def forward(self, windows: Tensor, with_masks: bool = True) -> tuple[Tensor, Tensor, list[Tensor] | None]:
        """Windows [N,3,16,112,112] -> (feature map, pooled feature [N,D], 5 x [N,1,16,112,112] or None)."""
        taps: list[Tensor] | None = [] if with_masks else None
        feature_map, feature = self.forward_trunk(windows, taps)
        if taps is None:
            return feature_map, feature, None
        sides, scores = [], []
        for i, tap in enumerate(taps, start=1):
            prep = getattr(self, f"side_prep{i}")(tap)
            sides.append(getattr(self, f"upsample{i}")(prep))
            scores.append(getattr(self, f"upsample{i}_")(getattr(self, f"score_dsn{i}")(prep)))
        scores.append(self.fuse(torch.cat(sides, 1)))
        return feature_map, feature, scores
