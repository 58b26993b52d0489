"""Several methods in one run share the forward pass: one compiled graph holds every method's reverse
walk (``compile_methods``), and ``SharedForward`` / `lrptool explain --preset a,b,c` / `lrptool
evaluate` use it. Each method's relevance is checked against its own eager float64 walk."""

import os

import numpy as np
import onnxruntime
import pytest

from converters.onnx_reader import read_onnx
from lrptool.errors import LrpToolError
from lrptool.images import load_picture, preprocessing_for, to_tensor
from lrptool.lrp import Explainer, top_k_targets
from lrptool.lrp.compile import CompiledSession, compile_methods
from lrptool.lrp.several import SharedForward
from test_architectures import build_resnet, build_vgg
from test_compiled import FLOAT32_LIMITED, relative_error
from test_explain_cli import bias_free_mnist, json_lines, run
from test_report import noise_pictures

SHARED = ["epsilon-plus-flat", "epsilon-gamma-box", "alpha1-beta0", "zero", "gradient", "sensitivity",
          "gradient-x-input", "guided-backprop", "deep-taylor"]
OPTIONS = dict(bounds=(-1.0, 1.0), quiet=True)


def eager(graph, method, x, targets):
    return Explainer(graph, method, dtype=np.float64, compiled=False, **OPTIONS).explain(x, target=targets)


def close_to_eager(graph, method, relevance, x, targets):
    exact = eager(graph, method, x, targets)
    bound = 1e-5
    if method in FLOAT32_LIMITED:  # float32 itself is only that accurate there (see test_compiled)
        eager32 = Explainer(graph, method, dtype=np.float32, compiled=False, **OPTIONS)
        bound = max(bound, 1.5 * relative_error(eager32.explain(x.astype(np.float32), target=targets).relevance,
                                                exact.relevance))
    assert relative_error(relevance, exact.relevance) <= bound, method


@pytest.fixture(scope="module")
def graphs():
    return {"vgg": read_onnx(build_vgg("N")), "resnet": read_onnx(build_resnet("N"))}


def batch(graph, seed):
    shape = graph.inputs[next(iter(graph.inputs))][1:]
    return np.random.default_rng(seed).uniform(-1, 1, size=(3,) + tuple(shape))


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_one_graph_explains_every_method_as_its_own_eager_walk(graphs, name):
    graph = graphs[name]
    x = batch(graph, 4)
    external = {}
    model = compile_methods(graph, SHARED, bounds=(-1.0, 1.0), external=external)
    names = [o.name for o in model.graph.output]
    assert names == ["logits"] + [f"relevance/{m}" for m in SHARED] + ["explained_target"]
    session = CompiledSession(model, external=external)
    targets = np.array([0, 3, -1])
    results = session.run(x, targets)
    predicted = int(np.argmax(eager(graph, "gradient", x, "pred").outputs[2]))
    assert results["explained_target"].tolist() == [0, 3, predicted]
    for method in SHARED:
        close_to_eager(graph, method, results[f"relevance/{method}"], x, results["explained_target"])


def test_the_forward_pass_is_in_the_graph_once(graphs):
    graph = graphs["resnet"]
    single = compile_methods(graph, ["epsilon-plus-flat", "gradient"], bounds=(-1.0, 1.0))
    from converters.onnx_writer import graph_to_onnx
    from lrptool.lrp.canonize import canonize

    forward = {node.name for node in graph_to_onnx(canonize(graph)[0]).graph.node}
    counted = [node.name for node in single.graph.node if node.name in forward]
    assert sorted(counted) == sorted(forward)
    # the modified weights two methods both use are stored once: W⁺ of the z⁺ rule in both presets
    both = compile_methods(graph, ["epsilon-plus-flat", "epsilon-plus"], bounds=(-1.0, 1.0))
    plus = compile_methods(graph, ["epsilon-plus"], bounds=(-1.0, 1.0))
    assert len(both.graph.initializer) < len(single.graph.initializer) + len(plus.graph.initializer)


def test_shared_forward_runs_one_session_call_per_batch(graphs, monkeypatch):
    graph = graphs["vgg"]
    x = batch(graph, 5)
    methods = ["epsilon-plus-flat", "zero", "gradient"]
    shared = SharedForward([(m, Explainer(graph, m, compile_later=True, **OPTIONS)) for m in methods])
    calls = []
    original = CompiledSession.run
    monkeypatch.setattr(CompiledSession, "run", lambda self, *a: calls.append(1) or original(self, *a))
    results = shared.explain(x, target=[1, -1, 2])
    assert len(calls) == 1
    assert all(shared_explainer.compiled is None for _, shared_explainer in shared.explainers)
    for method in methods:
        assert results[method].targets.tolist() == results[methods[0]].targets.tolist()
        np.testing.assert_allclose(results[method].outputs, eager(graph, method, x, "pred").outputs, rtol=1e-4,
                                   atol=1e-5)
        close_to_eager(graph, method, results[method].relevance, x, results[method].targets)


