"""Traditional descriptors: known answers, fixed dimensions, class separation, parameter errors."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters import gabor

from cbir.errors import CbirError
from cbir.features import handcrafted as hc
from cbir.features.handcrafted import (
    DESCRIPTORS,
    colour_histogram,
    colour_moments,
    common,
    correlogram,
    describe,
    fuse,
    glcm,
    hog,
)

ALL = sorted(DESCRIPTORS)


def solid(rgb, shape=(24, 32)) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.uint8), (*shape, 3)).copy()


def red_stripes(rng: np.random.Generator, shape=(48, 64)) -> np.ndarray:
    """Vertical red stripes on dark red, random period, phase and mild noise."""
    h, w = shape
    period = int(rng.integers(6, 10))
    phase = int(rng.integers(0, period))
    on = ((np.arange(w) + phase) % period) < period // 2
    img = np.zeros((h, w, 3), np.float64)
    img[:, :, 0] = np.where(on, 220.0, 90.0)[None, :]
    img[:, :, 1:] = np.where(on, 30.0, 10.0)[None, :, None]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def blue_noise(rng: np.random.Generator, shape=(48, 64)) -> np.ndarray:
    """Blue pixels with strong independent per-pixel noise."""
    h, w = shape
    img = np.empty((h, w, 3), np.float64)
    img[:, :, 2] = rng.uniform(100, 255, (h, w))
    img[:, :, :2] = rng.uniform(0, 60, (h, w, 2))
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def two_classes():
    rng = np.random.default_rng(7)
    images = [red_stripes(rng) for _ in range(4)] + [blue_noise(rng) for _ in range(4)]
    labels = np.array([0] * 4 + [1] * 4)
    return images, labels


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


# --------------------------------------------------------------------------- output contract

@pytest.mark.parametrize("name", ALL)
def test_output_is_float32_vector_of_fixed_size(name):
    rng = np.random.default_rng(0)
    dims = {describe(name, rng.integers(0, 256, shape, dtype=np.uint8)).shape
            for shape in [(40, 40, 3), (33, 71, 3), (300, 180, 3)]}
    assert len(dims) == 1 and len(next(iter(dims))) == 1
    out = describe(name, rng.integers(0, 256, (50, 60, 3), dtype=np.uint8))
    assert out.dtype == np.float32 and np.all(np.isfinite(out))


@pytest.mark.parametrize("name", ALL)
def test_deterministic(name):
    img = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    np.testing.assert_array_equal(describe(name, img), describe(name, img.copy()))


@pytest.mark.parametrize("name", ALL)
def test_grey_image_equals_replicated_rgb(name):
    grey = np.random.default_rng(2).integers(0, 256, (40, 44), dtype=np.uint8)
    np.testing.assert_array_equal(describe(name, grey), describe(name, np.dstack([grey] * 3)))


@pytest.mark.parametrize("name", ALL)
def test_textured_image_differs_from_flat(name):
    flat = solid((120, 120, 120), (64, 64))
    textured = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a, b = describe(name, flat).astype(np.float64), describe(name, textured).astype(np.float64)
    assert not np.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("name", ALL)
def test_separates_two_visual_classes(name, two_classes):
    images, labels = two_classes
    sims = cosine_matrix(np.stack([describe(name, im) for im in images]).astype(np.float64))
    same = labels[:, None] == labels[None, :]
    off_diag = ~np.eye(len(labels), dtype=bool)
    assert sims[same & off_diag].mean() > sims[~same].mean()
    np.fill_diagonal(sims, -np.inf)
    nearest_is_same = labels[sims.argmax(axis=1)] == labels
    assert nearest_is_same.mean() > 0.5  # better than chance (0.5 for two balanced classes)


def test_large_images_are_shrunk_to_the_working_size():
    big = np.random.default_rng(4).integers(0, 256, (600, 400, 3), dtype=np.uint8)
    small = common.fit_working_size(big, 256)
    assert small.shape == (256, 171, 3) and small.dtype == np.uint8
    assert common.fit_working_size(big, None) is big
    assert common.fit_working_size(big, 600) is big


# --------------------------------------------------------------------------- known answers

@pytest.mark.parametrize(("rgb", "hsv_bin"), [
    ((255, 0, 0), (0, 3, 3)),      # red: h = 0, s = 1, v = 1
    ((0, 255, 0), (2, 3, 3)),      # green: h = 1/3 -> floor(8/3) = 2
    ((0, 0, 255), (5, 3, 3)),      # blue: h = 2/3 -> floor(16/3) = 5
    ((0, 0, 0), (0, 0, 0)),        # black
    ((255, 255, 255), (0, 0, 3)),  # white: s = 0, v = 1
    ((51, 102, 204), (4, 3, 3)),   # h = 11/18 -> 4, s = 0.75 -> 3, v = 0.8 -> 3
])
def test_hsv_histogram_of_solid_colour_is_one_bin(rgb, hsv_bin):
    hist = describe("hsv_histogram", solid(rgb), {"bins": [8, 4, 4]})
    assert hist.shape == (128,)
    expected = np.zeros(128, np.float32)
    expected[np.ravel_multi_index(hsv_bin, (8, 4, 4))] = 1.0
    np.testing.assert_array_equal(hist, expected)


def test_hsv_histogram_splits_mass_by_area():
    img = solid((255, 0, 0), (20, 20))
    img[:, 15:] = (0, 0, 255)  # a quarter blue
    hist = colour_histogram.hsv_histogram(img, bins=[8, 4, 4], max_side=None)
    assert hist[15] == pytest.approx(0.75) and hist[95] == pytest.approx(0.25)
    assert hist.sum() == pytest.approx(1.0)


def test_color_moments_of_constant_image():
    # (51, 102, 204): v = 0.8, s = (204 - 51) / 204 = 0.75, h = (4 + (51 - 102) / 153) / 6 = 11 / 18
    m = describe("color_moments", solid((51, 102, 204)), {"space": "hsv"})
    np.testing.assert_allclose(m, [11 / 18, 0.75, 0.8, 0, 0, 0, 0, 0, 0], atol=1e-6)
    m = describe("color_moments", solid((51, 102, 204)), {"space": "rgb"})
    np.testing.assert_allclose(m, [0.2, 0.4, 0.8, 0, 0, 0, 0, 0, 0], atol=1e-6)


def test_color_moments_of_two_level_channel():
    # red channel is Bernoulli(p = 1/4) on {0, 1}: mean p, std sqrt(p q), skew (q - p) / sqrt(p q)
    img = np.zeros((8, 8, 3), np.uint8)
    img[:2, :, 0] = 255
    m = colour_moments.color_moments(img, space="rgb", max_side=None)
    p, q = 0.25, 0.75
    np.testing.assert_allclose(m[[0, 3, 6]], [p, np.sqrt(p * q), (q - p) / np.sqrt(p * q)], rtol=1e-6)
    np.testing.assert_allclose(m[[1, 2, 4, 5, 7, 8]], 0, atol=1e-7)


def naive_autocorrelogram(q: np.ndarray, n_colours: int, distances) -> np.ndarray:
    """Pixel-by-pixel definition: P(colour(p2) = c | colour(p1) = c, |p1 - p2|_inf = d)."""
    h, w = q.shape
    out = np.zeros((len(distances), n_colours))
    for i, d in enumerate(distances):
        same, total = np.zeros(n_colours), np.zeros(n_colours)
        for y in range(h):
            for x in range(w):
                for y2 in range(max(0, y - d), min(h, y + d + 1)):
                    for x2 in range(max(0, x - d), min(w, x + d + 1)):
                        if max(abs(y2 - y), abs(x2 - x)) == d:
                            total[q[y, x]] += 1
                            same[q[y, x]] += q[y2, x2] == q[y, x]
        out[i] = np.where(total > 0, same / np.maximum(total, 1), 0)
    return out.ravel()


def test_autocorrelogram_matches_pixel_by_pixel_definition():
    rng = np.random.default_rng(5)
    levels = np.array([0, 200])  # 2 levels per channel with bins [2, 2, 2]
    img = levels[rng.integers(0, 2, (9, 11, 3))].astype(np.uint8)
    img[:4, :5] = (200, 0, 0)  # a uniform patch so same-colour pairs are common
    got = correlogram.color_autocorrelogram(img, distances=[1, 2, 4], bins=[2, 2, 2], space="rgb", max_side=None)
    q = np.ravel_multi_index([img[..., c] // 128 for c in range(3)], (2, 2, 2))
    np.testing.assert_allclose(got, naive_autocorrelogram(q, 8, [1, 2, 4]), atol=1e-6)


def test_autocorrelogram_of_constant_image():
    got = describe("color_autocorrelogram", solid((255, 255, 255)), {"distances": [1, 3], "bins": [4, 4, 4]})
    assert got.shape == (128,)
    expected = np.zeros((2, 64))
    expected[:, 63] = 1.0  # white is the last of the 4 x 4 x 4 RGB colours
    np.testing.assert_array_equal(got, expected.ravel())


def test_lbp_histogram_of_constant_image():
    # every neighbour equals the centre -> all P bits set -> uniform code P
    hist = describe("lbp_histogram", solid((90, 90, 90)), {"P": 8, "R": 1})
    expected = np.zeros(10, np.float32)
    expected[8] = 1.0
    np.testing.assert_array_equal(hist, expected)
    assert describe("lbp_histogram", solid((9, 9, 9)), {"P": 16, "R": 2}).shape == (18,)


def test_glcm_of_constant_image():
    props = describe("glcm_stats", solid((77, 77, 77)), {"distances": [1, 3], "angles": [0, 90]})
    assert props.shape == (6 * 2 * 2,)
    by_prop = dict(zip(glcm.GLCM_PROPS, props.reshape(6, 4)))
    for name, value in {"contrast": 0, "dissimilarity": 0, "homogeneity": 1, "energy": 1, "ASM": 1}.items():
        np.testing.assert_allclose(by_prop[name], value, atol=1e-7, err_msg=name)


def test_glcm_of_vertical_stripes():
    # columns alternate black/white: with 2 grey levels every horizontal pair differs (contrast 1),
    # every vertical pair is equal (contrast 0)
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, 1::2] = 255
    props = glcm.glcm_stats(img, distances=[1], angles=[0, 90], levels=2).reshape(6, 2)
    contrast, homogeneity = props[0], props[2]
    np.testing.assert_allclose(contrast, [1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(homogeneity, [0.5, 1.0], atol=1e-7)


def test_hog_dimension_follows_params_not_image_size():
    rng = np.random.default_rng(6)
    for shape in [(30, 50, 3), (200, 120, 3)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        # 128 / 16 = 8 cells -> 7 blocks per axis, 2 x 2 cells of 9 bins each
        assert hog.hog_descriptor(img).shape == (7 * 7 * 2 * 2 * 9,)
        # [64, 96] / 8 = 8 x 12 cells -> 6 x 10 blocks of 3 x 3 cells, 6 bins
        out = describe("hog_descriptor", img, {"size": [64, 96], "pixels_per_cell": 8,
                                               "cells_per_block": 3, "orientations": 6})
        assert out.shape == (6 * 10 * 3 * 3 * 6,)


def test_gabor_matches_skimage_filters_gabor():
    img = np.random.default_rng(8).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    from skimage.color import rgb2gray
    grey = rgb2gray(img)
    expected = []
    for f in (0.1, 0.25):
        for k in range(3):
            real, imag = gabor(grey, f, theta=np.pi * k / 3, bandwidth=1.5)
            expected += [np.hypot(real, imag).mean(), np.hypot(real, imag).std()]
    got = describe("gabor_energies", img, {"frequencies": [0.1, 0.25], "orientations": 3, "bandwidth": 1.5})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_gabor_dimension_and_flat_image():
    out = describe("gabor_energies", solid((200, 10, 10), (37, 90)), {"frequencies": [0.1, 0.3], "orientations": 5})
    assert out.shape == (2 * 5 * 2,)
    np.testing.assert_allclose(out[1::2], 0, atol=1e-6)  # a flat image has a flat response


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize(("name", "params", "match"), [
    ("hsv_histogram", {"bins": [8, 4]}, r"'bins' must be 3 integers >= 1"),
    ("hsv_histogram", {"bins": [8, 0, 4]}, r"'bins\[1\]' must be an integer >= 1"),
    ("hsv_histogram", {"bins": 8}, r"'bins' must be 3 integers"),
    ("hsv_histogram", {"max_side": 4}, r"'max_side' must be an integer >= 8"),
    ("color_moments", {"space": "lab"}, r"'space' must be one of \['hsv', 'rgb'\]"),
    ("color_autocorrelogram", {"distances": []}, r"'distances' must be a non-empty list"),
    ("color_autocorrelogram", {"distances": [1, 0]}, r"'distances\[1\]' must be an integer >= 1"),
    ("color_autocorrelogram", {"bins": [4, 4, 4.5]}, r"'bins\[2\]' must be an integer"),
    ("lbp_histogram", {"P": 0}, r"'P' must be an integer >= 1"),
    ("lbp_histogram", {"P": True}, r"'P' must be an integer >= 1"),
    ("lbp_histogram", {"R": -1}, r"'R' must be a number > 0"),
    ("glcm_stats", {"levels": 1}, r"'levels' must be an integer >= 2"),
    ("glcm_stats", {"levels": 512}, r"'levels' must be <= 256"),
    ("glcm_stats", {"angles": [0, 400]}, r"'angles\[1\]' must be a number >= 0.0 and <= 360.0"),
    ("glcm_stats", {"distances": [100]}, r"distance 100 does not fit"),
    ("hog_descriptor", {"size": 4}, r"'size\[0\]' must be an integer >= 8"),
    ("hog_descriptor", {"size": 16, "pixels_per_cell": 16}, r"smaller than one block"),
    ("hog_descriptor", {"orientations": 0}, r"'orientations' must be an integer >= 1"),
    ("gabor_energies", {"frequencies": [0.1, 0.7]}, r"'frequencies\[1\]' must be a number > 0.0 and <= 0.5"),
    ("gabor_energies", {"orientations": 0}, r"'orientations' must be an integer >= 1"),
    ("gabor_energies", {"bandwidth": float("nan")}, r"'bandwidth' must be a number > 0"),
    ("hsv_histogram", {"colour": "red"}, r"unknown parameter\(s\) \['colour'\]; accepted: \['bins', 'max_side'\]"),
])
def test_bad_parameter_gets_its_error(name, params, match):
    with pytest.raises(CbirError, match=match):
        describe(name, solid((10, 20, 30), (40, 40)), params)


def test_lbp_radius_too_large_for_image():
    with pytest.raises(CbirError, match=r"too small for radius R=5"):
        describe("lbp_histogram", solid((1, 2, 3), (8, 8)), {"R": 5})


def test_unknown_descriptor():
    with pytest.raises(CbirError, match=r"unknown descriptor 'sift'; choose one of \['color_autocorrelogram'"):
        describe("sift", solid((0, 0, 0)), {})


def test_params_must_be_a_mapping():
    with pytest.raises(CbirError, match=r"params must be a mapping"):
        describe("hsv_histogram", solid((0, 0, 0)), [8, 4, 4])


@pytest.mark.parametrize(("image", "match"), [
    (np.zeros((10, 10, 3), np.float32), r"expected a uint8 RGB image array \[H, W, 3\], got float32"),
    (np.zeros((10, 10, 4), np.uint8), r"got shape \(10, 10, 4\)"),
    (np.zeros((0, 10, 3), np.uint8), r"got shape \(0, 10, 3\)"),
    ([[0, 1], [2, 3]], r"got list"),
])
def test_bad_image_gets_its_error(image, match):
    with pytest.raises(CbirError, match=match):
        describe("color_moments", image)


def test_descriptor_params_lists_defaults():
    assert hc.descriptor_params("lbp_histogram") == {"P": 8, "R": 1.0, "max_side": 256}


# --------------------------------------------------------------------------- fusion

def test_fused_cosine_is_weighted_mean_of_block_cosines():
    rng = np.random.default_rng(9)
    blocks = [rng.normal(size=(6, d)) * scale for d, scale in [(5, 1.0), (12, 30.0), (3, 0.01)]]
    weights = [0.5, 2.0, 1.5]
    fused = fuse(blocks, weights)
    assert fused.shape == (6, 20) and fused.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, rtol=1e-6)
    expected = sum(w * cosine_matrix(b) for w, b in zip(weights, blocks)) / sum(weights)
    np.testing.assert_allclose(fused.astype(np.float64) @ fused.T, expected, atol=1e-6)


def test_fuse_single_block_is_row_normalised_block():
    block = np.array([[3.0, 4.0], [0.0, 2.0]])
    np.testing.assert_allclose(fuse([block], [7.0]), [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)


def test_fuse_zero_weight_drops_block():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 5))
    fused = fuse([a, b], [1.0, 0.0])
    np.testing.assert_allclose(fused[:, :3], fuse([a], [1.0]), atol=1e-7)
    np.testing.assert_array_equal(fused[:, 3:], 0)


@pytest.mark.parametrize(("blocks", "weights", "match"), [
    ([], [], r"no feature blocks"),
    ([np.ones((3, 2))], [1.0, 1.0], r"1 blocks but 2 weights"),
    ([np.ones((3, 2)), np.ones((4, 2))], [1, 1], r"block 1 has shape \(4, 2\), expected \[3, D\]"),
    ([np.ones(3)], [1.0], r"block 0 has shape \(3,\)"),
    ([np.array([[np.nan, 1.0]])], [1.0], r"block 0 contains non-finite values"),
    ([np.ones((3, 2))], [-1.0], r"weights must be finite, >= 0 and not all 0"),
    ([np.ones((3, 2))], [0.0], r"weights must be finite, >= 0 and not all 0"),
])
def test_fuse_errors(blocks, weights, match):
    with pytest.raises(CbirError, match=match):
        fuse(blocks, weights)
