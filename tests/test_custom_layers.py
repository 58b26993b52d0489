"""The custom-layer plug-in point: --custom-layers / load_custom_layers, and the shipped example
AttentionWeightedAverage (textgenrnn's attention pooling) against TensorFlow's outputs."""

import os
import subprocess
import sys

import numpy as np
import pytest

from lrptool.errors import LrpToolError

HERE = os.path.dirname(__file__)
DATA = os.path.join(HERE, "data", "keras_recurrent")
MODEL = os.path.join(DATA, "custom_lstm_attention.h5")
PLUGIN = "lrptool.plugins.attention_weighted_average"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "lrptool.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_without_the_plugin_the_layer_is_named_and_with_it_the_model_reads():
    refused = cli("inspect", MODEL)
    assert refused.returncode != 0
    assert "AttentionWeightedAverage" in refused.stderr and "Traceback" not in refused.stderr
    accepted = cli("inspect", MODEL, "--custom-layers", PLUGIN)
    assert accepted.returncode == 0, accepted.stderr
    assert "AttentionWeightedAverage" in accepted.stdout
    by_path = cli("inspect", MODEL, "--custom-layers", os.path.join(HERE, "..", "lrptool", "plugins",
                                                                    "attention_weighted_average.py"))
    assert by_path.returncode == 0, by_path.stderr


def test_a_broken_plugin_is_one_line(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no')\n")
    result = cli("inspect", MODEL, "--custom-layers", broken)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "broken.py" in result.stderr and "RuntimeError: no" in result.stderr
    missing = cli("inspect", MODEL, "--custom-layers", tmp_path / "absent.py")
    assert missing.returncode != 0 and "no such plug-in file" in missing.stderr


def test_a_plugin_cannot_replace_a_converter(tmp_path):
    from lrptool.plugins import load_custom_layers

    clash = tmp_path / "clash.py"
    clash.write_text("from lrptool.plugins import keras_layer\n@keras_layer('Dense')\ndef f(*a):\n    pass\n")
    with pytest.raises(LrpToolError, match="'Dense' already has a converter"):
        load_custom_layers(clash)


def test_attention_matches_tensorflow_and_is_explained():
    import onnxruntime

    from converters.keras_reader import read_keras
    from converters.onnx_writer import graph_to_onnx
    from lrptool.executor import run_graph
    from lrptool.lrp import Explainer
    from lrptool.plugins import load_custom_layers

    load_custom_layers(PLUGIN)
    graph = read_keras(MODEL)
    x = np.load(os.path.join(DATA, "custom_lstm_attention_input.npy"))
    expected = np.load(os.path.join(DATA, "custom_lstm_attention_output.npy"))
    np.testing.assert_allclose(run_graph(graph, x, dtype=np.float64)[graph.outputs[0]], expected, atol=1e-5)
    session = onnxruntime.InferenceSession(graph_to_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], expected, atol=1e-5)

    exact = Explainer(graph, "epsilon", dtype=np.float64, epsilon=1e-12, stabiliser=1e-12, recurrent_bias="spread",
                      quiet=True)
    result = exact.explain(x.astype(np.float64), target=1)
    entry = next(n for n in result.report.nodes if n.op == "AttentionWeightedAverage")
    assert abs(entry.absorbed) <= 1e-9 * abs(entry.relevance_out)
    assert result.relevance.shape == x.shape

    # the plug-in's gradient against central differences of the forward pass
    gradient = Explainer(graph, "gradient", dtype=np.float64, quiet=True).explain(x.astype(np.float64), target=1)
    numeric = np.zeros_like(x, dtype=np.float64)
    for index in np.ndindex(x.shape):
        up, down = x.astype(np.float64), x.astype(np.float64)
        up[index] += 1e-6
        down[index] -= 1e-6
        out = graph.outputs[0]
        numeric[index] = (run_graph(graph, up, dtype=np.float64)[out][index[0], 1]
                          - run_graph(graph, down, dtype=np.float64)[out][index[0], 1]) / 2e-6
    np.testing.assert_allclose(gradient.relevance, numeric, atol=1e-6, rtol=1e-5)
