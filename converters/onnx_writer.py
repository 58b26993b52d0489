"""Write a lrptool Graph out as an ONNX model that onnxruntime runs with the same outputs.

Each IR operator has one small exporter; parameters become float32 initializers and a free
batch size becomes the symbolic dimension ``batch``.
"""

import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lrptool.errors import LrpToolError
from lrptool.files import write_atomically

from .builder import Names
from .reading import describe

OPSET = 19
EXPORTERS = {}


def exporter(*ops):
    def register(function):
        for op in ops:
            EXPORTERS[op] = function
        return function
    return register


def external_tensor(name, array):
    """A TensorProto that names ``array`` without holding its bytes (for ``add_external_initializers``)."""
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "in-memory.bin"), ("offset", "0"), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


class OnnxBuilder:
    def __init__(self, graph, external=False):
        self.graph = graph
        self.nodes = []
        self.initializers = []
        self.names = Names()
        self.external = {} if external else None

    def initializer(self, name, array):
        if self.external is not None and array.size > 16:
            self.external[name] = np.ascontiguousarray(array)
            self.initializers.append(external_tensor(name, self.external[name]))
        else:
            self.initializers.append(numpy_helper.from_array(array, name))

    def unique(self, base):
        return self.names.unique(base)

    def constant(self, base, value, dtype=np.float32):
        name = self.unique(base)
        self.initializer(name, cast_parameter(value, dtype, base))
        return name

    def ints(self, base, values):
        return self.constant(base, np.asarray(values, dtype=np.int64), np.int64)

    def node(self, op_type, inputs, outputs, name, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.unique(name), **attrs))

    def rank(self, node):
        return len(self.graph.shapes[node.inputs[0]])


def cast_parameter(value, dtype, what):
    """``value`` as ``dtype``, refusing what the cast would change silently (complex parts, overflow to inf)."""
    value = np.asarray(value)
    if value.dtype.kind not in "biuf":
        raise LrpToolError(f"parameter {what!r} holds values of type {value.dtype}, which have no ONNX float form")
    if np.dtype(dtype).kind == "f" and value.dtype.kind == "f" and value.size:
        with np.errstate(all="ignore"):
            limit = np.finfo(dtype).max
            finite = np.isfinite(value)
            if np.any(np.abs(value[finite]) > limit):
                raise LrpToolError(f"parameter {what!r} holds values beyond the float32 range (±{limit:.3g}); "
                                   "lrptool writes float32 models")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return np.asarray(value, dtype=dtype)


def channel_shaped(vector, rank):
    return np.asarray(vector).reshape((-1,) + (1,) * (rank - 2))


@exporter("Conv", "ConvTranspose")
def export_conv(b, node):
    a = node.attrs
    inputs = [node.inputs[0], b.constant(f"{node.name}.weight", node.params["weight"])]
    if "bias" in node.params:
        inputs.append(b.constant(f"{node.name}.bias", node.params["bias"]))
    extra = {"output_padding": list(a["output_padding"])} if node.op == "ConvTranspose" else {}
    b.node(node.op, inputs, node.outputs, node.name, kernel_shape=list(node.params["weight"].shape[2:]),
           strides=list(a["strides"]), dilations=list(a["dilations"]), pads=list(a["pads"]), group=a["group"],
           **extra)


@exporter("Dense")
def export_dense(b, node):
    weight = node.params["weight"]
    bias = node.params.get("bias")
    if b.rank(node) == 2:
        inputs = [node.inputs[0], b.constant(f"{node.name}.weight", weight)]
        if bias is not None:
            inputs.append(b.constant(f"{node.name}.bias", bias))
        return b.node("Gemm", inputs, node.outputs, node.name, transB=1)
    product = node.outputs[0] if bias is None else b.unique(f"{node.name}/product")
    b.node("MatMul", [node.inputs[0], b.constant(f"{node.name}.weight_t", weight.T)], [product], node.name)
    if bias is not None:
        b.node("Add", [product, b.constant(f"{node.name}.bias", bias)], node.outputs, f"{node.name}/bias")


