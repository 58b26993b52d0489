"""Read an ONNX model into the lrptool IR.

Constant sub-graphs (initializers, Constant nodes and the Shape → Gather → Unsqueeze → Concat
arithmetic that PyTorch exports emit) are evaluated at load time, so that shapes and
parameters reach the IR as plain arrays and attributes. A graph is first read with a free
batch size; only when some node reads or changes the batch axis is it read again with the
batch size the model declares. The file is checked first (converters.onnx_checks).
"""

import math
import os
import warnings

import numpy as np
import onnx
from onnx import AttributeProto, helper

from lrptool.errors import BatchAxisError, GraphError, LrpToolError, UnsupportedModelError
from lrptool.graph import Graph, Node, free_name, normalize_node
from lrptool.limits import check_bytes, check_shape

from . import onnx_shape_ops  # noqa: F401  (registers the data-movement converters)
from .onnx_checks import (ATTRIBUTE_KINDS, DAMAGED, attribute_values, check_against_schema, check_structure,
                          default_opset, load_onnx_proto, node_label, read_initializers, refuse, tensor_shape)
from .onnx_ops import CONVERTERS, Unsupported
from .reading import reading_at

#: Stands for the free batch size inside folded shape arithmetic (the value of ``Shape(x)[0]``).
BATCH_MARKER = -(2 ** 40) - 7

#: Characters in one error message; beyond it the middle is left out.
LONGEST_MESSAGE = 2000


# -- conversion -----------------------------------------------------------------------------------

class ReadContext:
    """State of one conversion: constants, IR tensors with shapes, aliases and the IR nodes made."""

    def __init__(self, model, source, free_batch, input_size=None, opset=1, folder=None):
        self.model = model
        self.input_size = tuple(input_size) if input_size else None
        self.source = source
        self.folder = folder
        self.free_batch = free_batch
        self.opset = opset
        self.consts = {}
        self.shapes = {}
        self.alias = {}
        self.nodes = []
        self.node_names = set()
        self.materialized = {}
        self.declared_batch = None
        self.current = None
        self.current_name = None

    # -- tensors ---------------------------------------------------------------------------
    def resolve(self, name):
        while name in self.alias:
            name = self.alias[name]
        return name

    def const(self, name):
        if not name:
            return None
        return self.consts.get(self.resolve(name))

    def input_const(self, node, index):
        return self.const(node.input[index]) if len(node.input) > index and node.input[index] else None

    def require_const(self, node, index, what):
        if len(node.input) <= index or not node.input[index]:
            raise self.invalid(f"{what} (input {index}) is missing")
        value = self.input_const(node, index)
        if value is None:
            raise Unsupported(f"{what} (input {index}) must be a constant")
        if np.asarray(value).dtype.kind not in "fiub":
            raise Unsupported(f"{what} (input {index}) is of type {np.asarray(value).dtype}, not numbers")
        return value

    def optional_const(self, node, index, what):
        """A constant operand that may be left out: None when absent, refused when computed."""
        if len(node.input) <= index or not node.input[index]:
            return None
        return self.require_const(node, index, what)

    def shape(self, name):
        name = self.resolve(name)
        if name in self.shapes:
            return self.shapes[name]
        if name in self.consts:
            return tuple(np.shape(self.consts[name]))
        raise Unsupported(f"input {name!r} is not available")

    def tensor(self, name):
        """The IR tensor for an ONNX value; a constant used as data becomes a Constant node."""
        name = self.resolve(name)
        if name in self.shapes:
            return name
        if name in self.consts:
            if name not in self.materialized:
                value = np.asarray(self.consts[name])
                if value.dtype.kind not in "fiub":
                    raise Unsupported(f"constant {name!r} of type {value.dtype} used as data")
                self.add_node("Constant", [], [name], {}, {"value": value.astype(np.float64, copy=False)
                                                            if value.dtype.kind != "f" else value},
                              name=f"{name}_constant")
                self.materialized[name] = name
            return name
        raise Unsupported(f"input {name!r} is not available")

    def set_alias(self, new_name, existing):
        self.alias[new_name] = self.resolve(existing)

    # -- nodes -----------------------------------------------------------------------------
    def free_name(self, base):
        return free_name(base, self.node_names)

    def unique_name(self, base):
        name = self.free_name(base)
        self.node_names.add(name)
        return name

    def add_node(self, op, inputs, outputs, attrs, params, name=None):
        if not all(outputs):
            raise self.invalid("a needed output has no name")
        params = {k: np.ascontiguousarray(v) for k, v in params.items() if v is not None}
        node = Node(self.unique_name(name or self.current_name), op, list(inputs), list(outputs), dict(attrs),
                    params)
        normalize_node(node)
        shapes = node.operator.infer(node, [self.shapes[t] for t in node.inputs])
        for tensor, shape in zip(node.outputs, shapes):
            # a few bytes of attributes can declare an output of any size
            check_shape(shape, 4, f"{self.source}: node {node.name!r} ({op}): output {tensor!r} of shape "
                                  f"{tuple(shape)}")
            self.shapes[tensor] = tuple(shape)
        self.nodes.append(node)
        return node

    def add(self, op, inputs, output, attrs=None, params=None, suffix=None):
        """Add an IR node for the ONNX node being converted; ``inputs`` are ONNX value names."""
        ir_inputs = [self.tensor(t) for t in inputs]
        name = self.current_name if suffix is None else f"{self.current_name}/{suffix}"
        outputs = output if isinstance(output, list) else [output]
        return self.add_node(op, ir_inputs, outputs, attrs or {}, params or {}, name=name)

    def temp(self, suffix):
        return f"{self.current_name}/{suffix}"

    def where(self):
        return f"node {self.current_name!r} ({self.current.op_type})"

    def invalid(self, problem, advice=DAMAGED):
        """A node setting no ONNX model can have (the error to raise, naming the node)."""
        return refuse(self.source, self.where(), problem, advice)

    def fail_batch(self, message):
        raise BatchAxisError(f"node {self.current_name!r} ({self.current.op_type}): {message}")


