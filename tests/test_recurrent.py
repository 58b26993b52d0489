"""LSTM, GRU and RNN: forward parity with onnxruntime and onnx's reference evaluator, the writer's
round trip, and the relevance pass (Arras et al. 2017) against conservation, an independent
modified-gradient formulation written here, and hand-computed one- and two-step cases."""

import numpy as np
import pytest

from converters.onnx_reader import read_onnx
from converters.onnx_writer import graph_to_onnx
from lrptool.errors import LrpToolError
from lrptool.executor import run_graph
from lrptool.lrp.engine import ReverseWalk
from recurrent_support import onnxruntime_outputs, recurrent_model, reference_outputs

CASES = [("LSTM", {}), ("LSTM", dict(initial=True)), ("LSTM", dict(peephole=True, initial=True)),
         ("LSTM", dict(lengths=[5, 2, 0])), ("LSTM", dict(lengths=[3, 5, 1], initial=True, peephole=True)),
         ("LSTM", dict(clip=0.5, bias=False)),
         ("GRU", {}), ("GRU", dict(linear_before_reset=1)), ("GRU", dict(initial=True, lengths=[4, 1, 5])),
         ("GRU", dict(linear_before_reset=1, initial=True, lengths=[2, 5, 3])), ("GRU", dict(clip=0.4)),
         ("RNN", {}), ("RNN", dict(initial=True, lengths=[1, 5, 4])), ("RNN", dict(activation="Relu"))]
DIRECTIONS = ["forward", "reverse", "bidirectional"]


def time_major_input(seed=1, steps=5, batch=3, features=4):
    return np.random.default_rng(seed).normal(size=(steps, batch, features)).astype(np.float32)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op, options", CASES)
def test_forward_matches_onnxruntime_and_reference_evaluator(op, options, direction):
    model = recurrent_model(op, direction, **options)
    x = time_major_input()
    expected = onnxruntime_outputs(model, x)
    graph = read_onnx(model)
    for dtype in (np.float32, np.float64):
        ours = run_graph(graph, x, dtype=dtype)
        for name, reference in zip(graph.outputs, expected):
            np.testing.assert_allclose(ours[name], reference, atol=1e-5, rtol=0)
    # the writer's model (time-major with transposes) runs in onnxruntime with the same outputs
    for ours, reference in zip(onnxruntime_outputs(graph_to_onnx(graph), x), expected):
        np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
    # onnx's reference evaluator leaves sequence lengths and clip aside and knows no Relu RNN
    if "lengths" not in options and "clip" not in options and "activation" not in options:
        for ours, reference in zip(reference_outputs(model, x), expected):
            np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("op, options", [("LSTM", dict(initial=True)), ("GRU", dict(linear_before_reset=1)),
                                         ("RNN", {})])
def test_batch_first_layout_keeps_the_batch_free(op, options):
    model = recurrent_model(op, "bidirectional", layout=1, free_batch=not options.get("initial"), **options)
    graph = read_onnx(model)
    x = np.transpose(time_major_input(), (1, 0, 2))
    expected = reference_outputs(model, x)
    ours = run_graph(graph, x, dtype=np.float64)
    for name, reference in zip(graph.outputs, expected):
        np.testing.assert_allclose(ours[name], reference, atol=1e-5, rtol=0)
    for ours, reference in zip(onnxruntime_outputs(graph_to_onnx(graph), x), expected):
        np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


def test_unsupported_settings_are_named():
    from lrptool.errors import UnsupportedModelError

    model = recurrent_model("LSTM")
    model.graph.node[0].attribute.extend([__import__("onnx").helper.make_attribute("input_forget", 1)])
    with pytest.raises(UnsupportedModelError, match="input_forget"):
        read_onnx(model)


# -- relevance -----------------------------------------------------------------------------------

