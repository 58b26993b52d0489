"""Operator forms that ONNX's conformance cases do not cover, each checked against onnxruntime on the
original model and on lrptool's re-export (opset-dependent attributes and inputs included)."""

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.onnx_reader import read_onnx
from converters.onnx_writer import graph_to_onnx
from lrptool.executor import run_graph

RNG = np.random.default_rng(7)


def onnxruntime_outputs(model, x):
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def make(nodes, in_shape, out_shape, opset, initializers=()):
    graph = helper.make_graph(nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def ints(name, values):
    return (name, np.asarray(values, dtype=np.int64))


def floats(name, values):
    return (name, np.asarray(values, dtype=np.float32))


CASES = {
    "upsample_opset7_attr": (
        [helper.make_node("Upsample", ["x"], ["y"], scales=[1.0, 1.0, 2.0, 3.0], mode="nearest")],
        [1, 2, 3, 4], None, 7, []),
    "upsample_opset9_input": (
        [helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")],
        [1, 2, 3, 4], None, 9, [floats("s", [1, 1, 2, 2])]),
    "resize_opset10": (
        [helper.make_node("Resize", ["x", "s"], ["y"], mode="nearest")],
        [1, 2, 3, 4], None, 10, [floats("s", [1, 1, 3, 2])]),
    "resize_opset13_sizes_asymmetric_floor": (
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
        [1, 2, 3, 4], None, 13, [ints("sizes", [1, 2, 9, 8])]),
    "resize_opset19_half_pixel": (
        [helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest")],
        [1, 2, 3, 4], None, 19, [floats("s", [1, 1, 2, 2])]),
    "slice_steps_negative": (
        [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])],
        [2, 3, 8, 9], None, 13,
        [ints("starts", [-1, 1]), ints("ends", [-9, 100]), ints("axes", [-1, 2]), ints("steps", [-2, 3])]),
    "slice_opset1_attrs": (
        [helper.make_node("Slice", ["x"], ["y"], starts=[1, 0], ends=[3, -1], axes=[1, 3])],
        [2, 3, 4, 5], None, 7, []),
    "split_opset18_num_outputs": (
        [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3),
         helper.make_node("Mul", ["a", "c"], ["m"]), helper.make_node("Sub", ["m", "b"], ["y"])],
        [2, 7, 4], None, 18, []),
    "split_opset11_attr": (
        [helper.make_node("Split", ["x"], ["a", "b"], axis=2, split=[1, 3]),
         helper.make_node("ReduceMean", ["b"], ["r"], axes=[2], keepdims=1),
         helper.make_node("Add", ["a", "r"], ["y"])],
        [2, 3, 4, 2], None, 11, []),
    "pad_opset18_axes": (
        [helper.make_node("Pad", ["x", "pads", "value", "axes"], ["y"], mode="constant")],
        [1, 2, 3, 4], None, 18, [ints("pads", [1, 2, 0, 3]), floats("value", 1.5), ints("axes", [2, 3])]),
    "pad_opset2_attrs": (
        [helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 0, 0, 0, 0, 2], value=-1.0)],
        [1, 2, 3, 4], None, 7, []),
    "reduce_mean_opset18_axes_input": (
        [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)],
        [2, 3, 4, 5], None, 18, [ints("axes", [2, 3])]),
    "clip_opset6_attrs_and_hardswish": (
        [helper.make_node("Clip", ["x"], ["c"], min=-0.5, max=0.7)],
        [2, 3, 4], None, 6, []),
    "hardswish_opset14": ([helper.make_node("HardSwish", ["x"], ["y"])], [2, 3, 4], None, 14, []),
    "softmax_opset11_coerced": ([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [2, 3, 4, 5], None, 11, []),
    "logsoftmax_opset11_axis2": ([helper.make_node("LogSoftmax", ["x"], ["y"], axis=2)], [2, 3, 4, 5], None, 11,
                                 []),
    "conv_same_lower_stride2": (
        [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2])],
        [1, 2, 7, 6], None, 13, [floats("w", RNG.normal(size=(3, 2, 4, 3)))]),
    "conv_transpose_output_shape": (
        [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], output_shape=[9, 10])],
        [1, 2, 4, 5], None, 13, [floats("w", RNG.normal(size=(2, 3, 3, 3))), floats("b", [0.1, 0.2, 0.3])]),
    "conv_transpose_same_upper_grouped": (
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], auto_pad="SAME_UPPER", group=2)],
        [1, 4, 3, 5], None, 13, [floats("w", RNG.normal(size=(4, 3, 3, 3)))]),
    "gemm_transposed_a_matrix_bias": (
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"], transA=1, alpha=0.5, beta=2.0)],
        [5, 3], None, 13, [floats("w", RNG.normal(size=(5, 4))), floats("c", RNG.normal(size=(3, 4)))]),
    "matmul_3d_input": (
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [2, 3, 5], None, 13, [floats("w", RNG.normal(size=(5, 4)))]),
    "flatten_negative_axis_squeeze_unsqueeze_opset11": (
        [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[2, 4]),
         helper.make_node("Squeeze", ["u"], ["s"], axes=[2]),
         helper.make_node("Flatten", ["s"], ["y"], axis=-3)],
        [2, 3, 4], None, 11, []),
    "sub_div_by_channel_constants": (
        [helper.make_node("Sub", ["x", "m"], ["a"]), helper.make_node("Div", ["a", "s"], ["b"]),
         helper.make_node("Sub", ["one", "b"], ["y"])],
        [2, 3, 4, 4], None, 13,
        [floats("m", np.array([0.1, 0.2, 0.3]).reshape(3, 1, 1)), floats("s", np.array([2.0, 4.0, 8.0]).reshape(3, 1, 1)),
         floats("one", 1.0)]),
    "legacy_broadcast_axis": (
        [helper.make_node("Add", ["x", "b"], ["y"], broadcast=1, axis=1)],
        [2, 3, 4, 5], None, 6, [floats("b", [1.0, 2.0, 3.0])]),
}
# the Clip case ends in "c": rename its output to "y"
CASES["clip_opset6_attrs_and_hardswish"][0][0].output[0] = "y"