def fold_constant_node(ctx, node, attrs):
    """Evaluate a node whose inputs are all constants with ONNX's reference evaluator."""
    if node.op_type == "Constant":
        if len(attrs) != 1:
            raise ctx.invalid(f"a Constant needs exactly one value attribute, it has {len(attrs)}")
        (name, value), = attrs.items()
        if name in ("sparse_value",):
            raise Unsupported("sparse constants")
        if isinstance(value, np.ndarray):
            return [value]
        if name not in ("value_float", "value_floats", "value_int", "value_ints", "value_string", "value_strings"):
            raise ctx.invalid(f"a Constant with attribute {name!r}")
        return [np.asarray(value, dtype=np.int64 if name.startswith("value_int") else
                           (np.float32 if name.startswith("value_float") else None))]
    feeds = {name: ctx.const(name) for name in node.input if name}
    check_fold_size(ctx, node, attrs, feeds)
    if node.op_type == "Reshape" and ctx.opset < 5:
        # opset 1 takes the target shape as an attribute, which the reference evaluator lacks
        if "shape" not in attrs:
            raise ctx.invalid("lacks the target shape (attribute 'shape')")
        data = np.asarray(ctx.const(node.input[0]))
        target = [d if d != 0 else data.shape[i] if i < data.ndim else 0 for i, d in enumerate(attrs["shape"])]
        try:
            return [np.reshape(data, target)]
        except ValueError:
            raise ctx.invalid(f"cannot reshape a constant of shape {data.shape} into {attrs['shape']}") from None
    from onnx.reference import ReferenceEvaluator

    try:
        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype),
                                                np.shape(v)) for n, v in feeds.items()]
    except (KeyError, ValueError, TypeError):
        raise Unsupported("a constant input of a type ONNX has no tensor for") from None
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output if n]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)])
    model.ir_version = min(max(ctx.model.ir_version, 7), onnx.IR_VERSION)
    if node.op_type not in CHEAP_FOLDS:
        check_slow_fold(ctx, node, attrs, model, feeds)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            results = ReferenceEvaluator(model).run(None, {k: np.asarray(v) for k, v in feeds.items()})
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - the evaluator's failures are the node's problem
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise Unsupported(f"could not evaluate constant node: {shortened(reason, 200)}") from None
    results = [np.asarray(r) for r in results]
    if len(results) < sum(1 for n in node.output if n):
        raise Unsupported("evaluating the constant node gave fewer outputs than it names")
    for result in results:
        check_bytes(result.nbytes, f"{ctx.source}: {ctx.where()}: folding a constant")
    return results