def random_seeds(graph, values, rng=None):
    rng = rng or np.random.default_rng(3)
    return {o: values[o] * rng.normal(size=values[o].shape) for o in graph.outputs}


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op, options", [case for case in CASES if "clip" not in case[1]])
def test_exact_mode_conserves_relevance(op, options, direction):
    """bias = spread: Σ R over the input and the initial states equals Σ R on the outputs (float64)."""
    model = recurrent_model(op, direction, **options)
    graph = read_onnx(model)
    walk = ReverseWalk(graph, mode="lrp", dtype=np.float64, recurrent_bias="spread", keep_layers=True)
    values = walk.forward(time_major_input().astype(np.float64))
    layers, report = walk.run(values, random_seeds(graph, values))
    node = next(n for n in graph.nodes if n.op == op)
    incoming = sum(float(np.sum(layers[t])) for t in node.outputs)
    passed = sum(float(np.sum(layers[t])) for t in node.inputs if t in layers and "lengths" not in t)
    assert abs(incoming - passed) <= 1e-10 * max(1.0, abs(incoming))
    # the default absorbs the biases' share: not conserved
    absorbing = ReverseWalk(graph, mode="lrp", dtype=np.float64, keep_layers=True)
    layers, _ = absorbing.run(values, random_seeds(graph, values))
    kept = sum(float(np.sum(layers[t])) for t in node.inputs if t in layers and "lengths" not in t)
    if options.get("bias", True):
        assert abs(incoming - kept) > 1e-6


# -- an independent formulation: a modified backward pass ------------------------------------------

def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def ratio(z, epsilon):
    """What the ε rule does at a sum node, as a factor on the gradient: z / (z + ε·sign(z))."""
    return z / (z + np.where(z >= 0, epsilon, -epsilon))


def tanh_over(z):
    """tanh(z)/z (1 at 0): the derivative that relevance-passing tanh stands for."""
    safe = np.where(z == 0, 1.0, z)
    return np.where(z == 0, 1.0, np.tanh(safe) / safe)


