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