@exporter("BatchNorm")
def export_batchnorm(b, node):
    inputs = [node.inputs[0]] + [b.constant(f"{node.name}.{k}", node.params[k]) for k in ("scale", "bias", "mean", "var")]
    b.node("BatchNormalization", inputs, node.outputs, node.name, epsilon=node.attrs["epsilon"])


@exporter("Scale", "Bias")
def export_per_channel(b, node):
    rank = b.rank(node)
    current = node.inputs[0]
    steps = [("Mul", "scale")] if node.op == "Scale" else []
    if "bias" in node.params:
        steps.append(("Add", "bias"))
    for index, (op_type, key) in enumerate(steps):
        out = node.outputs[0] if index == len(steps) - 1 else b.unique(f"{node.name}/scaled")
        b.node(op_type, [current, b.constant(f"{node.name}.{key}", channel_shaped(node.params[key], rank))], [out],
               node.name if index == 0 else f"{node.name}/{key}")
        current = out


@exporter("Relu", "Sigmoid", "Tanh", "HardSwish", "LeakyRelu", "Elu", "Selu", "HardSigmoid", "GlobalAveragePool",
          "GlobalMaxPool", "Add", "Sub", "Mul", "Div", "Sum", "Transpose", "Concat", "Flatten", "Abs", "Max", "Sqrt",
          "ThresholdedRelu")
def export_same(b, node):
    b.node(node.op, node.inputs, node.outputs, node.name, **{k: (list(v) if isinstance(v, tuple) else v)
                                                               for k, v in node.attrs.items()})


@exporter("PRelu")
def export_prelu(b, node):
    b.node("PRelu", [node.inputs[0], b.constant(f"{node.name}.slope", node.params["slope"])], node.outputs,
           node.name)


@exporter("Pow")
def export_pow(b, node):
    b.node("Pow", [node.inputs[0], b.constant(f"{node.name}.exponent", node.attrs["exponent"])], node.outputs,
           node.name)


@exporter("Clip")
def export_clip(b, node):
    bounds = [b.constant(f"{node.name}.{k}", node.attrs[k]) if np.isfinite(node.attrs[k]) else ""
              for k in ("min", "max")]
    b.node("Clip", [node.inputs[0]] + bounds, node.outputs, node.name)


@exporter("Softmax", "LogSoftmax")
def export_softmax(b, node):
    shape = b.graph.shapes[node.inputs[0]]
    rank = len(shape)
    axes = sorted(a % rank for a in node.attrs["axes"])
    if len(axes) == 1:
        return b.node(node.op, node.inputs, node.outputs, node.name, axis=axes[0])
    if axes != list(range(axes[0], rank)):
        raise LrpToolError(f"node {node.name!r} ({node.op}): axes {axes} have no ONNX form")
    flat, normalised = b.unique(f"{node.name}/flat"), b.unique(f"{node.name}/normalised")
    b.node("Reshape", [node.inputs[0], b.ints(f"{node.name}.flat_shape", [0] * axes[0] + [-1])], [flat],
           f"{node.name}/flatten")
    b.node(node.op, [flat], [normalised], node.name, axis=-1)
    if None in shape[1:]:
        # free sizes: the input's own shape, at run time
        back = b.unique(f"{node.name}/shape")
        b.node("Shape", [node.inputs[0]], [back], f"{node.name}/shape")
    else:
        back = b.ints(f"{node.name}.shape", [0 if d is None else d for d in shape])
    b.node("Reshape", [normalised, back], node.outputs, f"{node.name}/restore")


@exporter("MaxPool", "AveragePool")
def export_pool(b, node):
    a = node.attrs
    extra = {"count_include_pad": int(a["count_include_pad"])} if node.op == "AveragePool" else {}
    b.node(node.op, node.inputs, node.outputs, node.name, kernel_shape=list(a["kernel_shape"]),
           strides=list(a["strides"]), dilations=list(a["dilations"]), pads=list(a["pads"]),
           ceil_mode=int(a["ceil_mode"]), **extra)