def modified_backward(op, weights, x, seed_y, seed_h, epsilon, reverse=False, linear_before_reset=0):
    """One direction, all sequences full length, zero initial state. Gates are held constant, tanh′ is
    replaced by tanh(z)/z and each sum node (cell, state update, pre-activation) scales the gradient by
    z/(z + ε·sign(z)). Relevance = x ⊙ that modified gradient. Seeds: gradients on Y (N, T, H) and Y_h."""
    W, R, B = weights
    n, t, _ = x.shape
    hidden = R.shape[1]
    Wb, Rb = B[:len(B) // 2], B[len(B) // 2:]
    order = list(range(t))[::-1] if reverse else list(range(t))
    h, c = np.zeros((n, hidden)), np.zeros((n, hidden))
    record = []
    for k in order:
        xt = x[:, k]
        if op == "LSTM":
            z = xt @ W.T + h @ R.T + Wb + Rb
            zi, zo, zf, zg = np.split(z, 4, axis=1)
            i, o, f, g = sigmoid(zi), sigmoid(zo), sigmoid(zf), np.tanh(zg)
            c_new = f * c + i * g
            h_new = o * np.tanh(c_new)
            record.append(dict(k=k, x=xt, h=h, c=c, i=i, o=o, f=f, zg=zg, c_new=c_new))
            h, c = h_new, c_new
        else:
            gx = xt @ W.T + Wb
            gz = gx[:, :hidden] + h @ R[:hidden].T + Rb[:hidden]
            gr = gx[:, hidden:2 * hidden] + h @ R[hidden:2 * hidden].T + Rb[hidden:2 * hidden]
            zg, rg = sigmoid(gz), sigmoid(gr)
            Rn, Rbn = R[2 * hidden:], Rb[2 * hidden:]
            if linear_before_reset:
                pre = gx[:, 2 * hidden:] + rg * (h @ Rn.T + Rbn)
            else:
                pre = gx[:, 2 * hidden:] + (rg * h) @ Rn.T + Rbn
            n_new = np.tanh(pre)
            h_new = (1 - zg) * n_new + zg * h
            record.append(dict(k=k, x=xt, h=h, z=zg, r=rg, pre=pre, h_new=h_new))
            h = h_new
    g_h, g_c = seed_h.copy(), np.zeros((n, hidden))
    relevance = np.zeros_like(x)
    for step in reversed(record):
        g_h = g_h + seed_y[:, step["k"]]
        if op == "LSTM":
            g_cell = (g_c + g_h * step["o"] * tanh_over(step["c_new"])) * ratio(step["c_new"], epsilon)
            g_c = step["f"] * g_cell
            g_pre = step["i"] * g_cell * tanh_over(step["zg"]) * ratio(step["zg"], epsilon)
            rows = slice(3 * hidden, 4 * hidden)
            relevance[:, step["k"]] = step["x"] * (g_pre @ W[rows])
            g_h = g_pre @ R[rows]
        else:
            g_sum = g_h * ratio(step["h_new"], epsilon)
            g_pre = (1 - step["z"]) * g_sum * tanh_over(step["pre"]) * ratio(step["pre"], epsilon)
            rows = slice(2 * hidden, 3 * hidden)
            relevance[:, step["k"]] = step["x"] * (g_pre @ W[rows])
            if linear_before_reset:
                g_h = step["z"] * g_sum + (step["r"] * g_pre) @ R[rows]
            else:
                g_h = step["z"] * g_sum + step["r"] * (g_pre @ R[rows])
    return relevance


@pytest.mark.parametrize("epsilon", [1e-3, 1e-9])
@pytest.mark.parametrize("op, linear_before_reset", [("LSTM", 0), ("GRU", 0), ("GRU", 1)])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_relevance_equals_the_modified_backward_pass(op, linear_before_reset, direction, epsilon):
    model = recurrent_model(op, direction, linear_before_reset=linear_before_reset, scale=0.8, seed=5)
    graph = read_onnx(model)
    walk = ReverseWalk(graph, mode="lrp", dtype=np.float64, recurrent_epsilon=epsilon)
    x_time = time_major_input(7).astype(np.float64)
    values = walk.forward(x_time)
    rng = np.random.default_rng(8)
    grads = {o: rng.normal(size=values[o].shape) for o in graph.outputs[:2]}
    start = {o: values[o] * g for o, g in grads.items()}   # relevance = output ⊙ its seed gradient
    result, _ = walk.run(values, start)
    ours = np.transpose(result["X"], (1, 0, 2))

    from onnx import numpy_helper
    params = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    x = np.transpose(x_time, (1, 0, 2))
    seed_y = np.transpose(grads["Y"], (1, 2, 0, 3))     # (T, D, N, H) → (D, N, T, H)
    seed_h = grads["Y_h"]                                # (D, N, H)
    expected = np.zeros_like(x)
    for d in range(2 if direction == "bidirectional" else 1):
        weights = (params["W"][d], params["R"][d], params["B"][d])
        expected += modified_backward(op, weights, x, seed_y[d], seed_h[d], epsilon,
                                      reverse=direction == "reverse" or d == 1,
                                      linear_before_reset=linear_before_reset)
    np.testing.assert_allclose(ours, expected, atol=1e-9, rtol=0)


# -- hand-computed cases ------------------------------------------------------------------------------

def scalar_lstm_model(x_values, w, r, b):
    """A one-unit LSTM over one feature, batch 1; w, r, b: (i, o, f, c) weights, recurrences, biases."""
    from onnx import TensorProto, helper, numpy_helper

    steps = len(x_values)
    inits = [numpy_helper.from_array(np.asarray(w, np.float32).reshape(1, 4, 1), "W"),
             numpy_helper.from_array(np.asarray(r, np.float32).reshape(1, 4, 1), "R"),
             numpy_helper.from_array(np.concatenate([b, [0, 0, 0, 0]]).astype(np.float32).reshape(1, 8), "B")]
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=1)
    graph = helper.make_graph([node], "scalar", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [steps, 1, 1])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [steps, 1, 1, 1]),
                               helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def lrp_on_final_state(model, x_values, epsilon, bias="absorb"):
    graph = read_onnx(model)
    walk = ReverseWalk(graph, mode="lrp", dtype=np.float64, recurrent_epsilon=epsilon, recurrent_bias=bias)
    values = walk.forward(np.asarray(x_values, np.float64).reshape(-1, 1, 1))
    start = {"Y_h": values["Y_h"].copy()}
    result, _ = walk.run(values, start)
    return result["X"].reshape(-1), float(values["Y_h"].reshape(-1)[0])


