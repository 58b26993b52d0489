"""Fuzzing of the ONNX reader and writer: damaged and hostile files must end in one line (exit 2), never in a
traceback, a hang or a huge allocation.

Two kinds of mutants, both seeded (``LRPTOOL_FUZZ_SEED``): bytes damaged at random (``mutate_bytes``), and
protobuf-level edits that keep the file parseable so that the checks behind the parser are reached (nodes
removed or reordered, names changed, dims and data types and raw data lengths changed, attributes of the
wrong type or value, initializers dropped, odd opsets, huge dims, external data inside and outside the
model's folder). Seeds: the MNIST model in the repository, small models built here, and the third-party
files in ../shared/models where that folder exists.
"""

import pathlib

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from conftest import ROOT, SHARED_MODELS
from fuzz_support import MUTANTS, SEED, CliWorker, assert_clean, mutate_bytes

MNIST = ROOT / "sample_models" / "mnist" / "mnist.onnx"

#: Budget for the worker: far below its address-space limit, so that a refused size shows as a refusal.
WORKER_ENV = {"LRPTOOL_MEMORY_BUDGET": "512M"}

#: Operators a mutant's node may turn into: supported ones, ones folded at load time that can grow
#: their output from a few bytes of input, and control flow.
OP_TYPES = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool",
            "BatchNormalization", "Add", "Mul", "Div", "Sub", "Concat", "Split", "Slice", "Reshape", "Flatten",
            "Transpose", "Squeeze", "Unsqueeze", "Pad", "Resize", "Upsample", "ReduceMean", "Softmax", "Clip",
            "LRN", "PRelu", "Dropout", "Identity", "Shape", "Gather", "ConstantOfShape", "Range", "Tile",
            "Expand", "Constant", "Cast", "If", "Loop", "Pow", "Sum", "Max", "LeakyRelu", "NoSuchOp"]

INTERESTING_INTS = [0, 1, -1, 2, 3, -2, 7, 255, 2 ** 31 - 1, -2 ** 31, 2 ** 40, 2 ** 62, -2 ** 63, 2 ** 63 - 1]
INTERESTING_FLOATS = [0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf"), 0.5, 3.0]


# -- seed models ----------------------------------------------------------------------------------

def floats(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def small_cnn(rng):
    """Conv, BatchNorm, pooling and the Shape → Gather → Unsqueeze → Concat → Reshape arithmetic of exports."""
    init = [numpy_helper.from_array(floats(rng, 4, 2, 3, 3), "w1"), numpy_helper.from_array(floats(rng, 4), "b1"),
            numpy_helper.from_array(np.abs(floats(rng, 4)) + 1, "scale"), numpy_helper.from_array(floats(rng, 4), "shift"),
            numpy_helper.from_array(floats(rng, 4), "mean"), numpy_helper.from_array(np.abs(floats(rng, 4)) + 1, "var"),
            numpy_helper.from_array(floats(rng, 5, 16), "w2"), numpy_helper.from_array(floats(rng, 5), "b2"),
            numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"], name="bn", epsilon=1e-5),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["p"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["batch"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero"], ["batch1"], name="unsqueeze"),
        helper.make_node("Concat", ["batch1", "minus_one"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["p", "target"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["logits"], name="dense", transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], initializer=init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def data_movement(rng):
    """Resize, Pad, Split, Slice, Concat, Transpose, ReduceMean, Clip, ConvTranspose: the shape operators."""
    init = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
            numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "split"),
            numpy_helper.from_array(np.array([0], np.int64), "starts"), numpy_helper.from_array(np.array([4], np.int64), "ends"),
            numpy_helper.from_array(np.array([3], np.int64), "axes"), numpy_helper.from_array(np.array([2, 3], np.int64), "mean_axes"),
            numpy_helper.from_array(np.array(0.0, np.float32), "low"), numpy_helper.from_array(np.array(6.0, np.float32), "high"),
            numpy_helper.from_array(floats(rng, 3, 2, 2, 2), "wt")]
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["up"], name="resize", mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Pad", ["up", "pads"], ["padded"], name="pad", mode="constant"),
        helper.make_node("Split", ["padded", "split"], ["a", "b"], name="split", axis=1),
        helper.make_node("Slice", ["b", "starts", "ends", "axes"], ["sliced"], name="slice"),
        helper.make_node("Slice", ["a", "starts", "ends", "axes"], ["a_sliced"], name="slice_a"),
        helper.make_node("Concat", ["a_sliced", "sliced"], ["joined"], name="join", axis=1),
        helper.make_node("Transpose", ["joined"], ["t"], name="transpose", perm=[0, 1, 3, 2]),
        helper.make_node("Clip", ["t", "low", "high"], ["clipped"], name="clip"),
        helper.make_node("ConvTranspose", ["clipped", "wt"], ["deconv"], name="deconv", strides=[2, 2]),
        helper.make_node("ReduceMean", ["deconv", "mean_axes"], ["y"], name="mean", keepdims=0),
    ]
    graph = helper.make_graph(nodes, "data_movement",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], initializer=init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def legacy_mlp(rng):
    """Opset 4 forms: broadcast/axis on Add, attribute Reshape, Dropout with is_test, typed-field initializers."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [6, 4], floats(rng, 6, 4).reshape(-1).tolist())
    bias = helper.make_tensor("b", TensorProto.FLOAT, [4], floats(rng, 4).tolist())
    nodes = [
        helper.make_node("Reshape", ["x"], ["flat"], name="reshape", shape=[1, 6]),
        helper.make_node("MatMul", ["flat", "w"], ["h"], name="matmul"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="add", broadcast=1, axis=1),
        helper.make_node("Dropout", ["hb"], ["d"], name="dropout", is_test=1),
        helper.make_node("LeakyRelu", ["d"], ["y"], name="leaky", alpha=0.1),
    ]
    graph = helper.make_graph(nodes, "legacy_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 4)])
    model.ir_version = 3
    return model


def with_external_data(model, folder, stem):
    """``model`` with its larger initializers in ``stem``.bin beside it (data_location EXTERNAL)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    offset, chunks = 0, []
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.size < 4:
            continue
        data = array.tobytes()
        tensor.ClearField("raw_data")
        for field in ("float_data", "int64_data", "int32_data", "double_data"):
            tensor.ClearField(field)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", f"{stem}.bin"), ("offset", str(offset)), ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        chunks.append(data)
        offset += len(data)
    (folder / f"{stem}.bin").write_bytes(b"".join(chunks))
    return model


