"""The compiled explainer against the eager float64 walk, operator by operator and method by method;
the compiled model runs in plain onnxruntime without lrptool."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest

from converters.onnx_reader import read_onnx
from converters.onnx_writer import EXPORTERS
from lrptool.graph import Graph, Node
from lrptool.lrp import GRADIENT_METHODS, PRESET_NAMES, Explainer
from lrptool.lrp.canonize import canonize
from lrptool.lrp.compile import (CompiledSession, compile_explainer, fusable_summand, method_walk,
                                 rectified_sums)
from lrptool.lrp.presets import innvestigate_presets
from lrptool.lrp.reverse import REVERSE
from lrptool.ops.base import OPERATORS
from gradient_support import central_difference
from test_architectures import build_conv1d, build_mobilenet, build_resnet, build_vgg
from text_support import normalisation_zoo, text_zoo

BUILDERS = {"vgg": build_vgg, "resnet": build_resnet, "mobilenet": build_mobilenet, "conv1d": build_conv1d}
COMPILED_METHODS = [m for m in PRESET_NAMES + GRADIENT_METHODS if m not in ("random", "smoothgrad")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def relative_error(actual, expected):
    return np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30)


#: iNNvestigate's αβ divides by x⁺W⁺ + x⁻W⁻ + b (and its mirror), sums that cross zero; its Deep Taylor
#: spreads average pooling evenly, also onto positions whose residual sum is near zero. On such nets
#: float32 itself is only that accurate: the eager float32 walk is the yardstick there.
FLOAT32_LIMITED = set(innvestigate_presets())


def compare(graph, x, method, bound=1e-5, **options):
    options = dict(dict(bounds=(-1.0, 1.0), quiet=True), **options)
    exact = Explainer(graph, method, dtype=np.float64, compiled=False, **options).explain(x)
    compiled = Explainer(graph, method, dtype=np.float32, compiled=True, **options)
    result = compiled.explain(x, target=exact.targets)
    np.testing.assert_array_equal(result.targets, exact.targets)
    np.testing.assert_allclose(result.outputs, exact.outputs, rtol=1e-4, atol=1e-5)
    error = relative_error(result.relevance, exact.relevance)
    if error > bound and method in FLOAT32_LIMITED:
        eager = Explainer(graph, method, dtype=np.float32, compiled=False, **options)
        limit = relative_error(eager.explain(x.astype(np.float32), target=exact.targets).relevance, exact.relevance)
        bound = max(bound, 1.5 * limit)
    assert error <= bound, (method, error)
    return result, exact


@pytest.fixture(scope="module")
def architectures():
    graphs = {name: read_onnx(build("N")) for name, build in BUILDERS.items()}
    return graphs


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("method", COMPILED_METHODS)
def test_compiled_equals_the_eager_float64_walk(architectures, name, method):
    graph = architectures[name]
    shape = graph.inputs[next(iter(graph.inputs))][1:]
    x = np.random.default_rng(21).uniform(-1, 1, size=(3,) + tuple(shape))
    compare(graph, x, method)


def test_smoothgrad_and_integrated_gradients_run_the_compiled_gradient(architectures):
    graph = architectures["vgg"]
    x = np.random.default_rng(22).uniform(-1, 1, size=(2, 3, 32, 32))
    for method in ("smoothgrad", "integrated-gradients"):
        options = dict(quiet=True, samples=4, steps=8, seed=3)
        exact = Explainer(graph, method, dtype=np.float64, compiled=False, **options).explain(x)
        compiled = Explainer(graph, method, compiled=True, **options)
        assert compiled.compiled is not None
        result = compiled.explain(x, target=exact.targets)
        assert relative_error(result.relevance, exact.relevance) < 1e-4


# -- every operator: a graph that holds each one, for the relevance and the gradient ---------------

def operator_zoo():
    """One graph with every IR operator that relevance crosses; softmax is covered by softmax_graph."""
    rng = np.random.default_rng(23)

    def r(*shape, scale=0.5):
        return rng.normal(size=shape) * scale
    window = dict(strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0))
    nodes = [
        Node("ct", "ConvTranspose", ["x"], ["ct"], dict(window, output_padding=(0, 0)),
             {"weight": r(2, 3, 2, 2), "bias": r(3)}),                                     # (N,3,7,7)
        Node("bn", "BatchNorm", ["ct"], ["bn"], {"epsilon": 1e-5},
             {"scale": r(3) + 1, "bias": r(3), "mean": r(3), "var": np.abs(r(3)) + 0.5}),
        Node("scale", "Scale", ["bn"], ["sc"], {}, {"scale": r(3) + 1, "bias": r(3)}),
        Node("bias", "Bias", ["sc"], ["bi"], {}, {"bias": r(3)}),
        Node("relu", "Relu", ["bi"], ["re"]),
        Node("prelu", "PRelu", ["bi"], ["pr"], {}, {"slope": np.abs(r(3, 1, 1))}),
        Node("selu", "Selu", ["bi"], ["se"]),
        Node("hsig", "HardSigmoid", ["bi"], ["hs"]),
        Node("clip", "Clip", ["bi"], ["cl"], {"min": -0.5, "max": 0.5}),
        Node("thr", "ThresholdedRelu", ["bi"], ["th"], {"alpha": 0.1}),
        Node("sum", "Sum", ["re", "pr", "se"], ["s1"]),
        Node("add", "Add", ["s1", "cl"], ["s2"]),
        Node("gate", "Mul", ["s2", "hs"], ["m"]),
        Node("add2", "Add", ["m", "th"], ["a2"]),
        Node("maxpool", "MaxPool", ["a2"], ["mp"], dict(window, kernel_shape=(2, 2))),   # (N,3,6,6)
        Node("avgpool", "AveragePool", ["a2"], ["ap"], dict(kernel_shape=(3, 3), strides=(2, 2), dilations=(1, 1),
                                                            pads=(1, 1, 1, 1))),          # (N,3,4,4)
        Node("concat", "Concat", ["mp", "x"], ["cc"], {"axis": 1}),                     # (N,5,6,6)
        Node("split", "Split", ["cc"], ["sp1", "sp2"], {"axis": 1, "split": (2, 3)}),
        Node("slice", "Slice", ["sp2"], ["sl"], {"starts": (1,), "ends": (5,), "axes": (2,), "steps": (1,)}),
        Node("pad", "Pad", ["sl"], ["pd"], {"pads": (0, 0, 1, 0, 0, 0, 1, 0)}),         # (N,3,6,6)
        Node("upsample", "Upsample", ["sp1"], ["up"], {"scales": (2, 2)}),             # (N,2,12,12)
        Node("gmax", "GlobalMaxPool", ["up"], ["gm"]),                                  # (N,2,1,1)
        Node("transpose", "Transpose", ["pd"], ["tr"], {"perm": (0, 1, 3, 2)}),
        Node("mean", "ReduceMean", ["tr"], ["rm"], {"axes": (3,), "keepdims": True}),   # (N,3,6,1)
        Node("squeeze", "Squeeze", ["rm"], ["sq"], {"axes": (3,)}),                     # (N,3,6)
        Node("unsqueeze", "Unsqueeze", ["sq"], ["us"], {"axes": (2,)}),                 # (N,3,1,6)
        Node("reshape", "Reshape", ["us"], ["rs"], {"shape": (None, 18)}),
        Node("flat_ap", "Flatten", ["ap"], ["fa"]),
        Node("flat_gm", "Flatten", ["gm"], ["fg"]),
        Node("gap", "GlobalAveragePool", ["sp1"], ["ga"]),
        Node("flat_ga", "Flatten", ["ga"], ["fga"]),
        Node("joined", "Concat", ["rs", "fa", "fg", "fga"], ["jn"], {"axis": 1}),        # (N,70)
        Node("dense", "Dense", ["jn"], ["dn"], {}, {"weight": r(10, 70, scale=0.2), "bias": r(10)}),
        Node("offset", "Constant", [], ["off"], {}, {"value": r(10)}),
        Node("sub", "Sub", ["dn", "off"], ["y"]),
    ]
    return Graph({"x": (None, 2, 6, 6)}, nodes, ["y"])


def softmax_graph():
    """Softmax and LogSoftmax inside a network (relevance is refused at the LogSoftmax: gradients only)."""
    rng = np.random.default_rng(24)
    nodes = [Node("d1", "Dense", ["x"], ["a"], {}, {"weight": rng.normal(size=(6, 5))}),
             Node("sm", "Softmax", ["a"], ["s"], {"axes": (1,)}),
             Node("lsm", "LogSoftmax", ["a"], ["l"], {"axes": (1,)}),
             Node("add", "Add", ["s", "l"], ["b"]),
             Node("lrn_in", "Unsqueeze", ["b"], ["u"], {"axes": (2, 3)}),
             Node("lrn", "LRN", ["u"], ["n"], {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 1.0}),
             Node("abs", "Abs", ["n"], ["ab"]),
             Node("pow", "Pow", ["ab"], ["p"], {"exponent": 1.5}),
             Node("elu", "Elu", ["n"], ["e"]),
             Node("tanh", "Tanh", ["e"], ["t"]),
             Node("sig", "Sigmoid", ["n"], ["sg"]),
             Node("swish", "HardSwish", ["t"], ["hw"]),
             Node("sqrt", "Sqrt", ["p"], ["rt"]),
             Node("max", "Max", ["rt", "hw"], ["mx"]),
             Node("leaky", "LeakyRelu", ["mx"], ["lk"], {"alpha": 0.1}),
             Node("div", "Div", ["lk", "sg"], ["dv"]),
             Node("flat", "Flatten", ["dv"], ["f"]),
             Node("d2", "Dense", ["f"], ["y"], {}, {"weight": rng.normal(size=(3, 6))})]
    return Graph({"x": (None, 5)}, nodes, ["y"])


def test_every_operator_has_its_reverse_entry_exporter_and_compiled_form():
    zoo_ops = {n.op for n in operator_zoo().nodes} | {n.op for n in softmax_graph().nodes}
    zoo_ops |= {n.op for n in text_zoo().nodes} | {n.op for n in normalisation_zoo().nodes}  # see tests/test_text.py
    # lrptool's own operators (plug-ins loaded by other tests bring their own, eager-only)
    registered = {op for op, definition in OPERATORS.items() if type(definition).__module__.startswith("lrptool.ops")}
    assert registered <= set(REVERSE), registered - set(REVERSE)
    assert registered <= set(EXPORTERS), registered - set(EXPORTERS)
    # every operator is exercised by the comparisons below: its forward (lrptool's executor against
    # onnxruntime on the exported graph), its relevance and gradient (eager against compiled) and
    # its gradient against finite differences (with test_lrp_engine's, which holds Conv)
    # (the recurrent layers, eager only, have their own comparisons in test_recurrent)
    recurrent = {op for op in registered if REVERSE[op].kind == "recurrent"}
    assert recurrent == {"LSTM", "GRU", "RNN"}
    assert registered - recurrent <= zoo_ops | {"Conv"}, registered - recurrent - zoo_ops
    assert {REVERSE[op].kind for op in registered} <= {"rule", "pass", "move", "winner", "split", "gate", "constant",
                                                        "refuse", "recurrent", "embedding",
                                                        "normalise"}
    # an operator that takes a rule has both primitives and exactly one rule-map category
    from lrptool.lrp.presets import CATEGORIES
    from lrptool.lrp.reverse import RULE_OPERATORS
    for op in RULE_OPERATORS:
        assert REVERSE[op].linear.eager and REVERSE[op].linear.emitting, op
        assert sum(op in CATEGORIES[c] for c in ("conv", "dense", "avgpool", "batchnorm")) == 1, op


@pytest.mark.parametrize("method", ["epsilon", "epsilon-plus", "alpha1-beta0", "gradient", "guided-backprop",
                                    "gradient-x-input"])
def test_every_operator_compiled_equals_eager(method):
    graph = operator_zoo()
    x = np.random.default_rng(25).uniform(-1, 1, size=(3, 2, 6, 6))
    compare(graph, x, method)


@pytest.mark.parametrize("build, shape", [(softmax_graph, (2, 5)), (operator_zoo, (1, 2, 6, 6))])
def test_every_vector_jacobian_product_against_finite_differences(build, shape):
    """Every operator's gradient, eager and compiled, against central differences of the forward pass."""
    graph = build()
    x = np.random.default_rng(26).normal(size=shape) * 0.7
    result, exact = compare(graph, x, "gradient")
    np.testing.assert_allclose(exact.relevance, central_difference(graph, x, exact.targets),
                               rtol=1e-4, atol=1e-6)


