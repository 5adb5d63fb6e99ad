"""Batch augmentations: per-sample random transforms that keep shape, device and content."""

import pytest
import torch

from mlp_sweep.training.augment import RandomAffine, RandomFlipCrop, RandomShift, build_augment

from conftest import compose_config


def images(n=64, c=1, size=12):
    torch.manual_seed(0)
    return torch.randn(n, c, size, size)


def shifted(image: torch.Tensor, dy: int, dx: int, s: int) -> torch.Tensor:
    """`image` translated by (dy, dx) with its edges repeated, computed the slow way."""
    padded = torch.nn.functional.pad(image[None], (s, s, s, s), mode="replicate")[0]
    h, w = image.shape[-2:]
    return padded[:, s - dy:s - dy + h, s - dx:s - dx + w]


def test_shift_translates_each_image_by_whole_pixels_within_the_bound():
    batch = images()
    out = RandomShift(2)(batch)
    assert out.shape == batch.shape
    offsets = set()
    for image, result in zip(batch, out):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(result, shifted(image, dy, dx, 2))]
        assert matches, "every output is its input translated by at most 2 pixels"
        offsets.add(matches[0])
    assert len(offsets) > 10  # one random offset per image, not one per batch


def test_zero_shift_and_identity_affine_leave_images_unchanged():
    batch = images()
    assert torch.equal(RandomShift(0)(batch), batch)
    assert torch.allclose(RandomAffine(degrees=0, scale=0, shift=0)(batch), batch, atol=1e-5)


def test_affine_moves_each_image_differently_and_keeps_its_range():
    batch = images()
    out = RandomAffine(degrees=10, scale=0.1, shift=2)(batch)
    assert out.shape == batch.shape
    changes = (out - batch).flatten(1).abs().mean(1)
    assert (changes > 0).all() and changes.std() > 0
    # Bilinear resampling with repeated edges never leaves the input's value range.
    assert out.min() >= batch.min() - 1e-5 and out.max() <= batch.max() + 1e-5


def test_flip_crop_flips_about_half_and_crops_every_image():
    batch = images(n=400, c=3, size=8)
    torch.manual_seed(1)
    out = RandomFlipCrop(shift=0)(batch)  # no crop: every image is itself or its mirror
    flipped = [torch.equal(o, b.flip(2)) for o, b in zip(out, batch)]
    assert all(f or torch.equal(o, b) for f, o, b in zip(flipped, out, batch))
    assert 150 < sum(flipped) < 250


def test_augmentations_are_repeatable_from_the_seed():
    batch = images()
    torch.manual_seed(5)
    first = RandomAffine()(batch)
    torch.manual_seed(5)
    assert torch.equal(RandomAffine()(batch), first)


@pytest.mark.parametrize("name", ["shift", "affine", "flip_crop"])
def test_every_augment_option_builds_its_module(name):
    module = build_augment(compose_config(f"augment={name}").augment)
    assert module(images(n=4)).shape == (4, 1, 12, 12)
    assert build_augment(compose_config().augment) is None
