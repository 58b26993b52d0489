"""The exporter matrix: the test architectures as real exporters write them, each loaded, run against
onnxruntime on the same file, and explained — the LRP result must equal that of the same network
from the other exporter.

* PyTorch (tests/exporter_models/make_torch_exports.py): the legacy TorchScript exporter (opset 17),
  the dynamo exporter raw at opset 18 (``Reshape`` with ``allowzero``, ``ReduceMean`` with axes as an
  input, ``CastLike``/``Expand`` zero biases, the batch size from ``Shape``) and optimised at opset 21;
  and the legacy file with its batch declared ``dim_value: -1`` (PaddlePaddle's habit).
  Reference for LRP: the legacy export, explained eagerly in float64.
* tf2onnx from Keras models (tests/exporter_models/make_tf2onnx_exports.py, NHWC graphs, as tf2onnx
  writes them and with its optimisers off: a Transpose pair around every layer, which the reader folds).
  References: Keras' own predict for the outputs; for LRP, the Keras ``.h5`` the ONNX file was made
  from, read by lrptool's Keras reader.
* PaddlePaddle (tests/exporter_models/make_paddle_export.py, paddle2onnx): Paddle's own outputs, and the
  gradient against central differences through onnxruntime; as exported and with a dim_value -1 batch.
"""

import pathlib

import numpy as np
import onnx
import onnxruntime
import pytest

from converters import load_model
from converters.onnx_reader import read_onnx
from lrptool.executor import run_graph
from lrptool.lrp import Explainer

MODELS = pathlib.Path(__file__).resolve().parent / "exporter_models"
TORCH_NETS = {"mnist_cnn": (1, 28, 28), "vgg_bn": (3, 32, 32), "resnet": (3, 32, 32), "avgpool_net": (3, 20, 20),
              "mobilenet": (3, 32, 32), "conv1d": (4, 50)}
TORCH_EXPORTERS = ["legacy", "dynamo18", "dynamo21", "legacy-batch-1"]
PRESETS = ["epsilon-plus-flat", "epsilon-alpha2-beta1"]


def batch_minus_one(model):
    """The model with its batch declared as PaddlePaddle declares it: dim_value -1."""
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = -1
    return model


def torch_export(net, exporter):
    if exporter == "legacy-batch-1":
        return batch_minus_one(onnx.load(str(MODELS / f"{net}.legacy.onnx")))
    return onnx.load(str(MODELS / f"{net}.{exporter}.onnx"))


def inputs_for(shape, seed=0, batch=3):
    return np.random.default_rng(seed).normal(0.0, 1.0, (batch,) + shape).astype(np.float32)


def onnxruntime_outputs(model, x):
    session = onnxruntime.InferenceSession(model.SerializeToString())
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def eager_lrp(graph, x, preset):
    explainer = Explainer(graph, preset, dtype=np.float64, compiled=False, quiet=True)
    return explainer.explain(x.astype(np.float64))


@pytest.fixture(scope="module")
def torch_references():
    """The legacy export of every network, explained eagerly in float64 with every preset."""
    references = {}
    for net, shape in TORCH_NETS.items():
        graph = read_onnx(MODELS / f"{net}.legacy.onnx")
        x = inputs_for(shape)
        references[net] = {preset: eager_lrp(graph, x, preset) for preset in PRESETS}
    return references


