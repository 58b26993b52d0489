"""Small text models for the tests: ONNX text CNNs made node by node, and the IR graph that holds every
text operator (the completeness check in test_compiled reads it)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lrptool.graph import Graph, Node


def onnx_text_cnn(vocab=40, dim=6, length=9, channels=5, classes=3, seed=0, pooling="ReduceMax", bias=True,
                  opset=13):
    """ids (N, length) int64 → Gather → Transpose → Conv1d(k=3, pad 1) → ReLU → max over time → Gemm, as
    PyTorch exports Embedding → Conv1d → max → Linear."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=(vocab, dim)).astype(np.float32), "emb"),
             numpy_helper.from_array((rng.normal(size=(channels, dim, 3)) * 0.5).astype(np.float32), "cw"),
             numpy_helper.from_array(rng.normal(size=(classes, channels)).astype(np.float32), "dw")]
    conv_inputs, gemm_inputs = ["et", "cw"], ["m", "dw"]
    if bias:
        inits += [numpy_helper.from_array((rng.normal(size=(channels,)) * 0.1).astype(np.float32), "cb"),
                  numpy_helper.from_array((rng.normal(size=(classes,)) * 0.1).astype(np.float32), "db")]
        conv_inputs.append("cb")
        gemm_inputs.append("db")
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], axis=0),
             helper.make_node("Transpose", ["e"], ["et"], perm=[0, 2, 1]),
             helper.make_node("Conv", conv_inputs, ["c"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"])]
    if pooling == "ReduceMax":
        nodes.append(helper.make_node("ReduceMax", ["r"], ["m"], axes=[2], keepdims=0))
    elif pooling == "GlobalMaxPool":
        nodes += [helper.make_node("GlobalMaxPool", ["r"], ["m1"]), helper.make_node("Flatten", ["m1"], ["m"])]
    else:
        nodes.append(helper.make_node("ReduceMean", ["r"], ["m"], axes=[2], keepdims=0))
    nodes.append(helper.make_node("Gemm", gemm_inputs, ["y"], transB=1))
    graph = helper.make_graph(nodes, "text_cnn", [helper.make_tensor_value_info("ids", TensorProto.INT64,
                                                                                ["N", length])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def text_zoo(seed=0):
    """Every text operator in one IR graph on token ids (N, 7)."""
    rng = np.random.default_rng(seed)
    nodes = [Node("embed", "Embedding", ["ids"], ["e"], {}, {"weight": rng.normal(size=(12, 4))}),
             Node("to_channels", "Transpose", ["e"], ["t"], {"perm": (0, 2, 1)}),
             Node("conv", "Conv", ["t"], ["c"], {"strides": (1,), "dilations": (1,), "pads": (1, 1), "group": 1},
                  {"weight": rng.normal(size=(5, 4, 3)) * 0.5, "bias": rng.normal(size=5) * 0.1}),
             Node("relu", "Relu", ["c"], ["r"]),
             Node("pool", "GlobalMaxPool", ["r"], ["p"]),
             Node("flat", "Flatten", ["p"], ["f"], {"axis": 1}),
             Node("dense", "Dense", ["f"], ["y"], {}, {"weight": rng.normal(size=(3, 5)), "bias": rng.normal(size=3)})]
    return Graph({"ids": (None, 7)}, nodes, ["y"])


def normalisation_zoo(seed=0):
    """GELU (both forms), LayerNorm over a middle and the last axis, a softmax inside the network."""
    rng = np.random.default_rng(seed)
    nodes = [Node("dense", "Dense", ["x"], ["h"], {}, {"weight": rng.normal(size=(6, 5)), "bias": rng.normal(size=6)}),
             Node("gelu_tanh", "Gelu", ["h"], ["gh"], {"approximate": "tanh"}),
             Node("norm_last", "LayerNorm", ["gh"], ["l"], {"axes": (1,), "epsilon": 1e-5},
                  {"scale": rng.normal(size=6), "bias": rng.normal(size=6) * 0.1}),
             Node("gelu", "Gelu", ["l"], ["gl"]),
             Node("rows", "Reshape", ["gl"], ["r"], {"shape": (None, 3, 2)}),
             Node("norm_middle", "LayerNorm", ["r"], ["lm"], {"axes": (1,), "epsilon": 1e-3},
                  {"scale": rng.normal(size=(3, 1)) + 1.0}),
             Node("flat", "Flatten", ["lm"], ["f"], {"axis": 1}),
             Node("softmax", "Softmax", ["f"], ["s"], {"axes": (1,)}),
             Node("out", "Dense", ["s"], ["y"], {}, {"weight": rng.normal(size=(3, 6))})]
    return Graph({"x": (None, 5)}, nodes, ["y"])
