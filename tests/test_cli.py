"""The command line: inspect and convert, and one-line errors (exit status 2) for bad input."""

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from converters import load_model
from lrptool.executor import run_graph

from conftest import shared_models


def lrptool(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lrptool.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("lrptool: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def tiny_model(path, op="Relu"):
    nodes = [helper.make_node(op, ["x"], ["y"], name="only")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_missing_file(tmp_path):
    assert_one_line_error(lrptool("inspect", tmp_path / "nope.onnx"), "nope.onnx", "no such file")


def test_truncated_model(tmp_path):
    source = shared_models() / "onnx" / "mnist-zoo-opset8" / "mnist.onnx"
    data = source.read_bytes()
    broken = tmp_path / "truncated.onnx"
    broken.write_bytes(data[: len(data) // 2])
    assert_one_line_error(lrptool("inspect", broken), "truncated.onnx")


def test_corrupt_model(tmp_path):
    broken = tmp_path / "garbage.onnx"
    broken.write_bytes(bytes(range(256)) * 8)
    assert_one_line_error(lrptool("convert", broken, "-o", tmp_path / "out.onnx"), "garbage.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_unsupported_operator(tmp_path):
    path = tiny_model(tmp_path / "softplus.onnx", op="Softplus")
    assert_one_line_error(lrptool("inspect", path), "softplus.onnx", "only (Softplus")


def test_inspect_prints_nodes_shapes_and_totals():
    model = shared_models() / "onnx" / "mnist-zoo-opset8" / "mnist.onnx"
    result = lrptool("inspect", model)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Convolution28" in out and "(N, 1, 28, 28)" in out and "(N, 8, 28, 28)" in out
    graph = load_model(model)
    # the zoo MNIST has 8·1·5·5 + 8 + 16·8·5·5 + 16 + 256·10 + 10 parameters
    assert graph.parameter_count() == 8 * 25 + 8 + 16 * 8 * 25 + 16 + 2560 + 10
    assert f"total: {len(graph.nodes)} nodes, {graph.parameter_count():,} parameters" in out


def test_convert_writes_a_model_onnxruntime_runs(tmp_path):
    model = shared_models() / "onnx" / "mnist-zoo-opset8" / "mnist.onnx"
    out = tmp_path / "sub" / "mnist.onnx"
    out.parent.mkdir()
    result = lrptool("convert", model, "-o", out)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in out.parent.iterdir()] == ["mnist.onnx"]  # no temporary left behind
    batch = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    (written,) = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"Input3": batch})
    (original,) = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"Input3": batch[:1]})
    np.testing.assert_allclose(written[:1], original, rtol=1e-4, atol=1e-5)
    (ours,) = run_graph(load_model(model), batch).values()
    np.testing.assert_allclose(written, ours, rtol=1e-4, atol=1e-5)


def test_convert_to_unwritable_place(tmp_path):
    path = tiny_model(tmp_path / "relu.onnx")
    assert_one_line_error(lrptool("convert", path, "-o", tmp_path / "missing-dir" / "out.onnx"), "out.onnx")


@pytest.mark.parametrize("argument", ["--help", "--version"])
def test_help_and_version(argument):
    result = lrptool(argument)
    assert result.returncode == 0 and result.stdout


def test_inspect_with_a_preset_shows_each_nodes_rule(tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_architectures import build_vgg

    path = tmp_path / "vgg.onnx"
    onnx.save(build_vgg("N"), str(path))
    result = lrptool("inspect", path, "--preset", "epsilon-plus-flat")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if line[:1].isdigit()}
    convs = [name for name, line in rows.items() if " Conv " in line]
    assert "flat" in rows[convs[0]] and all("zplus" in rows[c] for c in convs[1:])
    assert all("epsilon" in line for line in rows.values() if " Dense " in line)
    assert not any(" BatchNorm " in line or " Softmax " in line for line in rows.values())
    assert "folded into the layer before them" in result.stdout and "logits are explained" in result.stdout
    custom = lrptool("inspect", path, "--rules", "epsilon,first=wsquare,dense=alpha-beta:2:1")
    rows = [line for line in custom.stdout.splitlines() if line[:1].isdigit()]
    assert "wsquare" in rows[0] and any("alpha2-beta1" in r for r in rows if " Dense " in r)


def test_inspect_refuses_unroutable_nodes_before_running(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Tanh", ["x"], ["b"], name="tanh"),
             helper.make_node("Mul", ["a", "b"], ["y"], name="product")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "product.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert lrptool("inspect", path).returncode == 0
    assert_one_line_error(lrptool("inspect", path, "--preset", "epsilon"), "'product' (Mul)")
    relu = tiny_model(tmp_path / "relu.onnx")
    assert_one_line_error(lrptool("inspect", relu, "--preset", "no-such-preset"), "unknown preset")


def test_model_file_options_belong_to_their_formats(tmp_path):
    path = tiny_model(tmp_path / "relu.onnx")
    assert_one_line_error(lrptool("inspect", path, "--weights", path), "--weights belongs to Caffe")
    assert_one_line_error(lrptool("convert", path, "-o", tmp_path / "x.onnx", "--model-config", path),
                          "--model-config to Keras")
    (tmp_path / "lenet.caffemodel").write_bytes(b"\x00")
    assert_one_line_error(lrptool("inspect", tmp_path / "lenet.caffemodel"), "give the .prototxt")


def test_input_size_fills_free_sizes_of_an_onnx_model(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="only")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    path = tmp_path / "free.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    result = lrptool("inspect", path)
    assert result.returncode == 0 and "input  x: (N, 3, ?, ?)" in result.stdout
    result = lrptool("inspect", path, "--input-size", "5x7")
    assert result.returncode == 0 and "input  x: (N, 3, 5, 7)" in result.stdout
