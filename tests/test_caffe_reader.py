"""The Caffe reader: real BVLC/MTCNN files against OpenCV-dnn reference outputs, prototxt-only shape
inference against Caffe's arithmetic, synthetic V1/V2 caffemodels against NumPy, and user errors.

Synthetic models are written with the reader's own message classes; their expected values come
from straightforward NumPy loops written from Caffe's layer definitions, not from the IR.
"""

import glob
import json
import os

import numpy as np
import onnxruntime
import pytest
from google.protobuf import text_format

from converters import load_model
from converters import caffe_proto as cp
from converters.caffe_reader import read_caffe
from converters.onnx_writer import graph_to_onnx
from lrptool.errors import GraphError, ModelFileError, UnsupportedModelError
from lrptool.executor import run_graph

from conftest import shared_models


def caffe_dir(*parts):
    return os.path.join(shared_models(), "caffe", *parts)


def run_onnx(graph, feed):
    session = onnxruntime.InferenceSession(graph_to_onnx(graph).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {next(iter(graph.inputs)): feed})))


# ---------------------------------------------------------------- LeNet (trained, V2)

@pytest.fixture(scope="module")
def lenet():
    folder = caffe_dir("lenet")
    graph = read_caffe(os.path.join(folder, "lenet.prototxt"),
                       weights=os.path.join(folder, "lenet_iter_10000.caffemodel"))
    ref = os.path.join(folder, "_ref_opencv", "lenet_iter_10000")
    return graph, ref


