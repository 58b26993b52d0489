"""Preprocessing and heatmap rendering, against values worked out by hand in the tests."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from lrptool.errors import LrpToolError
from lrptool.heatmaps import COLORMAPS, heatmap_image, heatmap_values, overlay_image
from lrptool.images import ImageError, load_picture, preprocessing_for, to_tensor, walk_inputs


def test_imagenet_preset_resizes_the_shorter_side_crops_and_normalises(tmp_path):
    rng = np.random.default_rng(0)
    pixels = (rng.random((300, 400, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    pre = preprocessing_for((None, 3, 224, 224), "imagenet")
    x = to_tensor(load_picture(tmp_path / "photo.png", pre), pre)
    # by hand: shorter side 300 → 256 (400 → 341), centre crop 224
    resized = Image.fromarray(pixels).resize((341, 256), Image.BILINEAR)
    left, top = (341 - 224) // 2, (256 - 224) // 2
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float64) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((crop - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    low, high = pre.bounds()
    np.testing.assert_allclose(low.reshape(-1), -mean / std)
    np.testing.assert_allclose(high.reshape(-1), (1 - mean) / std)


def test_keras_caffe_preset_is_bgr_with_keras_mean_and_takes_the_size_from_the_model(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 10, 20, 30
    Image.fromarray(pixels).save(tmp_path / "flat.png")
    pre = preprocessing_for((None, 3, 4, 4), "keras-caffe")
    x = to_tensor(load_picture(tmp_path / "flat.png", pre), pre)
    assert x.shape == (3, 4, 4)
    np.testing.assert_allclose(x[:, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_config_file_and_overrides(tmp_path):
    config = tmp_path / "pre.json"
    config.write_text(json.dumps({"preset": "mnist", "scale": 1.0, "mean": [0.5]}))
    pre = preprocessing_for((None, 1, 28, 28), config=str(config), std=[2.0])
    assert (pre.channels, pre.scale, pre.mean, pre.std, tuple(pre.size)) == ("gray", 1.0, [0.5], [2.0], (28, 28))
    with pytest.raises(LrpToolError, match="unknown preprocessing setting"):
        preprocessing_for((None, 1, 28, 28), config={"colour": "red"})
    with pytest.raises(LrpToolError, match="3 channels"):
        preprocessing_for((None, 3, 28, 28), "mnist")


def test_rgba_images_are_put_on_white_and_bad_files_are_image_errors(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half.png")
    pre = preprocessing_for((None, 3, 4, 4), "raw")
    x = to_tensor(load_picture(tmp_path / "half.png", pre), pre)
    np.testing.assert_array_equal(x[:, 0, 0], [255, 0, 0])
    np.testing.assert_array_equal(x[:, 3, 0], [255, 255, 255])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ImageError):
        load_picture(tmp_path / "bad.png", pre)
    with pytest.raises(ImageError, match="no such file"):
        load_picture(tmp_path / "none.png", pre)


def test_walk_inputs_reads_folders_lists_and_targets(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    for name in ("d/b.png", "d/a.jpg", "d/e/c.bmp", "d/skip.txt"):
        (tmp_path / name).write_bytes(b"")
    items = walk_inputs([str(tmp_path / "d"), "-"], stdin=io.BytesIO(b"x.png\t4\n\ny.png\r\n"))
    assert [(p.replace(str(tmp_path) + "/", ""), t) for p, t in items] == [
        ("d/a.jpg", None), ("d/b.png", None), ("d/e/c.bmp", None), ("x.png", 4), ("y.png", None)]
    # a bad target fails that line's image alone: the problem travels with the item
    (path, problem), = walk_inputs(["-"], stdin=io.BytesIO(b"x.png\tcat\n"))
    assert path == "x.png" and "not a class index" in problem
    (_, problem), = walk_inputs(["-"], stdin=io.BytesIO(b"x.png\t-3\n"))
    assert "negative" in problem
    # paths are bytes on stdin: a name that is not UTF-8 comes through as the file system's name
    (path, _), = walk_inputs(["-"], stdin=io.BytesIO(b"caf\xe9.png\n"))
    assert os.fsencode(path) == b"caf\xe9.png"


def test_heatmaps_are_symmetric_and_colour_maps_have_the_right_ends():
    relevance = np.array([[[-2.0, 0.0, 4.0]]])
    np.testing.assert_allclose(heatmap_values(relevance), [[-0.5, 0.0, 1.0]])
    bwr = np.asarray(heatmap_image(np.array([[[-1.0, 0.0, 1.0]]]), "bwr"))
    np.testing.assert_array_equal(bwr[0], [[0, 0, 255], [255, 255, 255], [255, 0, 0]])
    for name, colour_map in COLORMAPS.items():
        ends = colour_map(np.array([-1.0, 0.0, 1.0]))
        assert ends.shape == (3, 3) and ends.min() >= 0 and ends.max() <= 1, name
    assert heatmap_image(np.zeros((3, 5, 7)), "seismic").size == (7, 5)
    picture = Image.new("RGB", (7, 5), (100, 100, 100))
    plain = np.asarray(overlay_image(picture, np.zeros((3, 5, 7))))
    assert (plain == 100).all()  # no relevance: the picture shows unchanged
