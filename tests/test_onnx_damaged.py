"""Damaged and hostile ONNX files: one line on stderr naming the file and the node (or the part of the graph),
exit status 2; one test per kind of damage the fuzzing (tests/test_fuzz_onnx.py) found or was written for."""

import os
import signal

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from lrptool import cli


@pytest.fixture
def lrptool(capsys, monkeypatch):
    """Run ``lrptool ARGS`` in-process; returns (exit status, stdout, stderr lines)."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)   # leave pytest's own handlers alone
    monkeypatch.setenv("LRPTOOL_MEMORY_BUDGET", "512M")

    def run(*args):
        with pytest.raises(SystemExit) as exit_:
            cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return exit_.value.code, out, [line for line in err.splitlines() if line.strip()]
    return run


def one_line_error(result, path, *fragments):
    code, _, lines = result
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"lrptool: error: {path}: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def conv_model(weight=None, attrs=None, opset=13, input_shape=(1, 2, 5, 5)):
    """x → Conv 'conv' (w) → Relu 'relu' → y."""
    weight = np.ones((3, 2, 3, 3), np.float32) if weight is None else weight
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", **(attrs or {})),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def save(model, tmp_path, name="model.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def weight_tensor(model):
    return next(t for t in model.graph.initializer if t.name == "w")


def set_attribute(node, name, **fields):
    attribute = next((a for a in node.attribute if a.name == name), None) or node.attribute.add()
    attribute.Clear()
    attribute.name = name
    for key, value in fields.items():
        if key in ("ints", "floats"):
            getattr(attribute, key).extend(value)
        elif key in ("t", "g"):
            getattr(attribute, key).CopyFrom(value)
        else:
            setattr(attribute, key, value)


def test_the_undamaged_model_reads(lrptool, tmp_path):
    code, out, lines = lrptool("inspect", save(conv_model(), tmp_path))
    assert code == 0 and not lines and "conv" in out


# -- the graph's structure ------------------------------------------------------------------------

def test_an_input_nothing_makes(lrptool, tmp_path):
    model = conv_model()
    model.graph.node[1].input[0] = "nowhere"
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'relu' (Relu)", "input 'nowhere' is made by no node")


def test_nodes_out_of_order(lrptool, tmp_path):
    model = conv_model()
    first, second = onnx.NodeProto(), onnx.NodeProto()
    first.CopyFrom(model.graph.node[0])
    second.CopyFrom(model.graph.node[1])
    model.graph.node[0].CopyFrom(second)
    model.graph.node[1].CopyFrom(first)
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'relu' (Relu)", "made only by a later node 'conv'",
                   "out of order or form a cycle")


def test_a_cycle(lrptool, tmp_path):
    model = conv_model()
    model.graph.node[0].input[0] = "y"
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'conv' (Conv)", "later node 'relu'")


def test_an_output_made_twice(lrptool, tmp_path):
    model = conv_model()
    model.graph.node.add().CopyFrom(model.graph.node[1])
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'relu' (Relu)", "output 'y' is already made")


def test_a_graph_output_never_made(lrptool, tmp_path):
    model = conv_model()
    model.graph.output[0].name = "never"
    path = save(model, tmp_path)
    one_line_error(lrptool("convert", path, "-o", tmp_path / "out.onnx"), path, "graph output 'never'",
                   "made by no node")
    assert not (tmp_path / "out.onnx").exists()


def test_a_node_without_outputs(lrptool, tmp_path):
    model = conv_model()
    del model.graph.node[1].output[:]
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'relu' (Relu)", "makes no output")


@pytest.mark.parametrize("name, problem", [(b"re\xfflu", "not valid UTF-8"), (b"re\nlu", "line breaks"),
                                           (b"x" * 5000, "characters long")])
def test_names_that_break_messages(lrptool, tmp_path, name, problem):
    model = conv_model()
    # a placeholder of the same length, replaced in the bytes: protobuf's Python API takes only valid text
    model.graph.node[1].name = "#" * len(name)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString().replace(b"#" * len(name), name))
    line = one_line_error(lrptool("inspect", path), path, problem)
    assert len(line) < 400


def test_thousands_of_nodes_and_outputs_of_one_name_read_in_linear_time(lrptool, tmp_path):
    import time

    count = 20000
    nodes = [helper.make_node("Relu", ["x" if i == 0 else f"t{i - 1}"], [f"t{i}"], name="n") for i in range(count)]
    outputs = [helper.make_tensor_value_info(f"t{i}", TensorProto.FLOAT, None) for i in range(count)]
    outputs += [helper.make_tensor_value_info("t0", TensorProto.FLOAT, None)] * count
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])], outputs)
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path)
    started = time.monotonic()
    code, _, lines = lrptool("convert", path, "-o", tmp_path / "out.onnx")
    assert code == 0, lines
    assert time.monotonic() - started < 20       # quadratic name lookups took minutes


def test_an_empty_operator_type(lrptool, tmp_path):
    model = conv_model()
    model.graph.node[1].op_type = ""
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'relu'", "has no operator type")


# -- tensors --------------------------------------------------------------------------------------

def test_raw_data_shorter_than_its_dims(lrptool, tmp_path):
    model = conv_model()
    tensor = weight_tensor(model)
    tensor.raw_data = tensor.raw_data[:-4]
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "initializer 'w'", "raw_data holds 212 bytes",
                   "dims [3, 2, 3, 3]", "need 216")


def test_typed_values_fewer_than_its_dims(lrptool, tmp_path):
    model = conv_model()
    tensor = weight_tensor(model)
    tensor.ClearField("raw_data")
    tensor.float_data.extend([1.0] * 5)
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "initializer 'w'", "float_data holds 5 values")


def test_an_unknown_data_type(lrptool, tmp_path):
    model = conv_model()
    encoded = weight_tensor(model).SerializeToString()
    # data_type (field 2) 1 → 99 in the bytes: protobuf's Python API refuses unknown enum values, a file need not
    damaged = encoded.replace(b"\x10\x01", b"\x10\x63", 1)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString().replace(encoded, damaged))
    one_line_error(lrptool("inspect", path), path, "initializer 'w'", "unknown tensor data type 99")


def test_a_data_type_lrptool_does_not_read(lrptool, tmp_path):
    model = conv_model()
    weight_tensor(model).data_type = TensorProto.INT4
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "initializer 'w'", "INT4 are not supported")


def test_huge_dims_in_a_tiny_file(lrptool, tmp_path):
    model = conv_model()
    tensor = weight_tensor(model)
    del tensor.dims[:]
    tensor.dims.extend([2 ** 20, 2 ** 20, 2 ** 10])
    path = save(model, tmp_path)
    assert path.stat().st_size < 1000
    one_line_error(lrptool("inspect", path), path, "initializer 'w'", "more than the memory budget")


def test_dims_whose_product_overflows_int64(lrptool, tmp_path):
    model = conv_model()
    tensor = weight_tensor(model)
    del tensor.dims[:]
    tensor.dims.extend([2 ** 62, 2 ** 62, 16])
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "initializer 'w'", "more than the memory budget")


def test_a_negative_dim(lrptool, tmp_path):
    model = conv_model()
    tensor = weight_tensor(model)
    tensor.dims[0] = -3
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "initializer 'w'", "negative size")


def test_a_graph_input_of_huge_size(lrptool, tmp_path):
    path = save(conv_model(input_shape=(1, 2, 2 ** 31, 2 ** 31)), tmp_path)
    one_line_error(lrptool("inspect", path), path, "input 'x'", "more than the memory budget")


@pytest.mark.parametrize("size", [-4, 0])
def test_a_graph_input_with_an_odd_size(lrptool, tmp_path, size):
    path = save(conv_model(input_shape=(1, 2, size, 5)), tmp_path)
    one_line_error(lrptool("inspect", path), path, "input 'x'")


def test_a_graph_input_without_a_type(lrptool, tmp_path):
    model = conv_model()
    model.graph.input[0].ClearField("type")
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "input 'x'", "has no type")


def test_an_output_shape_beyond_the_budget(lrptool, tmp_path):
    model = conv_model(attrs={"pads": [2 ** 30, 2 ** 30, 2 ** 30, 2 ** 30]})
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'conv' (Conv)", "more than the memory budget")


def test_folding_a_constant_beyond_the_budget(lrptool, tmp_path):
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="grow"),
             helper.make_node("Add", ["x", "big"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(np.array([2 ** 20, 2 ** 20, 8], np.int64), "shape")])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'grow' (ConstantOfShape)", "more than the memory budget")


@pytest.mark.parametrize("op, attrs", [("ConvTranspose", dict(strides=[2, 2])), ("MaxPool", dict(kernel_shape=[3, 3])),
                                       ("GridSample", {})])
def test_folding_a_slow_operator_on_a_large_constant(lrptool, tmp_path, op, attrs):
    second = {"ConvTranspose": ["w"], "MaxPool": [], "GridSample": ["grid"]}[op]
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="grow"),
             helper.make_node(op, ["big"] + second, ["slow"], name="slow", **attrs),
             helper.make_node("Relu", ["x"], ["y"], name="relu")]
    init = [numpy_helper.from_array(np.array([1, 16, 256, 256], np.int64), "shape"),
            numpy_helper.from_array(np.ones((16, 16, 3, 3), np.float32), "w"),
            numpy_helper.from_array(np.zeros((1, 256, 256, 2), np.float32), "grid")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("slow", TensorProto.FLOAT, None)], initializer=init)
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), tmp_path)
    problem = "does not evaluate this operator at load time" if op == "GridSample" else "would take too long"
    one_line_error(lrptool("inspect", path), path, f"slow ({op}: ", problem)


def test_a_signalling_nan_weight_prints_no_warning(lrptool, tmp_path):
    weight = np.ones((3, 2, 3, 3), np.float32)
    weight.view(np.uint32)[0, 0, 0, 0] = 0x7F800001
    code, _, lines = lrptool("inspect", "--preset", "epsilon-plus-flat", save(conv_model(weight), tmp_path))
    assert code == 0 and not lines


# -- external data --------------------------------------------------------------------------------

def external(model, location, offset=0, length=None):
    tensor = weight_tensor(model)
    size = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(size if length is None else length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model


def test_external_data_beside_the_model_reads(lrptool, tmp_path):
    weight = np.arange(54, dtype=np.float32).reshape(3, 2, 3, 3)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8 + weight.tobytes())
    path = save(external(conv_model(weight), "weights.bin", offset=8), tmp_path)
    code, out, lines = lrptool("inspect", path)
    assert code == 0 and not lines, lines


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin", "..\\outside.bin"])
def test_external_data_outside_the_models_folder(lrptool, tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 216)
    path = save(external(conv_model(), location), folder)
    one_line_error(lrptool("inspect", path), path, "initializer 'w'", "outside the model's folder")


def test_external_data_through_a_link_out_of_the_folder(lrptool, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 216)
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    path = save(external(conv_model(), "link.bin"), folder)
    one_line_error(lrptool("inspect", path), path, "initializer 'w'", "outside the model's folder")


@pytest.mark.parametrize("offset, length, problem", [(200, None, "beyond the file's 216 bytes"),
                                                     (0, 100, "holds 100 bytes but the tensor's dims need 216"),
                                                     (-8, None, "beyond the file"),
                                                     ("x", None, "not a whole number")])
def test_external_data_that_does_not_fit(lrptool, tmp_path, offset, length, problem):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 216)
    path = save(external(conv_model(), "weights.bin", offset, length), tmp_path)
    one_line_error(lrptool("inspect", path), path, "initializer 'w'", problem)


def test_external_data_file_missing_or_not_a_file(lrptool, tmp_path):
    path = save(external(conv_model(), "missing.bin"), tmp_path)
    one_line_error(lrptool("inspect", path), path, "initializer 'w'", "'missing.bin' cannot be read")
    (tmp_path / "folder.bin").mkdir()
    path = save(external(conv_model(), "folder.bin"), tmp_path)
    one_line_error(lrptool("inspect", path), path, "initializer 'w'", "not a regular file")


# -- attributes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, problem", [
    (dict(type=AttributeProto.INT, i=1), "'strides' is an int where ONNX wants a list of ints"),
    (dict(type=AttributeProto.TENSOR, t=helper.make_tensor("t", TensorProto.INT64, [2], [1, 1])),
     "'strides' is a tensor where ONNX wants a list of ints"),
    (dict(type=AttributeProto.GRAPH, g=helper.make_graph([], "sub", [], [])), "'strides' is a graph"),
    (dict(type=AttributeProto.STRINGS), "'strides' has no type and no value"),
])
def test_an_attribute_of_the_wrong_type(lrptool, tmp_path, fields, problem):
    model = conv_model()
    set_attribute(model.graph.node[0], "strides", **fields)
    if fields.get("type") == AttributeProto.STRINGS:
        model.graph.node[0].attribute[0].type = AttributeProto.UNDEFINED
        problem = "'strides' has no type and no value"
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'conv' (Conv)", problem)


def test_a_string_where_a_float_belongs(lrptool, tmp_path):
    model = conv_model()
    leaky = helper.make_node("LeakyRelu", ["y"], ["z"], name="leaky")
    set_attribute(leaky, "alpha", type=AttributeProto.STRING, s=b"0.1")
    model.graph.node.append(leaky)
    model.graph.output[0].name = "z"
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'leaky' (LeakyRelu)",
                   "'alpha' is a string where ONNX wants a float")


def test_a_required_attribute_missing(lrptool, tmp_path):
    model = conv_model()
    pool = helper.make_node("MaxPool", ["y"], ["z"], name="pool")
    model.graph.node.append(pool)
    model.graph.output[0].name = "z"
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'pool' (MaxPool)", "required attribute 'kernel_shape'")


@pytest.mark.parametrize("attrs, problem", [
    (dict(strides=[0, 1]), "must be at least 1"),
    (dict(group=0), "group 0 must be at least 1"),
    (dict(pads=[1, 1]), "should have 4 entries"),
    (dict(strides=[1, 1, 1]), "should have 2 entries"),
])
def test_attribute_values_no_convolution_has(lrptool, tmp_path, attrs, problem):
    path = save(conv_model(attrs=attrs), tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'conv' (Conv)", problem)


def test_an_axis_out_of_range(lrptool, tmp_path):
    model = conv_model()
    model.graph.node.append(helper.make_node("Softmax", ["y"], ["z"], name="softmax", axis=7))
    model.graph.output[0].name = "z"
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'softmax' (Softmax)", "axis 7 is out of range")


@pytest.mark.parametrize("variance", [-1.0, float("nan")])
def test_a_batchnorm_variance_that_is_not_positive(lrptool, tmp_path, variance):
    model = conv_model()
    values = {"scale": np.ones(3), "bias": np.zeros(3), "mean": np.zeros(3), "var": np.array([1.0, variance, 1.0])}
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items())
    model.graph.node.append(helper.make_node("BatchNormalization", ["y", *values], ["z"], name="bn"))
    model.graph.output[0].name = "z"
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", "--preset", "epsilon-plus-flat", path), path, "node 'bn' (BatchNormalization)",
                   "variance + epsilon")


def test_a_perm_that_is_not_a_permutation(lrptool, tmp_path):
    model = conv_model()
    model.graph.node.append(helper.make_node("Transpose", ["y"], ["z"], name="transpose", perm=[0, 0, 1, 2]))
    model.graph.output[0].name = "z"
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'transpose' (Transpose)", "not an order of the 4 axes")


def test_non_finite_resize_scales(lrptool, tmp_path):
    model = conv_model()
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, np.inf, 2], np.float32), "scales"))
    model.graph.node.append(helper.make_node("Resize", ["y", "", "scales"], ["z"], name="resize", mode="nearest"))
    model.graph.output[0].name = "z"
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'resize' (Resize)", "not all finite")


def test_a_long_list_in_a_message_is_shortened(lrptool, tmp_path):
    model = conv_model()
    model.graph.initializer.append(numpy_helper.from_array(np.ones(100000, np.float32), "scales"))
    model.graph.node.append(helper.make_node("Resize", ["y", "", "scales"], ["z"], name="resize", mode="nearest"))
    model.graph.output[0].name = "z"
    path = save(model, tmp_path)
    line = one_line_error(lrptool("inspect", path), path, "resize (Resize: scales", "(100000 entries)")
    assert len(line) < 1000


def test_a_subgraph_on_a_supported_operator(lrptool, tmp_path):
    model = conv_model()
    set_attribute(model.graph.node[1], "body", type=AttributeProto.GRAPH, g=helper.make_graph([], "sub", [], []))
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "relu (Relu: subgraphs (control flow))")


def test_wrong_input_count_for_the_operator(lrptool, tmp_path):
    model = conv_model()
    model.graph.node[1].input.append("w")
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'relu' (Relu)", "has 2 inputs", "takes 1")


# -- Constant nodes -------------------------------------------------------------------------------

def constant_model(attribute):
    constant = helper.make_node("Constant", [], ["k"], name="k")
    constant.attribute.append(attribute)
    nodes = [constant, helper.make_node("Add", ["x", "k"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_sparse_constant(lrptool, tmp_path):
    attribute = AttributeProto(name="sparse_value", type=AttributeProto.SPARSE_TENSOR)
    attribute.sparse_tensor.values.CopyFrom(helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    attribute.sparse_tensor.indices.CopyFrom(helper.make_tensor("i", TensorProto.INT64, [1], [0]))
    attribute.sparse_tensor.dims.extend([2 ** 40])
    path = save(constant_model(attribute), tmp_path)
    one_line_error(lrptool("inspect", path), path, "k (Constant", "sparse")


def test_a_constant_with_huge_dims(lrptool, tmp_path):
    tensor = helper.make_tensor("v", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    del tensor.dims[:]
    tensor.dims.extend([2 ** 40, 3])
    path = save(constant_model(helper.make_attribute("value", tensor)), tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'k' (Constant): attribute 'value'",
                   "more than the memory budget")


def test_a_constant_with_two_values(lrptool, tmp_path):
    model = constant_model(helper.make_attribute("value_float", 1.0))
    model.graph.node[0].attribute.append(helper.make_attribute("value_int", 1))
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "node 'k' (Constant)", "exactly one value attribute")


# -- opsets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("versions, problem", [([], "declares no ONNX opset"), ([0], "opset 0 does not exist"),
                                               ([10 ** 6], "update onnx"), ([7, 13], "several ONNX opsets")])
def test_odd_opsets(lrptool, tmp_path, versions, problem):
    model = conv_model()
    del model.opset_import[:]
    for version in versions:
        model.opset_import.append(helper.make_opsetid("", version))
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "opset_import", problem)


def test_an_operator_newer_than_the_opset(lrptool, tmp_path):
    model = conv_model(opset=13)
    model.graph.node[1].op_type = "HardSwish"
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 9))
    path = save(model, tmp_path)
    one_line_error(lrptool("inspect", path), path, "relu (HardSwish: HardSwish does not exist in opset 9)")


# -- the writer -----------------------------------------------------------------------------------

def test_convert_refuses_weights_float32_cannot_hold(lrptool, tmp_path):
    path = save(conv_model(np.full((3, 2, 3, 3), 1e300)), tmp_path)
    assert lrptool("inspect", path)[0] == 0
    one_line_error(lrptool("convert", path, "-o", tmp_path / "out.onnx"), tmp_path / "out.onnx",
                   "node 'conv' (Conv)", "beyond the float32 range")
    assert not (tmp_path / "out.onnx").exists()


def test_the_writer_names_the_node_for_names_onnx_cannot_hold(tmp_path):
    from converters.onnx_writer import write_onnx
    from lrptool.errors import LrpToolError
    from lrptool.graph import Graph, Node

    node = Node("conv\udcff", "Conv", ["x"], ["y"], dict(strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0)),
                dict(weight=np.ones((2, 3, 1, 1), np.float32)))
    graph = Graph({"x": (None, 3, 4, 4)}, [node], ["y"])
    with pytest.raises(LrpToolError) as refused:
        write_onnx(graph, tmp_path / "out.onnx")
    assert "node 'conv\\udcff' (Conv)" in str(refused.value) and "not valid UTF-8" in str(refused.value)
    assert not (tmp_path / "out.onnx").exists()