def test_methods_outside_the_graph_explain_the_same_classes(graphs):
    graph = graphs["vgg"]
    x = batch(graph, 6)
    methods = ["gradient", "smoothgrad", "epsilon", "random"]
    explainers = [(m, Explainer(graph, m, compile_later=True, samples=4, **OPTIONS)) for m in methods]
    shared = SharedForward(explainers)
    assert [name for name, *_ in shared.members] == ["gradient", "epsilon"]
    results = shared.explain(x, target="pred")
    chosen = results["gradient"].targets
    for method in methods:
        assert results[method].targets.tolist() == chosen.tolist()
    # SmoothGrad with the same seed, alone, explains those classes the same way
    alone = Explainer(graph, "smoothgrad", samples=4, **OPTIONS).explain(x, target=chosen)
    np.testing.assert_allclose(results["smoothgrad"].relevance, alone.relevance, rtol=1e-5, atol=1e-7)


def test_explainers_that_differ_in_more_than_the_method_do_not_share(graphs):
    graph = graphs["vgg"]
    x = batch(graph, 7)
    shared = SharedForward([("a", Explainer(graph, "epsilon", compile_later=True, **OPTIONS)),
                            ("b", Explainer(graph, "epsilon", compile_later=True, epsilon=0.25, **OPTIONS))])
    assert shared.session is None
    results = shared.explain(x)
    wide = Explainer(graph, "epsilon", dtype=np.float64, compiled=False, epsilon=0.25, **OPTIONS).explain(x)
    assert relative_error(results["b"].relevance, wide.relevance) <= 1e-5
    assert relative_error(results["a"].relevance, results["b"].relevance) > 1e-3


def test_a_method_named_twice_is_refused(graphs):
    with pytest.raises(LrpToolError, match="named twice"):
        compile_methods(graphs["vgg"], ["zero", "zero"])


def test_explain_with_several_presets_writes_each_methods_own_relevance(tmp_path):
    model = bias_free_mnist(tmp_path / "mnist.onnx")
    images = noise_pictures(tmp_path / "images", 3, 11)
    methods = ["zero", "epsilon-plus-flat", "gradient-x-input"]
    result = run("explain", model, images, "-o", tmp_path / "out", "--format", "npy", "--preset", ",".join(methods),
                 "--target", "top-2")
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    assert len(records) == 3 * 3 * 2
    graph = read_onnx(str(model))
    preprocessing = preprocessing_for(graph.inputs["x"])
    for record in records:
        stem = os.path.basename(record["path"])
        relevance = np.load(tmp_path / "out" / f"{stem}.{record['method']}.top{record['rank']}.npy")
        x = to_tensor(load_picture(record["path"], preprocessing), preprocessing)[None].astype(np.float64)
        exact = Explainer(graph, record["method"], dtype=np.float64, compiled=False, quiet=True,
                          bounds=preprocessing.bounds()).explain(x, target=[record["target"]])
        assert relative_error(relevance, exact.relevance[0]) <= 1e-5, record["method"]