@exporter("LRN")
def export_lrn(b, node):
    a = node.attrs
    b.node("LRN", node.inputs, node.outputs, node.name, size=a["size"], alpha=a["alpha"], beta=a["beta"],
           bias=a["bias"])


@exporter("ReduceMean")
def export_reduce_mean(b, node):
    b.node("ReduceMean", [node.inputs[0], b.ints(f"{node.name}.axes", node.attrs["axes"])], node.outputs,
           node.name, keepdims=int(node.attrs["keepdims"]))


@exporter("Constant")
def export_constant(b, node):
    b.names.reserve(node.outputs[0])
    b.initializer(node.outputs[0], node.params["value"].astype(np.float32))


@exporter("Split")
def export_split(b, node):
    b.node("Split", [node.inputs[0], b.ints(f"{node.name}.split", node.attrs["split"])], node.outputs, node.name,
           axis=node.attrs["axis"])


@exporter("Slice")
def export_slice(b, node):
    a = node.attrs
    inputs = [node.inputs[0]] + [b.ints(f"{node.name}.{k}", a[k]) for k in ("starts", "ends", "axes", "steps")]
    b.node("Slice", inputs, node.outputs, node.name)


@exporter("Reshape")
def export_reshape(b, node):
    target = [0 if d is None else d for d in node.attrs["shape"]]
    b.node("Reshape", [node.inputs[0], b.ints(f"{node.name}.shape", target)], node.outputs, node.name)


@exporter("Squeeze", "Unsqueeze")
def export_squeeze(b, node):
    b.node(node.op, [node.inputs[0], b.ints(f"{node.name}.axes", node.attrs["axes"])], node.outputs, node.name)


@exporter("Pad")
def export_pad(b, node):
    inputs = [node.inputs[0], b.ints(f"{node.name}.pads", node.attrs["pads"]),
              b.constant(f"{node.name}.value", node.attrs["value"])]
    b.node("Pad", inputs, node.outputs, node.name, mode=node.attrs["mode"])


@exporter("Upsample")
def export_upsample(b, node):
    scales = b.constant(f"{node.name}.scales", [1.0, 1.0] + [float(s) for s in node.attrs["scales"]])
    b.node("Resize", [node.inputs[0], "", scales], node.outputs, node.name, mode="nearest",
           coordinate_transformation_mode="asymmetric", nearest_mode="floor")


@exporter("LSTM", "GRU", "RNN")
def export_recurrent(b, node):
    """ONNX's recurrent operators in the time-major layout (onnxruntime runs no other), with transposes
    to and from the IR's batch-first tensors; a batch-1 initial state is expanded to the batch."""
    a = node.attrs
    x = b.unique(f"{node.name}/time_major")
    b.node("Transpose", [node.inputs[0]], [x], f"{node.name}/time_major", perm=[1, 0, 2])
    given = dict(zip(a["optional_inputs"], node.inputs[1:]))
    inputs = [x, b.constant(f"{node.name}.weight", node.params["weight"]),
              b.constant(f"{node.name}.recurrence", node.params["recurrence"])]
    inputs.append(b.constant(f"{node.name}.bias", node.params["bias"]) if "bias" in node.params else "")
    if "lengths" in given:
        lengths = b.unique(f"{node.name}/lengths")
        b.node("Cast", [given["lengths"]], [lengths], f"{node.name}/lengths", to=TensorProto.INT32)
        inputs.append(lengths)
    else:
        inputs.append("")
    for state in ("initial_h", "initial_c")[:len(node.outputs) - 1]:
        if state not in given:
            inputs.append("")
            continue
        moved = b.unique(f"{node.name}/{state}")
        b.node("Transpose", [given[state]], [moved], f"{node.name}/{state}", perm=[1, 0, 2])
        if b.graph.shapes[given[state]][0] != b.graph.shapes[node.inputs[0]][0]:
            batch = b.unique(f"{node.name}/batch")
            b.node("Shape", [node.inputs[0]], [batch], f"{node.name}/batch", start=0, end=1)
            size = b.unique(f"{node.name}/{state}_size")
            d, hidden = node.params["recurrence"].shape[0], a["hidden_size"]
            b.node("Concat", [b.ints(f"{node.name}.directions", [d]), batch, b.ints(f"{node.name}.hidden", [hidden])],
                   [size], f"{node.name}/{state}_size", axis=0)
            expanded = b.unique(f"{node.name}/{state}_expanded")
            b.node("Expand", [moved, size], [expanded], f"{node.name}/{state}_expand")
            moved = expanded
        inputs.append(moved)
    if "peephole" in node.params:
        inputs.append(b.constant(f"{node.name}.peephole", node.params["peephole"]))
    while inputs[-1] == "":
        inputs.pop()
    extra = {"clip": float(a["clip"])} if np.isfinite(a["clip"]) else {}
    if node.op == "GRU":
        extra["linear_before_reset"] = int(a["linear_before_reset"])
    if node.op == "RNN":
        extra["activations"] = [a["activation"]] * node.params["recurrence"].shape[0]
    outputs = [b.unique(f"{out}/time_major") for out in node.outputs]
    b.node(node.op, inputs, outputs, node.name, hidden_size=int(a["hidden_size"]), direction=a["direction"], **extra)
    for k, (inner, out) in enumerate(zip(outputs, node.outputs)):
        b.node("Transpose", [inner], [out], f"{node.name}/batch_first{k}", perm=[2, 0, 1, 3] if k == 0 else [1, 0, 2])


