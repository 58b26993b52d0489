"""Recurrent models as exporters write them: an LSTM unrolled into Gemm + Split + Sigmoid/Tanh + Mul/Add
per step (the gate analysis finds the gates; the relevance equals the LSTM operator's), and the
real silero-vad voice-activity detector, both as the ONNX LSTM operator and unrolled."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import shared_models
from converters.onnx_reader import read_onnx
from gradient_support import central_difference
from lrptool.executor import run_graph
from lrptool.graph import Graph
from lrptool.lrp import Explainer
from lrptool.lrp.canonize import canonize
from lrptool.lrp.engine import ReverseWalk, routing_description
from recurrent_support import onnxruntime_outputs, recurrent_model

STEPS, BATCH, FEATURES, HIDDEN = 4, 3, 4, 3


def unrolled_lstm(model):
    """The LSTM of ``model`` (an ONNX LSTM node with W, R, B) written out step by step as PyTorch's
    exporters unroll it: Gemm(x_t) + Gemm(h) → Split → Sigmoid/Tanh → Mul/Add; output: the last h."""
    params = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    W, R, B = params["W"][0], params["R"][0], params["B"][0]
    size = 4 * HIDDEN
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
             numpy_helper.from_array(B[:size], "Wb"), numpy_helper.from_array(B[size:], "Rb"),
             numpy_helper.from_array(params["initial_h"][0] if "initial_h" in params
                                     else np.zeros((1, HIDDEN), np.float32), "h_start"),
             numpy_helper.from_array(np.array([HIDDEN] * 4, np.int64), "split")]
    nodes = []
    h, c = "h_start", None        # h₀ = 0 still adds the recurrence bias; c₀ = 0 drops f·c₀
    if "initial_c" in params:
        inits.append(numpy_helper.from_array(params["initial_c"][0], "c_start"))
        c = "c_start"
    for t in range(STEPS):
        def n(name):
            return f"{name}{t}"
        nodes.append(helper.make_node("Gather", ["X", numpy_name(inits, t)], [n("x")], axis=0))
        nodes.append(helper.make_node("Gemm", [n("x"), "W", "Wb"], [n("wx")], transB=1))
        nodes.append(helper.make_node("Gemm", [h, "R", "Rb"], [n("rh")], transB=1))
        nodes.append(helper.make_node("Add", [n("wx"), n("rh")], [n("pre")]))
        nodes.append(helper.make_node("Split", [n("pre"), "split"], [n("zi"), n("zo"), n("zf"), n("zg")], axis=1))
        nodes += [helper.make_node("Sigmoid", [n("zi")], [n("i")]), helper.make_node("Sigmoid", [n("zo")], [n("o")]),
                  helper.make_node("Sigmoid", [n("zf")], [n("f")]), helper.make_node("Tanh", [n("zg")], [n("g")]),
                  helper.make_node("Mul", [n("i"), n("g")], [n("ig")])]
        if c is None:
            cell = n("ig")
        else:
            nodes += [helper.make_node("Mul", [n("f"), c], [n("fc")]),
                      helper.make_node("Add", [n("fc"), n("ig")], [n("c")])]
            cell = n("c")
        nodes += [helper.make_node("Tanh", [cell], [n("tc")]), helper.make_node("Mul", [n("o"), n("tc")], [n("h")])]
        h, c = n("h"), cell
    nodes.append(helper.make_node("Identity", [h], ["last"]))
    graph = helper.make_graph(nodes, "unrolled", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                                [STEPS, BATCH, FEATURES])],
                              [helper.make_tensor_value_info("last", TensorProto.FLOAT, [BATCH, HIDDEN])], inits)
    result = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    result.ir_version = 8
    return result


def numpy_name(inits, t):
    name = f"step{t}"
    if all(i.name != name for i in inits):
        inits.append(numpy_helper.from_array(np.array(t, np.int64), name))
    return name


@pytest.mark.parametrize("initial", [False, True])
def test_unrolled_lstm_gates_are_found_and_relevance_equals_the_lstm_operator(initial):
    """With ``initial``, the start state is a constant: f ⊙ c₀ keeps its product form and c₀ absorbs."""
    model = recurrent_model("LSTM", steps=STEPS, batch=BATCH, features=FEATURES, hidden=HIDDEN, seed=11, scale=0.8,
                            initial=initial)
    unrolled = unrolled_lstm(model)
    x = np.random.default_rng(12).normal(size=(STEPS, BATCH, FEATURES)).astype(np.float32)
    y_h = onnxruntime_outputs(model, x)[1][0]
    graph = read_onnx(unrolled)
    np.testing.assert_allclose(run_graph(graph, x, dtype=np.float64)[graph.outputs[0]], y_h, atol=1e-5)
    # every product is routed to its tanh (signal) operand or to the previous cell, never to a gate
    producers = graph.producers()
    for node in graph.nodes:
        if node.op == "Mul":
            receiver = routing_description(node, {}, producers).split("'")[1]
            assert producers[receiver].op in ("Tanh", "Mul", "Add", "Constant"), (node.name, receiver)
    # the relevance of the unrolled graph (ε rule on the Gemms, proportional Add) against the LSTM
    # operator's (Arras et al.): equal up to the stabilisers. (Canonized as the explainer does: the
    # recurrence bias of the first step, a constant, is folded into the input Gemm.)
    graph, _ = canonize(graph)
    walk = ReverseWalk(graph, mode="lrp", dtype=np.float64, rules=ε_rules(graph), stabiliser=1e-12)
    values = walk.forward(x.astype(np.float64))
    out = graph.outputs[0]
    unrolled_relevance, _ = walk.run(values, {out: values[out]})
    lstm = read_onnx(model)
    lstm_walk = ReverseWalk(lstm, mode="lrp", dtype=np.float64, recurrent_epsilon=1e-12)
    lstm_values = lstm_walk.forward(x.astype(np.float64))
    lstm_relevance, _ = lstm_walk.run(lstm_values, {"Y_h": lstm_values["Y_h"]})
    # (1e-6: the folded bias is rounded to float32)
    np.testing.assert_allclose(unrolled_relevance["X"], lstm_relevance["X"], rtol=1e-6, atol=1e-9)


def ε_rules(graph):
    from lrptool.lrp.presets import assign_rules, rule_map_from_spec

    return assign_rules(graph, rule_map_from_spec("epsilon", 1e-12, 1e-12, 0.25))


# -- silero-vad -------------------------------------------------------------------------------------

SILENCE_THEN_TONE = 0.12  # seconds


def speech_like(chunks, seed=0):
    """Noise, then a 220 Hz tone from 0.12 s on: 16 kHz samples in chunks of 576."""
    rng = np.random.default_rng(seed)
    t = np.arange(chunks * 576) / 16000
    signal = 0.3 * np.sin(2 * np.pi * 220 * t) * (t > SILENCE_THEN_TONE) + 0.01 * rng.normal(size=t.size)
    return signal.astype(np.float32).reshape(chunks, 576)


def test_silero_vad_lstm_operator_matches_onnxruntime_and_is_explained():
    import onnxruntime

    path = shared_models() / "text" / "silero-vad" / "silero_vad_16k_sequence.onnx"
    model = onnx.load(str(path))
    chunks = 8
    # the model's first axis is the sequence of chunks the LSTM runs over: fix its length
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = chunks
    zeros = np.zeros((1, 1, 128), np.float32)
    graph = read_onnx(model, bind={"h": zeros, "c": zeros})
    assert "LSTM" in {n.op for n in graph.nodes}
    x = speech_like(chunks)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": x, "h": zeros, "c": zeros})
    ours = run_graph(graph, x, dtype=np.float64)
    for name, reference in zip(graph.outputs, expected):
        np.testing.assert_allclose(ours[name], reference, atol=1e-5)

    probs = Graph(graph.inputs, graph.nodes, ["speech_probs"])
    walk = ReverseWalk(probs, mode="lrp", rules=ε_rules(probs), dtype=np.float64, recurrent_bias="spread",
                       stabiliser=1e-9)
    values = walk.forward(x.astype(np.float64))
    seed = np.zeros(chunks)
    seed[5] = values["speech_probs"][5]
    relevance, report = walk.run(values, {"speech_probs": seed})
    r = relevance["input"]
    assert np.all(np.isfinite(r)) and r.shape == x.shape
    # the probability of chunk 5 is explained by chunk 5 and those before it, none after it
    per_chunk = r.sum(axis=1)
    assert np.all(per_chunk[6:] == 0)
    assert np.abs(per_chunk[5]) == np.abs(per_chunk).max()
    lstm = next(n for n in report.nodes if n.op == "LSTM")
    assert abs(lstm.absorbed) <= 1e-9 * abs(lstm.relevance_out)


def test_silero_vad_unrolled_matches_onnxruntime_and_routes_to_the_signals():
    import onnxruntime

    path = shared_models() / "text" / "silero-vad" / "silero_vad_op18_ifless.onnx"
    model = onnx.load(str(path))
    keep = [o for o in model.graph.output if o.name == "output"]   # the next state is not explained
    del model.graph.output[:]
    model.graph.output.extend(keep)
    state = np.zeros((2, 1, 128), np.float32)
    sample_rate = np.array(16000, np.int64)
    # binding the sample rate makes the If's condition a constant: its branch is read in its place
    graph = read_onnx(model, bind={"sr": sample_rate, "state": state}, input_size=(576,))
    x = speech_like(4, seed=1)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for row in range(len(x)):
        (expected, _) = session.run(None, {"input": x[row:row + 1], "sr": sample_rate, "state": state})
        np.testing.assert_allclose(run_graph(graph, x[row:row + 1], dtype=np.float64)[graph.outputs[0]], expected,
                                   atol=1e-5)
    producers = graph.producers()
    products = [n for n in graph.nodes if n.op == "Mul"]
    assert len(products) == 3   # f·c₀ (the bound state, a constant, absorbs), i·g and o·tanh(c)
    for node in products:
        receiver = routing_description(node, {}, producers).split("'")[1]
        assert producers[receiver].op in ("Tanh", "Constant")
    result = Explainer(graph, "epsilon", dtype=np.float64, quiet=True).explain(x.astype(np.float64))
    assert np.all(np.isfinite(result.relevance)) and np.abs(result.relevance).sum() > 0


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_mirrored_padding_and_sqrt_forward_and_gradient(mode):
    """The audio front end's pieces: reflect/edge Pad and Sqrt, against onnxruntime and finite differences."""
    import onnxruntime

    nodes = [helper.make_node("Pad", ["X", "pads"], ["padded"], mode=mode),
             helper.make_node("Mul", ["padded", "padded"], ["square"]),
             helper.make_node("Sqrt", ["square"], ["root"]),
             helper.make_node("Gemm", ["root", "W"], ["Y"], transB=1)]
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(np.array([0, 3, 0, 2], np.int64), "pads"),
             numpy_helper.from_array(rng.normal(size=(2, 11)).astype(np.float32), "W")]
    graph_proto = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 6])],
                                    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = rng.normal(size=(3, 6)).astype(np.float32)
    graph = read_onnx(model)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(run_graph(graph, x, dtype=np.float64)["Y"], session.run(None, {"X": x})[0], atol=1e-5)
    gradient = Explainer(graph, "gradient", dtype=np.float64, quiet=True).explain(x.astype(np.float64), target=0)
    numeric = central_difference(graph, x, 0, output="Y")
    np.testing.assert_allclose(gradient.relevance, numeric, atol=1e-6)
