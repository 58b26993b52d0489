"""The LRP engine: conservation on whole networks, the relevance report, canonization, routing of
non-linear operators, and rules checked against values derived by hand in the tests."""

import numpy as np
import pytest

from converters.onnx_reader import read_onnx
from gradient_support import central_difference
from lrptool.errors import LrpToolError
from lrptool.executor import run_graph
from lrptool.graph import Graph, Node
from lrptool.lrp import Explainer, explain, top_k_targets
from lrptool.lrp.canonize import canonize

from test_architectures import build_conv1d, build_mobilenet, build_resnet, build_vgg

BUILDERS = {"vgg": build_vgg, "resnet": build_resnet, "mobilenet": build_mobilenet, "conv1d": build_conv1d}
INPUTS = {"vgg": (3, 32, 32), "resnet": (3, 32, 32), "mobilenet": (3, 32, 32), "conv1d": (4, 50)}


def bias_free(graph):
    """The canonical graph with every bias and per-channel shift set to zero."""
    canonical, _ = canonize(graph)
    for node in canonical.nodes:
        for key in ("bias",):
            if key in node.params:
                node.params[key] = np.zeros_like(node.params[key])
    return canonical


# z⁺-type rules conserve only where every linear layer feeds a ReLU: a residual branch's last
# convolution can have a negative output whose positive part is zero, and such relevance is lost
CONSERVING = [(a, "zero") for a in sorted(BUILDERS)] + [(a, m) for a in ("vgg", "conv1d")
                                                       for m in ("epsilon-plus", "deep-taylor", "alpha1-beta0")]


@pytest.mark.parametrize("architecture, method", CONSERVING)
def test_relevance_is_conserved_without_biases(architecture, method):
    graph = bias_free(read_onnx(BUILDERS[architecture]("N")))
    x = np.random.default_rng(5).normal(size=(3,) + INPUTS[architecture])
    explanation = explain(graph, x, method, dtype=np.float64, stabiliser=1e-12, epsilon=1e-12, quiet=True)
    sums = explanation.relevance.reshape(3, -1).sum(axis=1)
    np.testing.assert_allclose(sums, explanation.scores, rtol=1e-6)
    assert explanation.report.nonfinite == 0


@pytest.mark.parametrize("architecture", sorted(BUILDERS))
def test_report_accounts_for_what_biases_absorb(architecture):
    graph = read_onnx(BUILDERS[architecture]("N"))
    x = np.random.default_rng(6).normal(size=(2,) + INPUTS[architecture])
    explanation = explain(graph, x, "epsilon", dtype=np.float64, quiet=True)
    report = explanation.report
    assert report.start == pytest.approx(float(explanation.scores.sum()), rel=1e-12)
    assert report.input == pytest.approx(float(explanation.relevance.sum()), rel=1e-9)
    absorbed = sum(n.absorbed for n in report.nodes)
    assert absorbed == pytest.approx(report.start - report.input, rel=1e-6, abs=1e-9)
    # relevance goes missing only at biases and stabilisers: element-wise and data-movement nodes and
    # the gates keep every bit of it
    keepers = {"Relu", "Clip", "HardSwish", "MaxPool", "Flatten", "Reshape", "Mul", "Transpose"}
    for node in report.nodes:
        if node.op in keepers:
            assert node.absorbed == pytest.approx(0.0, abs=1e-12 * abs(report.start)), node
    assert any(abs(n.absorbed) > 1e-6 * abs(report.start) for n in report.nodes if n.rule)


