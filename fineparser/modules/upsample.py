"""Transposed 3-D convolution computed as a sub-pixel convolution on CPUs.

The spatial parser's side branches upsample with ConvTranspose3d whose kernel is twice the stride
and padding half the stride.  Every output phase r (= output index mod stride) then receives exactly
two input taps, so the layer equals a 3x3x3 convolution into stride^3 x C_out channels followed by a
pixel shuffle.  PyTorch's CPU ConvTranspose3d is a slow reference kernel (col2vol); the sub-pixel
form runs on the optimised convolution and is several times faster, forward and backward.  On GPUs
and in ONNX export the native layer is used (TensorRT and cuDNN have fast deconvolutions).  Same
parameters, same key names, same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _phase_taps(kernel: int, stride: int, padding: int) -> list[list[int]]:
    """For each output phase r, the kernel index used by input offsets -1, 0, +1 (kernel = invalid)."""
    table = []
    for r in range(stride):
        row = []
        for offset in (-1, 0, 1):
            k = r + padding - stride * offset
            row.append(k if 0 <= k < kernel else kernel)
        table.append(row)
    return table


class SubpixelConvTranspose3d(nn.ConvTranspose3d):
    """nn.ConvTranspose3d (kernel = 2 x stride, padding = stride / 2) with a fast CPU path."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int],
                 stride: tuple[int, int, int], padding: tuple[int, int, int], bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        for k, s, p in zip(kernel_size, stride, padding):
            if k != 2 * s or 2 * p != s:
                raise ValueError(f"sub-pixel form needs kernel = 2 x stride and padding = stride / 2, got "
                                 f"kernel {kernel_size}, stride {stride}, padding {padding}")
        for dim, (k, s, p) in enumerate(zip(kernel_size, stride, padding)):
            self.register_buffer(f"_taps{dim}", torch.tensor(_phase_taps(k, s, p)), persistent=False)

    def subpixel_weight(self) -> Tensor:
        """The equivalent [C_out * sd * sh * sw, C_in, 3, 3, 3] convolution weight."""
        w = F.pad(self.weight, (0, 1, 0, 1, 0, 1))  # a zero slot at index `kernel` in each dim
        w = w[:, :, self._taps0]  # [Ci, Co, sd, 3, Kh+1, Kw+1]
        w = w[:, :, :, :, self._taps1]  # [Ci, Co, sd, 3, sh, 3, Kw+1]
        w = w[..., self._taps2]  # [Ci, Co, sd, 3, sh, 3, sw, 3]
        ci, co, sd, _, sh, _, sw, _ = w.shape
        return w.permute(1, 2, 4, 6, 0, 3, 5, 7).reshape(co * sd * sh * sw, ci, 3, 3, 3)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if x.device.type != "cpu" or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or output_size:
            return super().forward(x, output_size)
        sd, sh, sw = self.stride
        y = F.conv3d(x, self.subpixel_weight(), padding=1)
        n, _, d, h, w = y.shape
        co = self.out_channels
        y = y.reshape(n, co, sd, sh, sw, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(n, co, d * sd, h * sh, w * sw)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1, 1)
        return y