def shared_seeds():
    """A few third-party files, where ../shared/models exists (the fuzz runs without them too)."""
    names = ["onnx/mnist-zoo-opset8/mnist.onnx", "onnx/mnist-wonnx/opt-mnist.onnx",
             "onnx/mnist-onnx2c/mnist.simplified.onnx", "onnx/mnist-zoo-opset1/model.onnx",
             "onnx/backend-node/test_averagepool_2d_same_upper/model.onnx"]
    return [SHARED_MODELS / name for name in names if (SHARED_MODELS / name).is_file()]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """name → (ModelProto, folder holding its external data or None)."""
    folder = tmp_path_factory.mktemp("onnx-seeds")
    rng = np.random.default_rng(SEED)
    models = {"mnist": (onnx.load(str(MNIST)), None), "small_cnn": (small_cnn(rng), None),
              "data_movement": (data_movement(rng), None), "legacy_mlp": (legacy_mlp(rng), None)}
    models["external"] = (with_external_data(models["small_cnn"][0], folder, "external"), folder)
    for path in shared_seeds():
        try:
            models[f"shared:{path.parent.name}/{path.name}"] = (onnx.load(str(path)), None)
        except Exception:  # noqa: BLE001 - a seed that does not load is not the reader's problem
            continue
    return models


# -- protobuf-level mutations ---------------------------------------------------------------------

def pick(rng, sequence):
    return sequence[int(rng.integers(len(sequence)))]


def value_names(model):
    graph = model.graph
    names = [v.name for v in graph.input] + [t.name for t in graph.initializer]
    names += [o for node in graph.node for o in node.output]
    return names or ["x"]


def odd_name(rng, model):
    return pick(rng, value_names(model) + ["", "x\ny", "nowhere", "\u2028", "a" * 300, "../../etc/passwd"])


def odd_dims(rng):
    choice = int(rng.integers(6))
    if choice == 0:
        return [2 ** 40, 2 ** 20]
    if choice == 1:
        return [int(rng.integers(-3, 4)) for _ in range(int(rng.integers(0, 5)))]
    if choice == 2:
        return [2 ** 62, 4]
    if choice == 3:
        return [0]
    if choice == 4:
        return [65536, 65536, 65536]
    return [int(rng.integers(1, 9)) for _ in range(int(rng.integers(1, 5)))]


