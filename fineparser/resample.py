"""Static-shape segment resampling: the paper's slice-then-interpolate as gather + lerp.

The paper cuts a feature sequence at the transitions with Python slices and stretches each piece
with `F.interpolate(mode="linear", align_corners=True)`.  Slices whose bounds are tensor values
cannot be exported as one static graph, so here the source positions are computed from the bounds
and the output is gathered and blended: the same numbers, one ONNX/TensorRT graph for every clip.
"""

from __future__ import annotations

import torch
from torch import Tensor

WINDOW_SEGMENT_SIZE = 4
"""Each of the three steps is resampled to 4 windows in the pair head."""
FRAME_SEGMENT_SIZES = (36, 60, 48)
"""Frames per step after the static encoder's resampling (144 in all)."""
FRAME_SEGMENT_MARGIN = 5
"""The static encoder's steps overlap their neighbours by 5 frames."""


def segment_resample(x: Tensor, start: Tensor, stop: Tensor, size: int) -> Tensor:
    """Equal to `F.interpolate(x[b, :, start[b]:stop[b]], size, mode="linear", align_corners=True)` per row.

    x: [B, C, L]; start, stop: integer tensors [B] with Python slice meaning (stop clipped to L).  A slice
    that would be empty is taken as its first element (the paper never produces one).
    """
    length = x.shape[-1]
    start = start.clamp(0, length - 1)
    count = (torch.minimum(stop, torch.full_like(stop, length)) - start).clamp(min=1)
    # Same arithmetic as PyTorch's linear upsampling: scale = (n-1)/(size-1) in float32, src = scale * j.
    scale = (count - 1).to(x.dtype) / float(max(size - 1, 1))
    steps = torch.arange(size, device=x.device, dtype=x.dtype)
    src = scale[:, None] * steps[None, :]
    lower = src.floor()
    weight = (src - lower).unsqueeze(1)
    lower_index = lower.to(torch.int64)
    upper_index = torch.minimum(lower_index + 1, (count - 1)[:, None])
    lower_index = lower_index + start[:, None]
    upper_index = upper_index + start[:, None]
    channels = x.shape[1]
    lo = torch.gather(x, 2, lower_index[:, None, :].expand(-1, channels, -1))
    hi = torch.gather(x, 2, upper_index[:, None, :].expand(-1, channels, -1))
    return lo * (1 - weight) + hi * weight


def resample_windows(x: Tensor, st: Tensor, ed: Tensor) -> Tensor:
    """Window features [B, D, 9] -> [B, D, 12]: windows [:st+1], [st:ed+1], [ed-1:] each to 4."""
    length = torch.full_like(st, x.shape[-1])
    parts = [
        segment_resample(x, torch.zeros_like(st), st + 1, WINDOW_SEGMENT_SIZE),
        segment_resample(x, st, ed + 1, WINDOW_SEGMENT_SIZE),
        segment_resample(x, ed - 1, length, WINDOW_SEGMENT_SIZE),
    ]
    return torch.cat(parts, 2)


def resample_frames(x: Tensor, st: Tensor, ed: Tensor) -> Tensor:
    """Frame features [B, C, 96] -> [B, C, 144]: [:st+5]->36, [st-5:ed+5]->60, [ed-5:]->48."""
    m = FRAME_SEGMENT_MARGIN
    length = torch.full_like(st, x.shape[-1])
    parts = [
        segment_resample(x, torch.zeros_like(st), st + m, FRAME_SEGMENT_SIZES[0]),
        segment_resample(x, (st - m).clamp(min=0), ed + m, FRAME_SEGMENT_SIZES[1]),
        segment_resample(x, (ed - m).clamp(min=0), length, FRAME_SEGMENT_SIZES[2]),
    ]
    return torch.cat(parts, 2)
