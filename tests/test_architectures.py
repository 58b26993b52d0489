"""Small random-weight VGG-, ResNet- and MobileNet-style networks (and a 1-D conv net), built with
onnx.helper, read into the IR and checked against onnxruntime: forward outputs in float32 and
float64, a free batch axis, ONNX round trips, the IR's canonical operators and the CLI.
"""

import re
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters import load_model
from converters.onnx_reader import read_onnx
from converters.onnx_writer import graph_to_onnx
from lrptool.executor import run_graph

OPSET = 17
INPUT = "input"
OUTPUT = "output"


class NetBuilder:
    """Collects nodes and float32 initializers; weights come from one seeded generator."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.initializers = []
        self.count = 0

    def fresh(self, base):
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base, value, dtype=np.float32):
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type, inputs, output=None, **attrs):
        output = output or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=self.fresh(op_type), **attrs))
        return output

    def conv(self, x, cin, cout, kernel, stride=1, pad=0, group=1, dilation=1, bias=True, rank=2):
        fan_in = cin // group * kernel ** rank
        weight = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin // group) + (kernel,) * rank)
        inputs = [x, self.const("conv_w", weight)]
        if bias:
            inputs.append(self.const("conv_b", self.rng.normal(0.0, 0.1, cout)))
        return self.op("Conv", inputs, kernel_shape=[kernel] * rank, strides=[stride] * rank,
                       pads=[pad] * (2 * rank), group=group, dilations=[dilation] * rank)

    def batchnorm(self, x, channels):
        # statistics far from (0, 1) so that an ignored or misapplied BatchNorm shows in the outputs
        scale = self.rng.uniform(0.5, 1.5, channels)
        bias = self.rng.normal(0.0, 0.2, channels)
        mean = self.rng.normal(0.0, 0.3, channels)
        var = self.rng.uniform(0.4, 2.0, channels)
        names = [self.const(k, v) for k, v in (("bn_scale", scale), ("bn_bias", bias), ("bn_mean", mean),
                                                ("bn_var", var))]
        return self.op("BatchNormalization", [x] + names, epsilon=1e-3)

    def relu6(self, x):
        return self.op("Clip", [x, self.const("clip_min", 0.0), self.const("clip_max", 6.0)])

    def model(self, output, input_shape, output_shape, batch, name):
        input_info = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch] + list(input_shape))
        # a trailing Identity, as exporters write for named outputs; the reader must drop it
        self.nodes.append(helper.make_node("Identity", [output], [OUTPUT], name=self.fresh("Identity")))
        output_info = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch] + list(output_shape))
        graph = helper.make_graph(self.nodes, name, [input_info], [output_info], initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        return model


def build_vgg(batch):
    b = NetBuilder(seed=11)
    x = INPUT
    for cin, cout in ((3, 8), (8, 8)):
        x = b.op("Relu", [b.batchnorm(b.conv(x, cin, cout, 3, pad=1), cout)])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Relu", [b.batchnorm(b.conv(x, 8, 16, 3, pad=1), 16)])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Flatten", [x], axis=1)
    w1 = b.const("fc1_w", b.rng.normal(0.0, np.sqrt(2.0 / 1024), (32, 1024)))
    x = b.op("Gemm", [x, w1, b.const("fc1_b", b.rng.normal(0.0, 0.1, 32))], transB=1)
    x = b.op("Dropout", [b.op("Relu", [x])])
    w2 = b.const("fc2_w", b.rng.normal(0.0, np.sqrt(1.0 / 32), (32, 10)))
    x = b.op("Gemm", [x, w2, b.const("fc2_b", b.rng.normal(0.0, 0.1, 10))])
    x = b.op("Softmax", [x], axis=-1)
    return b.model(x, (3, 32, 32), (10,), batch, "vgg")


def bottleneck(b, x, cin, mid, cout, stride):
    y = b.op("Relu", [b.batchnorm(b.conv(x, cin, mid, 1, bias=False), mid)])
    y = b.op("Relu", [b.batchnorm(b.conv(y, mid, mid, 3, stride=stride, pad=1, bias=False), mid)])
    y = b.batchnorm(b.conv(y, mid, cout, 1, bias=False), cout)
    shortcut = x
    if stride != 1 or cin != cout:
        shortcut = b.batchnorm(b.conv(x, cin, cout, 1, stride=stride, bias=False), cout)
    return b.op("Relu", [b.op("Add", [y, shortcut])])


def build_resnet(batch):
    b = NetBuilder(seed=22)
    x = b.op("Relu", [b.batchnorm(b.conv(INPUT, 3, 16, 3, stride=2, pad=1, bias=False), 16)])
    x = bottleneck(b, x, 16, 8, 16, stride=1)
    x = bottleneck(b, x, 16, 8, 32, stride=2)
    x = b.op("GlobalAveragePool", [x])
    # torch.flatten(x, 1) / x.view(x.size(0), -1) as PyTorch's exporter writes it
    size = b.op("Shape", [x])
    batch_size = b.op("Gather", [size, b.const("gather_index", 0, np.int64)], axis=0)
    batch_size = b.op("Unsqueeze", [batch_size, b.const("unsqueeze_axes", [0], np.int64)])
    target = b.op("Concat", [batch_size, b.const("minus_one", [-1], np.int64)], axis=0)
    x = b.op("Reshape", [x, target])
    w = b.const("fc_w", b.rng.normal(0.0, np.sqrt(1.0 / 32), (10, 32)))
    x = b.op("Gemm", [x, w, b.const("fc_b", b.rng.normal(0.0, 0.1, 10))], transB=1)
    return b.model(x, (3, 32, 32), (10,), batch, "resnet")


def build_mobilenet(batch):
    b = NetBuilder(seed=33)
    x = b.op("HardSwish", [b.batchnorm(b.conv(INPUT, 3, 16, 3, stride=2, pad=1, bias=False), 16)])
    # depthwise separable
    x = b.relu6(b.batchnorm(b.conv(x, 16, 16, 3, pad=1, group=16, bias=False), 16))
    x = b.conv(x, 16, 24, 1)
    # squeeze-excitation
    gate = b.op("GlobalAveragePool", [x])
    gate = b.op("Relu", [b.conv(gate, 24, 8, 1)])
    gate = b.op("HardSigmoid", [b.conv(gate, 8, 24, 1)], alpha=1.0 / 6.0, beta=0.5)
    x = b.op("Mul", [x, gate])
    # inverted residual
    y = b.relu6(b.batchnorm(b.conv(x, 24, 48, 1, bias=False), 48))
    y = b.relu6(b.batchnorm(b.conv(y, 48, 48, 3, pad=1, group=48, bias=False), 48))
    y = b.batchnorm(b.conv(y, 48, 24, 1, bias=False), 24)
    x = b.op("Add", [x, y])
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    x = b.op("MatMul", [x, b.const("fc_w", b.rng.normal(0.0, np.sqrt(1.0 / 24), (24, 10)))])
    x = b.op("Add", [x, b.const("fc_b", b.rng.normal(0.0, 0.1, 10))])
    return b.model(x, (3, 32, 32), (10,), batch, "mobilenet")


def build_conv1d(batch):
    b = NetBuilder(seed=44)
    x = b.conv(INPUT, 4, 6, 3, pad=2, group=2, dilation=2, rank=1)
    x = b.op("MaxPool", [x], kernel_shape=[2], strides=[2])
    x = b.op("AveragePool", [x], kernel_shape=[3], strides=[2], pads=[1, 1], count_include_pad=1)
    return b.model(x, (4, 50), (6, 13), batch, "conv1d")


@dataclass(frozen=True)
class Architecture:
    build: object
    input_shape: tuple
    ir_ops: dict  # op → count the canonical IR should hold


ARCHITECTURES = {
    "vgg": Architecture(build_vgg, (3, 32, 32),
                        {"Conv": 3, "BatchNorm": 3, "Relu": 4, "MaxPool": 2, "Flatten": 1, "Dense": 2,
                         "Softmax": 1}),
    "resnet": Architecture(build_resnet, (3, 32, 32),
                           {"Conv": 8, "BatchNorm": 8, "Relu": 7, "Add": 2, "GlobalAveragePool": 1,
                            "Reshape": 1, "Dense": 1}),
    "mobilenet": Architecture(build_mobilenet, (3, 32, 32),
                              {"Conv": 8, "BatchNorm": 5, "HardSwish": 1, "Clip": 3, "Relu": 1,
                               "GlobalAveragePool": 2, "HardSigmoid": 1, "Mul": 1, "Add": 1, "Flatten": 1,
                               "Dense": 1, "Bias": 1}),
    "conv1d": Architecture(build_conv1d, (4, 50), {"Conv": 1, "MaxPool": 1, "AveragePool": 1}),
}
VARIANTS = {"symbolic": "N", "fixed1": 1}
CASES = [pytest.param((arch, variant), id=f"{arch}-{variant}") for arch in ARCHITECTURES for variant in VARIANTS]


@dataclass
class Case:
    arch: str
    variant: str
    path: object
    model: onnx.ModelProto
    graph: object
    session: onnxruntime.InferenceSession
    x4: np.ndarray
    x1: np.ndarray

    def reference(self, x):
        """onnxruntime on the source model; a fixed-batch-1 model is fed one sample at a time."""
        if self.variant == "fixed1":
            return np.concatenate([self.session.run(None, {INPUT: x[i:i + 1]})[0] for i in range(len(x))])
        return self.session.run(None, {INPUT: x})[0]


# building, loading and starting an onnxruntime session once per model keeps the file fast
_CASES = {}


@pytest.fixture
def case(request, tmp_path_factory):
    arch, variant = request.param
    key = (arch, variant)
    if key not in _CASES:
        spec = ARCHITECTURES[arch]
        model = spec.build(VARIANTS[variant])
        path = tmp_path_factory.mktemp(f"{arch}-{variant}") / "model.onnx"
        onnx.save(model, str(path))
        data = np.random.default_rng(123)
        x4 = data.normal(0.0, 1.0, (4,) + spec.input_shape).astype(np.float32)
        x1 = data.normal(0.0, 1.0, (1,) + spec.input_shape).astype(np.float32)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        _CASES[key] = Case(arch, variant, path, model, load_model(path), session, x4, x1)
    return _CASES[key]


def only_output(outputs):
    assert len(outputs) == 1
    return next(iter(outputs.values()))


def assert_matches(actual, expected, rtol=1e-4):
    # float32 rounding grows with the magnitude of the values summed, so the absolute floor
    # follows the output scale (softmax outputs are ≤ 1, so their floor stays at 1e-5)
    atol = 1e-5 * max(1.0, float(np.abs(expected).max()))
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def ort_run(model_or_path, x):
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    outputs = session.run(None, {name: x})
    assert len(outputs) == 1
    return outputs[0]


def op_counts(graph):
    counts = {}
    for node in graph.nodes:
        counts[node.op] = counts.get(node.op, 0) + 1
    return counts


parametrize_cases = pytest.mark.parametrize("case", CASES, indirect=True)


@parametrize_cases
def test_built_model_passes_onnx_checker(case):
    onnx.checker.check_model(case.model, full_check=True)
    onnx.checker.check_model(str(case.path))


@parametrize_cases
def test_batch_axis_is_free(case):
    (shape,) = case.graph.inputs.values()
    assert shape == (None,) + ARCHITECTURES[case.arch].input_shape
    assert case.graph.batch_free


@parametrize_cases
def test_ir_has_the_canonical_operators(case):
    assert op_counts(case.graph) == ARCHITECTURES[case.arch].ir_ops


@parametrize_cases
def test_float32_outputs_match_onnxruntime(case):
    for x in (case.x4, case.x1):
        out = only_output(run_graph(case.graph, x))
        assert out.dtype == np.float32
        assert out.shape[0] == len(x)
        assert_matches(out, case.reference(x))


@parametrize_cases
def test_float64_outputs_match_onnxruntime(case):
    out = only_output(run_graph(case.graph, case.x4, dtype=np.float64))
    assert out.dtype == np.float64
    assert_matches(out, case.reference(case.x4).astype(np.float64))


@parametrize_cases
def test_onnx_round_trip(case):
    expected = case.reference(case.x4)
    exported = graph_to_onnx(case.graph)
    onnx.checker.check_model(exported, full_check=True)
    assert_matches(ort_run(exported, case.x4), expected)

    again = read_onnx(exported)
    assert len(again.nodes) == len(case.graph.nodes)
    assert op_counts(again) == op_counts(case.graph)
    assert again.inputs == case.graph.inputs
    assert_matches(only_output(run_graph(again, case.x4)), expected)

    # a second trip through ONNX changes nothing more
    twice = graph_to_onnx(again)
    assert [n.op_type for n in twice.graph.node] == [n.op_type for n in exported.graph.node]
    assert_matches(ort_run(twice, case.x4), expected)


_CLI = {}


def cli_results(case, folder):
    """``convert`` and ``inspect`` on the case's model, started together to halve the interpreter start-up cost."""
    if case.arch not in _CLI:
        out = folder / "out.onnx"
        commands = {"convert": ["convert", case.path, "-o", out], "inspect": ["inspect", case.path, "--wide"]}
        running = {key: subprocess.Popen([sys.executable, "-m", "lrptool.cli", *map(str, args)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for key, args in commands.items()}
        results = {}
        for key, process in running.items():
            stdout, stderr = process.communicate(timeout=120)
            results[key] = (process.returncode, stdout, stderr)
        _CLI[case.arch] = results, out
    return _CLI[case.arch]


# the CLI runs the same reader as load_model, which the other tests cover for both batch variants,
# so only the symbolic-batch models pay for interpreter start-ups here
CLI_CASES = [p for p in CASES if p.values[0][1] == "symbolic"]


@pytest.mark.parametrize("case", CLI_CASES, indirect=True)
def test_cli_convert(case, tmp_path_factory):
    results, out = cli_results(case, tmp_path_factory.mktemp("cli"))
    returncode, _, stderr = results["convert"]
    assert returncode == 0, stderr
    assert out.is_file()
    assert f"{len(case.graph.nodes)} nodes" in stderr
    onnx.checker.check_model(str(out))
    assert_matches(ort_run(out, case.x4), case.reference(case.x4))


@pytest.mark.parametrize("case", CLI_CASES, indirect=True)
def test_cli_inspect(case, tmp_path_factory):
    results, _ = cli_results(case, tmp_path_factory.mktemp("cli"))
    returncode, stdout, stderr = results["inspect"]
    assert returncode == 0, stderr
    lines = stdout.splitlines()
    expected = ARCHITECTURES[case.arch].ir_ops
    for node in case.graph.nodes:
        assert any(re.search(rf"\s{re.escape(node.name)}\s+{node.op}\s", line) for line in lines), node.name
    (total,) = [line for line in lines if line.startswith("total:")]
    listed = dict((op, int(count)) for op, count in re.findall(r"(\w+) (\d+)", total.split(";", 1)[1]))
    assert listed == expected
    assert total.startswith(f"total: {sum(expected.values())} nodes, {case.graph.parameter_count():,} parameters;")
    assert "batch size is fixed" not in stdout


@pytest.mark.parametrize("case", [p for p in CASES if p.values[0][0] == "resnet"], indirect=True)
def test_resnet_flatten_chain_is_folded(case):
    allowed = {"Conv", "BatchNorm", "Relu", "Add", "GlobalAveragePool", "Reshape", "Dense", "Flatten"}
    assert {node.op for node in case.graph.nodes} <= allowed
    (reshape,) = [node for node in case.graph.nodes if node.op == "Reshape"]
    assert reshape.attrs["shape"] == (None, 32)
    # the residual Adds join two computed tensors; neither side is a constant
    for node in case.graph.nodes:
        if node.op == "Add":
            assert len(node.inputs) == 2 and not node.params


@pytest.mark.parametrize("case", [p for p in CASES if p.values[0][0] == "mobilenet"], indirect=True)
def test_mobilenet_keeps_gate_and_depthwise_conv(case):
    graph = case.graph
    producers = graph.producers()
    (mul,) = [node for node in graph.nodes if node.op == "Mul"]
    assert len(mul.inputs) == 2
    assert all(producers[t].op != "Constant" for t in mul.inputs)
    assert sorted(graph.shapes[t] for t in mul.inputs) == [(None, 24, 1, 1), (None, 24, 16, 16)]
    assert producers[mul.inputs[1]].op == "HardSigmoid"

    (hard_sigmoid,) = [node for node in graph.nodes if node.op == "HardSigmoid"]
    assert hard_sigmoid.attrs["alpha"] == pytest.approx(1.0 / 6.0)
    assert hard_sigmoid.attrs["beta"] == pytest.approx(0.5)
    assert any(node.op == "HardSwish" for node in graph.nodes)

    depthwise = [node for node in graph.nodes
                 if node.op == "Conv" and node.attrs["group"] > 1
                 and node.attrs["group"] == graph.shapes[node.inputs[0]][1]]
    assert sorted(node.attrs["group"] for node in depthwise) == [16, 48]
    for node in graph.nodes:
        if node.op == "Clip":
            assert (node.attrs["min"], node.attrs["max"]) == (0.0, 6.0)
    (bias,) = [node for node in graph.nodes if node.op == "Bias"]
    assert producers[bias.inputs[0]].op == "Dense"


@pytest.mark.parametrize("case", [p for p in CASES if p.values[0][0] == "conv1d"], indirect=True)
def test_conv1d_attributes(case):
    conv, maxpool, avgpool = case.graph.nodes
    assert conv.attrs["group"] == 2 and conv.attrs["dilations"] == (2,) and conv.attrs["pads"] == (2, 2)
    assert maxpool.attrs["kernel_shape"] == (2,)
    assert avgpool.attrs["count_include_pad"] is True and avgpool.attrs["pads"] == (1, 1)
    assert case.graph.shapes[case.graph.outputs[0]] == (None, 6, 13)