def set_attribute(attribute, rng):
    """Give ``attribute`` a random type and value (possibly one its operator does not take)."""
    kind = int(rng.integers(9))
    name = attribute.name
    attribute.Clear()
    attribute.name = name
    if kind == 0:
        attribute.type, attribute.i = AttributeProto.INT, pick(rng, INTERESTING_INTS)
    elif kind == 1:
        attribute.type = AttributeProto.INTS
        attribute.ints.extend(pick(rng, INTERESTING_INTS) for _ in range(int(rng.integers(0, 6))))
    elif kind == 2:
        attribute.type, attribute.f = AttributeProto.FLOAT, pick(rng, INTERESTING_FLOATS)
    elif kind == 3:
        attribute.type = AttributeProto.FLOATS
        attribute.floats.extend(pick(rng, INTERESTING_FLOATS) for _ in range(int(rng.integers(0, 6))))
    elif kind == 4:
        attribute.type, attribute.s = AttributeProto.STRING, pick(rng, [b"", b"SAME_UPPER", b"linear", b"\xff\xfe",
                                                                         b"NOTSET", b"constant", b"reflect"])
    elif kind == 5:
        attribute.type = AttributeProto.TENSOR
        attribute.t.CopyFrom(helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0]))
    elif kind == 6:
        attribute.type = AttributeProto.GRAPH
        attribute.g.CopyFrom(helper.make_graph([], "sub", [], []))
    elif kind == 7:
        attribute.type = AttributeProto.SPARSE_TENSOR
        attribute.sparse_tensor.values.CopyFrom(helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    else:
        attribute.type = int(rng.integers(0, 15))       # a type without its value, or no type at all
        attribute.i = 3


def mutate_tensor(tensor, rng):
    kind = int(rng.integers(8))
    if kind == 0:
        del tensor.dims[:]
        tensor.dims.extend(odd_dims(rng))
    elif kind == 1:
        tensor.data_type = pick(rng, [0, 2, 6, 7, 8, 9, 10, 11, 14, 16, 17, 21, 22, 23, 29, 99, 1000])
    elif kind == 2:
        raw = tensor.raw_data
        tensor.raw_data = raw[:int(rng.integers(0, len(raw) + 1))] if raw and rng.integers(2) else raw + b"\0" * 7
    elif kind == 3:
        tensor.ClearField("raw_data")
        tensor.float_data.extend([1.0] * int(rng.integers(0, 5)))
    elif kind == 4:
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        location = pick(rng, ["../outside.bin", "/etc/passwd", "missing.bin", "external.bin", "", "sub/../../x",
                              "..\\x.bin", "/dev/zero", "."])
        for key, value in (("location", location), ("offset", pick(rng, ["0", "-4", "99999999999", "x", "16"])),
                           ("length", pick(rng, ["4", "0", "-1", "64", str(2 ** 62)]))):
            if rng.integers(5):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    elif kind == 5:
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
    elif kind == 6:
        tensor.segment.begin, tensor.segment.end = 0, 1
    else:
        tensor.ClearField("raw_data")
        tensor.string_data.extend([b"\xff"])


def mutate_model(model, rng):
    """One protobuf-level edit of ``model`` (in place)."""
    graph = model.graph
    nodes = graph.node
    kind = int(rng.integers(29))
    if kind == 0 and nodes:                                  # remove a node
        del nodes[int(rng.integers(len(nodes)))]
    elif kind == 1 and len(nodes) > 1:                       # reorder two nodes
        i, j = (int(v) for v in rng.choice(len(nodes), 2, replace=False))
        first, second = onnx.NodeProto(), onnx.NodeProto()
        first.CopyFrom(nodes[i])
        second.CopyFrom(nodes[j])
        nodes[i].CopyFrom(second)
        nodes[j].CopyFrom(first)
    elif kind == 2 and nodes:                                # rename an input of a node
        node = pick(rng, nodes)
        if node.input:
            node.input[int(rng.integers(len(node.input)))] = odd_name(rng, model)
        else:
            node.input.append(odd_name(rng, model))
    elif kind == 3 and nodes:                                # rename or drop outputs of a node
        node = pick(rng, nodes)
        if rng.integers(3) == 0:
            del node.output[:]
        elif node.output:
            node.output[int(rng.integers(len(node.output)))] = odd_name(rng, model)
    elif kind == 4:                                          # rename a graph input or output
        values = pick(rng, [graph.input, graph.output])
        if values:
            pick(rng, values).name = odd_name(rng, model)
    elif kind == 5 and graph.initializer:                    # damage an initializer
        mutate_tensor(pick(rng, graph.initializer), rng)
    elif kind == 6 and graph.initializer:                    # drop an initializer
        del graph.initializer[int(rng.integers(len(graph.initializer)))]
    elif kind == 7 and nodes:                                # an attribute of another type or value
        node = pick(rng, nodes)
        if node.attribute:
            set_attribute(pick(rng, node.attribute), rng)
        else:
            attribute = node.attribute.add()
            attribute.name = pick(rng, ["axis", "kernel_shape", "pads", "strides", "group", "perm", "alpha", "mode"])
            set_attribute(attribute, rng)
    elif kind == 8 and nodes:                                # drop or duplicate an attribute
        node = pick(rng, nodes)
        if node.attribute and rng.integers(2):
            del node.attribute[int(rng.integers(len(node.attribute)))]
        elif node.attribute:
            node.attribute.add().CopyFrom(node.attribute[0])
    elif kind == 9:                                          # odd opsets
        choice = int(rng.integers(5))
        if choice == 0:
            del model.opset_import[:]
        elif choice == 1:
            model.opset_import.add().CopyFrom(helper.make_opsetid("", 7))
        elif model.opset_import:
            model.opset_import[0].version = pick(rng, [0, -1, 1, 5, 9, 11, 22, 99, 2 ** 40])
    elif kind == 10 and graph.input:                         # graph input: no type, another type, odd dims
        value = pick(rng, graph.input)
        choice = int(rng.integers(4))
        if choice == 0:
            value.ClearField("type")
        elif choice == 1:
            value.type.tensor_type.elem_type = pick(rng, [0, 7, 8, 9, 99])
        elif choice == 2:
            value.type.ClearField("tensor_type")
            value.type.sequence_type.elem_type.tensor_type.elem_type = TensorProto.FLOAT
        else:
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for size in odd_dims(rng):
                shape.dim.add().dim_value = size
    elif kind == 11 and nodes:                               # change an operator
        node = pick(rng, nodes)
        node.op_type = pick(rng, OP_TYPES)
    elif kind == 12 and nodes:                               # duplicate a node (its outputs made twice)
        nodes.add().CopyFrom(pick(rng, nodes))
    elif kind == 13 and len(nodes) > 1:                      # a cycle: read the output of a later node
        i = int(rng.integers(len(nodes) - 1))
        later = nodes[int(rng.integers(i + 1, len(nodes)))]
        if nodes[i].input and later.output:
            nodes[i].input[0] = later.output[0]
    elif kind == 14:                                         # a Constant node with an odd value
        attribute = pick(rng, [
            helper.make_attribute("value_ints", [2 ** 40, 2 ** 30]),
            helper.make_attribute("value", helper.make_tensor("v", TensorProto.INT64, [2], [2 ** 31, 2 ** 31])),
            helper.make_attribute("value_float", 1.5), helper.make_attribute("value_string", "text"),
            helper.make_attribute("value_strings", ["a", "b"])])
        constant = helper.make_node("Constant", [], ["odd_constant"], name="odd")
        constant.attribute.append(attribute)
        if rng.integers(3) == 0:
            sparse = constant.attribute.add()
            sparse.name, sparse.type = "sparse_value", AttributeProto.SPARSE_TENSOR
            sparse.sparse_tensor.values.CopyFrom(helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
            sparse.sparse_tensor.dims.extend([2 ** 40])
        nodes.insert(0, constant)
        if nodes[1:] and nodes[1].input:
            nodes[1].input[-1] = "odd_constant"
    elif kind == 15:                                         # a value-sized operator fed by a tiny constant
        op = pick(rng, ["ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Pad"])
        inputs = {"ConstantOfShape": ["big"], "Expand": ["one", "big"], "Tile": ["one", "big"],
                  "Range": ["zero_f", "huge_f", "one_f"], "Resize": ["one4", "", "big_scales"], "Pad": ["one", "big"]}[op]
        graph.initializer.extend([
            numpy_helper.from_array(np.array([2 ** 20, 2 ** 20, 2 ** 10], np.int64), "big"),
            numpy_helper.from_array(np.ones((1, 1, 1), np.float32), "one"),
            numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "one4"),
            numpy_helper.from_array(np.array([1, 1, 1e5, 1e5], np.float32), "big_scales"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
            numpy_helper.from_array(np.array(1e12, np.float32), "huge_f"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one_f")])
        nodes.insert(0, helper.make_node(op, inputs, ["grown"], name="grow"))
        if nodes[1:] and nodes[1].input:
            nodes[1].input[-1] = "grown"
    elif kind == 16 and nodes:                               # empty or odd names
        node = pick(rng, nodes)
        node.name = pick(rng, ["", "a\nb", "\x00", node.name * 2, "é"])
        if rng.integers(3) == 0:
            node.op_type = ""
    elif kind == 17 and nodes:                               # a custom domain
        pick(rng, nodes).domain = pick(rng, ["com.microsoft", "ai.onnx.ml", "\n"])
    elif kind == 18:                                         # value_info with odd dims
        info = graph.value_info.add()
        info.CopyFrom(helper.make_tensor_value_info(pick(rng, value_names(model)), TensorProto.FLOAT, [1]))
        info.type.tensor_type.shape.dim[0].dim_value = pick(rng, [-5, 0, 2 ** 62])
    elif kind == 19 and nodes:                               # an input more or fewer
        node = pick(rng, nodes)
        if node.input and rng.integers(2):
            del node.input[-1]
        else:
            node.input.append(pick(rng, ["", odd_name(rng, model)]))
    elif kind == 20:                                         # graph outputs: none, or one made by nothing
        if rng.integers(2):
            del graph.output[:]
        else:
            graph.output.add().CopyFrom(helper.make_tensor_value_info("never_made", TensorProto.FLOAT, [1]))
    elif kind == 21:                                         # a sparse initializer
        sparse = graph.sparse_initializer.add()
        sparse.values.CopyFrom(helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0]))
        sparse.dims.extend([2 ** 30, 2 ** 30])
    elif kind == 22 and graph.initializer:                   # an initializer given twice
        graph.initializer.add().CopyFrom(pick(rng, graph.initializer))
    elif kind == 23:                                         # IR version odd
        model.ir_version = pick(rng, [0, 1, 2, 3, 99, 2 ** 40])
    elif kind in (24, 25) and nodes:                         # an attribute of the right type, odd value
        node = pick(rng, nodes)
        if node.attribute:
            odd_attribute_value(pick(rng, node.attribute), rng)
    elif kind in (26, 27) and graph.initializer:             # odd values in a (small) initializer
        odd_tensor_values(pick(rng, graph.initializer), rng)
    elif kind == 28:                                         # a slow operator on a large constant
        slow_fold(model, rng)
    return model


def slow_fold(model, rng):
    """An operator that ONNX's reference evaluator computes in Python loops, fed by a constant made from a
    few bytes (ConstantOfShape): reading must refuse it or fold it quickly, never hang."""
    side = pick(rng, [8, 64, 512])
    op, extra, attrs = pick(rng, [
        ("ConvTranspose", ["slow_w"], dict(strides=[2, 2])), ("MaxPool", [], dict(kernel_shape=[3, 3])),
        ("AveragePool", [], dict(kernel_shape=[2 ** 20, 2 ** 20], pads=[2 ** 20] * 4)),
        ("Conv", ["slow_w"], dict(pads=[2 ** 30] * 4, strides=[2 ** 30, 2 ** 30])), ("LRN", [], dict(size=5)),
        ("GridSample", ["slow_grid"], {}), ("RoiAlign", ["slow_rois", "slow_index"], dict(sampling_ratio=2 ** 20)),
        ("Resize", ["", "slow_scales"], dict(mode="linear")), ("Einsum", ["slow_big"], dict(equation="abcd,abcd->ab"))])
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array([1, 4, side, side], np.int64), "slow_shape"),
        numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "slow_w"),
        numpy_helper.from_array(np.zeros((1, side, side, 2), np.float32), "slow_grid"),
        numpy_helper.from_array(np.tile(np.array([[0, 0, 1e6, 1e6]], np.float32), (64, 1)), "slow_rois"),
        numpy_helper.from_array(np.zeros(64, np.int64), "slow_index"),
        numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "slow_scales")])
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    model.graph.node.insert(0, helper.make_node("ConstantOfShape", ["slow_shape"], ["slow_big"], value=value))
    model.graph.node.insert(1, helper.make_node(op, ["slow_big"] + extra, ["slow_out"], name="slow", **attrs))
    if model.graph.node[2:] and model.graph.node[2].input:
        model.graph.node[2].input[-1] = "slow_out"