@exporter("Gelu")
def export_gelu(b, node):
    """Written out in elementary operators (ONNX's Gelu arrives in opset 20; lrptool writes opset 19)."""
    from lrptool.ops.normalization import SQRT_2_OVER_PI

    x, name = node.inputs[0], node.name
    steps = []

    def step(op, inputs):
        out = b.unique(f"{name}/{op.lower()}")
        b.node(op, inputs, [out], f"{name}/{op.lower()}")
        steps.append(out)
        return out
    if node.attrs["approximate"] == "tanh":
        cubic = step("Mul", [step("Mul", [step("Mul", [x, x]), x]), b.constant(f"{name}.k", np.array(0.044715))])
        inner = step("Mul", [step("Add", [x, cubic]), b.constant(f"{name}.c", np.array(SQRT_2_OVER_PI))])
        core = step("Tanh", [inner])
    else:
        core = step("Erf", [step("Mul", [x, b.constant(f"{name}.c", np.array(1 / np.sqrt(2.0)))])])
    half = step("Mul", [step("Add", [core, b.constant(f"{name}.one", np.array(1.0))]),
                        b.constant(f"{name}.half", np.array(0.5))])
    b.node("Mul", [x, half], node.outputs, name)


@exporter("LayerNorm")
def export_layer_norm(b, node):
    """(x − mean)/√(var + ε)·scale + bias in elementary operators: the axes need not be the trailing ones
    that ONNX's LayerNormalization takes."""
    x, name = node.inputs[0], node.name
    axes = b.ints(f"{name}.axes", sorted(a % b.rank(node) for a in node.attrs["axes"]))

    def step(op, inputs, **attrs):
        out = b.unique(f"{name}/{op.lower()}")
        b.node(op, inputs, [out], f"{name}/{op.lower()}", **attrs)
        return out
    centred = step("Sub", [x, step("ReduceMean", [x, axes], keepdims=1)])
    variance = step("ReduceMean", [step("Mul", [centred, centred]), axes], keepdims=1)
    spread = step("Sqrt", [step("Add", [variance, b.constant(f"{name}.epsilon", np.array(node.attrs["epsilon"]))])])
    scaled = step("Mul", [step("Div", [centred, spread]), b.constant(f"{name}.scale", node.params["scale"])])
    if "bias" in node.params:
        b.node("Add", [scaled, b.constant(f"{name}.bias", node.params["bias"])], node.outputs, name)
    else:
        b.node("Identity", [scaled], node.outputs, name)


