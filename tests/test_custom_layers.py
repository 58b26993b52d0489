"""The custom-layer plug-in point: --custom-layers / load_custom_layers, and the shipped example
AttentionWeightedAverage (textgenrnn's attention pooling) against TensorFlow's outputs."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import shared_models
from gradient_support import central_difference
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
    numeric = central_difference(graph, x, 1)
    np.testing.assert_allclose(gradient.relevance, numeric, atol=1e-6, rtol=1e-5)


# -- textgenrnn: a real Keras weights file with a custom layer ----------------------------------------

EXAMPLE = os.path.join(HERE, "..", "examples", "textgenrnn")
TEXTS = ["Thank yo", "What is goin", "The quick brown fox jumps over the lazy d", "I love this movi",
         "Good mornin", "Explaining recurrent networks is f"]   # as in examples/textgenrnn/make_reference.py


def textgenrnn():
    from converters.keras_reader import read_keras
    from lrptool.plugins import load_custom_layers

    folder = shared_models() / "text" / "textgenrnn"
    load_custom_layers(PLUGIN)
    graph = read_keras(folder / "textgenrnn_weights.hdf5", model_config=os.path.join(EXAMPLE, "model.json"))
    return folder, graph


def test_textgenrnn_matches_tensorflow():
    from lrptool.executor import run_graph

    folder, graph = textgenrnn()
    assert {"LSTM", "AttentionWeightedAverage", "Embedding"} <= {n.op for n in graph.nodes}
    for ids, probs in ((folder / "reference" / "input_ids.npy", folder / "reference" / "output_probs.npy"),
                       (os.path.join(EXAMPLE, "reference_input_ids.npy"), os.path.join(EXAMPLE, "reference_probs.npy"))):
        ids, probs = np.load(ids), np.load(probs)
        np.testing.assert_allclose(run_graph(graph, ids)[graph.outputs[0]], probs, atol=1e-5)


def test_textgenrnn_character_heatmaps():
    import json

    import lrptool
    from lrptool.text import fit_text, make_tokenizer

    folder, graph = textgenrnn()
    vocabulary = folder / "textgenrnn_vocab.json"
    tokenizer = make_tokenizer(str(vocabulary))
    assert tokenizer.kind == "chars"
    # the text pipeline fits texts as textgenrnn does (left-padded): the ids TensorFlow was given
    reference_ids = np.load(os.path.join(EXAMPLE, "reference_input_ids.npy"))
    for text, ids in zip(TEXTS, reference_ids):
        np.testing.assert_array_equal(fit_text(tokenizer, text, 40, False, 0, "end").ids, ids)
    results = lrptool.explain_text(graph, TEXTS[:4], tokenizer=str(vocabulary), layout="end", quiet=True)
    inverse = {v: k for k, v in json.loads(vocabulary.read_text(encoding="utf-8")).items()}
    expected = json.loads((folder / "reference" / "reference.json").read_text(encoding="utf-8"))
    for result, text, char in zip(results, TEXTS, expected["predicted_next_char"]):
        assert inverse[result.target] == char
        assert result.tokens == list(text) and np.all(np.isfinite(result.relevance))
        if len(text) > 40:
            assert result.truncated and result.relevance[0] == 0   # the first character did not fit


def test_textgenrnn_from_the_command_line(tmp_path):
    folder = shared_models() / "text" / "textgenrnn"
    texts = tmp_path / "texts.txt"
    texts.write_text("What is goin\nI love this movi\n", encoding="utf-8")
    result = cli("explain-text", folder / "textgenrnn_weights.hdf5", texts, "-o", tmp_path / "out",
                 "--model-config", os.path.join(EXAMPLE, "model.json"), "--custom-layers", PLUGIN,
                 "--tokenizer", folder / "textgenrnn_vocab.json", "--layout", "end", "--format", "jsonl,html")
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "out" / "explanations.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and (tmp_path / "out" / "index.html").stat().st_size > 0


def test_attention_compiled_equals_eager():
    from converters.keras_reader import read_keras
    from lrptool.lrp import Explainer
    from lrptool.plugins import load_custom_layers

    load_custom_layers(PLUGIN)
    graph = read_keras(MODEL)
    x = np.load(os.path.join(DATA, "custom_lstm_attention_input.npy"))
    compiled = Explainer(graph, "epsilon", compiled=True, quiet=True)
    assert compiled.compiled is not None
    eager = Explainer(graph, "epsilon", compiled=False, quiet=True).explain(x, target=0)
    np.testing.assert_allclose(compiled.explain(x, target=0).relevance, eager.relevance, rtol=0,
                               atol=1e-4 * np.abs(eager.relevance).max())
