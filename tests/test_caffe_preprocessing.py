"""The `caffe` preset as BVLC Caffe preprocesses: shorter side 256, centre crop, BGR minus 104/117/123 or a
mean image (.binaryproto) cropped at the same offsets. Values computed by hand."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from converters.caffe_proto import BlobProto
from lrptool.errors import LrpToolError
from lrptool.images import geometry_for, load_picture, preprocessing_for, to_tensor


def position_picture(path, height=256, width=260):
    """R = column, G = row (mod 256), B = 7: every pixel says where it was."""
    rows, cols = np.mgrid[0:height, 0:width]
    pixels = np.stack([cols % 256, rows % 256, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def mean_file(path, shape, values):
    blob = BlobProto()
    blob.shape.dim.extend(shape)
    blob.data.extend(np.asarray(values, dtype=np.float64).ravel().tolist())
    path.write_bytes(blob.SerializeToString())
    return path


def test_caffe_preset_crops_the_centre_and_subtracts_the_bvlc_mean(tmp_path):
    pre = preprocessing_for((None, 3, 2, 2), "caffe")
    assert (pre.resize, pre.shorter, pre.channels, pre.mean, pre.scale) == ("shorter-crop", 256, "bgr",
                                                                            [104.0, 117.0, 123.0], 1.0)
    # 260 wide, 256 high: the shorter side is already 256, so no resampling; the 2x2 crop starts at
    # column (260 - 2) // 2 = 129, row (256 - 2) // 2 = 127
    x = to_tensor(load_picture(position_picture(tmp_path / "p.png"), pre), pre)
    expected = np.array([[[7 - 104] * 2] * 2,                                       # B
                         [[127 - 117] * 2, [128 - 117] * 2],                        # G = row
                         [[129 - 123, 130 - 123]] * 2], dtype=np.float32)           # R = column
    np.testing.assert_array_equal(x, expected)
    # a 130x128 picture is enlarged to 260x256 first: the same crop box
    assert geometry_for((130, 128), pre).resized == (260, 256)
    assert geometry_for((130, 128), pre).box == (129, 127, 131, 129)
    Image.new("RGB", (130, 128), (50, 60, 70)).save(tmp_path / "flat.png")
    flat = to_tensor(load_picture(tmp_path / "flat.png", pre), pre)
    np.testing.assert_array_equal(flat[:, 0, 0], [70 - 104, 60 - 117, 50 - 123])


def test_mean_file_image_is_cropped_centrally_like_caffe(tmp_path):
    # mean[c, h, w] = 100c + 10h + w over 4x6; for a 2x2 input Caffe takes rows 1-2 and columns 2-3
    c, h, w = np.mgrid[0:3, 0:4, 0:6]
    path = mean_file(tmp_path / "mean.binaryproto", [1, 3, 4, 6], 100 * c + 10 * h + w)
    from converters.caffe_reader import read_mean_image

    image = read_mean_image(path)
    pre = preprocessing_for((None, 3, 2, 2), "caffe", mean_image=image, mean_file=str(path))
    np.testing.assert_array_equal(pre.mean_image[:, 0, 0], [12, 112, 212])
    np.testing.assert_array_equal(pre.mean_image[0], [[12, 13], [22, 23]])
    x = to_tensor(load_picture(position_picture(tmp_path / "p.png"), pre), pre)
    np.testing.assert_array_equal(x[0], [[7 - 12, 7 - 13], [7 - 22, 7 - 23]])
    np.testing.assert_array_equal(x[1], [[127 - 112, 127 - 113], [128 - 122, 128 - 123]])
    np.testing.assert_array_equal(x[2], [[129 - 212, 130 - 213], [129 - 222, 130 - 223]])
    low, high = pre.bounds()
    np.testing.assert_array_equal(low[2], [[-212, -213], [-222, -223]])
    np.testing.assert_array_equal(high[0], [[255 - 12, 255 - 13], [255 - 22, 255 - 23]])
    described = pre.describe()
    assert described["mean_file"] == str(path) and "mean" not in described and "mean_image" not in described
    assert "mean image of" in pre.summary()


def test_per_channel_mean_blob_and_refusals(tmp_path):
    pre = preprocessing_for((None, 3, 2, 2), "caffe", mean_image=np.array([[[1.0]], [[2.0]], [[3.0]]]),
                            mean_file="m")
    np.testing.assert_array_equal(pre.bounds()[0].ravel(), [-1, -2, -3])
    with pytest.raises(LrpToolError, match="the mean image is 2x3, smaller than the 4x4 input"):
        preprocessing_for((None, 3, 4, 4), "caffe", mean_image=np.zeros((3, 2, 3)), mean_file="m")
    with pytest.raises(LrpToolError, match="has 2 channels but the model takes 3"):
        preprocessing_for((None, 3, 2, 2), "caffe", mean_image=np.zeros((2, 4, 4)), mean_file="m")
    with pytest.raises(LrpToolError, match="unknown preprocessing setting"):
        preprocessing_for((None, 3, 2, 2), config={"mean_image": [1, 2, 3]})


def test_a_too_small_mean_file_is_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "m.onnx"))
    Image.new("RGB", (10, 10)).save(tmp_path / "a.png")
    small = mean_file(tmp_path / "small.binaryproto", [1, 3, 4, 4], np.zeros(48))
    result = subprocess.run([sys.executable, "-m", "lrptool.cli", "explain", str(tmp_path / "m.onnx"),
                             str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--preprocess", "caffe",
                             "--mean-file", str(small)], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "small.binaryproto" in lines[0] and "4x4, smaller than the 8x8 input" in lines[0]


def test_evaluate_thumbnails_undo_the_mean_image(tmp_path):
    # the perturbation thumbnails show the picture the model saw: the cropped mean image added back
    from converters.caffe_reader import read_mean_image
    from lrptool.evaluate_report import to_picture

    c, h, w = np.mgrid[0:3, 0:4, 0:6]
    path = mean_file(tmp_path / "mean.binaryproto", [1, 3, 4, 6], 100 * c + 10 * h + w)
    pre = preprocessing_for((None, 3, 2, 2), "caffe", mean_image=read_mean_image(path), mean_file=str(path))
    picture = load_picture(position_picture(tmp_path / "p.png"), pre)
    shown = to_picture(to_tensor(picture, pre), pre)
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(picture.convert("RGB")))