#: Operators ONNX's reference evaluator computes with a few NumPy calls, in time linear in their inputs and
#: outputs (MatMul and Gemm are bounded by ``MOST_FOLD_PRODUCTS``); others loop in Python over windows or
#: regions and are folded only on small inputs (``check_slow_fold``).
CHEAP_FOLDS = {
    "Identity", "Cast", "CastLike", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split",
    "Slice", "Gather", "GatherElements", "Shape", "Size", "ConstantOfShape", "Range", "Expand", "Tile", "Pad",
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Relu", "Sigmoid", "Tanh", "Erf", "Clip", "Min", "Max", "Mean", "Sum", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "Where", "IsNaN", "IsInf",
    "ReduceSum", "ReduceMean", "ReduceProd", "ReduceMax", "ReduceMin", "ArgMax", "ArgMin", "MatMul", "Gemm",
    "DequantizeLinear", "QuantizeLinear", "BatchNormalization", "Softmax", "LogSoftmax", "Constant",
}

#: Operators never evaluated at load time: random ones would give other constants at every run, and the region
#: and sequence operators can loop for hours on a few bytes of attributes.
NEVER_FOLDED = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "RoiAlign", "MaxRoiPool", "GridSample", "NonMaxSuppression", "DeformConv", "Col2Im", "STFT", "DFT",
    "MelWeightMatrix", "RNN", "GRU", "LSTM", "Loop", "Scan", "If",
}

#: Inputs and outputs (elements) up to which a Python-looping operator is folded at load time: well under
#: a second in ONNX's reference evaluator.
MOST_SLOW_FOLD_ELEMENTS = 2 ** 16

#: Multiply-adds up to which a constant MatMul or Gemm is folded (a few seconds at most).
MOST_FOLD_PRODUCTS = 2 ** 32


def check_slow_fold(ctx, node, attrs, model, feeds):
    """Fold an operator outside CHEAP_FOLDS only when ONNX's shape inference bounds its output and inputs,
    outputs and attribute values are small: the reference evaluator loops in Python (and pads inputs by the
    pads given), and a tiny file could keep it busy for hours."""
    if node.op_type in NEVER_FOLDED:
        raise Unsupported("constant inputs (lrptool does not evaluate this operator at load time)")
    too_large = "evaluating it at load time on constants this large would take too long"
    if sum(int(np.size(v)) for v in feeds.values()) > MOST_SLOW_FOLD_ELEMENTS:
        raise Unsupported(too_large)
    numbers = [v for value in attrs.values() if isinstance(value, (int, float, list))
               for v in (value if isinstance(value, list) else [value]) if isinstance(v, (int, float))]
    if any(not math.isfinite(v) or abs(v) > MOST_SLOW_FOLD_ELEMENTS for v in numbers):
        raise Unsupported(too_large)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as error:  # noqa: BLE001 - InferenceError and friends: the node does not fit its inputs
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise Unsupported(f"could not evaluate constant node: {shortened(reason, 200)}") from None
    for output in inferred.graph.output:
        tensor = output.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if not tensor.HasField("shape") or None in dims:
            raise Unsupported("a constant node whose output size ONNX cannot tell before evaluating it")
        if math.prod(dims) > MOST_SLOW_FOLD_ELEMENTS:
            raise Unsupported(too_large)


