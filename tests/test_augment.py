import numpy as np
import pytest

from nnd.compiler.diagnostics import NndError
from nnd.runtime.augment import Augmenter, make_augmentation, rotate


def _batch(n=16, h=8, w=8, c=2, seed=0):
    return np.random.default_rng(seed).random((n, h, w, c)).astype(np.float32) + 1.0  # no zeros: fill shows


def _shifted(img, dy, dx):
    h, w, _ = img.shape
    out = np.zeros_like(img)
    padded = np.zeros((h + 2 * h, w + 2 * w, img.shape[2]), img.dtype)
    padded[h:2 * h, w:2 * w] = img
    out[:] = padded[h - dy:2 * h - dy, w - dx:2 * w - dx]
    return out


def _find_shift(orig, out, limit):
    matches = [(dy, dx) for dy in range(-limit, limit + 1) for dx in range(-limit, limit + 1)
               if np.array_equal(_shifted(orig, dy, dx), out)]
    assert len(matches) == 1, matches
    return matches[0]


ALL = [("random_flip", {"mode": "horizontal_and_vertical"}), ("random_translation", {"height_factor": 0.25}),
       ("random_shift", {"fraction": 0.2}), ("random_crop", {"padding": 2}), ("random_rotation", {"degrees": 15}),
       ("random_rotation", {"degrees": 15, "interpolation": "nearest"}), ("gaussian_noise", {"stddev": 0.1})]


@pytest.mark.parametrize("name,args", ALL)
def test_seeded_pure_and_shape_preserving(name, args):
    aug = make_augmentation(name, **args)
    x = _batch()
    before = x.copy()
    a = aug(x, np.random.default_rng(5))
    b = aug(x, np.random.default_rng(5))
    c = aug(x, np.random.default_rng(6))
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype


def test_flip_each_sample_flipped_or_not():
    x = _batch(32)
    out = make_augmentation("random_flip")(x, np.random.default_rng(0))
    flipped = [np.array_equal(o, s[:, ::-1]) for o, s in zip(out, x)]
    kept = [np.array_equal(o, s) for o, s in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    out = make_augmentation("random_flip", mode="vertical")(x, np.random.default_rng(0))
    assert all(np.array_equal(o, s[::-1]) or np.array_equal(o, s) for o, s in zip(out, x))


def test_translation_is_whole_pixel_shift_with_zero_fill():
    x = _batch(24)
    out = make_augmentation("random_translation", height_factor=0.25, width_factor=0.125)(x, np.random.default_rng(1))
    shifts = [_find_shift(s, o, 2) for s, o in zip(x, out)]
    assert all(abs(dy) <= 2 and abs(dx) <= 1 for dy, dx in shifts)
    assert len(set(shifts)) > 3


def test_crop_equals_pad_then_crop():
    x = _batch(24)
    p = 2
    out = make_augmentation("random_crop", padding=p)(x, np.random.default_rng(2))
    for s, o in zip(x, out):
        padded = np.pad(s, ((p, p), (p, p), (0, 0)))
        windows = [padded[i:i + 8, j:j + 8] for i in range(2 * p + 1) for j in range(2 * p + 1)]
        assert any(np.array_equal(o, wdw) for wdw in windows)


def test_rotation_exact_cases():
    x = _batch(2, 6, 6, 1)
    for mode in ("nearest", "bilinear"):
        np.testing.assert_array_equal(rotate(x, np.zeros(2), mode), x)
        np.testing.assert_allclose(rotate(x, np.full(2, np.pi / 2), mode), np.rot90(x, 1, axes=(1, 2)), atol=1e-5)
        np.testing.assert_allclose(rotate(x, np.full(2, np.pi), mode), x[:, ::-1, ::-1], atol=1e-5)
    np.testing.assert_array_equal(make_augmentation("random_rotation", degrees=0)(x, 0), x)


def test_rotation_small_angle_keeps_centre_and_fills_corners():
    x = np.ones((4, 9, 9, 1), np.float32)
    out = rotate(x, np.full(4, np.deg2rad(30.0)), "bilinear")
    assert np.allclose(out[:, 4, 4], 1.0)
    assert np.all(out[:, 0, 0] < 0.5)  # corner sampled from outside the image


def test_gaussian_noise_statistics():
    x = np.zeros((64, 16, 16, 1), np.float32)
    out = make_augmentation("gaussian_noise", stddev=0.5)(x, np.random.default_rng(0))
    assert abs(out.mean()) < 0.02 and abs(out.std() - 0.5) < 0.02 and out.dtype == np.float32


def test_augmenter_pipeline():
    x = _batch()
    aug = Augmenter([make_augmentation("random_flip"), make_augmentation("random_crop", padding=1)])
    np.testing.assert_array_equal(aug.apply(x, 3), aug.apply(x, np.random.default_rng(3)))
    assert Augmenter([]).apply(x, 0) is x


def test_errors():
    with pytest.raises(NndError, match="unknown augmentation 'random_flipp'; did you mean 'random_flip'"):
        make_augmentation("random_flipp")
    with pytest.raises(NndError, match="unknown argument 'degree' for augmentation 'random_rotation'; did you mean "
                                       "'degrees'"):
        make_augmentation("random_rotation", degree=5)
    with pytest.raises(NndError, match="mode must be one of .*did you mean 'vertical'"):
        make_augmentation("random_flip", mode="verticle")
    with pytest.raises(NndError, match=r"needs image batches of shape \(batch, height, width, channels\), got shape "
                                       r"\(2, 8, 8\)"):
        make_augmentation("random_flip")(np.zeros((2, 8, 8), np.float32), 0)
    with pytest.raises(NndError, match="floating-point batch, got dtype uint8"):
        Augmenter([]).apply(np.zeros((2, 8, 8, 1), np.uint8), 0)
    with pytest.raises(NndError, match="padding must be an integer >= 0"):
        make_augmentation("random_crop", padding=1.5)
    with pytest.raises(NndError, match="degrees must be a number in"):
        make_augmentation("random_rotation", degrees=-3)
