"""Text models: token-id inputs, embeddings, max and average over time, per-token relevance, the
`explain-text` command and its JSON lines, HTML page and terminal colours."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest

import lrptool
from converters.onnx_reader import read_onnx
from converters.onnx_writer import graph_to_onnx
from gradient_support import central_difference
from lrptool.errors import LrpToolError
from lrptool.executor import run_graph
from lrptool.graph import Graph, Node
from lrptool.lrp import Explainer
from lrptool.text import Tokenizer, make_tokenizer, place, token_relevance
from text_support import normalisation_zoo, onnx_decomposed_transformer_block, onnx_text_cnn, text_zoo

COMMAND = [sys.executable, "-m", "lrptool.cli"]
EPSILON = 1e-6


def run(*args, stdin=None):
    return subprocess.run(COMMAND + [str(a) for a in args], input=stdin, capture_output=True)


def relative_error(actual, expected):
    return np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30)


# -- the graph: integer inputs, forward parity, eager against compiled ---------------------------------

@pytest.mark.parametrize("pooling", ["ReduceMax", "GlobalMaxPool", "ReduceMean"])
def test_text_cnn_reads_token_ids_and_matches_onnxruntime(pooling):
    model = onnx_text_cnn(pooling=pooling)
    graph = read_onnx(model)
    assert graph.token_inputs() == {"ids"}
    ids = np.random.default_rng(1).integers(0, 40, size=(5, 9))
    expected = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(run_graph(graph, ids)[graph.outputs[0]], expected, rtol=1e-5, atol=1e-6)
    # written back out, the graph takes int64 ids in onnxruntime too
    written = graph_to_onnx(graph)
    assert written.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    again = onnxruntime.InferenceSession(written.SerializeToString()).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["epsilon", "epsilon-plus", "zero", "gradient", "sensitivity"])
@pytest.mark.parametrize("pooling", ["ReduceMax", "ReduceMean"])
def test_compiled_equals_eager_on_text_cnns(method, pooling):
    graph = read_onnx(onnx_text_cnn(pooling=pooling))
    ids = np.random.default_rng(2).integers(0, 40, size=(6, 9))
    exact = Explainer(graph, method, dtype=np.float64, compiled=False, quiet=True).explain(ids)
    compiled = Explainer(graph, method, compiled=True, quiet=True)
    result = compiled.explain(ids, target=exact.targets)
    assert result.relevance.shape == ids.shape
    assert relative_error(result.relevance, exact.relevance) <= 1e-5


def test_text_zoo_compiled_equals_eager_and_gradient_is_gradient_times_embedding():
    graph = text_zoo()
    ids = np.random.default_rng(3).integers(0, 12, size=(4, 7))
    for method in ("epsilon", "alpha1-beta0", "gradient"):
        exact = Explainer(graph, method, dtype=np.float64, compiled=False, quiet=True).explain(ids)
        result = Explainer(graph, method, compiled=True, quiet=True).explain(ids, target=exact.targets)
        assert relative_error(result.relevance, exact.relevance) <= 1e-5, method
    # the gradient method gives each token Σ_d ∂f/∂e_d · e_d: checked by central differences on the vectors
    exact = Explainer(graph, "gradient", dtype=np.float64, compiled=False, quiet=True).explain(ids[:1])
    table = graph.nodes[0].params["weight"]
    rest = Graph({"e": (None, 7, 4)}, graph.nodes[1:], graph.outputs)
    vectors = table[ids[:1]]
    numeric = np.zeros(7)
    for t in range(7):
        for d in range(4):
            up, down = vectors.copy(), vectors.copy()
            up[0, t, d] += 1e-6
            down[0, t, d] -= 1e-6
            slope = (run_graph(rest, up, dtype=np.float64)["y"][0, exact.targets[0]]
                     - run_graph(rest, down, dtype=np.float64)["y"][0, exact.targets[0]]) / 2e-6
            numeric[t] += slope * vectors[0, t, d]
    np.testing.assert_allclose(exact.relevance[0], numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["epsilon", "zero", "gradient"])
def test_gelu_layer_norm_and_inner_softmax_compiled_equal_eager(method):
    graph = normalisation_zoo()
    x = np.random.default_rng(9).normal(size=(5, 5))
    exact = Explainer(graph, method, dtype=np.float64, compiled=False, quiet=True).explain(x)
    result = Explainer(graph, method, compiled=True, quiet=True).explain(x, target=exact.targets)
    np.testing.assert_allclose(result.outputs, exact.outputs, rtol=1e-4, atol=1e-5)
    assert relative_error(result.relevance, exact.relevance) <= 1e-5


def test_gelu_and_layer_norm_gradients_against_finite_differences():
    graph = normalisation_zoo()
    x = np.random.default_rng(10).normal(size=(2, 5))
    exact = Explainer(graph, "gradient", dtype=np.float64, compiled=False, quiet=True).explain(x)
    numeric = central_difference(graph, x, exact.targets, output="y")
    np.testing.assert_allclose(exact.relevance, numeric, rtol=1e-5, atol=1e-7)


def test_layer_norm_relevance_by_hand_and_conservation():
    """σ held constant: R_i = x_i (s_i − mean s), s_j = γ_j R_j / (σ y_j); without bias Σ R_in = Σ R_out."""
    rng = np.random.default_rng(11)
    scale = rng.normal(size=4) + 2
    graph = Graph({"x": (None, 4)}, [Node("ln", "LayerNorm", ["x"], ["y"], {"axes": (1,), "epsilon": 0.0},
                                          {"scale": scale})], ["y"])
    x = rng.normal(size=(1, 4))
    result = Explainer(graph, "epsilon", dtype=np.float64, stabiliser=1e-12, quiet=True, compiled=False).explain(x)
    y = result.outputs[0]
    sigma = x[0].std()
    share = np.zeros(4)
    share[result.targets[0]] = scale[result.targets[0]] * y[result.targets[0]] / (sigma * y[result.targets[0]])
    np.testing.assert_allclose(result.relevance[0], x[0] * (share - share.mean()), rtol=1e-9)
    assert result.relevance.sum() == pytest.approx(result.scores[0], rel=1e-9)


def test_inner_softmax_follows_attn_lrp_by_hand():
    rng = np.random.default_rng(12)
    weight = rng.normal(size=(2, 3))
    graph = Graph({"x": (None, 3)}, [Node("sm", "Softmax", ["x"], ["s"], {"axes": (1,)}),
                                     Node("out", "Dense", ["s"], ["y"], {}, {"weight": weight})], ["y"])
    x = rng.normal(size=(1, 3))
    result = Explainer(graph, "zero", dtype=np.float64, quiet=True, compiled=False).explain(x)
    s = np.exp(x[0]) / np.exp(x[0]).sum()
    incoming = s * weight[result.targets[0]]            # the dense layer's LRP-0 relevance: s_j w_j
    np.testing.assert_allclose(result.relevance[0], x[0] * (incoming - s * incoming.sum()), rtol=1e-9)


def test_epsilon_conserves_the_score_without_biases():
    graph = read_onnx(onnx_text_cnn(bias=False))
    ids = np.random.default_rng(4).integers(0, 40, size=(4, 9))
    result = Explainer(graph, "epsilon", dtype=np.float64, epsilon=1e-9, quiet=True).explain(ids)
    np.testing.assert_allclose(result.relevance.sum(axis=1), result.scores, rtol=1e-6)


def scalar_model(pooling):
    """Embeddings of one feature (0, 1, 3, 2), a 1×1 convolution of weight 1, ReLU, max or mean over time,
    and one output of weight 2: small enough to work out by hand."""
    nodes = [Node("embed", "Embedding", ["ids"], ["e"], {}, {"weight": np.array([[0.0], [1.0], [3.0], [2.0]])}),
             Node("channels", "Transpose", ["e"], ["t"], {"perm": (0, 2, 1)}),
             Node("conv", "Conv", ["t"], ["c"], {"strides": (1,), "dilations": (1,), "pads": (0, 0), "group": 1},
                  {"weight": np.ones((1, 1, 1))}),
             Node("relu", "Relu", ["c"], ["r"]),
             Node("pool", pooling, ["r"], ["p"]),
             Node("flat", "Flatten", ["p"], ["f"], {"axis": 1}),
             Node("out", "Dense", ["f"], ["y"], {}, {"weight": np.array([[2.0]])})]
    return Graph({"ids": (None, 4)}, nodes, ["y"])


def test_hand_computed_max_over_time_sends_everything_to_the_winning_token():
    # ids 1 2 3 0 → values 1 3 2 0; the max 3 is the second token; score 2·3 = 6
    result = Explainer(scalar_model("GlobalMaxPool"), "epsilon", dtype=np.float64, quiet=True).explain([[1, 2, 3, 0]])
    assert result.scores[0] == pytest.approx(6.0)
    dense = 6.0 * 6.0 / (6.0 + EPSILON)           # the ε rule at the output layer
    winner = dense * 3.0 / (3.0 + EPSILON)        # and at the 1×1 convolution
    np.testing.assert_allclose(result.relevance[0], [0.0, winner, 0.0, 0.0], rtol=1e-12, atol=1e-15)


def test_hand_computed_average_over_time_shares_in_proportion():
    # mean of 1 3 2 0 = 1.5, score 3; average pooling takes the norm rule: R_t = e_t/4 / (1.5 + ε) · R
    result = Explainer(scalar_model("GlobalAveragePool"), "epsilon", dtype=np.float64, quiet=True).explain(
        [[1, 2, 3, 0]])
    dense = 3.0 * 3.0 / (3.0 + EPSILON)
    values = np.array([1.0, 3.0, 2.0, 0.0])
    expected = values / 4 / (1.5 + EPSILON) * dense * values / (values + EPSILON)
    np.testing.assert_allclose(result.relevance[0], expected, rtol=1e-12)


def test_token_ids_outside_the_table_are_one_line_errors():
    graph = scalar_model("GlobalMaxPool")
    with pytest.raises(LrpToolError, match="token id 7 is outside the table's 4 rows"):
        run_graph(graph, np.array([[1, 2, 7, 0]]))
    with pytest.raises(LrpToolError, match="whole numbers"):
        run_graph(graph, np.array([[1.5, 2, 3, 0]]))


def test_gather_from_a_computed_tensor_or_along_columns_is_refused_by_name():
    model = onnx_text_cnn()
    model.graph.node[0].attribute[0].i = 1
    with pytest.raises(LrpToolError, match="Gather along axis 1"):
        read_onnx(model)


def test_reduce_max_over_the_channel_axis_is_refused_by_name():
    model = onnx_text_cnn()
    for node in model.graph.node:
        if node.op_type == "ReduceMax":
            node.attribute[0].ints[:] = [1]
    with pytest.raises(LrpToolError, match="ReduceMax over axes"):
        read_onnx(model)


# -- tokens, layouts, padding ---------------------------------------------------------------------------

def test_head_tail_layout_puts_a_short_text_in_both_halves_and_sums_its_relevance():
    encoded = Tokenizer("bytes").encode("abc")
    placed = place(encoded, 8, 256, "head-tail")
    np.testing.assert_array_equal(placed.ids, [97, 98, 99, 256, 256, 97, 98, 99])
    tokens, padding = token_relevance(placed, np.arange(8.0))
    np.testing.assert_allclose(tokens, [0 + 5, 1 + 6, 2 + 7])
    assert padding == 3 + 4
    long = place(Tokenizer("bytes").encode("abcdefghij"), 6, 0, "head-tail")
    np.testing.assert_array_equal(long.ids, [97, 98, 99, 104, 105, 106])
    assert long.truncated


def test_bytes_of_one_character_share_its_offsets_and_vocabularies_map_words(tmp_path):
    encoded = Tokenizer("bytes").encode("é!")
    assert encoded.ids == [0xC3, 0xA9, 0x21] and encoded.spans == [(0, 1), (0, 1), (1, 2)]
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"<pad>": 0, "<unk>": 1, "good": 2, "film": 3, ".": 4}))
    tokenizer = make_tokenizer(str(vocab))
    words = tokenizer.encode("Good film, really.")
    assert words.tokens == ["Good", "film", ",", "really", "."] and words.ids == [2, 3, 1, 1, 4]
    text = tmp_path / "vocab.txt"
    text.write_text("a\nb\nc\n")
    assert make_tokenizer(str(text)).encode("cab").ids == [2, 0, 1]   # single characters: a character tokenizer


def test_explain_text_reports_padding_separately_and_the_parts_add_up():
    graph = scalar_model("GlobalAveragePool")
    vocabulary = {"x": 1, "y": 2, "pad": 3}
    explanations = lrptool.explain_text(graph, ["x y", "y"], tokenizer=Tokenizer("words", vocabulary), pad=3,
                                        dtype=np.float64)
    first, second = explanations
    assert first.tokens == ["x", "y"] and second.tokens == ["y"]
    # "y" then three padding tokens of value 2: mean (3 + 2 + 2 + 2)/4, score 4.5; the padding holds 6/9 of it
    assert second.score == pytest.approx(4.5)
    assert second.padding == pytest.approx(4.5 * 6 / 9, rel=1e-5)
    assert second.relevance[0] == pytest.approx(4.5 * 3 / 9, rel=1e-5)
    assert second.total == pytest.approx(second.score, rel=1e-5)


# -- the command ----------------------------------------------------------------------------------------

@pytest.fixture
def byte_model(tmp_path):
    path = tmp_path / "bytes.onnx"
    onnx.save(onnx_text_cnn(vocab=256, length=16, seed=5), str(path))
    return path


def test_explain_text_writes_records_page_and_resumes(tmp_path, byte_model):
    texts = tmp_path / "texts.txt"
    texts.write_bytes("first text\nsecond one\t2\n\nüber naïve\n".encode("utf-8"))
    out = tmp_path / "out"
    result = run("explain-text", byte_model, texts, "-o", out)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 4]
    assert records[1]["target"] == 2 and records[1]["given_class"] == 2
    graph = read_onnx(str(byte_model))
    for record in records:
        ids = place(Tokenizer("bytes").encode(record["text"]), 16, 0).ids
        score = onnxruntime.InferenceSession(str(byte_model)).run(None, {"ids": ids[None]})[0][0, record["target"]]
        assert record["score"] == pytest.approx(float(score), rel=1e-5)
        exact = Explainer(graph, "epsilon", dtype=np.float64, quiet=True).explain(ids[None], target=[record["target"]])
        tokens, padding = token_relevance(place(Tokenizer("bytes").encode(record["text"]), 16, 0),
                                          exact.relevance[0])
        np.testing.assert_allclose(record["relevance"], tokens, rtol=1e-4, atol=1e-5)
        assert record["relevance_sum"] == pytest.approx(float(tokens.sum() + padding), rel=1e-4, abs=1e-5)
        assert len(record["tokens"]) == len(record["relevance"]) == len(record["offsets"])
    assert records[2]["tokens"][:2] == ["\\xc3", "\\xbc"]   # ü is two bytes, one character
    page = (out / "index.html").read_text()
    assert page.count('class="t"') == sum(len({tuple(o) for o in r["offsets"]}) for r in records)
    # resume: nothing redone, the same records
    (out / "index.html").unlink()
    again = run("explain-text", byte_model, texts, "-o", out, "--resume")
    assert again.returncode == 0, again.stderr
    assert b"resuming: 3 text(s)" in again.stderr
    assert [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()] == records
    assert (out / "index.html").read_text() == page


def test_report_rebuilds_a_text_folders_page(tmp_path, byte_model):
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\nsecond one\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run("explain-text", byte_model, texts, "-o", out).returncode == 0
    written = (out / "index.html").read_text()
    (out / "index.html").unlink()
    result = run("report", out, "--title", "lrptool explain-text")
    assert result.returncode == 0, result.stderr
    assert (out / "index.html").read_text() == written       # the same page, word spans and all


def test_explain_text_bad_lines_are_named_and_the_rest_explained(tmp_path, byte_model):
    texts = tmp_path / "texts.txt"
    texts.write_bytes(b"good line\nbad \xff\xfe bytes\nanother\tnot-a-class\nlast\t9\n")
    result = run("explain-text", byte_model, texts, "-o", tmp_path / "out", "--format", "jsonl")
    assert result.returncode == 1
    errors = result.stderr.decode()
    assert f"{texts}:2: not UTF-8 text" in errors
    assert f"{texts}:3: after the TAB, 'not-a-class' is not a class index" in errors
    assert f"{texts}:4: class 9 is out of range" in errors
    assert "Traceback" not in errors
    assert len((tmp_path / "out" / "explanations.jsonl").read_text().splitlines()) == 1


def test_explain_text_reads_stdin_and_prints_ansi_colours(tmp_path, byte_model):
    long_text = "a much longer text than sixteen bytes"
    result = run("explain-text", byte_model, "-", "-o", tmp_path / "out", "--format", "ansi",
                 stdin=f"short\n{long_text}\n".encode())
    assert result.returncode == 0, result.stderr
    shown = result.stdout.decode()
    assert shown.count("stdin:") == 2 and "\x1b[48;2;" in shown
    assert shown.count("\n") == 4
    assert result.stderr.decode().count("cut to fit") == 1
    assert not (tmp_path / "out" / "index.html").exists()


@pytest.mark.parametrize("args, message", [
    (["--format", "pdf"], "--format 'pdf'"),
    (["--tokenizer", "words"], "no vocabulary found beside the model"),
    (["--pad", "999"], "--pad 999"),
    (["--target", "7"], "--target 7: the model has 3 outputs"),
])
def test_explain_text_option_mistakes_are_one_line(tmp_path, byte_model, args, message):
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n")
    result = run("explain-text", byte_model, texts, "-o", tmp_path / "out", *args)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_explain_text_refuses_an_image_model(tmp_path):
    from test_explain_cli import bias_free_mnist

    model = bias_free_mnist(tmp_path / "mnist.onnx")
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n")
    result = run("explain-text", model, texts, "-o", tmp_path / "out")
    assert result.returncode == 2 and b"text models take (batch, length)" in result.stderr
    assert os.path.exists(texts)


# -- the bundled word CNN (make demo) -------------------------------------------------------------------

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample_models", "text")


def test_bundled_sentiment_model_is_what_its_script_trains(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_sentiment", os.path.join(SAMPLE, "train_sentiment.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    texts, labels = script.read_corpus()
    vocabulary = json.load(open(os.path.join(SAMPLE, "sentiment.vocab.json"), encoding="utf-8"))
    params, _ = script.train(script.encode(texts, vocabulary), labels, len(vocabulary))
    bundled = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(os.path.join(SAMPLE, "sentiment.onnx")).graph.initializer}
    np.testing.assert_allclose(bundled["embedding"], params["embedding"], atol=1e-4)
    np.testing.assert_allclose(bundled["dense.weight"], params["dense"], atol=1e-4)


def test_bundled_sentiment_model_explains_the_demo_texts():
    model = os.path.join(SAMPLE, "sentiment.onnx")
    texts = open(os.path.join(SAMPLE, "texts.txt"), encoding="utf-8").read().splitlines()
    results = lrptool.explain_text(model, texts, tokenizer="words", dtype=np.float64)
    assert [r.target for r in results] == [1, 0, 0, 1]
    session = onnxruntime.InferenceSession(model)
    tokenizer = make_tokenizer("words", model)
    for text, result in zip(texts, results):
        ids = place(tokenizer.encode(text), 16, 0).ids[None]
        assert result.score == pytest.approx(float(session.run(None, {"ids": ids})[0][0, result.target]), rel=1e-5)
    # the words that decided: "moving" and "brilliant" for the first, "loved" for the last
    first, last = results[0], results[-1]
    assert first.tokens[int(np.argmax(first.relevance))] == "moving"
    assert last.tokens[int(np.argmax(last.relevance))] == "loved"


# -- Keras --------------------------------------------------------------------------------------------------

def test_keras_embedding_conv1d_global_max_pooling_dense(tmp_path):
    from test_keras_reader import dense_config, write_model

    from converters.keras_reader import read_keras

    rng = np.random.default_rng(8)
    table, kernel, bias = rng.normal(size=(30, 4)), rng.normal(size=(3, 4, 5)) * 0.5, rng.normal(size=5) * 0.1
    dense, dense_bias = rng.normal(size=(5, 2)), rng.normal(size=2) * 0.1
    config = dense_config([
        {"class_name": "Embedding", "config": {"name": "emb", "input_dim": 30, "output_dim": 4}},
        {"class_name": "Conv1D", "config": {"name": "conv", "filters": 5, "kernel_size": [3], "padding": "same",
                                            "activation": "relu"}},
        {"class_name": "GlobalMaxPooling1D", "config": {"name": "pool"}},
        {"class_name": "Dense", "config": {"name": "out", "units": 2, "activation": "softmax"}}], [10])
    graph = read_keras(write_model(tmp_path / "text.h5", config, {"emb": [table], "conv": [kernel, bias],
                                                                 "out": [dense, dense_bias]}))
    assert graph.token_inputs() == set(graph.inputs)
    ids = rng.integers(0, 30, size=(3, 10))
    # Keras' computation written out: channels-last, 'same' padding of one step each side
    padded = np.pad(table[ids], ((0, 0), (1, 1), (0, 0)))
    conv = sum(padded[:, i:i + 10] @ kernel[i] for i in range(3)) + bias
    logits = np.maximum(conv, 0).max(axis=1) @ dense + dense_bias
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(run_graph(graph, ids, dtype=np.float64)[graph.outputs[0]], expected, rtol=1e-6)
    exact = Explainer(graph, "epsilon", dtype=np.float64, quiet=True).explain(ids)
    np.testing.assert_allclose(exact.scores, logits[np.arange(3), exact.targets], rtol=1e-6)
    compiled = Explainer(graph, "epsilon", quiet=True, compiled=True).explain(ids, target=exact.targets)
    assert relative_error(compiled.relevance, exact.relevance) <= 1e-5


# -- operators written out in elementary nodes ----------------------------------------------------------

@pytest.mark.parametrize("layer_norm, gelu", [("decomposed", "erf"), ("decomposed", "tanh"), ("onnx", "erf")])
def test_decomposed_gelu_layer_norm_and_softmax_are_read_as_one_node_each(layer_norm, gelu):
    model = onnx_decomposed_transformer_block(layer_norm=layer_norm, gelu=gelu)
    graph = read_onnx(model)
    ops = [n.op for n in graph.nodes]
    assert ops.count("Gelu") == 1 and ops.count("LayerNorm") == 1 and ops.count("Softmax") == 1, ops
    assert not {"Mul", "Div", "Sub", "Pow"} & set(ops), ops
    assert graph.nodes[ops.index("Gelu")].attrs["approximate"] == ("tanh" if gelu == "tanh" else "none")
    x = np.random.default_rng(13).normal(size=(4, 6, 8)).astype(np.float32)
    expected = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(run_graph(graph, x)[graph.outputs[0]], expected, rtol=1e-4, atol=1e-5)
    exact = Explainer(graph, "epsilon", dtype=np.float64, compiled=False, quiet=True).explain(x)
    result = Explainer(graph, "epsilon", compiled=True, quiet=True).explain(x, target=exact.targets)
    assert relative_error(result.relevance, exact.relevance) <= 1e-5


def test_a_chain_that_only_looks_like_gelu_is_left_as_it_is():
    from onnx import TensorProto, helper

    # x · tanh(x): a Tanh among Muls, but not GELU — read node by node, and its product refused for relevance
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Mul", ["x", "t"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "mish_like", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]),
        opset_imports=[helper.make_opsetid("", 17)])
    graph = read_onnx(model)
    assert [n.op for n in graph.nodes] == ["Tanh", "Mul"]
    x = np.linspace(-2, 2, 8).reshape(2, 4)
    np.testing.assert_allclose(run_graph(graph, x, dtype=np.float64)["y"], x * np.tanh(x))


# -- Magika: a real byte-level CNN ----------------------------------------------------------------------

def magika_inputs(texts):
    return np.stack([place(Tokenizer("bytes").encode(t), 2048, 256, "head-tail").ids for t in texts])


MAGIKA_TEXTS = ['#!/usr/bin/env python3\nimport os\nprint("hello")\n', "<html><body><p>Hi</p></body></html>",
                '{"a": 1, "b": [1, 2, 3]}', "SELECT name FROM users WHERE id = 1;"]


@pytest.fixture(scope="module")
def magika():
    from conftest import shared_models

    folder = shared_models() / "text" / "magika"
    config = json.loads((folder / "config.min.json").read_text())
    return folder / "model.onnx", config["target_labels_space"], read_onnx(str(folder / "model.onnx"))


def test_magika_loads_with_its_decomposed_operators_fused_and_matches_onnxruntime(magika):
    path, labels, graph = magika
    ops = [n.op for n in graph.nodes]
    assert ops[0] == "Embedding" and ops.count("Gelu") == 2 and ops.count("LayerNorm") == 2
    assert ops[-1] == "Softmax" and "GlobalMaxPool" in ops
    ids = magika_inputs(MAGIKA_TEXTS)
    expected = onnxruntime.InferenceSession(str(path)).run(None, {"bytes": ids.astype(np.int32)})[0]
    ours = run_graph(graph, ids)[graph.outputs[0]]
    np.testing.assert_allclose(ours, expected, atol=2e-4)
    assert [labels[i] for i in expected.argmax(axis=1)] == ["python", "html", "json", "sql"]
    assert [labels[i] for i in ours.argmax(axis=1)] == ["python", "html", "json", "sql"]


def test_magika_compiled_explanation_equals_the_eager_walk(magika):
    _, _, graph = magika
    ids = magika_inputs(MAGIKA_TEXTS[:2])
    exact = Explainer(graph, "epsilon", dtype=np.float64, compiled=False, quiet=True).explain(ids)
    result = Explainer(graph, "epsilon", compiled=True, quiet=True).explain(ids, target=exact.targets)
    single = Explainer(graph, "epsilon", compiled=False, quiet=True, primitives="numpy",
                       forward_backend="lrptool").explain(ids, target=exact.targets)
    # float32 against float64 over 2048 positions: the eager walk in float32 is as far off as the compiled one
    floor = relative_error(single.relevance, exact.relevance)
    assert relative_error(result.relevance, exact.relevance) <= max(1e-5, 2 * floor)
    assert relative_error(result.relevance, exact.relevance) <= 1e-4


def test_magika_byte_heatmaps_in_the_cli(tmp_path, magika):
    path, labels, _ = magika
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    (tmp_path / "texts.txt").write_text("\n".join(MAGIKA_TEXTS[1:]) + "\n")
    result = run("explain-text", path, tmp_path / "texts.txt", "-o", tmp_path / "out", "--tokenizer", "bytes",
                 "--pad", "256", "--layout", "head-tail", "--labels", tmp_path / "labels.txt")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "explanations.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == ["html", "json", "sql"]
    for record in records:
        assert len(record["relevance"]) == len(record["text"].encode())
        # every position is a byte of the text (twice: head and tail) or padding
        assert record["relevance_sum"] == pytest.approx(sum(record["relevance"]) + record["padding_relevance"],
                                                        rel=1e-6, abs=1e-6)
    top = {r["label"]: r["tokens"][int(np.argmax(r["relevance"]))] for r in records}
    assert top["html"] in "<>" and top["json"] in '{}"' and top["sql"] == ";"


# -- the page in a browser --------------------------------------------------------------------------------

def test_the_word_page_renders_in_headless_chromium(tmp_path):
    """index.html of the bundled sentiment model in a real browser: one span per word, the most positive word
    pure red (it holds its text's largest |R|), the most negative blue in proportion, hover values in the
    title; a screenshot is taken and shows the red (it is left in the test's folder)."""
    from browser_support import browser
    from PIL import Image

    out = tmp_path / "out"
    result = run("explain-text", os.path.join(SAMPLE, "sentiment.onnx"), os.path.join(SAMPLE, "texts.txt"), "-o", out,
                 "--tokenizer", "words", "--labels", os.path.join(SAMPLE, "labels.txt"))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    first = records[0]
    values = np.array(first["relevance"])
    scale = np.abs(values).max()
    assert values.max() == scale          # the sentence's largest |R| is positive: its colour is pure red
    with browser() as page:
        page.open(out / "index.html")
        assert page.console_errors() == []
        assert page.run("return document.querySelectorAll('span.t').length") == \
            sum(len(r["tokens"]) for r in records)
        spans = page.run("""return Array.from(document.querySelectorAll('#text-0 span.t')).map(s =>
            [s.textContent, Number(s.dataset.r), getComputedStyle(s).backgroundColor, s.title]);""")
        assert [s[0] for s in spans] == first["tokens"]
        best, worst = max(spans, key=lambda s: s[1]), min(spans, key=lambda s: s[1])
        assert best[0] == first["tokens"][int(np.argmax(values))] and best[2] == "rgb(255, 0, 0)"
        level = 1 + values.min() / scale     # blue–white–red: a negative value keeps blue, loses red and green
        shade = int(round(255 * level))
        assert worst[0] == first["tokens"][int(np.argmin(values))]
        assert worst[2] == f"rgb({shade}, {shade}, 255)"
        assert best[3].startswith(f"{best[0]}: R = ")
        shot = page.screenshot(tmp_path / "index.png")
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    red = (pixels[:, 0] == 255) & (pixels[:, 1] == 0) & (pixels[:, 2] == 0)
    assert red.sum() > 50                # the most positive word's background, as drawn


def test_a_model_that_leaves_the_length_free_takes_it_from_max_len(tmp_path):
    model = onnx_text_cnn(vocab=256)
    length = model.graph.input[0].type.tensor_type.shape.dim[1]
    length.ClearField("dim_value")
    length.dim_param = "T"
    path = tmp_path / "free.onnx"
    onnx.save(model, str(path))
    texts = tmp_path / "texts.txt"
    texts.write_text("hello world\n")
    refused = run("explain-text", path, texts, "-o", tmp_path / "out")
    assert refused.returncode == 2 and b"give --max-len" in refused.stderr
    done = run("explain-text", path, texts, "-o", tmp_path / "out", "--max-len", "20")
    assert done.returncode == 0, done.stderr
    assert b"20 positions" in done.stderr
