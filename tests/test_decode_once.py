"""Decoding once at the working size, the fast colour code against its references, and worker processes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from skimage.color import rgb2hsv

from test_handcrafted import naive_autocorrelogram

from cbir.data.images import load_rgb, open_rgb, shrink
from cbir.errors import CbirError
from cbir.features.handcrafted import (
    config_working_side,
    describe_config,
    describe_files,
    working_side,
)
from cbir.features.handcrafted import colour_moments, common, correlogram
from cbir.features.handcrafted import descriptor_node


def photo(rng, shape=(600, 420)) -> np.ndarray:
    """A smooth gradient with blobs and noise: something with real structure at every scale."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=-1)
    img += 60 * np.sin(x / 17.0)[..., None] + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_rgb_to_hsv_matches_skimage_and_puts_exact_edges_in_their_bin():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image[:4] = 77  # grey rows: hue and saturation 0
    image[4:8, :, 0] = image[4:8, :, 2]  # ties between the maximum channels
    np.testing.assert_allclose(common.rgb_to_hsv(image), rgb2hsv(image), atol=1e-6)
    h, s, v = common.rgb_to_hsv(np.array([[[51, 102, 204]]], np.uint8))[0, 0]
    assert s == 0.75 and v == np.float32(0.8) and h == np.float32(11 / 18)  # (204-51)/204 = 3/4 exactly


@pytest.mark.parametrize("shape", [(9, 7), (3, 2), (12, 12)])
def test_correlogram_equals_the_pixel_by_pixel_definition(shape):
    rng = np.random.default_rng(1)
    image = (rng.integers(0, 2, (*shape, 3)) * 255).astype(np.uint8)  # 8 colours, 2 bins per channel
    q = common.quantise(image, [2, 2, 2], "rgb")
    got = correlogram.color_autocorrelogram(image, distances=[1, 2, 5], bins=[2, 2, 2], max_side=None)
    np.testing.assert_allclose(got, naive_autocorrelogram(q, 8, [1, 2, 5]), atol=1e-6)


def test_colour_moments_match_scipy():
    image = photo(np.random.default_rng(2), (40, 30))
    got = colour_moments.color_moments(image, space="rgb", max_side=None)
    chans = image.reshape(-1, 3) / 255.0
    expected = np.concatenate([chans.mean(0), chans.std(0), stats.skew(chans, axis=0, bias=True)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.any(colour_moments.color_moments(np.full((5, 5, 3), 9, np.uint8))[6:])  # constant: skew 0


def test_working_sides():
    assert working_side("hsv_histogram") == 256 and working_side("lbp_histogram", {"max_side": 128}) == 128
    assert working_side("lbp_histogram", {"max_side": None}) is None
    assert working_side("hog_descriptor") == 256 and working_side("hog_descriptor", {"size": [64, 96]}) == 192
    assert working_side("my.module:fn") is None
    fusion = descriptor_node("fusion", {"members": {"hsv_histogram": {"max_side": 100},
                                                    "hog_descriptor": {"size": 64}}})
    assert config_working_side(fusion) == 128
    fusion["members"]["lbp_histogram"] = {"max_side": None}
    assert config_working_side(fusion) is None
    assert config_working_side({"_target_": "examples.my_descriptor.descriptor.colour_layout"}) is None


def test_decoding_at_the_working_size_equals_shrinking_the_full_image(tmp_path):
    image = photo(np.random.default_rng(3))
    Image.fromarray(image).save(tmp_path / "a.png")
    reduced = load_rgb(tmp_path / "a.png", max_side=256)
    assert reduced.shape == (256, 179, 3)
    np.testing.assert_array_equal(reduced, common.fit_working_size(load_rgb(tmp_path / "a.png"), 256))
    np.testing.assert_array_equal(np.asarray(shrink(open_rgb(tmp_path / "a.png"), 256)), reduced)
    assert load_rgb(tmp_path / "a.png", max_side=1000).shape == image.shape  # never enlarged


def test_jpeg_is_decoded_at_reduced_scale_close_to_the_full_decode(tmp_path):
    image = photo(np.random.default_rng(4), (1200, 900))
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=95)
    fast = load_rgb(tmp_path / "a.jpg", max_side=256)
    slow = common.fit_working_size(load_rgb(tmp_path / "a.jpg"), 256)
    assert fast.shape == slow.shape == (256, 192, 3)
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 2.0


def test_workers_give_the_rows_of_one_process_and_a_bad_file_is_one_line(tmp_path):
    rng = np.random.default_rng(5)
    paths = []
    for i in range(10):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(photo(rng, (80 + 7 * i, 60))).save(paths[-1])
    cfg = descriptor_node("fusion", {"members": {"hsv_histogram": {}, "hog_descriptor": {}}})
    dim = describe_config(cfg, np.zeros((32, 32, 3), np.uint8)).shape[0]
    one, two = np.zeros((10, dim), np.float32), np.zeros((10, dim), np.float32)
    describe_files(cfg, paths, one, 10**7, num_workers=0, progress=False)
    describe_files(cfg, paths, two, 10**7, num_workers=2, progress=False)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-6)
    (tmp_path / "5.png").write_bytes(b"not an image")
    with pytest.raises(CbirError, match=r"cannot use image .*5\.png: not_an_image"):
        describe_files(cfg, paths, two, 10**7, num_workers=2, progress=False)


def test_float_tiff_with_nan_converts_without_a_numpy_warning(tmp_path):
    values = np.array([[np.nan, 12.6], [np.inf, -np.inf]], dtype=np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_rgb(tmp_path / "f.tif")
    np.testing.assert_array_equal(out[..., 0], [[0, 13], [255, 0]])
