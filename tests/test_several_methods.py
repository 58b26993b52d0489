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
from lrptool.lrp import Explainer
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