def check_fold_size(ctx, node, attrs, feeds):
    """Refuse folding a node whose result would not fit the memory budget, before it is computed."""
    try:
        elements = fold_elements(node, attrs, [np.asarray(feeds[n]) if n else None for n in node.input])
    except (ValueError, TypeError, OverflowError, IndexError):
        return  # values the evaluator will refuse itself
    if elements is not None:
        check_bytes(max(int(elements), 0) * 8, f"{ctx.source}: {ctx.where()}: folding a constant of {elements:,} "
                                               "elements")


def fold_elements(node, attrs, values):
    """How many elements folding the node makes, at most; sizes read from the values themselves."""
    op = node.op_type
    present = [v for v in values if v is not None]
    sizes = [v.size for v in present]

    def product(v):
        return math.prod(int(d) for d in np.asarray(v).reshape(-1))
    if op == "ConstantOfShape":
        return product(values[0]) if present else 1
    if op == "Expand":
        target = [int(d) for d in values[1].reshape(-1)]
        rank = max(values[0].ndim, len(target))
        own = (1,) * (rank - values[0].ndim) + values[0].shape
        target = [1] * (rank - len(target)) + target
        return math.prod(max(a, b) for a, b in zip(own, target))
    if op == "Tile":
        return sizes[0] * product(values[1])
    if op == "Range":
        start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in values[:3])
        return 0 if delta == 0 else max(math.ceil((limit - start) / delta), 0)
    if op in ("Resize", "Upsample"):
        extents = [v for v in values[1:] if v is not None and v.size]
        scales = [float(s) for s in (extents[-1].reshape(-1) if extents else attrs.get("scales", []))]
        if len(extents) and extents[-1].dtype.kind in "iu":
            return product(extents[-1])
        return math.ceil(sizes[0] * math.prod(max(s, 1.0) for s in scales))
    if op == "Pad":
        pads = [int(p) for p in (values[1].reshape(-1) if len(values) > 1 and values[1] is not None
                                 else attrs.get("pads", []))]
        rank = values[0].ndim
        return math.prod(d + sum(pads[i::rank][:2]) for i, d in enumerate(values[0].shape)) if pads else sizes[0]
    if op == "OneHot":
        return sizes[0] * int(np.asarray(values[1]).reshape(-1)[0])
    if op in ("RandomNormal", "RandomUniform"):
        return math.prod(int(d) for d in attrs.get("shape", []))
    if op in ("MatMul", "Gemm") and len(present) >= 2 and min(v.ndim for v in present[:2]) >= 2:
        a, b = present[:2]
        batch = math.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
        rows, inner, columns = a.shape[-2], a.shape[-1], b.shape[-1]
        if op == "Gemm":
            rows, inner = (a.shape[1], a.shape[0]) if attrs.get("transA") else a.shape
            columns = b.shape[0] if attrs.get("transB") else b.shape[1]
        if batch * rows * inner * columns > MOST_FOLD_PRODUCTS:
            raise Unsupported("multiplying constant matrices this large at load time would take too long")
        return batch * rows * columns
    if op == "Gather" and len(present) == 2 and present[0].ndim:
        axis = int(attrs.get("axis", 0))
        return sizes[1] * sizes[0] // max(present[0].shape[axis], 1)
    try:
        broadcast = math.prod(np.broadcast_shapes(*(v.shape for v in present))) if present else 0
    except ValueError:
        broadcast = 0
    return max(broadcast, sum(sizes))


def shape_constant(ctx, node, attrs):
    shape = ctx.shape(node.input[0])
    values = np.array([BATCH_MARKER if d is None else d for d in shape], dtype=np.int64)
    start, end = attrs.get("start", 0), attrs.get("end", len(values))
    return values[start:end]


