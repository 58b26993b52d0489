"""The skeleton the readers share: one graph builder, one registry helper, one ``Unsupported``."""

import numpy as np
import pytest

from converters import builder, caffe_layers, keras_errors, keras_layers, onnx_ops
from converters.builder import GraphBuilder, Names, Registry, Unsupported
from lrptool.errors import GraphError, LrpToolError
from lrptool.executor import run_graph


def test_every_reader_raises_the_one_unsupported_type():
    assert onnx_ops.Unsupported is caffe_layers.Unsupported is keras_errors.Unsupported is builder.Unsupported


def test_every_reader_registers_its_converters_in_a_registry():
    for registry in (onnx_ops.CONVERTERS, caffe_layers.LAYERS, keras_layers.LAYERS):
        assert isinstance(registry, Registry) and len(registry) > 10


def test_a_second_converter_for_one_key_is_refused():
    registry = Registry("test operator")

    @registry.register("Relu", "Elu", inputs=1)
    def first(ctx, node):
        return None

    assert registry["Relu"] is first and registry["Elu"] is first and first.inputs == 1
    with pytest.raises(ValueError, match="'Elu' has two converters"):
        @registry.register("Elu")
        def second(ctx, node):
            return None
    assert registry["Elu"] is first


def test_names_count_on_from_two_and_skip_taken_ones():
    names = Names()
    names.reserve("conv_3")
    assert [names.unique("conv") for _ in range(4)] == ["conv", "conv_2", "conv_4", "conv_5"]
    assert names.free("relu") == "relu" and names.unique("relu") == "relu"
    held = names.hold("flatten")
    assert held == "flatten" and names.unique("flatten") == "flatten_2"
    assert names.take_held("flatten") == "flatten"


def test_the_builder_checks_infers_and_names_nodes():
    graph = GraphBuilder()
    graph.add_input("x", (None, 3))
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph.add_node("fc", "Dense", ["x"], ["h"], {}, {"weight": weight, "bias": np.zeros(2, np.float32)})
    second = graph.add_node("fc", "Relu", ["h"], ["y"])
    assert second.name == "fc_2" and graph.shapes["h"] == graph.shapes["y"] == (None, 2)
    with pytest.raises(GraphError, match="unknown operator"):
        graph.add_node("bad", "NoSuchOp", ["y"], ["z"])
    result = graph.finish(["y"], "small")
    x = np.array([[1.0, -1.0, 2.0]], np.float32)
    assert np.allclose(run_graph(result, {"x": x})["y"], np.maximum(x @ weight.T, 0))


def test_the_builder_refuses_an_output_beyond_the_memory_budget(monkeypatch):
    monkeypatch.setenv("LRPTOOL_MEMORY_BUDGET", "1M")
    graph = GraphBuilder()
    graph.add_input("x", (None, 1, 4, 4))
    with pytest.raises(LrpToolError, match="node 'up' \\(Upsample\\).*memory budget"):
        graph.add_node("up", "Upsample", ["x"], ["y"], {"scales": (1000, 1000)})