# -- targets and ties ------------------------------------------------------------------------------

def test_targets_explicit_per_sample_and_top_k(architectures):
    graph = architectures["resnet"]
    x = np.random.default_rng(27).uniform(-1, 1, size=(3, 3, 32, 32))
    eager = Explainer(graph, "epsilon-plus-flat", compiled=False, quiet=True, dtype=np.float64)
    compiled = Explainer(graph, "epsilon-plus-flat", compiled=True, quiet=True)
    for target in (4, np.array([1, 7, 2]), "pred"):
        expected = eager.explain(x, target=target)
        actual = compiled.explain(x, target=target)
        np.testing.assert_array_equal(actual.targets, expected.targets)
        assert relative_error(actual.relevance, expected.relevance) < 1e-5
    from lrptool.lrp import top_k_targets
    ranking = top_k_targets(compiled.explain(x).outputs, 3)
    for row in ranking:
        assert relative_error(compiled.explain(x, target=row).relevance, eager.explain(x, target=row).relevance) < 1e-5
    with pytest.raises(Exception, match="out of range"):
        compiled.explain(x, target=99)


def test_residual_sums_divide_by_their_relu_only_where_relevance_vanishes_below_zero(architectures):
    # a residual sum y read by a ReLU alone divides by ReLU(y) + ε when every reader of the ReLU's
    # output passes relevance back in proportion to it; the eager walk's y ± ε is the reference
    graph = architectures["resnet"]
    canonical, _ = canonize(graph)
    x = np.random.default_rng(41).uniform(-1, 1, size=(3, 3, 32, 32))
    flat_pool = {"preset": "epsilon-plus", "rules": {"avgpool": "flat"}}
    found = {}
    for method in ("epsilon-plus-flat", "epsilon-alpha2-beta1-flat", flat_pool):
        walk = method_walk(canonical, method, (-1.0, 1.0), 1e-6, 1e-6, 0.25, "winner", 1e-3, "absorb")
        found[str(method)] = rectified_sums(canonical, walk)
        # (flat on pooled near-zero sums is only float32-accurate to 2e-4 with either denominator;
        # dividing that sum by ReLU(y) + ε would be off by a factor of 10⁴)
        compare(graph, x, method, bound=1e-3 if method is flat_pool else 1e-5)
    assert len(found["epsilon-plus-flat"]) == 2
    # the flat rule at the pooling spreads relevance onto zeros too: that sum keeps y ± ε
    pooled = next(n.inputs[0] for n in canonical.nodes if n.op == "GlobalAveragePool")
    assert found[str(flat_pool)] == {y: r for y, r in found["epsilon-plus-flat"].items() if r != pooled}
    assert len(found[str(flat_pool)]) == 1