@exporter("Embedding")
def export_embedding(b, node):
    b.node("Gather", [b.constant(f"{node.name}.weight", node.params["weight"]), node.inputs[0]], node.outputs,
           node.name, axis=0)


def value_info(name, shape, element=TensorProto.FLOAT):
    """The ONNX type of a tensor: the free batch axis is named ``batch``; free sizes stay unnamed."""
    dims = [("batch" if axis == 0 else None) if d is None else int(d) for axis, d in enumerate(shape)]
    return helper.make_tensor_value_info(name, element, dims)


def graph_to_onnx(graph, expose=(), external=None):
    """The ONNX ``ModelProto`` for ``graph``; ``expose`` names further tensors to make graph outputs
    (the explainer reads every intermediate tensor this way). With ``external`` (a dict), parameter
    arrays are not copied into the model: the model refers to them by name and ``external`` receives
    name → array, for onnxruntime's ``add_external_initializers``."""
    b = OnnxBuilder(graph, external=external is not None)
    b.names.reserve(*graph.inputs)
    for node in graph.nodes:
        b.names.reserve(*node.outputs)
    for name in graph.inputs:
        check_tensor_name(name, f"graph input {name!r}")
    for node in graph.nodes:
        where = f"node {node.name!r} ({node.op})"
        for name in [node.name] + list(node.inputs) + list(node.outputs):
            check_tensor_name(name, where)
        if node.op not in EXPORTERS:
            raise LrpToolError(f"{where}: the operator has no ONNX form in lrptool's writer")
        try:
            EXPORTERS[node.op](b, node)
        except LrpToolError as error:
            raise LrpToolError(f"{where}: {error}") from None
        except Exception as error:  # noqa: BLE001 - an IR node the writer did not foresee is named, not a traceback
            raise LrpToolError(f"{where}: cannot be written as ONNX: {describe(error)}") from None
    outputs, written = [], set()
    for name in graph.outputs:
        if name in graph.inputs or name in written:
            copy = b.unique(f"{name}_output")
            b.node("Identity", [name], [copy], f"{name}/identity")
            name = copy
        written.add(name)
        outputs.append(value_info(name, graph.shapes[graph.outputs[len(outputs)]]))
    listed = set(graph.outputs) | set(graph.inputs)
    tokens = graph.token_inputs()
    outputs += [value_info(name, graph.shapes[name]) for name in expose if name not in listed]
    onnx_graph = helper.make_graph(b.nodes, graph.name or "lrptool", [value_info(n, s, TensorProto.INT64 if n in tokens else TensorProto.FLOAT)
                                                          for n, s in graph.inputs.items()],
                                   outputs, initializer=b.initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lrptool")
    model.ir_version = 9
    if external is None:
        try:
            onnx.checker.check_model(model)
        except Exception as error:  # noqa: BLE001 - ValidationError and protobuf errors on odd names alike
            raise LrpToolError(f"the ONNX model written for graph {graph.name!r} fails the ONNX checker: "
                               f"{describe(error)}") from None
    else:
        external.update(b.external)
    return model


def check_tensor_name(name, where):
    """Names ONNX can hold: non-empty (an empty input name means "absent") and valid UTF-8 text."""
    if not isinstance(name, str) or not name:
        raise LrpToolError(f"{where}: the name {name!r} cannot be written to ONNX (empty or not text)")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise LrpToolError(f"{where}: the name {name!r} is not valid UTF-8 text") from None


def write_onnx(graph, path):
    """Write ``graph`` to ``path`` through a temporary file, so no half-written model is left behind."""
    try:
        data = graph_to_onnx(graph).SerializeToString()
    except LrpToolError as error:
        raise LrpToolError(f"{path}: {error}; the model cannot be converted") from None
    except ValueError as error:  # protobuf refuses a model past 2 GiB when serialising
        raise LrpToolError(f"{path}: cannot write the model: {describe(error)}") from None
    write_atomically(path, data, make_folders=False)
    return path
