"""Preprocessing: shapes, geometry shared by frames and masks, sampling, and the bound against PIL."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fineparser import preprocess as pp
from fineparser import spec


def natural_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth + textured + edged RGB image, closer to a video frame than noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        image[..., c] = (
            128 + 60 * np.sin(x / (17 + 5 * c) + y / (23 + 3 * c)) + 30 * np.cos(x * y / (4000 + 500 * c))
        )
    blobs = cv2.resize(
        rng.normal(0, 1, (height // 4 + 1, width // 4 + 1, 3)).astype(np.float32), (width, height)
    )
    image += 25 * blobs + rng.normal(0, 8, (height, width, 3))
    for _ in range(8):  # hard edges, where resamplers differ most
        top, left = rng.integers(0, height - 20), rng.integers(0, width - 20)
        image[top : top + rng.integers(5, 60), left : left + rng.integers(3, 40)] = rng.integers(0, 255, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def pil_resize(image: np.ndarray) -> np.ndarray:
    Image = pytest.importorskip("PIL.Image")
    return np.asarray(Image.fromarray(image).resize((112, 200), Image.BILINEAR))


# --------------------------------------------------------------------------- shapes


def test_frame_and_mask_shapes() -> None:
    frame = natural_image(256, 455)
    assert pp.resize_frame(frame).shape == (200, 112, 3)
    assert pp.resize_frame(frame).dtype == np.uint8
    mask = np.zeros((256, 455), np.uint8)
    mask[50:200, 100:300] = 255
    resized = pp.resize_mask(mask)
    assert resized.shape == (200, 112) and resized.dtype == np.uint8
    assert set(np.unique(resized)) == {0, 1}
    assert pp.prepare_frame(frame).shape == (112, 112, 3)
    big = np.zeros((1080, 1920, 3), np.uint8)
    assert pp.prepare_frame(big).shape == (112, 112, 3)
    assert pp.prepare_frame(big).flags["C_CONTIGUOUS"]


def test_prepare_frame_is_resize_then_centre_crop() -> None:
    frame = natural_image(256, 455, seed=1)
    assert pp.center_crop_top(200) == 44  # int(round((200 - 112) / 2))
    assert pp.center_crop_top(113) == 0  # Python's round(0.5) == 0, as torchvision computes it
    np.testing.assert_array_equal(pp.prepare_frame(frame), pp.resize_frame(frame)[44:156])
    np.testing.assert_array_equal(pp.prepare_frame_bgr(frame[:, :, ::-1].copy()), pp.prepare_frame(frame))


def test_crop_and_flip() -> None:
    image = np.arange(200 * 112).reshape(200, 112)
    np.testing.assert_array_equal(pp.crop(image, 10), image[10:122])
    np.testing.assert_array_equal(pp.hflip(image)[:, 0], image[:, -1])
    with pytest.raises(ValueError):
        pp.crop(image, 89)


def test_normalize_clip_layout_and_values() -> None:
    frames = np.zeros((4, 112, 112, 3), np.uint8)
    frames[..., 0] = 255
    frames[1] = np.round(np.array(spec.IMAGENET_MEAN) * 255).astype(np.uint8)
    video = pp.normalize_clip(frames)
    assert video.shape == (3, 4, 112, 112) and video.dtype == np.float32
    np.testing.assert_allclose(video[0, 0], (1 - spec.IMAGENET_MEAN[0]) / spec.IMAGENET_STD[0], rtol=1e-6)
    np.testing.assert_allclose(video[2, 0], -spec.IMAGENET_MEAN[2] / spec.IMAGENET_STD[2], rtol=1e-6)
    assert np.abs(video[:, 1]).max() < 0.01  # the mean colour normalises to ~0


# --------------------------------------------------------------------------- clip geometry


def _geometry_of(out: np.ndarray, resized: np.ndarray) -> tuple[bool, int]:
    """Find which (flip, top) turned one resized frame into its cropped output."""
    matches = [
        (flip, top)
        for flip in (False, True)
        for top in range(200 - 112 + 1)
        if np.array_equal(out, pp.crop(pp.hflip(resized) if flip else resized, top))
    ]
    assert len(matches) == 1, matches
    return matches[0]


def test_train_flip_and_crop_shared_by_frames_and_masks() -> None:
    rng_image = np.random.default_rng(3)
    masks = [
        np.kron(rng_image.integers(0, 2, (8, 14)), np.ones((32, 32)))[:256, :455].astype(np.uint8) * 255
        for _ in range(3)
    ]
    # Frames whose pixels are the masks: the same resampling must give frame >= 128 <=> mask == 1.
    frames = [np.repeat(mask[:, :, None], 3, axis=2) for mask in masks]
    seen = set()
    for seed in range(12):
        out_frames, out_masks = pp.prepare_clip(frames, masks, train=True, rng=np.random.default_rng(seed))
        assert out_frames.shape == (3, 112, 112, 3) and out_masks.shape == (3, 112, 112)
        np.testing.assert_array_equal(out_frames[..., 0] >= 128, out_masks == 1)
        geometries = {_geometry_of(out_frames[t], pp.resize_frame(frames[t])) for t in range(3)}
        assert len(geometries) == 1  # one flip decision and one offset for the whole clip
        seen |= geometries
    assert {flip for flip, _ in seen} == {False, True}
    assert len({top for _, top in seen}) > 5


def test_test_clip_is_centre_cropped_without_flip() -> None:
    frames = [natural_image(256, 455, seed=s) for s in range(2)]
    out, masks = pp.prepare_clip(frames)
    assert masks is None
    for t in range(2):
        np.testing.assert_array_equal(out[t], pp.prepare_frame(frames[t]))
    with pytest.raises(ValueError):
        pp.prepare_clip(frames, train=True)  # training needs an rng


# --------------------------------------------------------------------------- PIL equivalence


def test_resize_matches_pil_on_dataset_frames() -> None:
    frame = natural_image(256, 455, seed=5)
    diff = np.abs(pp.resize_frame(frame).astype(int) - pil_resize(frame).astype(int))
    # Measured: max 1, mean 0.002 levels (float vs PIL's 22-bit fixed point rounding).
    assert diff.max() <= 1 and diff.mean() < 0.02


def test_flip_after_resize_equals_pil_flip_before() -> None:
    frame = natural_image(256, 455, seed=6)
    ours = pp.hflip(pp.resize_frame(frame))
    diff = np.abs(ours.astype(int) - pil_resize(np.ascontiguousarray(frame[:, ::-1])).astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.02


@pytest.mark.parametrize("hw", [(1080, 1920), (720, 1280), (256, 455), (1125, 2000), (1000, 1933), (2160, 3840)])
def test_the_capture_threads_box_reduction_leaves_the_model_frame_unchanged(hw) -> None:
    # The capture thread reduces each frame once and makes the model frame from that: it must be the
    # model frame of the full frame, bit for bit, whatever the size (a prime width reduces by nothing).
    frame = natural_image(*hw, seed=hw[1])
    reduced = pp.box_reduce_frame(frame)
    assert reduced.shape[0] <= hw[0] and reduced.shape[1] <= hw[1]
    np.testing.assert_array_equal(pp.box_reduce_frame(reduced), reduced)
    np.testing.assert_array_equal(pp.prepare_frame_bgr(reduced), pp.prepare_frame_bgr(frame))
    if hw == (1080, 1920):
        assert reduced.shape == (540, 320, 3)  # what the spotter's input starts from (spotter_spec.spotter_frame)


def test_resize_close_to_pil_on_broadcast_frames() -> None:
    frame = natural_image(1080, 1920, seed=7)
    diff = np.abs(pp.resize_frame(frame).astype(int) - pil_resize(frame).astype(int))
    # Box pre-reduction (like PIL's reducing_gap) on 1080p; measured max 4, mean 0.54 levels.
    assert diff.max() <= 8 and diff.mean() < 1.0


def test_mask_rounding_matches_pil() -> None:
    mask = (natural_image(256, 455, seed=8)[..., 0] > 128).astype(np.uint8) * 255
    expected = np.round(pil_resize(mask) / 255.0)
    assert np.mean(pp.resize_mask(mask) != expected) < 1e-3


# --------------------------------------------------------------------------- sampling and labels


def test_sample_frame_indices() -> None:
    indices = pp.sample_frame_indices(10, 209)
    assert indices.dtype == np.int64 and indices.shape == (96,)
    assert indices[0] == 10 and indices[-1] == 209
    np.testing.assert_array_equal(indices, np.linspace(10, 209, 96).astype(int))
    assert pp.sample_frame_indices(10, 209, end_shift=-3)[-1] == 206
    short = pp.sample_frame_indices(0, 29)
    assert set(short.tolist()) == set(range(30))  # a short clip repeats every frame, drops none


def test_transitions_from_labels() -> None:
    # distinct labels 4, 9, 2 first appear at 0, 2, 5 -> [2 - 1, 5 - 1]
    np.testing.assert_array_equal(pp.transitions_from_labels([4, 4, 9, 9, 9, 2, 2]), [1, 4])
    # a label coming back does not count again
    np.testing.assert_array_equal(pp.transitions_from_labels([1, 1, 1, 5, 1, 7, 7, 7]), [2, 4])
    # two steps only: both transitions are the same frame
    np.testing.assert_array_equal(pp.transitions_from_labels([0, 0, 3]), [1, 1])
    assert pp.transitions_from_labels([0, 3]).dtype == np.int64
    with pytest.raises(ValueError, match="two distinct"):
        pp.transitions_from_labels([5, 5, 5])


# --------------------------------------------------------------------------- reading


def test_read_frame_is_rgb_and_rejects_broken_files(tmp_path) -> None:
    red_bgr = np.zeros((16, 16, 3), np.uint8)
    red_bgr[..., 2] = 255
    path = tmp_path / "00000.jpg"
    cv2.imwrite(str(path), red_bgr)
    rgb = pp.read_frame(path)
    assert rgb.shape == (16, 16, 3) and rgb[..., 0].mean() > 240 and rgb[..., 2].mean() < 15
    assert pp.read_mask(path).shape == (16, 16)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        pp.read_frame(path)
    path.write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match="not a JPEG"):
        pp.read_frame(path)