def test_an_output_sigmoid_is_left_out_and_its_logit_explained(capsys):
    """A binary classifier ending in a sigmoid: the score is the logit w·x + b, which LRP-0 gives the inputs as
    w_i x_i (the bias keeps b); the model's probability comes back from it."""
    from lrptool.lrp.canonize import model_outputs

    rng = np.random.default_rng(4)
    weight, bias = rng.normal(size=(1, 5)), np.array([0.3])
    graph = Graph({"x": (None, 5)}, [Node("fc", "Dense", ["x"], ["z"], params={"weight": weight, "bias": bias}),
                                     Node("p", "Sigmoid", ["z"], ["y"])], ["y"])
    canonical, changes = canonize(graph)
    assert changes["output_operators"] == ["Sigmoid"] and canonical.outputs == ["z"]
    x = rng.normal(size=(3, 5))
    result = Explainer(graph, "zero", dtype=np.float64).explain(x, target=[0, 0, 0])
    assert "output sigmoid is left out" in capsys.readouterr().err
    np.testing.assert_allclose(result.scores, x @ weight[0] + bias[0], rtol=1e-12)
    np.testing.assert_allclose(result.relevance, x * weight[0], rtol=1e-5)   # the stabiliser: 1e-6
    probabilities = run_graph(graph, x, dtype=np.float64)["y"]
    np.testing.assert_allclose(model_outputs(changes, result.outputs), probabilities, rtol=1e-12)


def test_canonization_folds_batchnorm_and_keeps_outputs():
    graph = read_onnx(build_vgg("N"))
    canonical, changes = canonize(graph)
    assert len(changes["folded"]) == 3 and changes["softmax_removed"]
    assert not [n for n in canonical.nodes if n.op in ("BatchNorm", "Softmax")]
    assert [n.op for n in graph.nodes].count("BatchNorm") == 3  # the original graph is untouched
    x = np.random.default_rng(1).normal(size=(4, 3, 32, 32))
    logits = run_graph(canonical, x, dtype=np.float64)[canonical.outputs[0]]
    probabilities = run_graph(graph, x, dtype=np.float64)[graph.outputs[0]]
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    # the folded weights are stored in the model's float32
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), probabilities, rtol=1e-6)


def test_caffe_style_batchnorm_then_scale_folds_into_the_convolution():
    rng = np.random.default_rng(2)
    conv = Node("conv", "Conv", ["x"], ["c"], dict(strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1)),
                {"weight": rng.normal(size=(4, 2, 3, 3))})
    bn = Node("bn", "BatchNorm", ["c"], ["b"], {"epsilon": 1e-5},
              {"scale": np.ones(4), "bias": np.zeros(4), "mean": rng.normal(size=4), "var": rng.uniform(1, 2, 4)})
    scale = Node("scale", "Scale", ["b"], ["s"], {}, {"scale": rng.normal(size=4), "bias": rng.normal(size=4)})
    graph = Graph({"x": (None, 2, 5, 5)}, [conv, bn, scale, Node("relu", "Relu", ["s"], ["y"])], ["y"])
    canonical, changes = canonize(graph)
    assert changes["folded"] == ["bn", "scale"] and [n.op for n in canonical.nodes] == ["Conv", "Relu"]
    x = rng.normal(size=(2, 2, 5, 5))
    np.testing.assert_allclose(run_graph(canonical, x, dtype=np.float64)["y"], run_graph(graph, x, dtype=np.float64)["y"],
                               rtol=1e-10, atol=1e-12)


def dense_graph(weight, bias, relu_after=False):
    nodes = [Node("dense", "Dense", ["x"], ["z"], {}, {"weight": weight, "bias": bias})]
    if relu_after:
        nodes.append(Node("relu", "Relu", ["z"], ["y"]))
    return Graph({"x": (None, weight.shape[1])}, nodes, ["y" if relu_after else "z"])