def test_one_step_by_hand():
    """x = 2: c = i·g (c₀ = 0), h = o·tanh(c). All of R = h reaches c, then g's pre-activation
    z = w_c·x + b_c, of which x takes w_c·x / (z + ε)."""
    # values float32 holds exactly: the model's weights are float32
    w, r, b, x, eps = [0.5, -1.0, 0.25, 0.75], [0.0] * 4, [0.125, 0.25, -0.25, -0.5], 2.0, 1e-3
    i = 1 / (1 + np.exp(-(w[0] * x + b[0])))
    o = 1 / (1 + np.exp(-(w[1] * x + b[1])))
    z = w[3] * x + b[3]                          # 1.0
    c = i * np.tanh(z)
    h = o * np.tanh(c)
    r_c = h                                      # all of h's relevance to the cell
    r_g = i * np.tanh(z) / (c + eps) * r_c       # the cell's only summand (f·c₀ = 0)
    expected = w[3] * x / (z + eps) * r_g
    ours, score = lrp_on_final_state(scalar_lstm_model([x], w, r, b), [x], eps)
    assert score == pytest.approx(h, rel=1e-12)
    assert ours[0] == pytest.approx(expected, rel=1e-12)
    spread, _ = lrp_on_final_state(scalar_lstm_model([x], w, r, b), [x], eps, bias="spread")
    assert spread[0] == pytest.approx(h, rel=1e-12)   # one input unit takes everything, bias share too


def test_two_steps_by_hand():
    w, r, b, eps = [0.5, -1.0, 0.25, 0.75], [0.25, 0.125, -0.5, 0.625], [0.125, 0.25, -0.25, -0.5], 1e-3
    x1, x2 = 1.5, -0.75
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    # step 1 from h₀ = c₀ = 0
    i1, f1, o1 = sig(w[0] * x1 + b[0]), sig(w[2] * x1 + b[2]), sig(w[1] * x1 + b[1])
    z1 = w[3] * x1 + b[3]
    c1 = i1 * np.tanh(z1)
    h1 = o1 * np.tanh(c1)
    # step 2
    i2, f2, o2 = (sig(w[k] * x2 + r[k] * h1 + b[k]) for k in (0, 2, 1))
    z2 = w[3] * x2 + r[3] * h1 + b[3]
    c2 = f2 * c1 + i2 * np.tanh(z2)
    h2 = o2 * np.tanh(c2)
    # relevance: R(h2) = h2 → c2, split between f2·c1 and i2·g2
    s2 = c2 + (eps if c2 >= 0 else -eps)
    r_c1 = f2 * c1 / s2 * h2
    r_g2 = i2 * np.tanh(z2) / s2 * h2
    t2 = z2 + (eps if z2 >= 0 else -eps)
    r_x2 = w[3] * x2 / t2 * r_g2
    r_h1 = r[3] * h1 / t2 * r_g2
    # step 1: c1 gets r_c1 + r_h1; its one summand i1·g1
    s1 = c1 + (eps if c1 >= 0 else -eps)
    r_g1 = i1 * np.tanh(z1) / s1 * (r_c1 + r_h1)
    t1 = z1 + (eps if z1 >= 0 else -eps)
    r_x1 = w[3] * x1 / t1 * r_g1
    ours, score = lrp_on_final_state(scalar_lstm_model([x1, x2], w, r, b), [x1, x2], eps)
    assert score == pytest.approx(h2, rel=1e-12)
    np.testing.assert_allclose(ours, [r_x1, r_x2], rtol=1e-12)


# -- gradients and the explainer -----------------------------------------------------------------------

@pytest.mark.parametrize("op, options", [("LSTM", dict(peephole=True, initial=True, lengths=[5, 2, 4])),
                                         ("LSTM", dict(clip=0.7)),
                                         ("GRU", dict(lengths=[3, 5, 1])), ("GRU", dict(linear_before_reset=1)),
                                         ("RNN", {}), ("RNN", dict(activation="Relu"))])
def test_gradient_against_finite_differences(op, options):
    model = recurrent_model(op, "bidirectional", **options)
    graph = read_onnx(model)
    walk = ReverseWalk(graph, mode="gradient", dtype=np.float64)
    x = time_major_input(4).astype(np.float64)
    rng = np.random.default_rng(9)
    weights = {o: rng.normal(size=graph.shapes[o]) for o in graph.outputs}

    def objective(values):
        return sum(float(np.sum(values[o] * weights[o])) for o in graph.outputs)

    values = walk.forward(x)
    result, _ = walk.run(values, dict(weights))
    numeric = np.zeros_like(x)
    step = 1e-6
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (objective(run_graph(graph, up, dtype=np.float64))
                          - objective(run_graph(graph, down, dtype=np.float64))) / (2 * step)
    np.testing.assert_allclose(result["X"], numeric, atol=1e-6, rtol=1e-5)