def graph_inputs(ctx, bind):
    initializers = {init.name for init in ctx.model.graph.initializer}
    inputs = {}
    for value_info in ctx.model.graph.input:
        name = value_info.name
        if name in initializers or name in bind:
            continue
        shape = tensor_shape(value_info, ctx.source, "input")
        if shape is None:
            raise GraphError(f"{ctx.source}: input {name!r} has no declared shape; lrptool needs one")
        free = [i for i, d in enumerate(shape) if i and d in (None, 0)]
        if free and ctx.input_size and len(free) == len(ctx.input_size):
            sizes = iter(ctx.input_size)
            shape = [next(sizes) if i in free else d for i, d in enumerate(shape)]
        if None in shape[1:] or 0 in shape[1:]:
            raise GraphError(f"{ctx.source}: input {name!r} has shape {shape} with a free size beyond the batch "
                             "axis; lrptool needs fixed sizes except for the batch (give them with --input-size)")
        check_shape(shape, 4, f"{ctx.source}: input {name!r} of shape {shape}")
        if shape and shape[0] not in (None, 0):
            ctx.declared_batch = shape[0]
        if ctx.free_batch:
            shape = [None] + shape[1:] if shape else shape
        elif shape and shape[0] in (None, 0):
            raise BatchAxisError(f"{ctx.source}: the model declares no fixed batch size")
        inputs[name] = tuple(shape)
    return inputs


def convert(model, source, free_batch, bind, input_size=None, opset=1, folder=None, initializers=None):
    ctx = ReadContext(model, source, free_batch, input_size, opset, folder)
    ctx.consts.update(initializers if initializers is not None else read_initializers(model, source, folder))
    for name, value in bind.items():
        ctx.consts[name] = np.asarray(value)
    inputs = graph_inputs(ctx, bind)
    declared = {(len(value_info_shape), value_info_shape[0] if value_info_shape else None)
                for value_info_shape in (tensor_shape(v, source, "input") for v in model.graph.input
                                         if v.name in inputs)}
    if free_batch and len(declared) > 1:
        raise BatchAxisError(f"{source}: the inputs differ in rank or first dimension, so share no batch axis")
    if not free_batch and not all(s and s[0] for s in inputs.values()):
        raise BatchAxisError(f"{source}: the model declares no fixed batch size")
    ctx.shapes.update(inputs)
    unsupported = []
    broken = set()
    for index, node in enumerate(model.graph.node):
        ctx.current = node
        ctx.current_name = ctx.free_name(node_label(node, index))
        if node.domain not in ("", "ai.onnx"):
            unsupported.append((ctx.current_name, f"{node.domain}.{node.op_type}", "custom operator domain"))
            broken.update(node.output)
            continue
        try:
            with reading_at(ctx.where()):
                problem = convert_node(ctx, node, broken)
        except GraphError as error:
            if isinstance(error, BatchAxisError):
                raise
            raise GraphError(f"{source}: {error}; the model's shapes do not fit together (a damaged file?)") from None
        if problem is not None:
            if problem is not DOWNSTREAM:
                unsupported.append((ctx.current_name, node.op_type, shortened(problem, 300)))
            broken.update(node.output)
    if unsupported:
        raise UnsupportedModelError(source, unsupported)
    taken = {o.name for o in model.graph.output if ctx.resolve(o.name) == o.name}
    outputs = []
    for output in model.graph.output:
        with reading_at(f"graph output {output.name!r}"):
            try:
                outputs.append(finish_output(ctx, output.name, taken))
            except Unsupported as problem:
                raise refuse(source, f"graph output {output.name!r}", str(problem)) from None
    return Graph(inputs, ctx.nodes, outputs, name=model.graph.name or os.path.basename(str(source)))


#: ``convert_node``'s answer for a supported node that reads an unsupported node's output.
DOWNSTREAM = object()


