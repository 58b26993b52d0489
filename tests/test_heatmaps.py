"""Heatmap pictures: percentile clipping, channel modes, colour maps, and mapping back onto the
original picture's geometry — each checked against values worked out by hand."""

import numpy as np
import pytest
from PIL import Image

from lrptool.heatmaps import (COLORMAPS, colour_scale, heatmap_image, heatmap_values, map_back, overlay_image,
                              pixel_relevance)
from lrptool.images import Preprocessing, geometry_for, resize
from test_explain_cli import bias_free_mnist, run


def test_clip_scales_by_the_percentile_of_absolute_relevance():
    # |R| = 1…200 (signs alternating); numpy's linear percentile: position 0.995 · 199 = 198.005
    # between the sorted values 199 and 200, so the scale is 199 + 0.005 · (200 − 199) = 199.005
    magnitudes = np.arange(1, 201, dtype=np.float64)
    relevance = (magnitudes * np.where(np.arange(200) % 2, -1, 1)).reshape(1, 10, 20)
    assert colour_scale(relevance[0], 99.5) == pytest.approx(199.005)
    values = heatmap_values(relevance, clip=99.5)
    assert values.flat[99] == pytest.approx(-100 / 199.005)
    assert values.flat[199] == -1.0 and values.flat[198] == pytest.approx(199 / 199.005)  # 200 saturates
    # 100 means the largest; a map that is zero almost everywhere falls back to the largest
    assert colour_scale(relevance[0], 100) == 200
    sparse = np.zeros((1, 20, 20))
    sparse[0, 3, 4] = 5.0
    assert colour_scale(sparse[0], 99.5) == 5.0


def test_one_hot_pixel_does_not_wash_out_the_overlay():
    rng = np.random.default_rng(0)
    relevance = rng.uniform(0.5, 1.0, (1, 40, 40))
    relevance[0, 7, 9] = 1e4
    picture = Image.new("RGB", (40, 40), (128, 128, 128))
    unclipped = np.asarray(overlay_image(picture, relevance, clip=None), dtype=float)
    clipped = np.asarray(overlay_image(picture, relevance, clip=99.5), dtype=float)
    # bwr at v > 0 is (1, 1 − v, 1 − v); the overlay mixes 0.6·√|v| of it into the grey 128
    away = (slice(20, 40), slice(20, 40))
    assert np.abs(unclipped[away] - 128).max() < 3          # scaled by the hot pixel: all but invisible
    v = relevance[0][away] / colour_scale(relevance[0], 99.5)
    alpha = 0.6 * np.sqrt(v)
    expected_green = 128 * (1 - alpha) + 255 * (1 - v) * alpha
    np.testing.assert_allclose(clipped[away][..., 1], np.round(expected_green), atol=1)
    assert np.abs(clipped[away][..., 1] - 128).mean() > 20


def test_channel_modes():
    relevance = np.array([[[1.0, -2.0]], [[-3.0, 0.5]], [[0.5, 0.5]]])   # (C=3, H=1, W=2)
    np.testing.assert_allclose(pixel_relevance(relevance, "sum"), [[-1.5, -1.0]])
    np.testing.assert_allclose(pixel_relevance(relevance, "abs"), [[4.5, 3.0]])
    np.testing.assert_allclose(pixel_relevance(relevance, "max-abs"), [[3.0, 2.0]])


def test_black_firered_is_the_toolbox_map_and_diverging_is_even_on_both_sides():
    ends = COLORMAPS["black-firered"](np.array([-1, -0.5, -0.25, 0, 0.125, 0.25, 0.375, 0.5, 0.75, 1]))
    np.testing.assert_allclose(ends, [[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0], [0.5, 0, 0], [1, 0, 0],
                                      [1, 0.5, 0], [1, 1, 0], [1, 1, 0.5], [1, 1, 1]])

    def luminance(rgb):  # relative luminance of sRGB colours (IEC 61966-2-1, Rec. 709 primaries)
        linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
        return linear @ np.array([0.2126, 0.7152, 0.0722])
    t = np.linspace(0, 1, 21)
    warm, cold = luminance(COLORMAPS["diverging"](t)), luminance(COLORMAPS["diverging"](-t))
    np.testing.assert_allclose(warm, cold, atol=0.01)        # |R| looks as strong on either side
    assert np.all(np.diff(warm) < 0)                          # darker with every step away from zero
    assert COLORMAPS["diverging"](np.array([0.0])).min() > 0.9  # near-white centre
    assert COLORMAPS["diverging"](np.array([1.0]))[0, 0] > 0.5 > COLORMAPS["diverging"](np.array([1.0]))[0, 2]
    assert COLORMAPS["diverging"](np.array([-1.0]))[0, 2] > 0.5 > COLORMAPS["diverging"](np.array([-1.0]))[0, 0]