def test_gamma_rule_matches_the_formula():
    rng = np.random.default_rng(3)
    w, b, x = rng.normal(size=(4, 6)), rng.normal(size=4), rng.normal(size=(1, 6))
    gamma = 0.5
    e = explain(dense_graph(w, b), x, "linear=gamma:0.5", target=2, dtype=np.float64, quiet=True)
    # by hand, for output 2 (the only one with relevance): positive or negative case on z's sign
    z = w @ x[0] + b
    j, r = 2, z[2]
    xp, xn = np.maximum(x[0], 0), np.minimum(x[0], 0)
    wp, wn = np.maximum(w[j], 0), np.minimum(w[j], 0)
    if z[j] > 0:
        up, down = w[j] + gamma * wp, w[j] + gamma * wn
        denominator = xp @ up + b[j] + gamma * max(b[j], 0) + xn @ down
        expected = (xp * up + xn * down) * r / denominator
    else:
        up, down = w[j] + gamma * wn, w[j] + gamma * wp
        denominator = xp @ up + b[j] + gamma * min(b[j], 0) + xn @ down
        expected = (xp * up + xn * down) * r / denominator
    np.testing.assert_allclose(e.relevance[0], expected, rtol=1e-5)


def test_zbox_with_per_channel_bounds_matches_the_formula():
    rng = np.random.default_rng(4)
    weight = rng.normal(size=(3, 2, 1, 1))
    graph = Graph({"x": (None, 2, 1, 2)}, [
        Node("conv", "Conv", ["x"], ["z"], dict(strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0)), {"weight": weight}),
        Node("flat", "Flatten", ["z"], ["y"])], ["y"])
    low, high = np.array([-1.0, -2.0]).reshape(2, 1, 1), np.array([1.0, 3.0]).reshape(2, 1, 1)
    x = rng.uniform(-1, 1, size=(1, 2, 1, 2))
    e = explain(graph, x, "linear=zbox", target=4, bounds=(low, high), dtype=np.float64, quiet=True)
    # output 4 = channel 2 at pixel 0
    w = weight[2, :, 0, 0]
    xs, lo, hi = x[0, :, 0, 0], low.reshape(2), high.reshape(2)
    terms = xs * w - lo * np.maximum(w, 0) - hi * np.minimum(w, 0)
    expected = np.zeros((2, 1, 2))
    expected[:, 0, 0] = terms / terms.sum() * (xs @ w)
    np.testing.assert_allclose(e.relevance[0], expected, rtol=1e-5)


def test_residual_add_splits_in_proportion_and_gate_goes_to_the_signal():
    x_node = Node("scale", "Scale", ["x"], ["a"], {}, {"scale": np.array([2.0, 3.0])})
    nodes = [x_node,
             Node("add", "Add", ["a", "x"], ["s"]),
             Node("pool", "GlobalAveragePool", ["s"], ["p"]),
             Node("gate", "Sigmoid", ["p"], ["g"]),
             Node("mul", "Mul", ["s", "g"], ["m"]),
             Node("flat", "Flatten", ["m"], ["y"])]
    graph = Graph({"x": (None, 2, 2, 2)}, nodes, ["y"])
    x = np.abs(np.random.default_rng(8).normal(size=(1, 2, 2, 2))) + 0.1
    e = explain(graph, x, "linear=zero", dtype=np.float64, stabiliser=1e-12, quiet=True, layers=True)
    # all relevance reaches the signal: Σ R = the output
    assert e.relevance.sum() == pytest.approx(e.scores[0], rel=1e-9)
    assert "g" not in e.layers or not np.any(e.layers["g"])
    # Add splits 2x : x per channel 0 (ratio 2/3 : 1/3), 3x : x per channel 1; the scale passes it on
    r_s = e.layers["s"]
    np.testing.assert_allclose(e.relevance, r_s * np.array([1.0, 1.0]).reshape(1, 2, 1, 1), rtol=1e-9)


