"""The static-shape resampler equals the paper's slice-then-interpolate for every reachable boundary."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from fineparser.resample import resample_frames, resample_windows, segment_resample


def paper_window_segments(x: torch.Tensor, st: int, ed: int) -> torch.Tensor:
    """The paper's pair-head resampling, written with Python slices (the reference)."""
    return torch.cat([F.interpolate(x[:, :, :st + 1], size=4, mode="linear", align_corners=True),
                      F.interpolate(x[:, :, st:ed + 1], size=4, mode="linear", align_corners=True),
                      F.interpolate(x[:, :, ed - 1:], size=4, mode="linear", align_corners=True)], 2)


def paper_frame_segments(x: torch.Tensor, st: int, ed: int) -> torch.Tensor:
    """The paper's static-encoder resampling, written with Python slices (the reference)."""
    return torch.cat([F.interpolate(x[:, :, :st + 5], size=36, mode="linear", align_corners=True),
                      F.interpolate(x[:, :, max(0, st - 5):ed + 5], size=60, mode="linear", align_corners=True),
                      F.interpolate(x[:, :, max(0, ed - 5):], size=48, mode="linear", align_corners=True)], 2)


def test_window_resampling_matches_paper_for_every_reachable_pair():
    # Transitions: first in 0..47, second in 48..95 for both clips, so st = (t1q+t1e)//20 in 0..4 and
    # ed = (t2q+t2e)//20 in 4..9 (ed=9 leaves a one-window last slice, st=ed=4 a one-window middle).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 7, 9, generator=gen)
    pairs = sorted({(a // 20, b // 20) for a in range(0, 95) for b in range(96, 191)})
    assert (0, 4) in pairs and (4, 9) in pairs and (4, 4) in pairs
    st = torch.tensor([p[0] for p in pairs])
    ed = torch.tensor([p[1] for p in pairs])
    ours = resample_windows(x.expand(len(pairs), -1, -1), st, ed)
    for i, (s, e) in enumerate(pairs):
        torch.testing.assert_close(ours[i:i + 1], paper_window_segments(x, s, e), rtol=0, atol=1e-6)


def test_frame_resampling_matches_paper_for_every_reachable_transition():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 5, 96, generator=gen)
    pairs = list(itertools.product(range(0, 48), range(48, 96)))
    st = torch.tensor([p[0] for p in pairs])
    ed = torch.tensor([p[1] for p in pairs])
    ours = resample_frames(x.expand(len(pairs), -1, -1), st, ed)
    worst = 0.0
    for i, (s, e) in enumerate(pairs):
        worst = max(worst, (ours[i:i + 1] - paper_frame_segments(x, s, e)).abs().max().item())
    assert worst <= 1e-6, worst


@pytest.mark.parametrize("start,stop", [(0, 1), (3, 4), (8, 9), (0, 9), (5, 20), (2, 7)])
def test_single_segment_edges(start, stop):
    x = torch.arange(18.0).reshape(1, 2, 9)
    out = segment_resample(x, torch.tensor([start]), torch.tensor([stop]), 4)
    ref = F.interpolate(x[:, :, start:stop], size=4, mode="linear", align_corners=True)
    torch.testing.assert_close(out, ref)


def test_resampling_is_differentiable_and_batched_independently():
    x = torch.randn(3, 4, 9, requires_grad=True)
    out = resample_windows(x, torch.tensor([0, 2, 4]), torch.tensor([4, 6, 9]))
    out.sum().backward()
    assert x.grad is not None and out.shape == (3, 4, 12)
    torch.testing.assert_close(out[1:2], paper_window_segments(x[1:2].detach(), 2, 6))