def centroid(values):
    """The (row, column) centre of mass in continuous coordinates: pixel k spans [k, k + 1)."""
    rows, cols = np.indices(values.shape)
    total = values.sum()
    return (float((values * (rows + 0.5)).sum() / total), float((values * (cols + 0.5)).sum() / total))


def test_map_back_of_a_centre_crop():
    # 300×200 (w×h), shorter side to 100: resized 150×100 (factor ½), the 50×50 input cut at (50, 25)
    pre = Preprocessing(size=(50, 50), resize="shorter-crop", shorter=100, channels="rgb")
    geometry = geometry_for((300, 200), pre)
    assert geometry.resized == (150, 100) and geometry.box == (50, 25, 100, 75)
    # the input's centre (25, 25) is the original's centre (100, 150) in (row, column)
    values = np.zeros((50, 50))
    values[24:26, 24:26] = 1.0
    mapped = map_back(values, geometry)
    assert mapped.shape == (200, 300)
    assert centroid(mapped) == pytest.approx((100.0, 150.0), abs=1e-6)
    # one hot input pixel (row 10, column 30) is resized pixel (35, 80), original pixels (70–71, 160–161)
    values = np.zeros((50, 50))
    values[10, 30] = 1.0
    mapped = map_back(values, geometry)
    row, col = np.unravel_index(np.argmax(mapped), mapped.shape)
    assert row in (70, 71) and col in (160, 161)
    assert centroid(mapped) == pytest.approx((71.0, 161.0), abs=1e-6)
    assert mapped[:50].max() == 0 and mapped[:, :100].max() == 0   # the cropped-off margins carry nothing
    # the geometry is the one the preprocessing really applies: the crop of a marked picture
    picture = np.zeros((200, 300, 3), np.uint8)
    picture[70:72, 160:162] = 255
    seen = np.asarray(resize(Image.fromarray(picture), pre))
    assert np.unravel_index(np.argmax(seen[..., 0]), (50, 50)) == (10, 30)


def test_explain_maps_overlays_back_and_keeps_npy_at_input_size(tmp_path):
    model = bias_free_mnist(tmp_path / "m.onnx")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray((rng.random((60, 90)) * 255).astype(np.uint8), "L").save(images / "wide.png")
    result = run("explain", model, images, "-o", tmp_path / "out", "--preprocess", "mnist",
                 "--format", "png,overlay,npy", "--cmap", "diverging", "--clip", "99")
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "out" / "wide.png.overlay.png").size == (90, 60)
    assert Image.open(tmp_path / "out" / "wide.png.heatmap.png").size == (28, 28)
    assert np.load(tmp_path / "out" / "wide.png.npy").shape == (1, 28, 28)
    result = run("explain", model, images, "-o", tmp_path / "all", "--preprocess", "mnist", "--format", "png,overlay",
                 "--map-back", "--channels-mode", "abs")
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "all" / "wide.png.heatmap.png").size == (90, 60)
    result = run("explain", model, images, "-o", tmp_path / "none", "--preprocess", "mnist", "--format", "overlay",
                 "--no-map-back")
    assert Image.open(tmp_path / "none" / "wide.png.overlay.png").size == (28, 28)
    result = run("explain", model, images, "-o", tmp_path / "bad", "--clip", "0")
    assert result.returncode == 2 and "--clip" in result.stderr
    help_text = run("explain", "--help").stdout
    assert "black-firered" in help_text and "diverging" in help_text and "max-abs" in help_text