def test_pointwise_convolutions_run_as_matrix_products_with_the_stabiliser_in_their_bias(architectures):
    # a 1×1 convolution of the rules is one MatMul over the channels; z⁺ + ε of such a layer is
    # that product plus one column b⁺ + ε, with no separate addition of ε
    graph = architectures["resnet"]
    canonical, _ = canonize(graph)
    pointwise = [n for n in canonical.nodes if n.op == "Conv" and n.params["weight"].shape[2:] == (1, 1)
                 and tuple(n.attrs["strides"]) == (1, 1)]
    model = compile_explainer(graph, "epsilon-plus-flat", epsilon=1e-6)
    constants = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer]
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in pointwise:
        column = (np.maximum(node.params["bias"], 0).astype(np.float64) + 1e-6).astype(np.float32).reshape(-1, 1)
        assert any(c.shape == column.shape and np.array_equal(c, column) for c in constants), node.name
    scalars = {t.name for t in model.graph.initializer if len(t.dims) == 0}
    for node in model.graph.node:
        if node.op_type == "Add" and node.input[1] in scalars and node.input[0] in producers:
            reshape = producers[node.input[0]]
            assert not (reshape.op_type == "Reshape" and producers[reshape.input[0]].op_type == "Add"
                        and producers[producers[reshape.input[0]].input[0]].op_type == "MatMul")
    assert sum(n.op_type == "MatMul" for n in model.graph.node) >= 2 * len(pointwise)
    compare(graph, np.random.default_rng(8).uniform(-1, 1, size=(2, 3, 32, 32)), "epsilon-plus-flat")


