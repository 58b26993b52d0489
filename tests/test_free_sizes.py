"""Fully convolutional models with free input sizes: the IR keeps the free sizes, runs and explains at
each batch's own size, ``convert`` writes a model as dynamic as its source, ``explain --native-size``
explains each picture at its own size; a node that needs fixed sizes is named in a one-line error."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from converters.onnx_reader import read_onnx
from converters.onnx_writer import graph_to_onnx
from lrptool.errors import FreeSizeError
from lrptool.executor import run_graph
from lrptool.lrp import Explainer

SIZES = [(12, 16), (9, 7)]
MODELS = pathlib.Path(__file__).resolve().parent / "exporter_models"


def lrptool(*args):
    return subprocess.run([sys.executable, "-m", "lrptool.cli", *map(str, args)], capture_output=True, text=True)


def one_line_error(result, *fragments):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def fcn(head="conv", seed=0):
    """Conv (SAME, stride 1) – ReLU – MaxPool – Conv – ReLU – Upsample ×2 – Concat with the skip – 1×1 Conv head
    (a score map), or – GlobalAveragePool – Flatten – Gemm (a classifier that takes any size); H and W free."""
    rng = np.random.default_rng(seed)

    def weight(name, shape, scale=0.5):
        inits.append(numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name))
        return name

    inits = []
    nodes = [
        helper.make_node("Conv", ["x", weight("w1", (4, 3, 3, 3)), weight("b1", (4,), 0.1)], ["c1"], name="conv1",
                         auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", weight("w2", (6, 4, 3, 3)), weight("b2", (6,), 0.1)], ["c2"], name="conv2",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Resize", ["r2", "", weight_const("scales", [1, 1, 2, 2], inits)], ["up"], name="up",
                         mode="nearest"),
        helper.make_node("Concat", ["r1", "up"], ["cat"], name="skip", axis=1),
    ]
    if head == "conv":
        nodes.append(helper.make_node("Conv", ["cat", weight("w3", (2, 10, 1, 1))], ["y"], name="head"))
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "H", "W"])
    else:
        nodes += [helper.make_node("GlobalAveragePool", ["cat"], ["g"], name="gap"),
                  helper.make_node("Flatten", ["g"], ["f"], name="flat"),
                  helper.make_node("Gemm", ["f", weight("w3", (5, 10)), weight("b3", (5,), 0.1)], ["y"], name="fc",
                                   transB=1)]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    model = helper.make_model(helper.make_graph(nodes, "fcn", [inp], [out], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def weight_const(name, values, inits):
    inits.append(numpy_helper.from_array(np.asarray(values, np.float32), name))
    return name


def even_input(size, seed=1, batch=2):
    return np.random.default_rng(seed).normal(0, 1, (batch, 3) + size).astype(np.float32)


@pytest.mark.parametrize("head", ["conv", "classifier"])
def test_free_sizes_stay_free_and_run_at_any_size(head):
    model = fcn(head)
    graph = read_onnx(model)
    assert graph.inputs["x"] == (None, 3, None, None) and graph.free_sizes()
    session = onnxruntime.InferenceSession(model.SerializeToString())
    for size in [(12, 16), (10, 8)]:  # the upsampled branch meets the skip only at even sizes
        x = even_input(size)
        expected = session.run(None, {"x": x})[0]
        np.testing.assert_allclose(run_graph(graph, x)["y"], expected, rtol=1e-5, atol=1e-5)
        assert graph.at_sizes((3,) + size).shapes["y"][1:] == expected.shape[1:]


@pytest.mark.parametrize("head", ["conv", "classifier"])
def test_written_model_is_as_dynamic_as_its_source(tmp_path, head):
    source = tmp_path / "fcn.onnx"
    onnx.save(fcn(head), str(source))
    written = tmp_path / "written.onnx"
    result = lrptool("convert", source, "-o", written)
    assert result.returncode == 0, result.stderr
    dims = [d for d in onnx.load(str(written)).graph.input[0].type.tensor_type.shape.dim]
    assert [d.HasField("dim_value") for d in dims] == [False, True, False, False]
    reference = onnxruntime.InferenceSession(str(source))
    converted = onnxruntime.InferenceSession(str(written))
    for size in [(12, 16), (6, 10)]:
        x = even_input(size, seed=2)
        np.testing.assert_allclose(converted.run(None, {"x": x})[0], reference.run(None, {"x": x})[0],
                                   rtol=1e-5, atol=1e-5)


def test_a_fixed_input_size_still_freezes_the_model(tmp_path):
    source = tmp_path / "fcn.onnx"
    onnx.save(fcn(), str(source))
    written = tmp_path / "fixed.onnx"
    assert lrptool("convert", source, "--input-size", "8x10", "-o", written).returncode == 0
    dims = onnx.load(str(written)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 8, 10]


@pytest.mark.parametrize("method", ["epsilon-plus-flat", "gradient"])
def test_each_size_is_explained_as_the_model_read_at_that_size(method):
    """The reference: the same file read with that input size (the fixed-size path) and explained eagerly."""
    model = fcn("classifier")
    free = Explainer(read_onnx(model), method)
    for size in SIZES + [SIZES[0]]:
        if size[0] % 2 or size[1] % 2:
            size = (size[0] + 1, size[1] + 1)
        x = even_input(size, seed=3)
        fixed = Explainer(read_onnx(model, input_size=size), method, compiled=False).explain(x)
        got = free.explain(x)
        assert got.relevance.shape == x.shape
        np.testing.assert_allclose(got.relevance, fixed.relevance, rtol=1e-4, atol=1e-6 * np.abs(fixed.relevance).max())
        np.testing.assert_array_equal(got.targets, fixed.targets)
    assert len(free.by_size) == 2
    assert all(explainer.compiled is not None for explainer in free.by_size.values())


def test_nodes_that_need_a_fixed_size_are_named():
    model = fcn("classifier")
    # Flatten straight after the feature map: its width depends on H and W
    gap = next(n for n in model.graph.node if n.name == "gap")
    model.graph.node.remove(gap)
    next(n for n in model.graph.node if n.name == "flat").input[0] = "cat"
    with pytest.raises(FreeSizeError, match=r"node 'flat' \(Flatten\).*free.*--input-size"):
        read_onnx(model)
    strided = fcn()
    next(n for n in strided.graph.node if n.name == "conv1").attribute.append(helper.make_attribute("strides", [2, 2]))
    with pytest.raises(FreeSizeError, match=r"node 'conv1' \(Conv\).*auto_pad SAME_UPPER with stride 2"):
        read_onnx(strided)


def test_cli_names_the_node_that_needs_a_fixed_size(tmp_path):
    model = fcn("classifier")
    gap = next(n for n in model.graph.node if n.name == "gap")
    model.graph.node.remove(gap)
    next(n for n in model.graph.node if n.name == "flat").input[0] = "cat"
    path = tmp_path / "flat.onnx"
    onnx.save(model, str(path))
    one_line_error(lrptool("inspect", path), "node 'flat' (Flatten)", "--input-size")


def pictures(folder):
    rng = np.random.default_rng(4)
    folder.mkdir()
    for name, (height, width) in {"a.png": (12, 16), "b.png": (10, 6), "c.png": (12, 16)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_explain_native_size_explains_each_picture_at_its_own_size(tmp_path):
    model_path = tmp_path / "fcn.onnx"
    onnx.save(fcn("classifier"), str(model_path))
    images = pictures(tmp_path / "images")
    out = tmp_path / "out"
    result = lrptool("explain", model_path, images, "-o", out, "--native-size", "--format", "npy",
                     "--preprocess", "raw", "--scale", str(1 / 255))
    assert result.returncode == 0, result.stderr
    assert "each picture at its own size" in result.stderr
    records = {json.loads(line)["path"].rsplit("/", 1)[1]: json.loads(line) for line in result.stdout.splitlines()}
    assert list(records) == ["a.png", "b.png", "c.png"]  # the order of the input, whatever the sizes
    for name, record in records.items():
        pixels = np.asarray(Image.open(images / name), dtype=np.float64).transpose(2, 0, 1) / 255
        x = pixels[None].astype(np.float32)
        reference = Explainer(read_onnx(model_path, input_size=x.shape[2:]), compiled=False).explain(x)
        relevance = np.load(out / (name + ".npy"))
        assert relevance.shape == x.shape[1:]
        np.testing.assert_allclose(relevance, reference.relevance[0], rtol=1e-4,
                                   atol=1e-6 * np.abs(reference.relevance).max())
        assert record["target"] == int(reference.targets[0]) and record["preprocessing"]["native"] is True


def test_compile_asks_for_the_size_of_a_free_model(tmp_path):
    path = tmp_path / "fcn.onnx"
    onnx.save(fcn("classifier"), str(path))
    one_line_error(lrptool("compile", path, "-o", tmp_path / "explainer.onnx"), "input size free", "--input-size")
    result = lrptool("compile", path, "-o", tmp_path / "explainer.onnx", "--input-size", "8x12")
    assert result.returncode == 0, result.stderr
    x = even_input((8, 12), seed=6)
    session = onnxruntime.InferenceSession(str(tmp_path / "explainer.onnx"))
    relevance = session.run(["relevance"], {"x": x})[0]
    reference = Explainer(read_onnx(path, input_size=(8, 12)), compiled=False).explain(x).relevance
    np.testing.assert_allclose(relevance, reference, rtol=1e-3, atol=1e-5 * np.abs(reference).max())


def test_native_size_and_free_sizes_say_what_to_give(tmp_path):
    images = pictures(tmp_path / "images")
    free = tmp_path / "fcn.onnx"
    onnx.save(fcn("classifier"), str(free))
    one_line_error(lrptool("explain", free, images, "-o", tmp_path / "out"), "input size free", "--native-size")
    fixed = tmp_path / "fixed.onnx"
    onnx.save(graph_to_onnx(read_onnx(free, input_size=(12, 16))), str(fixed))
    one_line_error(lrptool("explain", fixed, images, "-o", tmp_path / "out", "--native-size"),
                   "--native-size", "12x16")
    # a size for every picture instead: explained at that size
    result = lrptool("explain", free, images, "-o", tmp_path / "sized", "--size", "8x8", "--format", "npy")
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "sized" / "b.png.npy").shape == (3, 8, 8)


def test_a_keras_layer_that_needs_a_fixed_size_is_named(tmp_path):
    """A strided 'same' convolution pads by the size modulo the stride: without --input-size it is refused."""
    from converters.keras_reader import read_keras

    path = MODELS / "keras_fcn_strided.h5"
    with pytest.raises(FreeSizeError, match=r"layer 'strided' \(Conv2D\).*'same' with stride 2.*--input-size"):
        read_keras(path)
    one_line_error(lrptool("inspect", path), "layer 'strided' (Conv2D)", "--input-size")
    graph = read_keras(path, input_size=(9, 11))
    assert graph.shapes[graph.nodes[0].outputs[0]] == (None, 4, 5, 6)
