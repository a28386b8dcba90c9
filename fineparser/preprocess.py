"""Frame and clip preprocessing of the paper, numpy + OpenCV only (no torch, no PIL).

One definition serves training, evaluation, calibration and the live runtime:

- :func:`resize_frame` reproduces PIL's ``Image.resize((112, 200), Image.BILINEAR)`` (the paper's
  torchvision ``Resize``): a triangle filter whose support widens with the shrink factor
  (antialiasing), applied horizontally, rounded to uint8 levels, then vertically.  On the
  dataset's 455x256 frames it matches PIL within one level.  Frames more than
  :data:`REDUCING_GAP` times larger than the target (broadcast 720p/1080p) are first box-reduced
  by an integer factor with OpenCV's fast area path, like PIL's own ``reducing_gap``; that keeps
  a 1080p frame at a few milliseconds and within a few levels of PIL.
- Every step is uint8 in, uint8 out; :func:`normalize_clip` (ImageNet mean/std, channels first)
  is a separate last step that an ONNX graph can also do.
- Training randomness (one horizontal flip decision and one crop offset per clip) is applied
  identically to the frames and the diver masks of a clip.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import cv2
import numpy as np

from fineparser import spec

RESIZE_HEIGHT, RESIZE_WIDTH = spec.RESIZE_HW
CROP_SIZE = spec.FRAME_SIZE

REDUCING_GAP = 2.5
"""A side shrinking by ``scale`` >= 2 * REDUCING_GAP is first box-averaged by the largest integer
factor <= ``scale / REDUCING_GAP`` that divides it.

2.5 keeps the dataset's 455x256 frames on the exact path (shrink 4.06 x 1.28) and brings a 1080p
frame (shrink 17.1 x 5.4) down to 320x540 before the triangle filter; a smaller gap is faster
and further from PIL."""

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


# --------------------------------------------------------------------------- resampling


def _triangle_weights(in_size: int, out_size: int, scale: float) -> np.ndarray:
    """Dense [out_size, in_size] float64 matrix of PIL's antialiased bilinear filter.

    Output pixel ``i`` is centred at ``(i + 0.5) * scale`` in input coordinates; the triangle's
    half-width is ``max(scale, 1)`` input pixels so that shrinking averages every input pixel.
    Weights falling outside the image are dropped and each row is renormalised (edge handling
    of PIL).
    """
    filter_scale = max(scale, 1.0)
    centres = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    first = np.maximum((centres - filter_scale + 0.5).astype(np.int64), 0)
    stop = np.minimum((centres + filter_scale + 0.5).astype(np.int64), in_size)
    columns = np.arange(in_size, dtype=np.float64)[None, :]
    weights = 1.0 - np.abs((columns - centres[:, None] + 0.5) / filter_scale)
    inside = (columns >= first[:, None]) & (columns < stop[:, None]) & (weights > 0)
    weights = np.where(inside, weights, 0.0)
    return weights / weights.sum(axis=1, keepdims=True)


_Band = tuple[int, int, int, int, np.ndarray]
"""(first output, stop output, first input, stop input, float32 weights of that block)."""

_BAND_OUTPUTS = 16
"""Outputs per block of the banded product; small blocks skip the matrix's zeros."""

_SINGLE_THREAD_MACS = 200_000
"""Largest product issued at once.  OpenBLAS threads a product above ~262k multiply-adds, and
its spinning threads stall for milliseconds when the cores are busy (a live runtime decodes and
infers on them); products this small stay on the calling thread."""


@functools.lru_cache(maxsize=32)
def _triangle_bands(in_size: int, out_size: int, scale: float) -> tuple[_Band, ...]:
    """The triangle matrix cut into row blocks, each restricted to the inputs it touches.

    The filter matrix is >90 % zeros when shrinking; multiplying block by block costs a
    fraction of one dense product.  Cached per size: the blocks are read-only and tiny.
    """
    matrix = _triangle_weights(in_size, out_size, scale)
    bands = []
    for start in range(0, out_size, _BAND_OUTPUTS):
        stop = min(start + _BAND_OUTPUTS, out_size)
        touched = np.flatnonzero(matrix[start:stop].any(axis=0))
        lo, hi = int(touched[0]), int(touched[-1]) + 1
        block = np.ascontiguousarray(matrix[start:stop, lo:hi], dtype=np.float32)
        block.setflags(write=False)
        bands.append((start, stop, lo, hi, block))
    return tuple(bands)