def odd_attribute_value(attribute, rng):
    if attribute.type == AttributeProto.INT:
        attribute.i = pick(rng, INTERESTING_INTS)
    elif attribute.type == AttributeProto.FLOAT:
        attribute.f = pick(rng, INTERESTING_FLOATS)
    elif attribute.type == AttributeProto.INTS:
        values = list(attribute.ints) or [1]
        if rng.integers(3) == 0:
            values = values[:int(rng.integers(len(values) + 1))] + [pick(rng, INTERESTING_INTS)]
        else:
            values[int(rng.integers(len(values)))] = pick(rng, INTERESTING_INTS)
        del attribute.ints[:]
        attribute.ints.extend(values)
    elif attribute.type == AttributeProto.FLOATS:
        values = list(attribute.floats) or [1.0]
        values[int(rng.integers(len(values)))] = pick(rng, INTERESTING_FLOATS)
        del attribute.floats[:]
        attribute.floats.extend(values)
    elif attribute.type == AttributeProto.STRING:
        attribute.s = pick(rng, [b"", b"SAME_UPPER", b"SAME_LOWER", b"VALID", b"linear", b"align_corners",
                                 b"edge", b"floor", b"asymmetric"])


def odd_tensor_values(tensor, rng):
    """Same type and size, other values: shape operands (targets, pads, axes, scales) get odd numbers."""
    try:
        array = numpy_helper.to_array(tensor).copy()
    except Exception:  # noqa: BLE001 - already damaged by an earlier edit
        return
    if array.size == 0 or array.size > 64 or array.dtype.kind not in "fiu":
        return
    flat = array.reshape(-1)
    for _ in range(int(rng.integers(1, 3))):
        index = int(rng.integers(flat.size))
        if array.dtype.kind == "f":
            flat[index] = pick(rng, INTERESTING_FLOATS)
        else:
            info = np.iinfo(array.dtype)
            flat[index] = min(max(pick(rng, INTERESTING_INTS), info.min), info.max)
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def mutant(seed_model, rng):
    model = onnx.ModelProto()
    model.CopyFrom(seed_model)
    for _ in range(int(rng.integers(1, 4))):
        mutate_model(model, rng)
    data = model.SerializeToString()
    return mutate_bytes(data, rng) if rng.integers(8) == 0 else data


