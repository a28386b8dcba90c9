"""The fast CPU form of the side branches' transposed convolutions equals nn.ConvTranspose3d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fineparser.modules.upsample import SubpixelConvTranspose3d


@pytest.mark.parametrize("kernel,stride,padding,shape", [
    ((4, 4, 4), (2, 2, 2), (1, 1, 1), (2, 3, 8, 14, 14)),
    ((4, 8, 8), (2, 4, 4), (1, 2, 2), (2, 3, 8, 7, 7)),
    ((4, 16, 16), (2, 8, 8), (1, 4, 4), (1, 3, 8, 3, 3)),
    ((8, 32, 32), (4, 16, 16), (2, 8, 8), (1, 3, 4, 2, 2)),
])
def test_subpixel_equals_native_forward_and_backward(kernel, stride, padding, shape):
    torch.manual_seed(0)
    native = nn.ConvTranspose3d(3, 2, kernel, stride, padding, bias=False)
    fast = SubpixelConvTranspose3d(3, 2, kernel, stride, padding)
    fast.load_state_dict(native.state_dict())
    x1 = torch.randn(*shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = native(x1), fast(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-6)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, native.weight.grad, rtol=1e-4, atol=1e-4)


def test_layout_it_cannot_express_is_refused():
    with pytest.raises(ValueError, match="kernel = 2 x stride"):
        SubpixelConvTranspose3d(1, 1, (3, 3, 3), (2, 2, 2), (1, 1, 1))
