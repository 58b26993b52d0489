"""The trained MNIST models under ../shared/models/onnx reproduce their reference logits."""

import glob

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from converters import load_model
from converters.onnx_writer import graph_to_onnx
from lrptool.executor import run_graph

from conftest import shared_models


def zoo_cases():
    root = shared_models() / "onnx"
    for path in sorted(glob.glob(str(root / "mnist-zoo-opset1" / "test_data_*.npz"))):
        data = np.load(path)
        yield data["inputs"].reshape(1, 1, 28, 28), data["outputs"]


@pytest.mark.parametrize("model", ["mnist-zoo-opset8/mnist.onnx", "mnist-zoo-opset1/model.onnx"])
def test_zoo_mnist_logits(model):
    graph = load_model(shared_models() / "onnx" / model)
    cases = list(zoo_cases())
    assert len(cases) == 3
    batch = np.concatenate([x for x, _ in cases])
    expected = np.concatenate([y for _, y in cases])
    (logits,) = run_graph(graph, batch).values()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    # float64 on request gives the same logits and keeps the dtype
    (logits64,) = run_graph(graph, batch, dtype=np.float64).values()
    assert logits64.dtype == np.float64
    np.testing.assert_allclose(logits64, expected, rtol=1e-4, atol=1e-4)


def test_onnx2c_mnist_reference_outputs():
    root = shared_models() / "onnx" / "mnist-onnx2c"
    graph = load_model(root / "mnist.simplified.onnx")
    folders = sorted(glob.glob(str(root / "_ref_onnxruntime" / "digit_*")))
    assert len(folders) == 4
    batch = np.concatenate([np.load(f"{f}/input_0.npy") for f in folders])
    expected = np.concatenate([np.load(f"{f}/output_0.npy") for f in folders])
    (logits,) = run_graph(graph, batch).values()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    assert [int(f[-1]) for f in folders] == list(np.argmax(logits, axis=1))


def test_wonnx_mnist_classifies_digit_pictures():
    root = shared_models() / "onnx" / "mnist-wonnx"
    graph = load_model(root / "opt-mnist.onnx")
    digits = [0, 3, 5, 7]
    batch = np.stack([np.asarray(Image.open(root / f"{d}.jpg").convert("L"), dtype=np.float32)[None]
                      for d in digits])
    (logits,) = run_graph(graph, batch).values()
    assert list(np.argmax(logits, axis=1)) == digits
    session = onnxruntime.InferenceSession(str(root / "opt-mnist.onnx"), providers=["CPUExecutionProvider"])
    for index in range(len(digits)):
        (reference,) = session.run(None, {"Input3": batch[index:index + 1]})
        np.testing.assert_allclose(logits[index:index + 1], reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", ["mnist-zoo-opset8/mnist.onnx", "mnist-zoo-opset1/model.onnx",
                                   "mnist-onnx2c/mnist.simplified.onnx", "mnist-wonnx/opt-mnist.onnx"])
def test_written_onnx_runs_in_onnxruntime_with_the_same_outputs(model):
    graph = load_model(shared_models() / "onnx" / model)
    name, shape = next(iter(graph.inputs.items()))
    batch = np.random.default_rng(0).random((5,) + shape[1:], dtype=np.float32)
    session = onnxruntime.InferenceSession(graph_to_onnx(graph).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    (written,) = session.run(None, {name: batch})
    (ours,) = run_graph(graph, batch).values()
    np.testing.assert_allclose(ours, written, rtol=1e-4, atol=1e-5)