def assert_same_relevance(got, reference):
    np.testing.assert_array_equal(got.targets, reference.targets)
    scale = np.abs(reference.relevance).max()
    # the optimised dynamo graph folds BatchNorm into the convolutions in float32: weights differ by rounding
    np.testing.assert_allclose(got.relevance, reference.relevance, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("exporter", TORCH_EXPORTERS)
@pytest.mark.parametrize("net", sorted(TORCH_NETS))
def test_pytorch_export_loads_matches_onnxruntime_and_explains_alike(net, exporter, torch_references):
    model = torch_export(net, exporter)
    graph = read_onnx(model)
    assert graph.batch_free
    x = inputs_for(TORCH_NETS[net])
    np.testing.assert_allclose(run_graph(graph, x)["y"], onnxruntime_outputs(model, x), rtol=1e-5, atol=1e-5)
    for preset in PRESETS:
        assert_same_relevance(eager_lrp(graph, x, preset), torch_references[net][preset])
    # the compiled explainer (float32) takes every exporter's graph too
    compiled = Explainer(graph, PRESETS[0], quiet=True)
    assert compiled.compiled is not None
    reference = torch_references[net][PRESETS[0]]
    got = compiled.explain(x)
    np.testing.assert_array_equal(got.targets, reference.targets)
    np.testing.assert_allclose(got.relevance, reference.relevance, rtol=2e-3,
                               atol=1e-4 * np.abs(reference.relevance).max())


@pytest.mark.parametrize("net", ["resnet", "mobilenet"])
def test_dynamo_patterns_reach_the_ir_as_plain_operators(net):
    """The raw dynamo graph's shape arithmetic and zero biases fold away: the IR holds the operators of the
    legacy export (BatchNorm included; every Reshape or Flatten ends up explicit)."""
    raw = torch_export(net, "dynamo18")
    kinds = {node.op_type for node in raw.graph.node}
    assert {"CastLike", "Expand", "Shape", "ReduceMean"} <= kinds
    assert any(a.name == "allowzero" and a.i == 1 for node in raw.graph.node for a in node.attribute)
    ops = sorted(node.op for node in read_onnx(raw).nodes)
    legacy = sorted(node.op for node in read_onnx(torch_export(net, "legacy")).nodes)
    assert [op for op in ops if op not in ("Reshape", "Flatten", "ReduceMean", "GlobalAveragePool")] == \
        [op for op in legacy if op not in ("Reshape", "Flatten", "ReduceMean", "GlobalAveragePool")]


def test_the_installed_dynamo_exporter_output_loads_and_matches_onnxruntime():
    """A live export at opset 20 with the installed torch and onnxscript (``make reference-deps``)."""
    torch = pytest.importorskip("torch", reason="needs torch (make reference-deps)")
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript (make reference-deps)")
    from torch_nets import mobilenet, randomized

    model, shape = randomized(mobilenet, seed=7, dtype=torch.float32)
    x = inputs_for(shape, seed=5)
    program = torch.onnx.export(model, (torch.from_numpy(x),), dynamo=True, opset_version=20, verbose=False,
                                input_names=["x"], output_names=["y"],
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    proto = program.model_proto
    graph = read_onnx(proto)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnxruntime_outputs(proto, x), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run_graph(graph, x)["y"], onnxruntime_outputs(proto, x), rtol=1e-5, atol=1e-5)


KERAS_MODELS = ["keras_cnn", "keras_residual", "keras_fcn"]
TF2ONNX_VARIANTS = ["tf2onnx", "tf2onnx-raw"]


@pytest.fixture(scope="module")
def keras_references():
    """Each Keras model read from its .h5 by lrptool's Keras reader (NCHW input) and explained in float64."""
    references = {}
    for name in KERAS_MODELS:
        x = np.load(MODELS / f"{name}.input.npy")
        graph = load_model(MODELS / f"{name}.h5", input_size=x.shape[1:3] if name == "keras_fcn" else None)
        references[name] = {preset: eager_lrp(graph, x.transpose(0, 3, 1, 2), preset) for preset in PRESETS}
    return references


@pytest.mark.parametrize("variant", TF2ONNX_VARIANTS)
@pytest.mark.parametrize("name", KERAS_MODELS)
def test_tf2onnx_export_loads_matches_keras_and_explains_as_the_h5(name, variant, keras_references):
    model = onnx.load(str(MODELS / f"{name}.{variant}.onnx"))
    graph = read_onnx(model)
    x, keras_output = np.load(MODELS / f"{name}.input.npy"), np.load(MODELS / f"{name}.output.npy")
    output = run_graph(graph, x)[graph.outputs[0]]
    np.testing.assert_allclose(output, onnxruntime_outputs(model, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(output, keras_output, rtol=1e-5, atol=1e-5)
    # the layout Transposes around every layer are folded: one at the input, one before the flatten or mean
    assert sum(node.op == "Transpose" for node in graph.nodes) <= 2
    if variant == "tf2onnx-raw":
        assert sum(node.op_type == "Transpose" for node in model.graph.node) >= 8
    for preset in PRESETS:
        got = eager_lrp(graph, x, preset)
        reference = keras_references[name][preset]
        np.testing.assert_array_equal(got.targets, reference.targets)
        np.testing.assert_allclose(got.relevance.transpose(0, 3, 1, 2), reference.relevance, rtol=1e-5,
                                   atol=1e-7 * np.abs(reference.relevance).max())


def test_a_fully_convolutional_tf2onnx_export_keeps_its_free_sizes():
    """The Keras model takes any height and width, and so does its tf2onnx export read by lrptool."""
    model = onnx.load(str(MODELS / "keras_fcn.tf2onnx-raw.onnx"))
    graph = read_onnx(model)
    assert next(iter(graph.inputs.values())) == (None, None, None, 3)
    explainer = Explainer(graph, "epsilon-plus-flat", quiet=True)
    for size in [(10, 14), (17, 9)]:
        x = inputs_for(size + (3,), seed=sum(size))
        np.testing.assert_allclose(run_graph(graph, x)[graph.outputs[0]], onnxruntime_outputs(model, x),
                                   rtol=1e-5, atol=1e-6)
        keras = load_model(MODELS / "keras_fcn.h5", input_size=size)
        reference = Explainer(keras, "epsilon-plus-flat", compiled=False, quiet=True).explain(x.transpose(0, 3, 1, 2))
        got = explainer.explain(x)
        np.testing.assert_allclose(got.relevance.transpose(0, 3, 1, 2), reference.relevance, rtol=1e-3,
                                   atol=1e-4 * np.abs(reference.relevance).max())


@pytest.mark.parametrize("batch", ["as-exported", "dim_value-1"])
def test_paddle_export_loads_matches_paddle_and_its_gradient_is_onnxruntimes(batch):
    """A real PaddlePaddle export (tests/exporter_models/make_paddle_export.py: paddle2onnx, the flatten as
    Shape → Slice → Concat → Reshape), as written and with the batch declared dim_value -1."""
    model = onnx.load(str(MODELS / "paddle_cnn.onnx"))
    if batch == "dim_value-1":
        model = batch_minus_one(model)
    graph = read_onnx(model)
    assert graph.batch_free
    x, paddle_output = np.load(MODELS / "paddle_cnn.input.npy"), np.load(MODELS / "paddle_cnn.output.npy")
    output = run_graph(graph, x)[graph.outputs[0]]
    np.testing.assert_allclose(output, paddle_output, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(output, onnxruntime_outputs(model, x), rtol=1e-5, atol=1e-5)
    # the gradient of the explained score against central differences through onnxruntime (float64 steps
    # on a float32 model: a few pixels, loose tolerance)
    explanation = eager_lrp(graph, x, "gradient")
    rng = np.random.default_rng(9)
    for _ in range(6):
        sample, pixel = rng.integers(len(x)), tuple(rng.integers(0, s) for s in x.shape[1:])
        target, step = explanation.targets[sample], 1e-2
        plus, minus = x[sample:sample + 1].copy(), x[sample:sample + 1].copy()
        plus[(0,) + pixel] += step
        minus[(0,) + pixel] -= step
        numeric = (onnxruntime_outputs(model, plus)[0, target] - onnxruntime_outputs(model, minus)[0, target]) / (2 * step)
        assert explanation.relevance[(sample,) + pixel] == pytest.approx(numeric, rel=2e-2, abs=2e-3)


def test_explain_feeds_a_channels_last_export_channels_first(tmp_path):
    """`lrptool explain` on a tf2onnx export (input N×H×W×C, transposed first): the pictures go in
    channels-first, the scores are onnxruntime's on the channels-last picture, and the relevance is the
    channels-last graph's own, transposed."""
    import json
    import subprocess
    import sys

    from PIL import Image

    from lrptool.images import load_picture, preprocessing_for, to_tensor

    path = MODELS / "keras_cnn.tf2onnx.onnx"
    rng = np.random.default_rng(8)
    (tmp_path / "in").mkdir()
    for index in range(3):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8), "RGB").save(tmp_path / "in" / f"p{index}.png")
    done = subprocess.run([sys.executable, "-m", "lrptool.cli", "explain", str(path), str(tmp_path / "in"), "-o",
                           str(tmp_path / "out"), "--format", "npy", "--preset", "epsilon"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "channels-last" in done.stderr and "Traceback" not in done.stderr
    graph = read_onnx(str(path))
    (name, shape), = graph.inputs.items()
    assert shape[1:] == (16, 16, 3)
    turned = graph.channels_first()
    preprocessing = preprocessing_for(turned.inputs[next(iter(turned.inputs))])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 3
    for record in records:
        chw = to_tensor(load_picture(record["path"], preprocessing), preprocessing)
        hwc = chw.transpose(1, 2, 0)[None].astype(np.float32)
        (logits,) = session.run(None, {session.get_inputs()[0].name: hwc})
        assert record["target"] == int(np.argmax(logits[0]))
        assert record["score"] == pytest.approx(float(logits[0].max()), rel=1e-5)
        exact = Explainer(graph, "epsilon", dtype=np.float64, compiled=False, quiet=True).explain(
            hwc.astype(np.float64), target=[record["target"]])
        relevance = np.load(tmp_path / "out" / (pathlib.Path(record["path"]).name + ".npy"))
        assert relevance.shape == chw.shape
        np.testing.assert_allclose(relevance, exact.relevance[0].transpose(2, 0, 1), rtol=1e-4,
                                   atol=1e-6 * np.abs(exact.relevance).max())


def test_only_a_leading_channels_last_transpose_is_turned():
    graph = read_onnx(str(MODELS / "keras_cnn.tf2onnx.onnx"))
    assert graph.channels_first() is not None
    assert graph.channels_first().channels_first() is None          # already channels-first
    legacy = read_onnx(str(MODELS / "avgpool_net.legacy.onnx"))
    assert legacy.channels_first() is None
