"""ONNX's own operator conformance cases and PyTorch's exported modules, against their reference outputs.

Every case folder is enumerated, so a new case is tested without editing this file. Cases
outside lrptool's operator set are listed in ``UNSUPPORTED`` with the reason; for them the
test checks that the reader refuses the model with a clear error (so the list cannot go stale).
"""

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from converters.onnx_reader import read_onnx
from lrptool.errors import LrpToolError, UnsupportedModelError
from lrptool.executor import run_graph

from conftest import SHARED_MODELS, shared_models

SUITES = ("backend-node", "backend-pytorch-converted", "backend-pytorch-operator")

UNSUPPORTED = {
    # batched matrix product of two tensors: not a dense layer with constant weights
    "test_matmul_3d": "MatMul with a 3-D right-hand side",
    "test_reshape_allowzero_reordered": "an empty (zero-size) input",
    "test_matmul_4d": "MatMul with a 4-D right-hand side",
    # 3-D convolutions and pooling: lrptool covers 1-D and 2-D data
    "test_AvgPool3d": "3-D pooling", "test_AvgPool3d_stride": "3-D pooling",
    "test_AvgPool3d_stride1_pad0_gpu_input": "3-D pooling",
    "test_MaxPool3d": "3-D pooling", "test_MaxPool3d_stride": "3-D pooling",
    "test_MaxPool3d_stride_padding": "3-D pooling",
    "test_Conv3d": "3-D convolution", "test_Conv3d_dilated": "3-D convolution",
    "test_Conv3d_dilated_strided": "3-D convolution", "test_Conv3d_groups": "3-D convolution",
    "test_Conv3d_no_bias": "3-D convolution", "test_Conv3d_stride": "3-D convolution",
    "test_Conv3d_stride_padding": "3-D convolution",
    # operators outside the set
    "test_PoissonNLLLLoss_no_reduce": "Exp", "test_Softmin": "Neg", "test_Softplus": "Softplus",
    "test_operator_basic": "Neg", "test_operator_params": "Neg", "test_operator_exp": "Exp",
    "test_operator_min": "Min", "test_operator_pow": "Pow",
    "test_operator_reduced_sum": "ReduceSum",
    "test_operator_reduced_sum_keepdim": "ReduceSum", "test_operator_repeat": "Tile",
    "test_operator_repeat_dim_overflow": "Tile", "test_operator_symbolic_override": "InstanceNormalization",
    "test_operator_symbolic_override_nested": "Neg",
}

#: Operators whose every input is data. The first graph input is always data; a later one that
#: feeds any other operator at a position past the first is a weight, a shape or a bound, and
#: the case binds it as a constant.
DATA_OPERATORS = {"Add", "Sub", "Mul", "Div", "Sum", "Concat", "Max", "Min", "Mean"}


def case_dirs():
    if not SHARED_MODELS.is_dir():
        return [pytest.param(None, id="shared-models-missing")]
    found = []
    for suite in SUITES:
        for path in sorted(glob.glob(str(SHARED_MODELS / "onnx" / suite / "*" / "model.onnx"))):
            found.append(pytest.param(os.path.dirname(path), id=f"{suite}/{os.path.basename(os.path.dirname(path))}"))
    return found


def read_tensors(folder, prefix):
    files = sorted(glob.glob(os.path.join(folder, "test_data_set_0", f"{prefix}_*.pb")),
                   key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
    tensors = []
    for path in files:
        tensor = onnx.TensorProto()
        with open(path, "rb") as handle:
            tensor.ParseFromString(handle.read())
        tensors.append(numpy_helper.to_array(tensor))
    return tensors


def split_inputs(model, values):
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    weight_like = set()
    for node in model.graph.node:
        if node.op_type not in DATA_OPERATORS:
            weight_like.update(node.input[1:])
    feeds, bind = {}, {}
    for position, (name, value) in enumerate(zip(names, values)):
        (bind if position and name in weight_like else feeds)[name] = value
    return feeds, bind


@pytest.mark.parametrize("folder", case_dirs())
def test_backend_case(folder):
    shared_models()
    case = os.path.basename(folder)
    model = onnx.load(os.path.join(folder, "model.onnx"))
    feeds, bind = split_inputs(model, read_tensors(folder, "input"))
    if case in UNSUPPORTED:
        with pytest.raises(LrpToolError) as refused:
            read_onnx(os.path.join(folder, "model.onnx"), bind=bind)
        assert folder in str(refused.value)
        pytest.skip(f"unsupported: {UNSUPPORTED[case]} (refused: {refused.value})")
    graph = read_onnx(os.path.join(folder, "model.onnx"), bind=bind)
    expected = read_tensors(folder, "output")
    dtype = np.float64 if any(v.dtype == np.float64 for v in feeds.values()) else np.float32
    results = run_graph(graph, feeds, dtype=dtype)
    assert len(graph.outputs) >= len(expected)
    for name, reference in zip(graph.outputs, expected):
        np.testing.assert_allclose(results[name], reference, rtol=1e-4, atol=1e-5, err_msg=f"{case}: {name}")


def test_unsupported_operator_lists_every_node(tmp_path):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Exp", ["x"], ["a"], name="first_exp"),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Neg", ["b"], ["y"], name="the_neg")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "two_bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UnsupportedModelError) as refused:
        read_onnx(str(path))
    message = str(refused.value)
    assert "first_exp (Exp" in message and "the_neg (Neg" in message and str(path) in message
    assert [n[0] for n in refused.value.nodes] == ["first_exp", "the_neg"]