def test_relevance_meeting_at_a_residual_input_is_one_product_with_it(architectures):
    # x ⊙ s (the sum's share) + x ⊙ c (the convolution's) is emitted as x ⊙ (s + c), and where the
    # sum before x divides it by x + ε, as (s + c) ⊙ x/(x + ε)
    graph = architectures["resnet"]
    canonical, _ = canonize(graph)
    readers = {}
    for node in canonical.nodes:
        for t in node.inputs:
            readers.setdefault(t, []).append(node.op)
    junctions = [t for t, ops in readers.items() if "Add" in ops and "Conv" in ops]
    assert junctions
    model = compile_explainer(graph, "epsilon-plus-flat")
    for t in junctions:
        products = [n for n in model.graph.node if n.op_type == "Mul" and t in n.input]
        assert len(products) <= 1, t
    compare(graph, np.random.default_rng(9).uniform(-1, 1, size=(2, 3, 32, 32)), "epsilon-plus-flat")


def test_residual_summands_read_as_relu_minus_the_other_only_where_nothing_else_reads_them(architectures):
    # a ⊙ s at a rectified sum reads a as ReLU(y) − b when only the split reads the convolution's
    # output a, so the forward pass keeps convolution + sum + ReLU fused; the γ rule reads that
    # output (its sign masks), so it keeps a
    graph = architectures["resnet"]
    canonical, _ = canonize(graph)
    x = np.random.default_rng(43).uniform(-1, 1, size=(3, 3, 32, 32))
    summands = {}
    for method in ("epsilon-plus-flat", "epsilon-gamma-box"):
        walk = method_walk(canonical, method, (-1.0, 1.0), 1e-6, 1e-6, 0.25, "winner", 1e-3, "absorb")
        summands[method] = [fusable_summand(canonical, walk, y) for y in rectified_sums(canonical, walk)]
        compare(graph, x, method)
    producers = canonical.producers()
    assert len(summands["epsilon-plus-flat"]) == 2
    assert all(pair is not None and producers[pair[0]].op == "Conv" for pair in summands["epsilon-plus-flat"])
    assert summands["epsilon-gamma-box"] == [None, None]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_an_images_relevance_does_not_depend_on_its_batch(architectures, name):
    # bit for bit: a resumed or sharded run redoes single images and must write the same files
    # (a ReduceSum over channels once summed in another order at batch 1)
    shape = (4, 50) if name == "conv1d" else (3, 32, 32)
    x = np.random.default_rng(5).uniform(-1, 1, size=(4,) + shape).astype(np.float32)
    explainer = Explainer(architectures[name], "epsilon-plus-flat", compiled=True, quiet=True)
    whole = explainer.explain(x).relevance
    alone = np.concatenate([explainer.explain(x[i:i + 1]).relevance for i in range(len(x))])
    np.testing.assert_array_equal(whole, alone)