def test_unroutable_structures_are_refused_naming_the_node():
    nodes = [Node("a", "Relu", ["x"], ["a"]), Node("b", "Tanh", ["x"], ["b"]), Node("product", "Mul", ["a", "b"], ["y"])]
    graph = Graph({"x": (None, 4)}, nodes, ["y"])
    with pytest.raises(LrpToolError, match="'product' \\(Mul\\)"):
        Explainer(graph, "epsilon", quiet=True)
    inner = Graph({"x": (None, 4)}, [Node("soft", "LogSoftmax", ["x"], ["s"], {"axes": (1,)}),
                                     Node("d", "Dense", ["s"], ["y"], {}, {"weight": np.ones((2, 4))})], ["y"])
    with pytest.raises(LrpToolError, match="'soft' \\(LogSoftmax\\)"):
        Explainer(inner, "epsilon", quiet=True)
    # the gradient methods have a derivative for both
    assert Explainer(graph, "gradient", quiet=True).explain(np.ones((1, 4))).relevance.shape == (1, 4)


def test_targets_and_top_k():
    rng = np.random.default_rng(9)
    graph = dense_graph(rng.normal(size=(5, 3)), np.zeros(5))
    x = rng.normal(size=(2, 3))
    e = explain(graph, x, "epsilon", target=[1, 4], dtype=np.float64, quiet=True)
    assert list(e.targets) == [1, 4]
    np.testing.assert_allclose(e.scores, (x @ graph.nodes[0].params["weight"].T)[[0, 1], [1, 4]])
    ranked = top_k_targets(e.outputs, 3)
    assert ranked.shape == (3, 2) and list(ranked[0]) == list(np.argmax(e.outputs, axis=1))
    with pytest.raises(LrpToolError, match="out of range"):
        explain(graph, x, "epsilon", target=7, quiet=True)


def test_maxpool_average_option_spreads_in_proportion():
    graph = Graph({"x": (None, 1, 2, 2)}, [
        Node("pool", "MaxPool", ["x"], ["p"], dict(kernel_shape=(2, 2), strides=(2, 2), dilations=(1, 1), pads=(0, 0, 0, 0))),
        Node("flat", "Flatten", ["p"], ["y"])], ["y"])
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    winner = explain(graph, x, "epsilon", dtype=np.float64, quiet=True).relevance
    np.testing.assert_allclose(winner[0, 0], [[0, 0], [0, 4.0]])
    spread = explain(graph, x, "epsilon", maxpool="average", dtype=np.float64, quiet=True).relevance
    np.testing.assert_allclose(spread[0, 0], np.array([[1.0, 2.0], [3.0, 4.0]]) / 10 * 4, rtol=1e-6)


def test_sensitivity_is_the_squared_gradient_and_sums_to_its_norm():
    rng = np.random.default_rng(10)
    graph = dense_graph(rng.normal(size=(3, 4)), rng.normal(size=3), relu_after=True)
    x = rng.normal(size=(1, 4))
    e = explain(graph, x, "sensitivity", target=0, dtype=np.float64, quiet=True)
    w = graph.nodes[0].params["weight"]
    active = float((w[0] @ x[0] + graph.nodes[0].params["bias"][0]) > 0)
    np.testing.assert_allclose(e.relevance[0], (w[0] * active) ** 2)
    assert e.relevance.sum() == pytest.approx(np.sum((w[0] * active) ** 2))


@pytest.mark.parametrize("architecture", sorted(BUILDERS))
@pytest.mark.parametrize("method", ["epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1", "gradient"])
def test_float32_onnxruntime_path_agrees_with_the_float64_numpy_path(architecture, method):
    """The eager walk in float32 runs its forward pass and convolution primitives in onnxruntime; in
    float64 in NumPy. (The compiled explainer is checked in test_compiled.py.)"""
    graph = read_onnx(BUILDERS[architecture]("N"))
    x = np.random.default_rng(12).uniform(-1, 1, size=(2,) + INPUTS[architecture])
    options = dict(bounds=(-1.0, 1.0), quiet=True)
    fast = Explainer(graph, method, dtype=np.float32, compiled=False, **options)
    exact = Explainer(graph, method, dtype=np.float64, **options).explain(x)
    result = fast.explain(x, target=exact.targets)
    assert fast.walk.recorder.backend == "onnxruntime"
    assert result.relevance.dtype == np.float32
    error = np.linalg.norm(result.relevance - exact.relevance) / np.linalg.norm(exact.relevance)
    assert error < 1e-4, error
    numpy_only = Explainer(graph, method, dtype=np.float32, forward_backend="lrptool", **options)
    numpy_only.walk.ops.cache.sessions = None
    other = numpy_only.explain(x, target=exact.targets)
    assert np.linalg.norm(other.relevance - exact.relevance) / np.linalg.norm(exact.relevance) < 1e-4