def dense_on_top(graph, node, rng, outputs=2):
    """The recurrent graph with its Y flattened into a Dense layer: one output to explain."""
    from lrptool.graph import Graph, Node

    width = int(np.prod(graph.shapes[node.outputs[0]][1:]))
    extra = [Node("flat", "Flatten", [node.outputs[0]], ["yf"], dict(axis=1)),
             Node("dense", "Dense", ["yf"], ["out"], {}, dict(weight=rng.normal(size=(outputs, width)).astype(np.float32)))]
    return Graph(graph.inputs, graph.nodes + extra, ["out"])


@pytest.mark.parametrize("bias", ["absorb", "spread"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op, options", [("LSTM", dict(initial=True)), ("GRU", {}), ("GRU", dict(linear_before_reset=1)),
                                         ("RNN", dict(initial=True))])
def test_compiled_explainer_unrolls_the_steps_like_the_eager_walk(op, options, direction, bias):
    from lrptool.lrp import Explainer

    rng = np.random.default_rng(31)
    model = recurrent_model(op, direction, layout=1, free_batch=not options.get("initial"), **options)
    graph = read_onnx(model)
    graph = dense_on_top(graph, next(n for n in graph.nodes if n.op == op), rng)
    x = rng.normal(size=(3, 5, 4)).astype(np.float32)
    compiled = Explainer(graph, "epsilon", compiled=True, recurrent_bias=bias, quiet=True)
    assert compiled.compiled is not None
    eager = Explainer(graph, "epsilon", compiled=False, recurrent_bias=bias, quiet=True).explain(x, target=1)
    result = compiled.explain(x, target=1)
    np.testing.assert_allclose(result.relevance, eager.relevance, rtol=0, atol=1e-4 * np.abs(eager.relevance).max())


def test_what_the_compiled_explainer_leaves_to_the_eager_walk_is_refused_in_one_line():
    from lrptool.lrp import Explainer
    from lrptool.lrp.compile import compile_explainer

    rng = np.random.default_rng(0)
    for model, method, why in ((recurrent_model("LSTM", lengths=[5, 2, 4]), "epsilon", "sequence lengths"),
                               (recurrent_model("GRU", clip=0.5), "epsilon", "clipped"),
                               (recurrent_model("LSTM", peephole=True), "epsilon", "peepholes"),
                               (recurrent_model("LSTM"), "gradient", "gradient through a recurrent layer")):
        graph = read_onnx(model)
        graph = dense_on_top(graph, next(n for n in graph.nodes if n.op in ("LSTM", "GRU")), rng)
        with pytest.raises(LrpToolError, match=why) as error:
            compile_explainer(graph, method)
        assert "\n" not in str(error.value)
        explainer = Explainer(graph, method, quiet=True)
        assert explainer.compiled is None
        x = time_major_input()
        explanation = explainer.explain(x)
        assert explanation.relevance.shape == x.shape and np.all(np.isfinite(explanation.relevance))


def test_exact_mode_through_an_explainer_sums_to_the_score():
    from lrptool.graph import Graph, Node
    from lrptool.lrp import Explainer

    rng = np.random.default_rng(0)
    nodes = [Node("lstm", "LSTM", ["x"], ["y", "h", "c"], dict(hidden_size=3),
                  dict(weight=rng.normal(size=(1, 12, 4)), recurrence=rng.normal(size=(1, 12, 3)))),
             Node("flat", "Flatten", ["h"], ["hf"], dict(axis=1)),
             Node("dense", "Dense", ["hf"], ["out"], {}, dict(weight=rng.normal(size=(2, 3)), bias=np.zeros(2)))]
    graph = Graph({"x": (None, 6, 4)}, nodes, ["out"])
    x = rng.normal(size=(2, 6, 4))
    exact = Explainer(graph, "epsilon", dtype=np.float64, recurrent_bias="spread", epsilon=1e-12, quiet=True)
    result = exact.explain(x, target=0)
    np.testing.assert_allclose(np.sum(result.relevance, axis=(1, 2)), result.scores, rtol=1e-9)
