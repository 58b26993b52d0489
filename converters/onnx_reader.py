"""Read an ONNX model into the lrptool IR.

Constant sub-graphs (initializers, Constant nodes and the Shape → Gather → Unsqueeze → Concat
arithmetic that PyTorch exports emit) are evaluated at load time, so that shapes and
parameters reach the IR as plain arrays and attributes. A graph is first read with a free
batch size; only when some node reads or changes the batch axis is it read again with the
batch size the model declares.
"""

import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lrptool.errors import BatchAxisError, GraphError, ModelFileError, UnsupportedModelError
from lrptool.graph import Graph, Node, free_name, normalize_node

from . import onnx_shape_ops  # noqa: F401  (registers the data-movement converters)
from .onnx_ops import CONVERTERS, Unsupported

#: Stands for the free batch size inside folded shape arithmetic (the value of ``Shape(x)[0]``).
BATCH_MARKER = -(2 ** 40) - 7


def load_onnx_proto(path):
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a folder, not an ONNX model file")
    try:
        model = onnx.load(path)
    except Exception as error:  # protobuf raises several unrelated types for corrupt data
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelFileError(f"{path}: not a readable ONNX model (truncated or corrupt?): {reason}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelFileError(f"{path}: the ONNX file holds no graph (truncated or not a model?)")
    return model


def attribute_dict(node):
    attrs = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list):
            value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        attrs[attribute.name] = value
    return attrs


def tensor_shape(value_info):
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


class ReadContext:
    """State of one conversion: constants, IR tensors with shapes, aliases and the IR nodes made."""

    def __init__(self, model, source, free_batch, input_size=None):
        self.model = model
        self.input_size = tuple(input_size) if input_size else None
        self.source = source
        self.free_batch = free_batch
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.consts = {}
        self.shapes = {}
        self.alias = {}
        self.nodes = []
        self.node_names = set()
        self.materialized = {}
        self.declared_batch = None
        self.current = None

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
        value = self.input_const(node, index)
        if value is None:
            raise Unsupported(f"{what} (input {index}) must be a constant")
        return value

    def shape(self, name):
        return self.shapes[self.resolve(name)]

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
        params = {k: np.ascontiguousarray(v) for k, v in params.items() if v is not None}
        node = Node(self.unique_name(name or self.current_name), op, list(inputs), list(outputs), dict(attrs),
                    params)
        normalize_node(node)
        shapes = node.operator.infer(node, [self.shapes[t] for t in node.inputs])
        for tensor, shape in zip(node.outputs, shapes):
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

    def fail_batch(self, message):
        raise BatchAxisError(f"node {self.current_name!r} ({self.current.op_type}): {message}")


def fold_constant_node(ctx, node):
    """Evaluate a node whose inputs are all constants with ONNX's reference evaluator."""
    if node.op_type == "Constant":
        attribute = node.attribute[0]
        value = helper.get_attribute_value(attribute)
        if isinstance(value, onnx.TensorProto):
            return [numpy_helper.to_array(value)]
        if attribute.name == "sparse_value":
            raise Unsupported("sparse constants")
        return [np.asarray(value, dtype=np.int64 if attribute.name.startswith("value_int") else
                           (np.float32 if attribute.name.startswith("value_float") else None))]
    from onnx.reference import ReferenceEvaluator

    if node.op_type == "Reshape" and ctx.opset < 5:
        # opset 1 takes the target shape as an attribute, which the reference evaluator lacks
        data = ctx.const(node.input[0])
        target = [d if d != 0 else data.shape[i] for i, d in enumerate(attribute_dict(node)["shape"])]
        return [np.reshape(data, target)]

    feeds = {name: ctx.const(name) for name in node.input if name}
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), None)
              for n, v in feeds.items()]
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output if n]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=list(ctx.model.opset_import))
    model.ir_version = min(ctx.model.ir_version or 7, onnx.IR_VERSION) if ctx.model.ir_version >= 3 else 7
    try:
        results = ReferenceEvaluator(model).run(None, {k: np.asarray(v) for k, v in feeds.items()})
    except Exception as error:
        raise Unsupported(f"could not evaluate constant node: {str(error).splitlines()[0] if str(error) else error}")
    return [np.asarray(r) for r in results]


def shape_constant(ctx, node):
    shape = ctx.shape(node.input[0])
    values = np.array([BATCH_MARKER if d is None else d for d in shape], dtype=np.int64)
    a = attribute_dict(node)
    start, end = a.get("start", 0), a.get("end", len(values))
    return values[start:end]