def test_max_pool_ties_go_to_the_same_winner(architectures):
    graph = architectures["vgg"]
    x = np.full((2, 3, 32, 32), 0.25)
    result, exact = compare(graph, x, "epsilon-plus", bound=1e-5)
    np.testing.assert_array_equal(result.relevance != 0, exact.relevance != 0)


@pytest.mark.parametrize("name", ["vgg", "resnet"])
@pytest.mark.parametrize("optimisation", ["ORT_ENABLE_BASIC", "ORT_ENABLE_ALL"])
def test_forward_only_steps_of_the_rules_run_just_before_they_are_read(tmp_path, architectures, name, optimisation):
    # z⁺ of a recorded input depends on the forward pass alone; run early, every layer's copy
    # would stay alive until the reverse walk reached it. In onnxruntime's own execution order
    # (its profile), with or without its blocked-layout rewrite, a division of relevance runs
    # between any two such convolutions: each runs when its layer's relevance has arrived
    model = compile_explainer(architectures[name], "epsilon-plus-flat")
    produced_by_rules = {t for n in model.graph.node if n.name.startswith("lrp/") for t in n.output}
    forward_only = {n.name: n.output[0] for n in model.graph.node
                    if n.name.startswith("lrp/") and n.op_type == "Conv" and n.input[0] not in produced_by_rules}
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, optimisation)
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.ones((2, 3, 32, 32), np.float32)})
    with open(session.end_profiling()) as handle:
        events = [e for e in json.load(handle) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    events.sort(key=lambda e: e["ts"])
    steps = []
    for event in events:
        ran = event["name"][:-len("_kernel_time")]
        if event["args"]["op_name"] == "Div" and ran.startswith("lrp/"):
            steps.append("divide")
        elif any(ran == node or ran.startswith(output + "_nchwc") for node, output in forward_only.items()):
            steps.append("z+")
    assert steps.count("z+") >= 2
    assert "z+ z+" not in " ".join(steps)
    assert steps[0] == "divide"


# -- the model on its own --------------------------------------------------------------------------

def test_the_compiled_model_runs_in_plain_onnxruntime_without_lrptool(tmp_path, architectures):
    graph = architectures["mobilenet"]
    x = np.random.default_rng(28).uniform(-1, 1, size=(2, 3, 32, 32)).astype(np.float32)
    model = compile_explainer(graph, "epsilon-gamma-box", bounds=(-1.0, 1.0))
    (tmp_path / "explainer.onnx").write_bytes(model.SerializeToString())
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, json, numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(tmp_path / 'explainer.onnx')!r}, providers=['CPUExecutionProvider'])\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "logits, relevance, target = s.run(None, {'x': x})\n"
        f"np.save({str(tmp_path / 'relevance.npy')!r}, relevance)\n"
        "_, _, chosen = s.run(None, {'x': x, 'target': np.array([5, 6])})\n"
        "print(json.dumps({'lrptool': any(m.split('.')[0] in ('lrptool', 'converters') for m in sys.modules),\n"
        "                  'target': target.tolist(), 'chosen': chosen.tolist()}))\n")
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env=environment)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["lrptool"] is False and report["chosen"] == [5, 6]
    exact = Explainer(graph, "epsilon-gamma-box", bounds=(-1.0, 1.0), compiled=False, quiet=True,
                      dtype=np.float64).explain(x.astype(np.float64))
    assert report["target"] == exact.targets.tolist()
    assert relative_error(np.load(tmp_path / "relevance.npy"), exact.relevance) < 1e-5