def test_lenet_matches_opencv(lenet):
    graph, ref = lenet
    assert graph.inputs == {"data": (None, 1, 28, 28)}
    assert graph.outputs == ["prob"]
    x = np.load(os.path.join(ref, "input_0.npy"))
    values = run_graph(graph, x, keep_all=True)
    np.testing.assert_allclose(values["ip2"], np.load(os.path.join(ref, "output_ip2.npy")), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(values["prob"], np.load(os.path.join(ref, "output_prob.npy")), rtol=1e-4, atol=1e-6)
    # the Softmax reads ip2 directly: the logits are the IR tensor of the same name
    softmax = [n for n in graph.nodes if n.op == "Softmax"]
    assert [n.inputs for n in softmax] == [["ip2"]]
    readme = json.load(open(os.path.join(ref, "README.json")))
    assert list(values["prob"].argmax(1)) == readme["argmax"]


def test_lenet_structure_and_in_place_names(lenet):
    graph, _ = lenet
    ops = [n.op for n in graph.nodes]
    assert ops == ["Conv", "MaxPool", "Conv", "MaxPool", "Flatten", "Dense", "Relu", "Dense", "Softmax"]
    # relu1 works in place on ip1: the final value keeps the Caffe name, the earlier one is renamed
    relu = graph.nodes[6]
    assert relu.outputs == ["ip1"] and relu.inputs == ["ip1/ip1"]
    assert graph.nodes[0].params["weight"].shape == (20, 1, 5, 5)
    assert graph.nodes[5].params["weight"].shape == (500, 800)


def test_lenet_through_load_model_and_onnx(lenet):
    graph, ref = lenet
    folder = caffe_dir("lenet")
    again = load_model(os.path.join(folder, "lenet.prototxt"),
                       weights=os.path.join(folder, "lenet_iter_10000.caffemodel"))
    assert [n.op for n in again.nodes] == [n.op for n in graph.nodes]
    x = np.load(os.path.join(ref, "input_0.npy"))
    out = run_onnx(graph, x)
    np.testing.assert_allclose(out["prob"], np.load(os.path.join(ref, "output_prob.npy")), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- MTCNN (PReLU, several outputs)

@pytest.mark.parametrize("net", ["det1", "det2", "det3"])
def test_mtcnn_matches_opencv(net):
    folder = caffe_dir("mtcnn")
    graph = read_caffe(os.path.join(folder, f"{net}.prototxt"), weights=os.path.join(folder, f"{net}.caffemodel"))
    ref = os.path.join(folder, "_ref_opencv", net)
    readme = json.load(open(os.path.join(ref, "README.json")))
    assert sorted(graph.outputs) == sorted(readme["outputs"])
    assert any(n.op == "PRelu" for n in graph.nodes)
    x = np.load(os.path.join(ref, "input_0.npy"))
    values = run_graph(graph, x)
    exported = run_onnx(graph, x)
    for name, shape in readme["outputs"].items():
        expected = np.load(os.path.join(ref, f"output_{name}.npy"))
        assert values[name].shape == tuple(shape)
        np.testing.assert_allclose(values[name], expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(exported[name], expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- prototxt-only shape inference

def all_prototxts():
    root = os.environ.get("LRPTOOL_SHARED_MODELS") or os.path.join(os.path.dirname(__file__), "..", "..",
                                                                   "shared", "models")
    found = sorted(glob.glob(os.path.join(root, "caffe", "bvlc-prototxt", "**", "*.prototxt"), recursive=True))
    found += sorted(glob.glob(os.path.join(root, "caffe", "resnet20-prototxt", "*.prototxt")))
    return [os.path.relpath(p, os.path.join(root, "caffe")) for p in found] or ["<none found>"]


# data-source layers keep their shape in the database: the tests supply it
DATA_SHAPES = {"resnet20-prototxt/resnet-20_trainval.prototxt": (100, 3, 32, 32),
               "bvlc-prototxt/examples/mnist/lenet_train_test.prototxt": (100, 1, 28, 28)}

# a few layer shapes per network, from Caffe's own size arithmetic
EXPECTED = {
    "bvlc-prototxt/examples/mnist/lenet.prototxt": {"conv1": (20, 24, 24), "pool2": (50, 4, 4), "prob": (10,)},
    "bvlc-prototxt/examples/mnist/lenet_train_test.prototxt": {"ip2": (10,)},
    "bvlc-prototxt/examples/cifar10/cifar10_quick.prototxt": {"pool1": (32, 16, 16), "pool3": (64, 4, 4),
                                                             "prob": (10,)},
    "bvlc-prototxt/examples/cifar10/cifar10_full.prototxt": {"norm1": (32, 16, 16), "pool3": (64, 4, 4),
                                                            "prob": (10,)},
    "bvlc-prototxt/models/bvlc_alexnet/deploy.prototxt": {"conv1": (96, 55, 55), "pool1": (96, 27, 27),
                                                          "pool5": (256, 6, 6), "fc8": (1000,), "prob": (1000,)},
    "bvlc-prototxt/models/bvlc_reference_caffenet/deploy.prototxt": {"pool2": (256, 13, 13), "prob": (1000,)},
    "bvlc-prototxt/models/bvlc_googlenet/deploy.prototxt": {
        "conv1/7x7_s2": (64, 112, 112), "pool1/3x3_s2": (64, 56, 56), "pool2/3x3_s2": (192, 28, 28),
        "inception_3a/output": (256, 28, 28), "pool4/3x3_s2": (832, 7, 7), "pool5/7x7_s1": (1024, 1, 1),
        "loss3/classifier": (1000,), "prob": (1000,)},
    "bvlc-prototxt/examples/net_surgery/bvlc_caffenet_full_conv.prototxt": {"fc8-conv": (1000, 8, 8)},
    "resnet20-prototxt/resnet-20_trainval.prototxt": {"first_conv": (16, 32, 32)},
}


@pytest.mark.parametrize("relative", all_prototxts())
def test_prototxt_loads_without_weights(relative):
    path = caffe_dir(relative)
    if not os.path.exists(path):
        pytest.skip(f"{path} not found")
    graph = read_caffe(path, input_shape=DATA_SHAPES.get(relative))
    assert all(shape[0] is None for shape in graph.inputs.values())
    for name, shape in EXPECTED.get(relative, {}).items():
        assert graph.shapes[name] == (None,) + shape, name
    # without weights every learned parameter is zero-filled, BatchNorm variances excepted
    for node in graph.nodes:
        if node.op in ("Conv", "Dense"):
            assert not node.params["weight"].any()
    x = np.random.default_rng(0).standard_normal((1,) + next(iter(graph.inputs.values()))[1:]).astype(np.float32)
    values = run_graph(graph, x)
    assert all(np.isfinite(v).all() for v in values.values())


def test_resnet20_batchnorm_scale_eltwise():
    graph = read_caffe(caffe_dir("resnet20-prototxt", "resnet-20_trainval.prototxt"), input_shape=(128, 3, 32, 32),
                       random_weights=True)
    ops = [n.op for n in graph.nodes]
    assert ops.count("BatchNorm") == 21 and ops.count("Scale") == 21
    assert ops.count("Add") == 9
    assert graph.shapes[graph.outputs[0]] == (None, 10)
    assert any(n.params["weight"].any() for n in graph.nodes if n.op == "Conv")


def test_data_layer_needs_a_shape():
    with pytest.raises(ModelFileError, match="input_shape"):
        read_caffe(caffe_dir("resnet20-prototxt", "resnet-20_trainval.prototxt"))


def test_googlenet_random_weights_run():
    graph = read_caffe(caffe_dir("bvlc-prototxt", "models", "bvlc_googlenet", "deploy.prototxt"),
                       random_weights=True, seed=3)
    assert graph.outputs == ["prob"]
    conv = next(n for n in graph.nodes if n.op == "Conv")
    assert conv.params["weight"].shape == (64, 3, 7, 7) and conv.params["weight"].std() > 0


# ---------------------------------------------------------------- synthetic V2 model vs NumPy

RNG = np.random.default_rng(1234)


def put_blob(layer, array, legacy=False):
    blob = layer.blobs.add()
    array = np.asarray(array, np.float32)
    if legacy:
        # pre-BlobShape caffemodels pad every blob to (num, channels, height, width)
        dims = (1,) * (4 - array.ndim) + array.shape
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(array.shape)
    blob.data.extend(array.ravel().tolist())


def write_model(tmp_path, net, name="net"):
    """Split ``net`` into a prototxt (no blobs) and a caffemodel (with blobs), as Caffe does."""
    weights = tmp_path / f"{name}.caffemodel"
    weights.write_bytes(net.SerializeToString())
    text = cp.NetParameter()
    text.CopyFrom(net)
    for layer in list(text.layer) + list(text.layers):
        del layer.blobs[:]
    prototxt = tmp_path / f"{name}.prototxt"
    prototxt.write_text(text_format.MessageToString(text))
    return str(prototxt), str(weights)


def np_conv(x, w, b, stride=1, pad=0, group=1):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    y = np.zeros((n, o, oh, ow))
    og = o // group
    for g in range(group):
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * cg:(g + 1) * cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                y[:, g * og:(g + 1) * og, i, j] = np.einsum("nchw,ochw->no", patch, w[g * og:(g + 1) * og])
    return y + b.reshape(1, -1, 1, 1)


def np_deconv(x, w, b, stride, pad):
    n, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    full = np.zeros((n, o, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for i in range(h):
        for j in range(wd):
            full[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum("nc,cokl->nokl", x[:, :, i, j], w)
    out = full[:, :, pad:full.shape[2] - pad, pad:full.shape[3] - pad]
    return out + b.reshape(1, -1, 1, 1)


def np_caffe_pool(x, k, stride, pad, average):
    """Caffe's pooling loops: ceil-rounded output, last window clipped to the padded extent."""
    n, c, h, w = x.shape
    oh = int(np.ceil((h + 2 * pad - k) / stride)) + 1
    ow = int(np.ceil((w + 2 * pad - k) / stride)) + 1
    if pad:
        if (oh - 1) * stride >= h + pad:
            oh -= 1
        if (ow - 1) * stride >= w + pad:
            ow -= 1
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * stride - pad, j * stride - pad
            he, we = min(hs + k, h + pad), min(ws + k, w + pad)
            size = (he - hs) * (we - ws)
            hs0, ws0, he0, we0 = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[:, :, hs0:he0, ws0:we0]
            y[:, :, i, j] = window.sum((2, 3)) / size if average else window.max((2, 3))
    return y


def add_layer(net, name, kind, bottoms, tops, **params):
    layer = net.layer.add(name=name, type=kind)
    layer.bottom.extend(bottoms)
    layer.top.extend(tops)
    for field, values in params.items():
        sub = getattr(layer, field)
        for key, value in values.items():
            if isinstance(value, (list, tuple)):
                getattr(sub, key).extend(value)
            else:
                setattr(sub, key, value)
    return layer


def test_synthetic_v2_model(tmp_path):
    net = cp.NetParameter(name="synthetic")
    data = add_layer(net, "data", "Input", [], ["data"])
    data.input_param.shape.add().dim.extend([2, 4, 7, 7])
    w1, b1 = RNG.standard_normal((6, 2, 3, 3)), RNG.standard_normal(6)
    put_blob(add_layer(net, "conv1", "Convolution", ["data"], ["conv1"],
                       convolution_param=dict(num_output=6, kernel_size=[3], pad=[1], group=2)), w1)
    put_blob(net.layer[-1], b1)
    mean, var, s = RNG.standard_normal(6), RNG.uniform(0.5, 2, 6), 4.0
    bn = add_layer(net, "bn1", "BatchNorm", ["conv1"], ["conv1"], batch_norm_param=dict(eps=1e-3))
    for blob in (mean * s, var * s, [s]):
        put_blob(bn, blob)
    gamma, beta = RNG.standard_normal(6), RNG.standard_normal(6)
    sc = add_layer(net, "sc1", "Scale", ["conv1"], ["conv1"], scale_param=dict(bias_term=True))
    put_blob(sc, gamma)
    put_blob(sc, beta)
    add_layer(net, "relu1", "ReLU", ["conv1"], ["conv1"], relu_param=dict(negative_slope=0.1))
    add_layer(net, "slice", "Slice", ["conv1"], ["a", "b"], slice_param=dict(axis=1, slice_point=[3]))
    add_layer(net, "sum", "Eltwise", ["a", "b"], ["sum"], eltwise_param=dict(operation=1, coeff=[1.0, -0.5]))
    add_layer(net, "prod", "Eltwise", ["a", "b", "sum"], ["prod"], eltwise_param=dict(operation=0))
    add_layer(net, "pow", "Power", ["prod"], ["pow"], power_param=dict(scale=2.0, shift=0.5))
    add_layer(net, "pool", "Pooling", ["pow"], ["pool"], pooling_param=dict(pool=1, kernel_size=3, stride=2, pad=1))
    wd, bd = RNG.standard_normal((3, 2, 3, 3)), RNG.standard_normal(2)
    dec = add_layer(net, "up", "Deconvolution", ["pool"], ["up"],
                    convolution_param=dict(num_output=2, kernel_size=[3], stride=[2], pad=[1]))
    put_blob(dec, wd)
    put_blob(dec, bd)
    add_layer(net, "cat", "Concat", ["up", "up"], ["cat"], concat_param=dict(axis=1))
    add_layer(net, "mpool", "Pooling", ["cat"], ["mpool"], pooling_param=dict(pool=0, kernel_size=2, stride=2))
    wf, bf = RNG.standard_normal((5, 4 * 4 * 4)), RNG.standard_normal(5)
    fc = add_layer(net, "fc", "InnerProduct", ["mpool"], ["fc"], inner_product_param=dict(num_output=5))
    put_blob(fc, wf)
    put_blob(fc, bf)
    add_layer(net, "drop", "Dropout", ["fc"], ["fc"])
    add_layer(net, "prob", "Softmax", ["fc"], ["prob"])
    add_layer(net, "loss", "SoftmaxWithLoss", ["fc", "label"], ["loss"])
    prototxt, weights = write_model(tmp_path, net)

    graph = read_caffe(prototxt, weights=weights)
    x = RNG.standard_normal((2, 4, 7, 7)).astype(np.float32)
    got = run_graph(graph, x, keep_all=True)

    y = np_conv(x.astype(np.float64), w1, b1, pad=1, group=2)
    y = (y - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + 1e-3)
    y = y * gamma.reshape(1, -1, 1, 1) + beta.reshape(1, -1, 1, 1)
    y = np.where(y > 0, y, 0.1 * y)
    np.testing.assert_allclose(got["conv1"], y, rtol=1e-4, atol=1e-4)
    a, b = y[:, :3], y[:, 3:]
    total = a - 0.5 * b
    np.testing.assert_allclose(got["sum"], total, rtol=1e-4, atol=1e-4)
    prod = a * b * total
    powered = 2.0 * prod + 0.5
    pooled = np_caffe_pool(powered, 3, 2, 1, average=True)
    assert pooled.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(got["pool"], pooled, rtol=1e-4, atol=1e-4)
    up = np_deconv(pooled, wd, bd, 2, 1)
    assert up.shape == (2, 2, 7, 7)
    np.testing.assert_allclose(got["up"], up, rtol=1e-4, atol=1e-4)
    cat = np.concatenate([up, up], 1)
    mp = np_caffe_pool(cat, 2, 2, 0, average=False)
    assert mp.shape == (2, 4, 4, 4)  # ceil mode: 7 → 4
    fc_out = mp.reshape(2, -1) @ wf.T + bf
    np.testing.assert_allclose(got["fc"], fc_out, rtol=1e-4, atol=1e-3)
    e = np.exp(fc_out - fc_out.max(1, keepdims=True))
    np.testing.assert_allclose(got["prob"], e / e.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert graph.outputs == ["prob"]
    # the ONNX export of the same graph agrees
    np.testing.assert_allclose(run_onnx(graph, x)["prob"], got["prob"], rtol=1e-4, atol=1e-6)


def np_lrn(x, size, alpha, beta, k, within):
    half = (size - 1) // 2
    out = np.empty_like(x)
    c, h, w = x.shape[1:]
    if within:
        padded = np.pad(np.square(x), ((0, 0), (0, 0), (half, half), (half, half)))
        for i in range(h):
            for j in range(w):
                total = padded[:, :, i:i + size, j:j + size].sum((2, 3))
                out[:, :, i, j] = x[:, :, i, j] * (1 + alpha / size ** 2 * total) ** -beta
        return out
    padded = np.pad(np.square(x), ((0, 0), (half, half), (0, 0), (0, 0)))
    for ch in range(c):
        total = padded[:, ch:ch + size].sum(1)
        out[:, ch] = x[:, ch] / (k + alpha / size * total) ** beta
    return out


@pytest.mark.parametrize("within", [False, True])
def test_lrn(tmp_path, within):
    net = cp.NetParameter(name="lrn")
    net.input.append("data")
    net.input_dim.extend([1, 7, 6, 5])
    add_layer(net, "norm", "LRN", ["data"], ["norm"],
              lrn_param=dict(local_size=3, alpha=0.5, beta=0.75, k=2.0, norm_region=int(within)))
    prototxt, _ = write_model(tmp_path, net)
    graph = read_caffe(prototxt)
    x = RNG.standard_normal((2, 7, 6, 5)).astype(np.float32)
    expected = np_lrn(x.astype(np.float64), 3, 0.5, 0.75, 2.0, within)
    np.testing.assert_allclose(run_graph(graph, x)["norm"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run_onnx(graph, x)["norm"], expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- synthetic V1 model with legacy blobs

def test_synthetic_v1_legacy_blobs(tmp_path):
    net = cp.NetParameter(name="v1net")
    net.input.append("data")
    net.input_dim.extend([1, 3, 8, 8])
    V1 = cp.V1LayerParameter

    def v1(name, kind, bottoms, tops):
        layer = net.layers.add(name=name, type=V1.LayerType.Value(kind))
        layer.bottom.extend(bottoms)
        layer.top.extend(tops)
        return layer

    w, b = RNG.standard_normal((4, 3, 3, 3)), RNG.standard_normal(4)
    conv = v1("conv", "CONVOLUTION", ["data"], ["conv"])
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    conv.convolution_param.stride.append(2)
    put_blob(conv, w, legacy=True)
    put_blob(conv, b, legacy=True)  # stored as (1, 1, 1, 4)
    v1("relu", "RELU", ["conv"], ["conv"])
    wf, bf = RNG.standard_normal((3, 4 * 3 * 3)), RNG.standard_normal(3)
    fc = v1("fc", "INNER_PRODUCT", ["conv"], ["fc"])
    fc.inner_product_param.num_output = 3
    put_blob(fc, wf, legacy=True)  # stored as (1, 1, 3, 36)
    put_blob(fc, bf, legacy=True)
    v1("sig", "SIGMOID", ["fc"], ["sig"])
    prototxt, weights = write_model(tmp_path, net, "v1")
    assert net.layers[2].blobs[0].height == 3 and not net.layers[2].blobs[0].HasField("shape")

    graph = read_caffe(prototxt, weights=weights)
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = np.maximum(np_conv(x.astype(np.float64), w, b, stride=2), 0)
    expected = 1 / (1 + np.exp(-(y.reshape(2, -1) @ wf.T + bf)))
    np.testing.assert_allclose(run_graph(graph, x)["sig"], expected, rtol=1e-4, atol=1e-6)


def test_phase_filtering_keeps_test_layers():
    graph = read_caffe(caffe_dir("bvlc-prototxt", "examples", "mnist", "lenet_train_test.prototxt"),
                       input_shape={"data": (64, 1, 28, 28)})
    assert list(graph.inputs) == ["data"]
    assert graph.outputs == ["ip2"]  # accuracy and loss layers dropped
    assert not any(n.op == "Softmax" for n in graph.nodes)


# ---------------------------------------------------------------- user errors

def test_truncated_caffemodel(tmp_path):
    folder = caffe_dir("lenet")
    data = open(os.path.join(folder, "lenet_iter_10000.caffemodel"), "rb").read()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        read_caffe(os.path.join(folder, "lenet.prototxt"), weights=str(cut))
    with pytest.raises(ModelFileError, match="no such file"):
        read_caffe(os.path.join(folder, "lenet.prototxt"), weights=str(tmp_path / "missing.caffemodel"))


def test_prototxt_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\ninput: "data"\nlayer {\n  name: "c"\n  type: "ReLU"\n  bottom "data"\n}\n')
    with pytest.raises(ModelFileError, match="line 6"):
        read_caffe(str(bad))
    unclosed = tmp_path / "unclosed.prototxt"
    unclosed.write_text('layer {\n  name: "c"\n')
    with pytest.raises(ModelFileError, match="syntax error"):
        read_caffe(str(unclosed))


def test_unsupported_layers_are_listed_together(tmp_path):
    net = cp.NetParameter(name="odd")
    net.input.append("data")
    net.input_dim.extend([1, 3, 4, 4])
    add_layer(net, "bnll", "BNLL", ["data"], ["bnll"])
    add_layer(net, "max", "Eltwise", ["data", "data"], ["max"], eltwise_param=dict(operation=2, coeff=[1.0, 2.0]))
    add_layer(net, "after", "ReLU", ["bnll"], ["after"])
    add_layer(net, "weird", "MyCustomLayer", ["data"], ["weird"])
    prototxt, _ = write_model(tmp_path, net)
    with pytest.raises(UnsupportedModelError) as caught:
        read_caffe(prototxt)
    names = [entry[:2] for entry in caught.value.nodes]
    assert names == [("bnll", "BNLL"), ("max", "Eltwise"), ("weird", "MyCustomLayer")]
    assert "coeff" in str(caught.value)


def test_absval_eltwise_max_and_power_match_numpy(tmp_path):
    net = cp.NetParameter(name="elementwise")
    net.input.append("data")
    net.input_dim.extend([1, 2, 3, 3])
    add_layer(net, "abs", "AbsVal", ["data"], ["abs"])
    add_layer(net, "max", "Eltwise", ["data", "abs"], ["max"], eltwise_param=dict(operation=2))
    add_layer(net, "power", "Power", ["max"], ["power"], power_param=dict(power=2.0, scale=0.5, shift=1.0))
    prototxt, _ = write_model(tmp_path, net)
    graph = read_caffe(prototxt)
    x = np.random.default_rng(4).normal(size=(2, 2, 3, 3))
    expected = (1.0 + 0.5 * np.maximum(x, np.abs(x))) ** 2
    np.testing.assert_allclose(run_graph(graph, x, dtype=np.float64)[graph.outputs[0]], expected, rtol=1e-12)


def small_conv_net():
    net = cp.NetParameter(name="small")
    net.input.append("data")
    net.input_shape.add().dim.extend([1, 2, 5, 5])
    conv = add_layer(net, "conv", "Convolution", ["data"], ["conv"],
                     convolution_param=dict(num_output=3, kernel_size=[3]))
    return net, conv


def test_weight_shape_mismatch_names_the_layer(tmp_path):
    net, conv = small_conv_net()
    put_blob(conv, np.zeros((3, 2, 2, 2)))
    put_blob(conv, np.zeros(3))
    prototxt, weights = write_model(tmp_path, net)
    with pytest.raises(GraphError, match=r"'conv'.*\(3, 2, 2, 2\).*\(3, 2, 3, 3\)"):
        read_caffe(prototxt, weights=weights)


def test_layer_missing_from_caffemodel(tmp_path):
    net, conv = small_conv_net()
    put_blob(conv, np.zeros((3, 2, 3, 3)))
    put_blob(conv, np.zeros(3))
    prototxt, weights = write_model(tmp_path, net)
    net.layer[0].name = "renamed"
    (tmp_path / "other.caffemodel").write_bytes(net.SerializeToString())
    with pytest.raises(GraphError, match="'conv'.*not found in the caffemodel"):
        read_caffe(prototxt, weights=str(tmp_path / "other.caffemodel"))
    assert read_caffe(prototxt, weights=weights).shapes["conv"] == (None, 3, 3, 3)


def test_argmax_refused_and_outputs_follow_caffe(tmp_path):
    net = cp.NetParameter(name="tail")
    net.input.append("data")
    net.input_dim.extend([1, 3, 4, 4])
    add_layer(net, "relu", "ReLU", ["data"], ["r"])
    add_layer(net, "same", "Power", ["r"], ["same"])  # identity: power 1, scale 1, shift 0
    add_layer(net, "split", "Slice", ["same"], ["a", "b", "c"], slice_param=dict(axis=1))
    add_layer(net, "relu", "ReLU", ["a"], ["a2"])  # a layer name used twice
    prototxt, _ = write_model(tmp_path, net)
    graph = read_caffe(prototxt)
    # unread tops are outputs, as in Caffe
    assert graph.outputs == ["b", "c", "a2"]
    assert graph.shapes["b"] == (None, 1, 4, 4)
    add_layer(net, "label", "ArgMax", ["a2"], ["label"])
    prototxt, _ = write_model(tmp_path, net, "argmax")
    with pytest.raises(UnsupportedModelError, match="label"):
        read_caffe(prototxt)


def test_caffemodel_layer_without_blobs(tmp_path):
    net, conv = small_conv_net()
    prototxt, weights = write_model(tmp_path, net)
    with pytest.raises(GraphError, match="'conv'.*no blobs"):
        read_caffe(prototxt, weights=weights)
    # without a caffemodel the same prototxt loads zero-filled
    graph = read_caffe(prototxt)
    assert not graph.nodes[0].params["weight"].any()


def test_synthetic_data_movement_layers(tmp_path):
    net = cp.NetParameter(name="moves")
    net.input.append("data")
    net.input_dim.extend([1, 6, 4, 4])
    bias = RNG.standard_normal(6)
    put_blob(add_layer(net, "bias", "Bias", ["data"], ["bias"]), bias)
    add_layer(net, "clip", "Clip", ["bias"], ["clip"], clip_param={"min": -0.5, "max": 0.5})
    shape = add_layer(net, "reshape", "Reshape", ["clip"], ["reshaped"])
    shape.reshape_param.shape.dim.extend([0, 3, 2, -1])
    add_layer(net, "flat", "Flatten", ["reshaped"], ["flat"], flatten_param=dict(axis=2))
    add_layer(net, "soft", "Softmax", ["flat"], ["soft"], softmax_param=dict(axis=2))
    add_layer(net, "tanh", "TanH", ["soft"], ["tanh"])
    prototxt, weights = write_model(tmp_path, net)
    graph = read_caffe(prototxt, weights=weights)
    x = RNG.standard_normal((3, 6, 4, 4)).astype(np.float32)
    y = np.clip(x + bias.reshape(1, -1, 1, 1), -0.5, 0.5).reshape(3, 3, 2 * 16)
    assert graph.shapes["flat"] == (None, 3, 32)
    e = np.exp(y - y.max(2, keepdims=True))
    np.testing.assert_allclose(run_graph(graph, x)["tanh"], np.tanh(e / e.sum(2, keepdims=True)), rtol=1e-5, atol=1e-6)


def test_not_a_network_prototxt(tmp_path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "train_val.prototxt"\nbase_lr: 0.01\nmax_iter: 100\n')
    with pytest.raises(ModelFileError, match="no layers"):
        read_caffe(str(solver))
    with pytest.raises(ModelFileError, match="no such file"):
        read_caffe(str(tmp_path / "absent.prototxt"))


def test_input_shape_overrides_a_fully_convolutional_net():
    folder = caffe_dir("mtcnn")
    graph = read_caffe(os.path.join(folder, "det1.prototxt"), weights=os.path.join(folder, "det1.caffemodel"),
                       input_shape={"data": (1, 3, 24, 30)})
    assert graph.shapes["prob1"] == (None, 2, 7, 10) and graph.shapes["conv4-2"] == (None, 4, 7, 10)
    ref = os.path.join(folder, "_ref_opencv", "det1")
    x = np.load(os.path.join(ref, "input_0.npy"))
    big = np.zeros((1, 3, 24, 30), np.float32)
    big[:, :, :12, :12] = x
    # the top-left window sees exactly the 12×12 reference input
    np.testing.assert_allclose(run_graph(graph, big)["prob1"][:, :, 0, 0],
                               np.load(os.path.join(ref, "output_prob1.npy"))[:, :, 0, 0], rtol=1e-4, atol=1e-5)


def test_scale_by_a_second_bottom_is_a_gate(tmp_path):
    """Squeeze-excitation as Caffe writes it: a sigmoid gate flattened to (N, C) scaling the features from axis 0."""
    net = cp.NetParameter(name="se")
    net.input.append("data")
    net.input_dim.extend([1, 3, 4, 4])
    add_layer(net, "pool", "Pooling", ["data"], ["pool"], pooling_param=dict(pool=1, global_pooling=True))
    add_layer(net, "gate", "Sigmoid", ["pool"], ["gate"])
    add_layer(net, "flat", "Flatten", ["gate"], ["flat"])
    add_layer(net, "scale", "Scale", ["data", "flat"], ["out"], scale_param=dict(axis=0))
    prototxt, _ = write_model(tmp_path, net)
    graph = read_caffe(prototxt)
    x = np.random.default_rng(5).normal(size=(2, 3, 4, 4))
    gate = 1 / (1 + np.exp(-x.mean(axis=(2, 3), keepdims=True)))
    np.testing.assert_allclose(run_graph(graph, x, dtype=np.float64)[graph.outputs[0]], x * gate, rtol=1e-12)
    from lrptool.lrp.engine import routing_description
    mul = next(n for n in graph.nodes if n.op == "Mul")
    assert routing_description(mul, {}, graph.producers()) == "all to 'data'"


def test_inner_product_from_axis_two_keeps_the_leading_axes(tmp_path):
    net = cp.NetParameter(name="ip_axis")
    net.input.append("data")
    net.input_dim.extend([1, 3, 4, 5])
    add_layer(net, "ip", "InnerProduct", ["data"], ["ip"], inner_product_param=dict(num_output=2, axis=2))
    weights = np.random.default_rng(7).normal(size=(2, 20)).astype(np.float32)
    bias = np.array([0.5, -1.0], np.float32)
    model = cp.NetParameter(name="ip_axis")
    layer = model.layer.add(name="ip", type="InnerProduct")
    for array in (weights, bias):
        blob = layer.blobs.add()
        blob.shape.dim.extend(array.shape)
        blob.data.extend(array.reshape(-1).tolist())
    prototxt, _ = write_model(tmp_path, net)
    caffemodel = tmp_path / "ip.caffemodel"
    caffemodel.write_bytes(model.SerializeToString())
    graph = read_caffe(prototxt, weights=str(caffemodel))
    x = np.random.default_rng(8).normal(size=(2, 3, 4, 5))
    expected = x.reshape(2, 3, 20) @ weights.T.astype(np.float64) + bias
    np.testing.assert_allclose(run_graph(graph, x, dtype=np.float64)[graph.outputs[0]], expected, rtol=1e-6)


def test_made_up_names_never_take_a_later_layers_own_name(tmp_path):
    # relu 'a' works in place on blob 'a'; the next layer is really called 'a_2' with top 'a_2'
    prototxt = tmp_path / "names.prototxt"
    prototxt.write_text('input: "data" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }\n'
                        'layer { name: "a" type: "Convolution" bottom: "data" top: "a" '
                        'convolution_param { num_output: 2 kernel_size: 1 } }\n'
                        'layer { name: "a" type: "ReLU" bottom: "a" top: "a" }\n'
                        'layer { name: "a_2" type: "Convolution" bottom: "a" top: "a_2" '
                        'convolution_param { num_output: 2 kernel_size: 1 } }\n')
    graph = read_caffe(str(prototxt), random_weights=True)
    assert [n.name for n in graph.nodes] == ["a", "a#2", "a_2"]
    relu, last = graph.nodes[1], graph.nodes[2]
    assert relu.outputs == ["a"] and last.inputs == ["a"] and last.outputs == ["a_2"]
    assert graph.outputs == ["a_2"]
