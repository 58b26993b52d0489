"""Keras LSTM, GRU (reset_after both ways), SimpleRNN and Bidirectional (merge modes), read from .h5
files made by TensorFlow 2.14.1 (tests/data/keras_recurrent/make_models.py), against TensorFlow's
own outputs stored beside them; the converted graph also runs in onnxruntime and is explained."""

import os

import numpy as np
import pytest

from converters.keras_reader import read_keras
from converters.onnx_writer import graph_to_onnx
from lrptool.executor import run_graph
from lrptool.lrp import Explainer

DATA = os.path.join(os.path.dirname(__file__), "data", "keras_recurrent")
MODELS = sorted(name[:-3] for name in os.listdir(DATA) if name.endswith(".h5") and not name.startswith("custom_"))


def load(name):
    path = os.path.join(DATA, name)
    return read_keras(path + ".h5"), np.load(path + "_input.npy"), np.load(path + "_output.npy")


def test_every_model_is_listed():
    assert len(MODELS) == 8


@pytest.mark.parametrize("name", MODELS)
def test_matches_tensorflow(name):
    graph, x, expected = load(name)
    ops = {node.op for node in graph.nodes}
    assert ops & {"LSTM", "GRU", "RNN"}
    np.testing.assert_allclose(run_graph(graph, x, dtype=np.float64)[graph.outputs[0]], expected, atol=1e-5, rtol=0)
    import onnxruntime

    session = onnxruntime.InferenceSession(graph_to_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    (ours,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_gate_orders_and_cudnn_layout_are_mapped():
    graph, _, _ = load("lstm_stack")
    first = next(n for n in graph.nodes if n.op == "LSTM")
    assert first.params["weight"].shape == (1, 20, 4) and first.params["bias"].shape == (1, 40)
    graph, _, _ = load("gru_reset_after")
    assert next(n for n in graph.nodes if n.op == "GRU").attrs["linear_before_reset"] == 1
    graph, _, _ = load("gru_reset_before_backwards")
    node = next(n for n in graph.nodes if n.op == "GRU")
    assert node.attrs["linear_before_reset"] == 0 and node.attrs["direction"] == "reverse"


@pytest.mark.parametrize("name", [m for m in MODELS if not m.endswith("mul")])
def test_explained_and_conserved_through_the_recurrent_layers(name):
    graph, x, expected = load(name)
    explainer = Explainer(graph, "epsilon", dtype=np.float64, epsilon=1e-9, recurrent_bias="spread", quiet=True)
    result = explainer.explain(x.astype(np.float64), target=0)
    assert result.relevance.shape == x.shape and np.all(np.isfinite(result.relevance))
    for entry in result.report.nodes:
        if entry.op in ("LSTM", "GRU", "RNN"):
            assert abs(entry.absorbed) <= 1e-10 * max(1.0, abs(entry.relevance_out)), entry


def test_a_product_of_two_directions_is_refused_by_name():
    from lrptool.errors import LrpToolError

    graph, _, _ = load("bidirectional_gru_sequence_mul")
    with pytest.raises(LrpToolError, match="neither"):
        Explainer(graph, "epsilon", quiet=True)


def to_cudnn(kernel, gates, recurrent=False):
    """The inverse of reading a CuDNN-layout kernel (written here from TensorFlow's description: each
    gate block of the input kernel transposed and refilled in column-major order)."""
    blocks = np.hsplit(kernel, gates)
    if recurrent:
        return np.hstack([block.T for block in blocks])
    return np.hstack([block.reshape(block.shape[::-1], order="F").T for block in blocks])


def test_cudnn_weight_layout_gives_the_same_outputs(tmp_path):
    """An LSTM whose weights are stored as CuDNNLSTM stores them (8·units biases, blocks transposed)."""
    import shutil

    import h5py

    from converters.keras_recurrent import from_cudnn

    rng = np.random.default_rng(5)
    block = rng.normal(size=(4, 20))
    np.testing.assert_array_equal(from_cudnn(to_cudnn(block, 4), 4), block)
    path = tmp_path / "cudnn.h5"
    shutil.copy(os.path.join(DATA, "lstm_stack.h5"), path)
    with h5py.File(path, "r+") as handle:
        cell = handle["model_weights/lstm/lstm/lstm_cell"]
        kernel, recurrent, bias = (np.array(cell[k]) for k in ("kernel:0", "recurrent_kernel:0", "bias:0"))
        cell["kernel:0"][...] = to_cudnn(kernel, 4)
        cell["recurrent_kernel:0"][...] = to_cudnn(recurrent, 4, recurrent=True)
        shift = rng.normal(size=bias.shape).astype(np.float32)
        del cell["bias:0"]
        cell["bias:0"] = np.concatenate([bias - shift, shift])   # input and recurrent biases, summing to the bias
    graph = read_keras(str(path))
    _, x, expected = load("lstm_stack")
    np.testing.assert_allclose(run_graph(graph, x, dtype=np.float64)[graph.outputs[0]], expected, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    (lambda layers: layers[0]["config"].update(recurrent_activation="hard_sigmoid"), "recurrent_activation 'hard_sigmoid'"),
    (lambda layers: layers[0]["config"].update(stateful=True), "stateful"),
    (lambda layers: layers.insert(0, {"class_name": "Masking", "config": {"name": "mask", "mask_value": 0.0}}),
     "Masking"),
])
def test_settings_lrptool_cannot_follow_are_refused_by_name(tmp_path, change, message):
    import json

    import h5py

    from lrptool.errors import UnsupportedModelError

    path = os.path.join(DATA, "lstm_stack.h5")
    with h5py.File(path, "r") as handle:
        config = json.loads(handle.attrs["model_config"])
    layers = [spec for spec in config["config"]["layers"] if spec["class_name"] != "InputLayer"]
    change(layers)
    config["config"]["layers"] = [s for s in config["config"]["layers"] if s["class_name"] == "InputLayer"] + layers
    (tmp_path / "model.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=message):
        read_keras(path, model_config=str(tmp_path / "model.json"))


def test_a_mask_from_an_embedding_is_found():
    from converters.keras_recurrent import masking_layer

    config = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Embedding", "config": {"name": "words", "mask_zero": True}},
        {"class_name": "LSTM", "config": {"name": "lstm", "units": 3}}]}}
    assert masking_layer(config) == "words"
    config["config"]["layers"][0]["config"]["mask_zero"] = False
    assert masking_layer(config) is None
