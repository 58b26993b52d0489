"""Small text models for the tests: ONNX text CNNs made node by node, and the IR graph that holds every
text operator (the completeness check in test_compiled reads it)."""

import importlib
import os
import sys

import numpy as np
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


def onnx_decomposed_transformer_block(seed=0, opset=17, layer_norm="decomposed", gelu="erf"):
    """x (N, 6, 8) → MatMul → GELU written out (erf form as PyTorch exports it, or the tanh form) → LayerNorm
    over the last axis written out (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add) or as ONNX's
    LayerNormalization → a softmax over positions written out (ReduceMax/Sub/Exp/ReduceSum/Div) →
    flattened → Gemm."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    inits = {"w1": f32(rng.normal(size=(8, 8)) * 0.5), "gamma": f32(rng.normal(size=8) + 1), "beta": f32(rng.normal(size=8) * 0.1),
             "w2": f32(rng.normal(size=(3, 48))), "half": f32(0.5), "one": f32(1.0), "two": f32(2.0),
             "root2": f32(np.sqrt(2.0)), "eps": f32(1e-5), "k": f32(0.044715), "c": f32(np.sqrt(2 / np.pi)),
             "three": f32(3.0), "shape": np.array([0, -1], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"])]
    if gelu == "erf":
        nodes += [helper.make_node("Div", ["h", "root2"], ["g1"]), helper.make_node("Erf", ["g1"], ["g2"]),
                  helper.make_node("Add", ["g2", "one"], ["g3"]), helper.make_node("Mul", ["h", "g3"], ["g4"]),
                  helper.make_node("Mul", ["g4", "half"], ["g"])]
    else:
        nodes += [helper.make_node("Pow", ["h", "three"], ["t1"]), helper.make_node("Mul", ["t1", "k"], ["t2"]),
                  helper.make_node("Add", ["h", "t2"], ["t3"]), helper.make_node("Mul", ["t3", "c"], ["t4"]),
                  helper.make_node("Tanh", ["t4"], ["t5"]), helper.make_node("Add", ["t5", "one"], ["t6"]),
                  helper.make_node("Mul", ["half", "h"], ["t7"]), helper.make_node("Mul", ["t7", "t6"], ["g"])]
    if layer_norm == "decomposed":
        nodes += [helper.make_node("ReduceMean", ["g"], ["m"], axes=[-1]), helper.make_node("Sub", ["g", "m"], ["d"]),
                  helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["v"], axes=[-1]),
                  helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
                  helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "gamma"], ["ng"]),
                  helper.make_node("Add", ["ng", "beta"], ["l"])]
    else:
        nodes.append(helper.make_node("LayerNormalization", ["g", "gamma", "beta"], ["l"], axis=-1, epsilon=1e-5))
    nodes += [helper.make_node("ReduceMax", ["l"], ["mx"], axes=[1]), helper.make_node("Sub", ["l", "mx"], ["sh"]),
              helper.make_node("Exp", ["sh"], ["ex"]), helper.make_node("ReduceSum", ["ex", "one_axis"], ["sm"]),
              helper.make_node("Div", ["ex", "sm"], ["p"]), helper.make_node("Reshape", ["p", "shape"], ["f"]),
              helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    inits["one_axis"] = np.array([1], np.int64)
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample_models", "text",
                      "corpus.txt")


def corpus_texts():
    """(texts, labels (0/1), three classes: sentences naming the cinema or the family are class 2) of the bundled
    sentiment corpus."""
    texts, labels = [], []
    for line in open(CORPUS, encoding="utf-8"):
        text, _, label = line.rstrip("\n").rpartition("\t")
        texts.append(text)
        labels.append(int(label))
    three = np.array([2 if ("cinema" in t or "family" in t) else y for t, y in zip(texts, labels)])
    return texts, np.array(labels), three


def scikit_learn_or_skip(*modules):
    """Import scikit-learn's ``modules`` and skl2onnx (test extras), or skip the test module saying so.

    Where torch is hidden by a None in ``sys.modules`` (the usual way to block an import), scipy's import
    — which scikit-learn makes — looks up ``torch.Tensor`` on that None and fails; the block is lifted for
    these imports alone (nothing in them imports torch) and put back."""
    import pytest

    blocked = "torch" in sys.modules and sys.modules["torch"] is None
    if blocked:
        del sys.modules["torch"]
    try:
        for name in ("sklearn", *modules, "skl2onnx", "skl2onnx.common.data_types"):
            importlib.import_module(name)
    except ImportError as error:
        pytest.skip(f"scikit-learn and skl2onnx are test extras (pip install -e '.[test]'): {error}",
                    allow_module_level=True)
    finally:
        if blocked and "torch" not in sys.modules:
            sys.modules["torch"] = None