def test_compile_command_with_several_presets_runs_in_plain_onnxruntime(tmp_path, graphs):
    model = bias_free_mnist(tmp_path / "mnist.onnx")
    result = run("compile", model, "-o", tmp_path / "several.onnx", "--preset", "zero,gradient", "--target", "4")
    assert result.returncode == 0, result.stderr
    session = onnxruntime.InferenceSession(str(tmp_path / "several.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "relevance/zero", "relevance/gradient",
                                                        "explained_target"]
    x = np.random.default_rng(3).random((2, 1, 28, 28)).astype(np.float32)
    logits, zero, gradient, target = session.run(None, {"x": x})
    assert target.tolist() == [4, 4]
    graph = read_onnx(str(model))
    for method, relevance in (("zero", zero), ("gradient", gradient)):
        exact = Explainer(graph, method, dtype=np.float64, compiled=False, quiet=True).explain(
            x.astype(np.float64), target=[4, 4])
        assert relative_error(relevance, exact.relevance) <= 1e-5
    # a bias-free network under LRP-0: the input holds the explained logit
    np.testing.assert_allclose(zero.reshape(2, -1).sum(axis=1), logits[:, 4], rtol=1e-4)
    refused = run("compile", model, "-o", tmp_path / "x.onnx", "--preset", "zero,gradient", "--node-sums")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "--node-sums" in refused.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_a_ranks_graph_explains_every_class_rank_from_one_forward_pass(graphs, name):
    graph = graphs[name]
    x = batch(graph, 12)
    methods = ["epsilon-plus-flat", "gradient-x-input"]
    external = {}
    session = CompiledSession(compile_methods(graph, methods, bounds=(-1.0, 1.0), external=external, ranks=True),
                              external=external)
    # three rows of the batch of three: the prediction (an explicit class for sample 1), rank 2, rank 3
    asked = np.array([-1, 4, -1, -2, -2, -2, -3, -3, -3])
    run = session.run(x, asked)
    assert run["logits"].shape[0] == 3 and run["explained_target"].shape == (9,)
    outputs = eager(graph, "zero", x, "pred").outputs
    ranking = top_k_targets(outputs, 3)
    expected = ranking.copy()
    expected[0, 1] = 4
    assert run["explained_target"].reshape(3, 3).tolist() == expected.tolist()
    for method in methods:
        for row in range(3):
            targets = expected[row]
            close_to_eager(graph, method, run[f"relevance/{method}"][3 * row:3 * row + 3], x, targets)


def test_ranks_break_ties_as_a_stable_sort_does():
    """Outputs 1 and 3 tie exactly (the same weights): rank 1 is the lower index, rank 2 the other."""
    from lrptool.graph import Graph, Node

    weights = np.random.default_rng(2).normal(size=(4, 6)).astype(np.float32)
    weights[3] = weights[1]
    graph = Graph({"x": (None, 6)}, [Node("fc", "Dense", ["x"], ["y"], params={"weight": weights})], ["y"])
    x = np.random.default_rng(3).normal(size=(2, 6)).astype(np.float32)
    session = CompiledSession(compile_methods(graph, ["zero", "gradient"], ranks=True))
    run = session.run(x, np.array([-1, -1, -2, -2, -3, -3, -4, -4]))
    np.testing.assert_array_equal(run["logits"][:, 1], run["logits"][:, 3])
    order = run["explained_target"].reshape(4, 2).T
    assert order.tolist() == top_k_targets(x.astype(np.float64) @ weights.T.astype(np.float64), 4).T.tolist()
    for sample in order:
        assert list(sample).index(1) == list(sample).index(3) - 1


def test_top_k_with_one_method_runs_one_session_call(graphs, monkeypatch):
    graph = graphs["vgg"]
    x = batch(graph, 13)
    explainers = [("epsilon-plus-flat", Explainer(graph, "epsilon-plus-flat", compile_later=True, **OPTIONS)),
                  ("smoothgrad", Explainer(graph, "smoothgrad", compile_later=True, samples=3, **OPTIONS))]
    shared = SharedForward(explainers, ranks=3)
    calls = []
    original = CompiledSession.run
    monkeypatch.setattr(CompiledSession, "run", lambda self, *a: calls.append(len(a[1])) or original(self, *a))
    rows = shared.explain_ranks(x, "pred", 3, names=["epsilon-plus-flat"])
    assert calls == [9]         # three ranks of three samples in one call
    ranking = top_k_targets(eager(graph, "zero", x, "pred").outputs, 3)
    for rank, row in enumerate(rows):
        assert row["epsilon-plus-flat"].targets.tolist() == ranking[rank].tolist()
        close_to_eager(graph, "epsilon-plus-flat", row["epsilon-plus-flat"].relevance, x, ranking[rank])
    # the method outside the graph explains each rank's classes
    rows = shared.explain_ranks(x, "pred", 2)
    alone = Explainer(graph, "smoothgrad", samples=3, **OPTIONS)
    alone.explain(x, target=ranking[0])                # its noise draws follow the same sequence
    alone = alone.explain(x, target=ranking[1])
    assert rows[1]["smoothgrad"].targets.tolist() == ranking[1].tolist()
    np.testing.assert_allclose(rows[1]["smoothgrad"].relevance, alone.relevance, rtol=1e-5, atol=1e-7)


def test_explain_top_k_with_one_method_writes_each_ranks_relevance(tmp_path):
    model = bias_free_mnist(tmp_path / "mnist.onnx")
    images = noise_pictures(tmp_path / "images", 2, 12)
    result = run("explain", model, images, "-o", tmp_path / "out", "--format", "npy", "--preset", "epsilon",
                 "--target", "top-3")
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    assert sorted(r["rank"] for r in records) == [1, 1, 2, 2, 3, 3]
    graph = read_onnx(str(model))
    preprocessing = preprocessing_for(graph.inputs["x"])
    for record in records:
        x = to_tensor(load_picture(record["path"], preprocessing), preprocessing)[None].astype(np.float64)
        exact = Explainer(graph, "epsilon", dtype=np.float64, compiled=False, quiet=True).explain(x)
        assert record["target"] == int(top_k_targets(exact.outputs, 3)[record["rank"] - 1, 0])
        exact = Explainer(graph, "epsilon", dtype=np.float64, compiled=False, quiet=True).explain(
            x, target=[record["target"]])
        relevance = np.load(tmp_path / "out" / f"{os.path.basename(record['path'])}.top{record['rank']}.npy")
        assert relative_error(relevance, exact.relevance[0]) <= 1e-5