def convert_node(ctx, node, broken):
    """Convert one node; returns None, why it is unsupported ("" for an unknown operator), or DOWNSTREAM."""
    where = ctx.where()
    try:
        attrs, kinds = attribute_values(ctx, node, where)
        check_against_schema(ctx, node, kinds, where)
        if any(ctx.resolve(t) in broken for t in node.input if t):
            return "" if node.op_type not in CONVERTERS else DOWNSTREAM
        subgraphs = [name for name, kind in kinds.items()
                     if kind in (AttributeProto.GRAPH, AttributeProto.GRAPHS)]
        if subgraphs:
            raise Unsupported("subgraphs (control flow)")
        unusable = [name for name, kind in kinds.items() if kind not in ATTRIBUTE_KINDS or kind in (
            AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS, AttributeProto.TENSORS,
            AttributeProto.TYPE_PROTO, AttributeProto.TYPE_PROTOS)]
        if unusable:
            raise Unsupported(f"attribute {unusable[0]!r} ({ATTRIBUTE_KINDS[kinds[unusable[0]]][1]})")
        data_inputs = [t for t in node.input if t]
        if node.op_type == "Shape" and ctx.const(node.input[0]) is None:
            results = [shape_constant(ctx, node, attrs)]
        elif all(ctx.const(t) is not None for t in data_inputs) and node.op_type not in ("Dropout",):
            results = fold_constant_node(ctx, node, attrs)
        else:
            results = None
        if results is not None:
            for name, value in zip(node.output, results):
                ctx.consts[name] = value
            return None
        converter = CONVERTERS.get(node.op_type)
        if converter is None:
            return ""
        converter(ctx, node, attrs)
    except Unsupported as problem:
        return str(problem)
    return None


def finish_output(ctx, name, taken):
    """Give the ONNX output name to the IR tensor when a node makes it (Identity/Dropout were dropped)."""
    target = ctx.resolve(name)
    if target not in ctx.shapes:
        target = ctx.tensor(target)
    produced = {t for node in ctx.nodes for t in node.outputs}
    if target != name and target in produced and target not in taken:
        for node in ctx.nodes:
            node.inputs = [name if t == target else t for t in node.inputs]
            node.outputs = [name if t == target else t for t in node.outputs]
        ctx.shapes[name] = ctx.shapes.pop(target)
        return name
    return target


def shortened(text, limit):
    return text if len(text) <= limit else f"{text[:limit * 2 // 3]} … {text[-limit // 3:]}"


def read_onnx(model_or_path, bind=None, input_size=None):
    """Read an ONNX model (a path or a ``ModelProto``) into a ``Graph``.

    ``bind`` maps graph input names to arrays that are to be treated as constants (for models
    that take their weights as inputs); ``input_size`` fills the free sizes after the batch axis
    (e.g. ``(224, 224)`` for an image model exported with free height and width).
    """
    try:
        return read_checked(model_or_path, bind, input_size)
    except LrpToolError as error:
        # every name and list in a message is the file's; a hostile file can make them any length
        if len(str(error)) <= LONGEST_MESSAGE:
            raise
        error.args = (shortened(str(error), LONGEST_MESSAGE),)
        raise


def read_checked(model_or_path, bind, input_size):
    if isinstance(model_or_path, onnx.ModelProto):
        model, source, folder = model_or_path, "<model>", None
    else:
        source = str(model_or_path)
        model = load_onnx_proto(source)
        folder = os.path.dirname(os.path.abspath(source))
    check_structure(model, source)
    opset = default_opset(model, source)
    initializers = read_initializers(model, source, folder)
    bind = dict(bind or {})
    options = dict(bind=bind, input_size=input_size, opset=opset, folder=folder, initializers=initializers)
    try:
        return convert(model, source, free_batch=True, **options)
    except BatchAxisError as first:
        try:
            return convert(model, source, free_batch=False, **options)
        except BatchAxisError:
            raise GraphError(f"{source}: {first}; the model declares no fixed batch size to fall back on") from None