#: onnxruntime no longer runs opset-6 arithmetic; the legacy broadcast rule is written out by hand
HAND_REFERENCES = {"legacy_broadcast_axis": lambda x: x + np.array([1.0, 2.0, 3.0], np.float32).reshape(3, 1, 1)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_form_matches_onnxruntime(case):
    nodes, in_shape, out_shape, opset, initializers = CASES[case]
    model = make(nodes, in_shape, out_shape, opset, initializers)
    x = RNG.normal(size=in_shape).astype(np.float32)
    if case in HAND_REFERENCES:
        expected = HAND_REFERENCES[case](x)
    else:
        (expected,) = onnxruntime_outputs(model, x)
    graph = read_onnx(model)
    (ours,) = run_graph(graph, x).values()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
    (ours64,) = run_graph(graph, x, dtype=np.float64).values()
    np.testing.assert_allclose(ours64, expected, rtol=1e-4, atol=1e-5)
    written = graph_to_onnx(graph)
    onnx.checker.check_model(written)
    (again,) = onnxruntime_outputs(written, x)
    np.testing.assert_allclose(again, expected, rtol=1e-4, atol=1e-5)


def test_keep_all_records_every_intermediate_tensor():
    nodes, in_shape, out_shape, opset, initializers = CASES["split_opset11_attr"]
    graph = read_onnx(make(nodes, in_shape, out_shape, opset, initializers))
    x = RNG.normal(size=in_shape).astype(np.float32)
    values = run_graph(graph, x, keep_all=True)
    assert set(values) == set(graph.shapes)
    np.testing.assert_array_equal(values["a"], x[:, :, :1])
    np.testing.assert_allclose(values["r"], x[:, :, 1:].mean(axis=2, keepdims=True), rtol=1e-6)


def test_unsupported_resize_settings_are_named():
    from lrptool.errors import UnsupportedModelError

    model = make([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear", name="smooth")],
                 [1, 2, 3, 4], None, 13, [floats("s", [1, 1, 2, 2])])
    with pytest.raises(UnsupportedModelError) as refused:
        read_onnx(model)
    assert "smooth (Resize: mode 'linear'" in str(refused.value)


@pytest.mark.parametrize("chain", ["constant", "shape"])
def test_paddle_style_batch_of_minus_one_is_the_free_batch(chain):
    """PaddlePaddle declares the batch as dim_value -1 and flattens with a (-1, N) target, given as a
    constant or computed from Shape; both load with a free batch and match onnxruntime."""
    rng = np.random.default_rng(40)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])]
    initializers = [("w", rng.normal(size=(2, 3, 3, 3)).astype(np.float32)),
                    ("fc", rng.normal(size=(200, 4)).astype(np.float32))]
    if chain == "constant":
        initializers.append(ints("shape", [-1, 200]))
    else:
        initializers += [ints("zero", [0]), ints("one", [1]), ints("rest", [200])]
        nodes += [helper.make_node("Shape", ["c"], ["s"]), helper.make_node("Slice", ["s", "zero", "one"], ["b"]),
                  helper.make_node("Concat", ["b", "rest"], ["shape"], axis=0)]
    nodes += [helper.make_node("Reshape", ["c", "shape"], ["r"]), helper.make_node("MatMul", ["r", "fc"], ["y"])]
    model = make(nodes, [-1, 3, 10, 10], [-1, 4], 11, initializers)
    graph = read_onnx(model)
    assert graph.inputs["x"] == (None, 3, 10, 10)
    x = rng.normal(size=(3, 3, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(run_graph(graph, x)["y"], onnxruntime_outputs(model, x)[0], rtol=1e-4, atol=1e-4)