def test_rule_maps_by_type_name_position_and_json_file(tmp_path):
    import json

    from lrptool.lrp.presets import assign_rules, rule_map_from_spec

    graph, _ = canonize(read_onnx(build_vgg("N")))
    linear = [n.name for n in graph.nodes if n.op in ("Conv", "Dense")]
    spec_file = tmp_path / "rules.json"
    spec_file.write_text(json.dumps({"preset": "epsilon-plus", "rules": {
        "last": "epsilon:0.5", f"name:{linear[1]}": "gamma:0.1", "first": "wsquare"}}))
    for spec in (str(spec_file), f"epsilon-plus,last=epsilon:0.5,name:{linear[1]}=gamma:0.1,first=wsquare"):
        rules = assign_rules(graph, rule_map_from_spec(spec))
        names = {name: rules[name].name for name in linear}
        assert names[linear[0]] == "wsquare" and names[linear[1]] == "gamma0.1"
        assert names[linear[2]] == "zplus" and names[linear[-2]] == "epsilon" and names[linear[-1]] == "epsilon"
        assert rules[linear[-1]].epsilon == 0.5 and rules[linear[-2]].epsilon == 1e-6
    with pytest.raises(LrpToolError, match="unknown rule"):
        rule_map_from_spec("conv=nonsense")
    with pytest.raises(LrpToolError, match="not a readable JSON"):
        bad = tmp_path / "bad.json"
        bad.write_text("{")
        rule_map_from_spec(str(bad))


def test_results_survive_the_next_batch():
    """The float32 forward pass writes into buffers reused from batch to batch."""
    graph = read_onnx(build_vgg("N"))
    explainer = Explainer(graph, "epsilon-plus-flat", quiet=True)
    rng = np.random.default_rng(13)
    first_x, second_x = rng.normal(size=(2, 3, 32, 32)), rng.normal(size=(2, 3, 32, 32))
    first = explainer.explain(first_x)
    kept = (first.outputs.copy(), first.relevance.copy(), first.scores.copy())
    explainer.explain(second_x)
    np.testing.assert_array_equal(first.outputs, kept[0])
    np.testing.assert_array_equal(first.relevance, kept[1])
    again = explainer.explain(first_x)
    np.testing.assert_allclose(again.relevance, kept[1], rtol=1e-6)


def test_gradients_match_finite_differences():
    """The vector-Jacobian products of the non-linear operators, against central differences."""
    rng = np.random.default_rng(14)
    w = rng.normal(size=(6, 2, 3, 3)) * 0.5
    conv = dict(strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1))
    nodes = [Node("conv", "Conv", ["x"], ["c"], conv, {"weight": w}),
             Node("abs", "Abs", ["c"], ["a"]),
             Node("pow", "Pow", ["a"], ["p"], {"exponent": 1.5}),
             Node("elu", "Elu", ["c"], ["e"]),
             Node("max", "Max", ["p", "e"], ["m"]),
             Node("lrn", "LRN", ["m"], ["l"], {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 1.0}),
             Node("swish", "HardSwish", ["l"], ["h"]),
             Node("sig", "Sigmoid", ["c"], ["s"]),
             Node("mul", "Mul", ["h", "s"], ["g"]),
             Node("tanh", "Tanh", ["g"], ["t"]),
             Node("div", "Div", ["t", "s"], ["d"]),
             Node("sub", "Sub", ["d", "e"], ["q"]),
             Node("leaky", "LeakyRelu", ["q"], ["k"], {"alpha": 0.1}),
             Node("pool", "GlobalAveragePool", ["k"], ["o"]),
             Node("flat", "Flatten", ["o"], ["y"])]
    graph = Graph({"x": (None, 2, 4, 4)}, nodes, ["y"])
    x = rng.normal(size=(1, 2, 4, 4))
    e = explain(graph, x, "gradient", target=2, dtype=np.float64, quiet=True)
    numeric = central_difference(graph, x, 2, output="y")
    np.testing.assert_allclose(e.relevance, numeric, rtol=1e-4, atol=1e-7)