# -- the runs -------------------------------------------------------------------------------------

def commands(path, out, rng):
    """Every mutant through inspect; some through inspect with a preset and through convert."""
    runs = [["inspect", path]]
    draw = int(rng.integers(4))
    if draw == 0:
        runs.append(["inspect", "--preset", "epsilon-plus-flat", path])
    elif draw == 1:
        runs.append(["convert", path, "-o", out])
    return runs


def run_mutants(worker, folder, label, seed_items, make, count, rng):
    outcomes = []
    for index in range(count):
        name, (model, data_folder) = seed_items[index % len(seed_items)]
        where = data_folder or folder
        path = pathlib.Path(where) / f"mutant_{label.split()[-1]}_{index}.onnx"
        path.write_bytes(make(model, rng))
        for argv in commands(path, folder / "out.onnx", rng):
            outcome = worker.run(argv, label=label)
            outcome.details["seed"] = name
            outcomes.append(outcome)
        path.unlink()
    return outcomes


def test_fuzz_onnx_byte_mutants(seeds, tmp_path):
    rng = np.random.default_rng([SEED, 1])
    items = sorted(seeds.items())
    with CliWorker(env=WORKER_ENV, timeout=30) as worker:
        outcomes = run_mutants(worker, tmp_path, "onnx bytes", items,
                               lambda model, r: mutate_bytes(model.SerializeToString(), r), max(MUTANTS // 2, 1), rng)
    assert_clean(outcomes)


def test_fuzz_onnx_protobuf_mutants(seeds, tmp_path):
    rng = np.random.default_rng([SEED, 2])
    items = sorted(seeds.items())
    with CliWorker(env=WORKER_ENV, timeout=30) as worker:
        outcomes = run_mutants(worker, tmp_path, "onnx protobuf", items, mutant, MUTANTS, rng)
    assert_clean(outcomes)
    assert any(o.kind == "error" for o in outcomes)


def test_seed_models_read_cleanly(seeds, tmp_path):
    """The seeds themselves are readable, so that the mutants start from files the reader accepts."""
    with CliWorker(env=WORKER_ENV, timeout=60) as worker:
        for name, (model, data_folder) in sorted(seeds.items()):
            path = pathlib.Path(data_folder or tmp_path) / f"seed_{len(name)}.onnx"
            path.write_bytes(model.SerializeToString())
            for argv in (["inspect", path], ["convert", path, "-o", tmp_path / "out.onnx"]):
                outcome = worker.run(argv, label="onnx seeds")
                assert outcome.kind == "ok", f"{name}: {outcome.describe()}"
            path.unlink()