def test_compile_command_and_inspect_refuse_the_same_nodes(tmp_path):
    from lrptool import cli
    from test_explain_cli import bias_free_mnist

    model = bias_free_mnist(tmp_path / "mnist.onnx")
    out = tmp_path / "explainer.onnx"
    with pytest.raises(SystemExit) as done:
        cli.main(["compile", str(model), "-o", str(out), "--preset", "epsilon-gamma-box", "--preprocess", "mnist"])
    assert done.value.code == 0 and out.is_file()
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "relevance", "explained_target"]
    assert session.get_inputs()[0].shape[0] == "batch"
    x = np.random.default_rng(29).uniform(0, 1, size=(4, 1, 28, 28)).astype(np.float32)   # the mnist preset: 0–1
    relevance = session.run(["relevance"], {"x": x})[0]
    graph = read_onnx(str(model))
    exact = Explainer(graph, "epsilon-gamma-box", bounds=(0.0, 1.0), compiled=False, quiet=True,
                      dtype=np.float64).explain(x.astype(np.float64))
    assert relative_error(relevance, exact.relevance) < 1e-5


@pytest.mark.parametrize("picture", ["random", "constant"])
def test_built_for_cuda_the_max_pools_scatter_instead_of_max_unpool(architectures, picture):
    # onnxruntime's CUDA provider has no MaxUnpool (its kernel table), which would send every
    # non-overlapping pool back to the CPU. Built for CUDA, those pools scatter; run here on the
    # CPU, the relevance is the float64 walk's, ties of a constant picture going to the same winner
    graph = architectures["vgg"]
    x = (np.full((2, 3, 32, 32), 0.25) if picture == "constant"
         else np.random.default_rng(31).uniform(-1, 1, size=(2, 3, 32, 32)))
    kinds = lambda model: [n.op_type for n in model.graph.node]  # noqa: E731
    for_cpu = kinds(compile_explainer(graph, "epsilon-plus", providers=["cpu"]))
    assert for_cpu == kinds(compile_explainer(graph, "epsilon-plus"))
    model = compile_explainer(graph, "epsilon-plus", providers=["cuda", "cpu"])
    assert for_cpu.count("MaxUnpool") >= 1 and "MaxUnpool" not in kinds(model)
    assert kinds(model).count("ScatterElements") == for_cpu.count("ScatterElements") + for_cpu.count("MaxUnpool")
    exact = Explainer(graph, "epsilon-plus", dtype=np.float64, compiled=False, quiet=True).explain(x)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    relevance, = session.run(["relevance"], {"x": x.astype(np.float32), "target": exact.targets})
    assert relative_error(relevance, exact.relevance) <= 1e-5
    np.testing.assert_array_equal(relevance != 0, exact.relevance != 0)