def graph_inputs(ctx, bind):
    initializers = {init.name for init in ctx.model.graph.initializer}
    inputs = {}
    for value_info in ctx.model.graph.input:
        name = value_info.name
        if name in initializers or name in bind:
            continue
        shape = tensor_shape(value_info)
        if shape is None:
            raise GraphError(f"{ctx.source}: input {name!r} has no declared shape; lrptool needs one")
        free = [i for i, d in enumerate(shape) if i and d in (None, 0)]
        if free and ctx.input_size and len(free) == len(ctx.input_size):
            sizes = iter(ctx.input_size)
            shape = [next(sizes) if i in free else d for i, d in enumerate(shape)]
        if None in shape[1:] or 0 in shape[1:]:
            raise GraphError(f"{ctx.source}: input {name!r} has shape {shape} with a free size beyond the batch "
                             "axis; lrptool needs fixed sizes except for the batch (give them with --input-size)")
        if shape and shape[0] not in (None, 0):
            ctx.declared_batch = shape[0]
        if ctx.free_batch:
            shape = [None] + shape[1:] if shape else shape
        elif shape and shape[0] in (None, 0):
            raise BatchAxisError(f"{ctx.source}: the model declares no fixed batch size")
        inputs[name] = tuple(shape)
    return inputs


def convert(model, source, free_batch, bind, input_size=None):
    ctx = ReadContext(model, source, free_batch, input_size)
    for init in model.graph.initializer:
        ctx.consts[init.name] = numpy_helper.to_array(init)
    for name, value in bind.items():
        ctx.consts[name] = np.asarray(value)
    inputs = graph_inputs(ctx, bind)
    declared = {(len(value_info_shape), value_info_shape[0] if value_info_shape else None)
                for value_info_shape in (tensor_shape(v) for v in model.graph.input if v.name in inputs)}
    if free_batch and len(declared) > 1:
        raise BatchAxisError(f"{source}: the inputs differ in rank or first dimension, so share no batch axis")
    if not free_batch and not all(s and s[0] for s in inputs.values()):
        raise BatchAxisError(f"{source}: the model declares no fixed batch size")
    ctx.shapes.update(inputs)
    unsupported = []
    broken = set()
    for index, node in enumerate(model.graph.node):
        ctx.current = node
        ctx.current_name = ctx.free_name(node.name or f"{node.op_type}_{index}")
        if node.domain not in ("", "ai.onnx"):
            unsupported.append((ctx.current_name, f"{node.domain}.{node.op_type}", "custom operator domain"))
            broken.update(node.output)
            continue
        if any(ctx.resolve(t) in broken for t in node.input if t):
            broken.update(node.output)
            if node.op_type not in CONVERTERS:
                unsupported.append((ctx.current_name, node.op_type, ""))
            continue
        try:
            data_inputs = [t for t in node.input if t]
            if node.op_type == "Shape" and ctx.const(node.input[0]) is None:
                results = [shape_constant(ctx, node)]
            elif all(ctx.const(t) is not None for t in data_inputs) and node.op_type not in ("Dropout",):
                results = fold_constant_node(ctx, node)
            else:
                results = None
            if results is not None:
                for name, value in zip(node.output, results):
                    ctx.consts[name] = value
                continue
            converter = CONVERTERS.get(node.op_type)
            if converter is None:
                raise Unsupported("")
            converter(ctx, node, attribute_dict(node))
        except Unsupported as problem:
            unsupported.append((ctx.current_name, node.op_type, str(problem)))
            broken.update(node.output)
        except GraphError as error:
            if isinstance(error, BatchAxisError):
                raise
            raise GraphError(f"{source}: {error}") from None
    if unsupported:
        raise UnsupportedModelError(source, unsupported)
    taken = {o.name for o in model.graph.output if ctx.resolve(o.name) == o.name}
    outputs = [finish_output(ctx, o.name, taken) for o in model.graph.output]
    return Graph(inputs, ctx.nodes, outputs, name=model.graph.name or os.path.basename(str(source)))


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


def read_onnx(model_or_path, bind=None, input_size=None):
    """Read an ONNX model (a path or a ``ModelProto``) into a ``Graph``.

    ``bind`` maps graph input names to arrays that are to be treated as constants (for models
    that take their weights as inputs); ``input_size`` fills the free sizes after the batch axis
    (e.g. ``(224, 224)`` for an image model exported with free height and width).
    """
    if isinstance(model_or_path, onnx.ModelProto):
        model, source = model_or_path, "<model>"
    else:
        source = str(model_or_path)
        model = load_onnx_proto(source)
    bind = dict(bind or {})
    try:
        return convert(model, source, free_batch=True, bind=bind, input_size=input_size)
    except BatchAxisError as first:
        try:
            return convert(model, source, free_batch=False, bind=bind, input_size=input_size)
        except BatchAxisError:
            raise GraphError(f"{source}: {first}; the model declares no fixed batch size to fall back on") from None
