"""The graph IR: schema checks, shape inference, refusal of inconsistent graphs with the node named."""

import re

import numpy as np
import pytest

from lrptool.errors import BatchAxisError, GraphError
from lrptool.executor import run_graph
from lrptool.graph import Graph, Node
from lrptool.ops import OPERATORS

from conftest import ROOT


def conv_node(name="conv", channels=3, out=4, **attrs):
    weight = np.ones((out, channels, 3, 3), np.float32)
    defaults = dict(strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1))
    defaults.update(attrs)
    return Node(name, "Conv", ["x"], [f"{name}_out"], defaults, {"weight": weight})


def test_every_operator_is_documented():
    text = (ROOT / "docs" / "ir.md").read_text()
    documented = set(re.findall(r"\b([A-Z][A-Za-z]+)\b", text))
    missing = sorted(set(OPERATORS) - documented)
    assert not missing, f"operators missing from docs/ir.md: {missing}"


def test_shapes_are_inferred_with_a_free_batch():
    nodes = [conv_node(strides=(2, 2)), Node("relu", "Relu", ["conv_out"], ["r"]),
             Node("flat", "Flatten", ["r"], ["f"]),
             Node("dense", "Dense", ["f"], ["y"], params={"weight": np.zeros((5, 4 * 4 * 4), np.float32)})]
    graph = Graph({"x": (None, 3, 8, 8)}, nodes, ["y"])
    assert graph.shapes["conv_out"] == (None, 4, 4, 4)
    assert graph.shapes["f"] == (None, 64)
    assert graph.shapes["y"] == (None, 5)
    assert graph.batch_free
    assert graph.nodes[0].attrs["group"] == 1  # default filled in
    assert run_graph(graph, np.zeros((7, 3, 8, 8)))["y"].shape == (7, 5)


@pytest.mark.parametrize("node, fragment", [
    (conv_node(channels=2), "input has 3 channels"),
    (Node("bad", "Relu", ["missing"], ["y"]), "input 'missing' is not made"),
    (Node("bad", "Frobnicate", ["x"], ["y"]), "unknown operator"),
    (Node("bad", "LeakyRelu", ["x"], ["y"], {"slope": 0.1}), "unknown attribute"),
    (Node("bad", "Concat", ["x", "x"], ["y"]), "missing attribute 'axis'"),
    (Node("bad", "Dense", ["x"], ["y"], params={"weight": np.zeros((2, 5), np.float32)}), "expects 5"),
    (Node("bad", "Reshape", ["x"], ["y"], {"shape": (None, 7)}), "cannot reshape"),
    (Node("bad", "Add", ["x"], ["y"]), "takes 2 input"),
])
def test_inconsistent_graphs_are_refused_naming_the_node(node, fragment):
    with pytest.raises(GraphError) as refused:
        Graph({"x": (None, 3, 8, 8)}, [node], node.outputs)
    assert f"node {node.name!r}" in str(refused.value)
    assert fragment in str(refused.value)


def test_batch_axis_operations_need_a_fixed_batch():
    node = Node("cat", "Concat", ["x", "x"], ["y"], {"axis": 0})
    with pytest.raises(BatchAxisError):
        Graph({"x": (None, 3)}, [node], ["y"])
    graph = Graph({"x": (2, 3)}, [Node("cat", "Concat", ["x", "x"], ["y"], {"axis": 0})], ["y"])
    assert graph.shapes["y"] == (4, 3)
    assert not graph.batch_free


def test_lrn_matches_a_direct_sum():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 3, 3))
    size, alpha, beta, bias = 4, 0.3, 0.6, 1.5
    graph = Graph({"x": (None, 7, 3, 3)},
                  [Node("lrn", "LRN", ["x"], ["y"], dict(size=size, alpha=alpha, beta=beta, bias=bias))], ["y"])
    expected = np.empty_like(x)
    for c in range(7):
        low, high = max(0, c - (size - 1) // 2), min(6, c + size // 2)
        square_sum = np.sum(x[:, low:high + 1] ** 2, axis=1)
        expected[:, c] = x[:, c] / (bias + alpha / size * square_sum) ** beta
    np.testing.assert_allclose(run_graph(graph, x, dtype=np.float64)["y"], expected, rtol=1e-12)


def test_softmax_over_several_axes_and_crop_by_negative_pads():
    x = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4) / 10
    graph = Graph({"x": (None, 2, 3, 4)}, [
        Node("soft", "Softmax", ["x"], ["s"], {"axes": (1, 2, 3)}),
        Node("pad", "Pad", ["s"], ["y"], {"pads": (0, 0, -1, 1, 0, 0, 0, 2)}),
    ], ["y"])
    values = run_graph(graph, x, dtype=np.float64)["y"]
    soft = np.exp(x) / np.exp(x).sum()
    expected = np.concatenate([np.zeros((1, 2, 2, 1)), soft[:, :, 1:], np.zeros((1, 2, 2, 2))], axis=3)
    assert graph.shapes["y"] == (None, 2, 2, 7)
    np.testing.assert_allclose(values, expected, rtol=1e-12)


def test_parameters_are_cast_once_per_dtype():
    graph = Graph({"x": (None, 3, 8, 8)}, [conv_node()], ["conv_out"])
    x = np.ones((1, 3, 8, 8))
    y32 = run_graph(graph, x)["conv_out"]
    y64 = run_graph(graph, x, dtype=np.float64)["conv_out"]
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    assert y64[0, 0, 4, 4] == 27.0 and y64[0, 0, 0, 0] == 12.0  # 3x3x3 ones; a corner sees 2x2x3
    graph.nodes[0].params["weight"] = graph.nodes[0].params["weight"] * 2
    assert run_graph(graph, x)["conv_out"][0, 0, 4, 4] == 54.0