def test_elementwise_max_sends_relevance_to_the_winner():
    graph = Graph({"x": (None, 4)}, [Node("neg", "Scale", ["x"], ["n"], {}, {"scale": -np.ones(4)}),
                                     Node("max", "Max", ["x", "n"], ["m"]),
                                     Node("dense", "Dense", ["m"], ["y"], {}, {"weight": np.ones((1, 4))})], ["y"])
    x = np.array([[1.0, -2.0, 3.0, -4.0]])
    e = explain(graph, x, "linear=zero", dtype=np.float64, stabiliser=1e-12, quiet=True, layers=True)
    # |x| = max(x, -x); the dense layer spreads 10 as |x|; x wins where positive, -x where negative
    np.testing.assert_allclose(e.layers["m"], [[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(e.layers["n"], [[0.0, 2.0, 0.0, 4.0]])


def test_unfolded_per_channel_nodes_in_the_gradient_and_the_epsilon_rule():
    """BatchNorm and a bias-free Scale after a ReLU stay unfolded; their transpose is the per-channel factor."""
    rng = np.random.default_rng(15)
    nodes = [Node("relu", "Relu", ["x"], ["r"]),
             Node("bn", "BatchNorm", ["r"], ["b"], {"epsilon": 1e-3},
                  {"scale": rng.uniform(0.5, 2, 3), "bias": rng.normal(size=3), "mean": rng.normal(size=3),
                   "var": rng.uniform(0.5, 2, 3)}),
             Node("scale", "Scale", ["b"], ["s"], {}, {"scale": rng.normal(size=3)}),
             Node("flat", "Flatten", ["s"], ["y"])]
    graph = Graph({"x": (None, 3, 2, 2)}, nodes, ["y"])
    x = rng.normal(size=(1, 3, 2, 2))
    gradient = explain(graph, x, "gradient", target=5, dtype=np.float64, quiet=True).relevance
    bn, scale = nodes[1].params, nodes[2].params
    factor = bn["scale"] / np.sqrt(bn["var"] + 1e-3) * scale["scale"]
    expected = np.zeros_like(x)
    expected[0, 1, 0, 1] = factor[1] * (x[0, 1, 0, 1] > 0)   # output 5 = channel 1, pixel (0, 1)
    np.testing.assert_allclose(gradient, expected, rtol=1e-12)
    relevance = explain(graph, x, "epsilon,batchnorm=epsilon:1e-9", target=5, dtype=np.float64, quiet=True)
    # through the BatchNorm with the ε rule: R_in = x·a·R/(x·a + c); the Scale (same category, no bias)
    # passes it on up to its stabiliser ε = 1e-9
    a = bn["scale"] / np.sqrt(bn["var"] + 1e-3)
    c = bn["bias"] - bn["mean"] * a
    r = np.maximum(x[0, 1, 0, 1], 0)
    out = (r * a[1] + c[1]) * scale["scale"][1]
    assert relevance.relevance[0, 1, 0, 1] == pytest.approx(r * a[1] * out / (r * a[1] + c[1]), rel=1e-6)