def _apply_bands(bands: tuple[_Band, ...], rows: np.ndarray, out_size: int) -> np.ndarray:
    """Filter along the first axis of a 2-D float32 array: out[i] = sum_j w[i, j] rows[j]."""
    width = rows.shape[1]
    out = np.empty((out_size, width), dtype=np.float32)
    for start, stop, lo, hi, block in bands:
        chunk = max(_SINGLE_THREAD_MACS // block.size, 1)
        for left in range(0, width, chunk):
            right = min(left + chunk, width)
            np.matmul(block, rows[lo:hi, left:right], out=out[start:stop, left:right])
    # PIL stores each pass in a uint8 image: round half up and clip like it does.
    np.floor(out + 0.5, out=out)
    np.clip(out, 0.0, 255.0, out=out)
    return out


def _reduction_factor(in_size: int, out_size: int) -> int:
    """Largest integer factor <= shrink / REDUCING_GAP that divides the side exactly (1: none)."""
    limit = max(int(in_size / out_size / REDUCING_GAP), 1)
    # An exact divisor keeps the box grid aligned with the frame, so the triangle filter that
    # follows sees the whole frame; 1920, 1280, 1080, 720, 3840, 2160 all have small divisors.
    return next(f for f in range(limit, 0, -1) if in_size % f == 0)


def _box_reduce(image: np.ndarray, out_h: int, out_w: int) -> tuple[np.ndarray, float, float]:
    """Integer box reduction of a much larger HxWxC image; returns it with the remaining scales."""
    in_h, in_w = image.shape[:2]
    factor_x, factor_y = _reduction_factor(in_w, out_w), _reduction_factor(in_h, out_h)
    if factor_x == 1 and factor_y == 1:
        return image, in_w / out_w, in_h / out_h
    # Integer factors put OpenCV on its exact box-average path, which is also its fastest.
    reduced = cv2.resize(image, (in_w // factor_x, in_h // factor_y), interpolation=cv2.INTER_AREA)
    if reduced.ndim == 2:  # OpenCV drops a single channel axis
        reduced = reduced[:, :, None]
    return reduced, in_w / out_w / factor_x, in_h / out_h / factor_y


def _resample(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PIL-equivalent antialiased bilinear resize of one HxW or HxWxC uint8 image."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {image.shape}")
    planar = image.ndim == 2
    pixels = image[:, :, None] if planar else image
    pixels, scale_x, scale_y = _box_reduce(pixels, out_h, out_w)
    in_h, in_w, channels = pixels.shape
    # Horizontal pass first, as PIL does, with columns leading: (W, H*C) -> (out_w, H*C).
    # cv2.transpose swaps pixel rows and columns an order of magnitude faster than numpy.
    columns = cv2.transpose(np.ascontiguousarray(pixels)).astype(np.float32).reshape(in_w, in_h * channels)
    half = _apply_bands(_triangle_bands(in_w, out_w, scale_x), columns, out_w)
    # Vertical pass with rows leading: (H, out_w*C) -> (out_h, out_w*C), already HxWxC order.
    rows = cv2.transpose(half.reshape(out_w, in_h, channels)).reshape(in_h, out_w * channels)
    full = _apply_bands(_triangle_bands(in_h, out_h, scale_y), rows, out_h)
    out = full.reshape(out_h, out_w, channels).astype(np.uint8)
    return out[:, :, 0] if planar else out


# --------------------------------------------------------------------------- per-frame steps


def box_reduce_frame(frame: np.ndarray) -> np.ndarray:
    """The integer box average that :func:`resize_frame` starts from (`frame` itself when none applies).

    Reducing is idempotent: ``resize_frame(box_reduce_frame(f)) == resize_frame(f)`` bit for bit (the
    largest factor was taken, so what is left shrinks less than 2 * REDUCING_GAP or has no small divisor).
    The capture thread keeps the reduced frame so that the spotter's input (:func:`fineparser.spotter_spec.
    spotter_frame`) starts from it instead of averaging the full frame a second time.
    """
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 frame, got shape {frame.shape}")
    return _box_reduce(frame, RESIZE_HEIGHT, RESIZE_WIDTH)[0]


def resize_frame(frame_rgb: np.ndarray) -> np.ndarray:
    """Resize an HxWx3 uint8 frame to 200x112x3 (aspect not kept), like PIL's bilinear resize."""
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 frame, got shape {frame_rgb.shape}")
    return _resample(frame_rgb, RESIZE_HEIGHT, RESIZE_WIDTH)


def mask_plane(mask: np.ndarray) -> np.ndarray:
    """One HxW uint8 plane of a mask in any channel layout: grey as is, colour as its brightest channel.

    A diver drawn in any colour (white, red, a palette colour) on black is the diver in this plane;
    a 4th (alpha) channel is ignored.
    """
    if mask.ndim == 3 and mask.shape[2] in (1, 2, 3, 4):
        channels = mask.shape[2]
        colour = mask[:, :, : 3 if channels >= 3 else 1]
        mask = colour.max(axis=2) if colour.shape[2] > 1 else colour[:, :, 0]
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW or HxWxC mask, got shape {mask.shape}")
    return np.ascontiguousarray(mask, dtype=np.uint8)


def resize_mask(mask: np.ndarray) -> np.ndarray:
    """Resize a diver mask of any size (0/255, lossy; grey or colour) to 200x112 and round it to 0/1 uint8.

    The mask is resized on its own, whatever the size of its frame (as the paper's transforms do).
    """
    mask = mask_plane(mask)
    resized = _resample(mask, RESIZE_HEIGHT, RESIZE_WIDTH)
    # The paper scales to [0, 1] and rounds: v / 255 >= 0.5  <=>  v >= 128 for integer levels.
    return (resized >= 128).astype(np.uint8)


def center_crop_top(height: int, size: int = CROP_SIZE) -> int:
    """Top offset of the centre crop, as torchvision computes it: int(round((h - size) / 2))."""
    if height < size:
        raise ValueError(f"cannot crop {size} rows out of {height}")
    return int(round((height - size) / 2.0))


def crop(image: np.ndarray, top: int, left: int = 0, size: int = CROP_SIZE) -> np.ndarray:
    """Cut a size x size window whose top-left corner is (top, left) out of an HxW[xC] image."""
    height, width = image.shape[:2]
    if not (0 <= top <= height - size and 0 <= left <= width - size):
        raise ValueError(f"crop ({top}, {left}) of size {size} does not fit a {height}x{width} image")
    return image[top : top + size, left : left + size]


def hflip(image: np.ndarray) -> np.ndarray:
    """Mirror an HxW[xC] image left-right."""
    return image[:, ::-1]


def prepare_frame(frame_rgb: np.ndarray) -> np.ndarray:
    """The runtime's per-frame call: HxWx3 uint8 RGB -> 112x112x3 uint8 (resize + centre crop)."""
    resized = resize_frame(frame_rgb)
    return np.ascontiguousarray(crop(resized, center_crop_top(RESIZE_HEIGHT)))


def prepare_frame_bgr(frame_bgr: np.ndarray) -> np.ndarray:
    """Like :func:`prepare_frame` for OpenCV's BGR frames; swaps channels after the resize (cheaper)."""
    return np.ascontiguousarray(prepare_frame(frame_bgr)[:, :, ::-1])


# --------------------------------------------------------------------------- clips


def prepare_clip(
    frames: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray | None = None,
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize and crop a clip (and its masks) with one flip decision and one crop offset.

    Returns frames uint8 [T, 112, 112, 3] and masks uint8 [T, 112, 112] (0/1) or None.  Training
    draws ``flip = rng.random() < 0.5`` then ``top = rng.integers(0, 200 - 112 + 1)``; test uses
    no flip and the centre crop.
    """
    if masks is not None and len(masks) != len(frames):
        raise ValueError(f"{len(masks)} masks for {len(frames)} frames")
    if train:
        if rng is None:
            raise ValueError("training preprocessing needs an rng (np.random.Generator)")
        flip = bool(rng.random() < 0.5)
        top = int(rng.integers(0, RESIZE_HEIGHT - CROP_SIZE + 1))
    else:
        flip, top = False, center_crop_top(RESIZE_HEIGHT)
    # The triangle filter is symmetric, so flipping after the resize equals the paper's flip
    # before it, on a 200x112 image instead of the full frame.
    out_frames = np.empty((len(frames), CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        cropped = crop(resize_frame(frame), top)
        out_frames[t] = hflip(cropped) if flip else cropped
    if masks is None:
        return out_frames, None
    out_masks = np.empty((len(masks), CROP_SIZE, CROP_SIZE), dtype=np.uint8)
    for t, mask in enumerate(masks):
        cropped = crop(resize_mask(mask), top)
        out_masks[t] = hflip(cropped) if flip else cropped
    return out_frames, out_masks


def normalize_clip(frames_uint8: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB -> float32 [3, T, H, W] scaled to [0, 1] and ImageNet-normalised."""
    if frames_uint8.ndim != 4 or frames_uint8.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got shape {frames_uint8.shape}")
    mean = np.asarray(spec.IMAGENET_MEAN, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.IMAGENET_STD, dtype=np.float32) * 255.0)
    # (x / 255 - mean) / std == (x - 255 mean) / (255 std): one subtract and one multiply.
    channels_first = np.ascontiguousarray(frames_uint8.transpose(3, 0, 1, 2), dtype=np.float32)
    channels_first -= mean[:, None, None, None]
    channels_first *= inv_std[:, None, None, None]
    return channels_first


# --------------------------------------------------------------------------- sampling, labels


def sample_frame_indices(
    first: int, last: int, num: int = spec.NUM_FRAMES, end_shift: int = 0, start_shift: int = 0
) -> np.ndarray:
    """Frame numbers ``linspace(first + start_shift, last + end_shift, num).astype(int)`` as int64 [num]."""
    start, stop = first + start_shift, last + end_shift
    if stop < start:
        raise ValueError(f"clip ends ({last}{end_shift:+d}) before it starts ({first}{start_shift:+d})")
    return np.linspace(start, stop, num).astype(np.int64)


def transitions_from_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """The paper's transitions of sampled step labels: last frame of the first step, last before the last.

    Distinct labels are taken in order of first appearance at positions p; the result is
    int64 ``[p[1] - 1, p[-1] - 1]``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"expected a 1-D label sequence, got shape {labels.shape}")
    _, first_positions = np.unique(labels, return_index=True)
    positions = np.sort(first_positions)
    if len(positions) < 2:
        raise ValueError(f"step labels need at least two distinct steps, got {np.unique(labels).tolist()}")
    return np.array([positions[1] - 1, positions[-1] - 1], dtype=np.int64)


# --------------------------------------------------------------------------- reading


class FrameReadError(ValueError):
    """A JPEG frame or mask that cannot be read completely; ``reason`` and ``path`` say why and which."""

    def __init__(self, reason: str, path: str | os.PathLike) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{reason}: {path}")


def _read_jpeg_bytes(path: str | os.PathLike) -> np.ndarray:
    """File bytes of a complete JPEG; a truncated or foreign file is a FrameReadError."""
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except OSError as exc:
        raise FrameReadError(f"cannot read file ({exc.strerror or exc})", path) from exc
    raw = data.tobytes()
    if not raw.startswith(_JPEG_SOI):
        raise FrameReadError("not a JPEG file (no start marker)", path)
    # libjpeg decodes a truncated file with a warning and grey rows; only the end marker tells.
    if not raw.rstrip(b"\0\r\n\t ").endswith(_JPEG_EOI):
        raise FrameReadError("truncated JPEG (no end marker)", path)
    return data


def read_frame(path: str | os.PathLike) -> np.ndarray:
    """Decode a JPEG frame to HxWx3 uint8 RGB (OpenCV decodes BGR); bad files raise FrameReadError."""
    image = cv2.imdecode(_read_jpeg_bytes(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FrameReadError("cannot decode JPEG", path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Decode a JPEG diver mask of any size and channel layout to HxW uint8 (0..255, lossy).

    Grey masks come back as they are; colour masks as their brightest channel (:func:`mask_plane`),
    so a red or palette-coloured diver is not lost to a grey conversion.  Bad files raise
    FrameReadError.
    """
    image = cv2.imdecode(_read_jpeg_bytes(path), cv2.IMREAD_ANYCOLOR)  # grey stays 1 channel
    if image is None:
        raise FrameReadError("cannot decode JPEG", path)
    return mask_plane(image)


__all__ = [
    "CROP_SIZE",
    "FrameReadError",
    "REDUCING_GAP",
    "RESIZE_HEIGHT",
    "RESIZE_WIDTH",
    "center_crop_top",
    "crop",
    "hflip",
    "mask_plane",
    "normalize_clip",
    "prepare_clip",
    "prepare_frame",
    "prepare_frame_bgr",
    "read_frame",
    "read_mask",
    "resize_frame",
    "resize_mask",
    "sample_frame_indices",
    "transitions_from_labels",
]