def test_compile_command_builds_for_a_provider_and_refuses_an_unknown_one(tmp_path, capsys):
    from lrptool import cli
    from test_explain_cli import bias_free_mnist

    model = bias_free_mnist(tmp_path / "mnist.onnx")
    written = {}
    for provider in ("cpu", "cuda"):
        out = tmp_path / f"explainer-{provider}.onnx"
        with pytest.raises(SystemExit) as done:
            cli.main(["compile", str(model), "-o", str(out), "--preprocess", "mnist", "--provider", provider])
        assert done.value.code == 0
        written[provider] = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "MaxUnpool" in written["cpu"] and "MaxUnpool" not in written["cuda"]
    session = onnxruntime.InferenceSession(str(tmp_path / "explainer-cuda.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(37).uniform(0, 1, size=(3, 1, 28, 28)).astype(np.float32)
    relevance = session.run(["relevance"], {"x": x})[0]
    exact = Explainer(read_onnx(str(model)), "epsilon-plus-flat", compiled=False, quiet=True,
                      dtype=np.float64).explain(x.astype(np.float64))
    assert relative_error(relevance, exact.relevance) < 1e-5
    capsys.readouterr()
    out = tmp_path / "explainer-gpu.onnx"
    with pytest.raises(SystemExit) as done:
        cli.main(["compile", str(model), "-o", str(out), "--preprocess", "mnist", "--provider", "gpu"])
    assert done.value.code != 0 and not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["lrptool: error: --provider gpu: not an onnxruntime execution provider; give one of cpu, cuda, "
                     "tensorrt, rocm, dml, coreml, openvino or a full name such as CUDAExecutionProvider"]


def test_an_unavailable_provider_is_one_line_naming_the_available_ones(architectures):
    from lrptool.errors import LrpToolError

    with pytest.raises(LrpToolError, match="available: .*cpu"):
        Explainer(architectures["vgg"], "epsilon", providers=["cuda-that-is-not-here"], quiet=True)


def test_compiled_session_takes_weights_without_a_serialised_copy(architectures):
    external = {}
    model = compile_explainer(architectures["vgg"], "epsilon-plus-flat", external=external)
    assert external and model.ByteSize() < 100_000
    session = CompiledSession(model, external=external)
    results = session.run(np.zeros((1, 3, 32, 32), np.float32), np.array([-1]))
    assert results["relevance"].shape == (1, 3, 32, 32)


def shared_sample_models():
    """The trained Caffe and Keras sample models of ../shared/models, as (name, graph, input shape)."""
    from conftest import shared_models
    from converters import load_model

    root = shared_models()
    found = []
    for name, path, weights in (("lenet", "caffe/lenet/lenet.prototxt", "caffe/lenet/lenet_iter_10000.caffemodel"),
                                ("det2", "caffe/mtcnn/det2.prototxt", "caffe/mtcnn/det2.caffemodel"),
                                ("lrp_cnn", "keras/writers/keras2.14_tf2.14/lrp_cnn.h5", None),
                                ("seq_cnn", "keras/writers/keras2.14_tf2.14/seq_cnn.h5", None),
                                ("dcgan", "keras/dl4j-2018/mnist_dcgan/dcgan_discriminator_epoch_50.h5", None)):
        if (root / path).is_file():
            graph = load_model(str(root / path), weights=str(root / weights) if weights else None)
            found.append((name, graph))
    return found


@pytest.mark.parametrize("method", ["epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1", "epsilon",
                                    "gradient", "gradient-x-input"])
def test_compiled_equals_eager_on_the_trained_sample_models(method):
    models = shared_sample_models()
    assert models
    for name, graph in models:
        if len(graph.outputs) != 1:
            continue
        shape = graph.inputs[next(iter(graph.inputs))][1:]
        x = np.random.default_rng(31).uniform(-1, 1, size=(2,) + tuple(shape))
        compare(graph, x, method)


def test_inspect_and_compile_refuse_an_unroutable_node_with_the_same_line(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lrptool import cli

    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    nodes = [helper.make_node("LogSoftmax", ["x"], ["s"], axis=1), helper.make_node("MatMul", ["s", "w"], ["y"])]
    graph = helper.make_graph(nodes, "inner", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=[weight])
    path = tmp_path / "inner_softmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    lines = []
    for argv in (["inspect", str(path), "--preset", "epsilon"], ["compile", str(path), "--preset", "epsilon",
                                                                   "-o", str(tmp_path / "e.onnx")]):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 2
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        lines.append(line)
    assert lines[0] == lines[1] and "log-softmax inside the network" in lines[0]
    assert not (tmp_path / "e.onnx").exists()


def test_the_conservation_report_comes_from_the_compiled_graph_when_asked(architectures):
    graph = architectures["resnet"]
    x = np.random.default_rng(30).uniform(-1, 1, size=(2, 3, 32, 32))
    eager = Explainer(graph, "epsilon-plus-flat", compiled=False, quiet=True, dtype=np.float64).explain(x)
    explainer = Explainer(graph, "epsilon-plus-flat", compiled=True, quiet=True, report=True)
    compiled = explainer.explain(x, target=eager.targets)
    assert Explainer(graph, "epsilon-plus-flat", compiled=True, quiet=True).explain(x).report is None
    assert compiled.report.start == pytest.approx(eager.report.start, rel=1e-5)
    assert compiled.report.input == pytest.approx(eager.report.input, rel=1e-4)
    by_node = {entry.node: entry for entry in eager.report.nodes}
    assert len(compiled.report.nodes) == len(by_node)
    for entry in compiled.report.nodes:
        expected = by_node[entry.node]
        assert entry.rule == expected.rule
        assert entry.relevance_out == pytest.approx(expected.relevance_out, rel=1e-4, abs=1e-4)
        assert entry.relevance_in == pytest.approx(expected.relevance_in, rel=1e-4, abs=1e-4)


def test_model_tensors_named_like_the_interface_give_way(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(32)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 6)).astype(np.float32), "target"),
             numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "relevance")]
    nodes = [helper.make_node("MatMul", ["input", "target"], ["x"]), helper.make_node("Relu", ["x"], ["explained_target"]),
             helper.make_node("MatMul", ["explained_target", "relevance"], ["logits"])]
    graph = helper.make_graph(nodes, "clash", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], initializer=inits)
    path = tmp_path / "clash.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.normal(size=(5, 4))
    for method in ("epsilon", "gradient"):
        compare(read_onnx(str(path)), x, method)


@pytest.mark.parametrize("method", ["sensitivity", "gradient-x-input", "gradient"])
def test_gradient_methods_with_layers_are_not_applied_twice(method):
    # layers=True takes the eager walk; it must not square or multiply the compiled result again
    rng = np.random.default_rng(3)
    nodes = [Node("d1", "Dense", ["x"], ["h"], {}, {"weight": rng.normal(size=(4, 3)), "bias": rng.normal(size=4)}),
             Node("relu", "Relu", ["h"], ["r"]),
             Node("d2", "Dense", ["r"], ["y"], {}, {"weight": rng.normal(size=(2, 4))})]
    graph = Graph({"x": (None, 3)}, nodes, ["y"])
    x = rng.normal(size=(2, 3)).astype(np.float32)
    compiled = Explainer(graph, method, compiled=True, quiet=True)
    eager = Explainer(graph, method, compiled=False, quiet=True).explain(x, target=1)
    np.testing.assert_allclose(compiled.explain(x, target=1, layers=True).relevance, eager.relevance, rtol=1e-5)
    np.testing.assert_allclose(compiled.explain(x, target=1).relevance, eager.relevance, rtol=1e-5)
