"""Static visual encoder (SVE, `video_encoder`): per-frame ResNet features -> three token sets."""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import Tensor, nn

from fineparser.config import FineParserConfig
from fineparser.modules.conv1d import Down1d, InConv1d
from fineparser.resample import FRAME_SEGMENT_SIZES, resample_frames


def _narrow_stem(backbone: ResNet, width: int) -> None:
    """Give a timm ResNet a stem of `width` channels (timm fixes the plain stem at 64).

    With width == channels[0] the first block needs no projection, exactly like ResNet-34's, so
    narrow presets keep ResNet-34's graph instead of paying for a 64-wide stem on 96 frames.
    """
    if backbone.conv1.out_channels == width:
        return
    backbone.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    backbone.bn1 = nn.BatchNorm2d(width)
    first = backbone.layer1[0]
    planes = first.conv1.out_channels
    first.conv1 = nn.Conv2d(width, planes, 3, padding=1, bias=False)
    first.downsample = None if width == planes else nn.Sequential(
        nn.Conv2d(width, planes, 1, bias=False), nn.BatchNorm2d(planes))


class StaticVisualEncoder(nn.Module):
    """ResNet on all 96 frames, segment-resampled with the clip's transitions, three Conv1d towers."""

    def __init__(self, config: FineParserConfig) -> None:
        super().__init__()
        # ResNet-34 for `full`; narrower presets keep the same graph.  num_classes=0: the official
        # checkpoint's `fc` is never used, so the module does not carry it.
        self.backbone = ResNet(BasicBlock, config.sve_layers, num_classes=0, channels=tuple(config.sve_channels),
                               stem_width=config.sve_channels[0], global_pool="avg")
        _narrow_stem(self.backbone, config.sve_channels[0])
        self.dim = config.sve_dim
        for tower, segment in enumerate(FRAME_SEGMENT_SIZES, start=1):
            setattr(self, f"inc{tower}", InConv1d(segment, 48))
            setattr(self, f"down{tower}1", Down1d(48, 24))
            setattr(self, f"down{tower}2", Down1d(24, 12))
            setattr(self, f"down{tower}3", Down1d(12, 4))

    def frame_features(self, clip: Tensor) -> Tensor:
        """Per-frame features [B, C, T] of a clip [B,3,T,H,W]."""
        b, c, t, h, w = clip.shape
        frames = clip.transpose(1, 2).reshape(b * t, c, h, w)
        return self.backbone(frames).reshape(b, t, self.dim).transpose(1, 2)

    def forward(self, clip: Tensor, transitions: Tensor) -> Tensor:
        """Static tokens [B, 12, token_dim] (three sets of 4) from a clip and its transitions [B,2]."""
        feats = resample_frames(self.frame_features(clip), transitions[:, 0], transitions[:, 1]).transpose(1, 2)
        tokens = []
        start = 0
        for tower, segment in enumerate(FRAME_SEGMENT_SIZES, start=1):
            x = getattr(self, f"inc{tower}")(feats[:, start:start + segment])
            for level in (1, 2, 3):
                x = getattr(self, f"down{tower}{level}")(x)
            tokens.append(x)
            start += segment
        return torch.cat(tokens, 1)
