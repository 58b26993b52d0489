"""Read an ONNX model into the lrptool IR.

Constant sub-graphs (initializers, Constant nodes and the Shape → Gather → Unsqueeze → Concat
arithmetic that PyTorch exports emit) are evaluated at load time, so that shapes and
parameters reach the IR as plain arrays and attributes. A graph is first read with a free
batch size; only when some node reads or changes the batch axis is it read again with the
batch size the model declares. The file is checked first (converters.onnx_checks); folding is in
converters.onnx_folding.
"""

import os

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

from lrptool.errors import BatchAxisError, FreeSizeError, GraphError, LrpToolError, UnsupportedModelError
from lrptool.limits import check_shape

from . import onnx_recurrent, onnx_shape_ops  # noqa: F401  (registers the recurrent and data-movement converters)
from .builder import GraphBuilder, Unsupported
from .onnx_ml import ML_DOMAIN, ML_OPS
from .onnx_patterns import FUSED
from .onnx_svm_votes import explain_sums
from .onnx_checks import (ATTRIBUTE_KINDS, DAMAGED, attribute_values, check_against_schema, check_structure,
                          default_opset, load_onnx_proto, node_label, read_initializers, refuse, tensor_shape)
from .onnx_folding import fold_constant_node, shortened
from .onnx_layout import fold_transposes
from .onnx_ops import CONVERTERS
from .reading import reading_at

#: Stands for the free batch size inside folded shape arithmetic (the value of ``Shape(x)[0]``).
BATCH_MARKER = -(2 ** 40) - 7

#: Characters in one error message; beyond it the middle is left out.
LONGEST_MESSAGE = 2000


# -- conversion -----------------------------------------------------------------------------------

class ReadContext(GraphBuilder):
    """State of one conversion: constants, IR tensors with shapes, aliases and the IR nodes made."""

    def __init__(self, model, source, free_batch, input_size=None, opset=1, folder=None):
        super().__init__()
        self.model = model
        self.input_size = tuple(input_size) if input_size else None
        self.source = source
        self.folder = folder
        self.free_batch = free_batch
        self.opset = opset
        self.consts = {}
        self.alias = {}
        self.materialized = {}
        self.declared_batch = None
        self.current = None
        self.current_name = None
        self.dropped_outputs = set()   # a classifier's predicted labels: not scores, left out

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
                self.add_node(f"{name}_constant", "Constant", [], [name], {},
                              {"value": value.astype(np.float64, copy=False) if value.dtype.kind != "f" else value})
                self.materialized[name] = name
            return name
        raise Unsupported(f"input {name!r} is not available")

    def model_inputs(self):
        return {v.name for v in self.model.graph.input}

    def set_alias(self, new_name, existing):
        self.alias[new_name] = self.resolve(existing)

    # -- nodes -----------------------------------------------------------------------------
    def add_node(self, name, op, inputs, outputs, attrs=None, params=None):
        if not all(outputs):
            raise self.invalid("a needed output has no name")
        params = {k: np.ascontiguousarray(v) for k, v in (params or {}).items() if v is not None}
        return super().add_node(name, op, inputs, outputs, attrs, params)

    def check_output(self, node, tensor, shape):
        # a few bytes of attributes can declare an output of any size
        check_shape(shape, 4, f"{self.source}: node {node.name!r} ({node.op}): output {tensor!r} of shape "
                              f"{tuple(shape)}")

    def add(self, op, inputs, output, attrs=None, params=None, suffix=None):
        """Add an IR node for the ONNX node being converted; ``inputs`` are ONNX value names."""
        ir_inputs = [self.tensor(t) for t in inputs]
        name = self.current_name if suffix is None else f"{self.current_name}/{suffix}"
        outputs = output if isinstance(output, list) else [output]
        return self.add_node(name, op, ir_inputs, outputs, attrs, params)

    def temp(self, suffix):
        return f"{self.current_name}/{suffix}"

    def where(self):
        return f"node {self.current_name!r} ({self.current.op_type})"

    def invalid(self, problem, advice=DAMAGED):
        """A node setting no ONNX model can have (the error to raise, naming the node)."""
        return refuse(self.source, self.where(), problem, advice)

    def fail_batch(self, message):
        raise BatchAxisError(f"node {self.current_name!r} ({self.current.op_type}): {message}")

    def fail_free(self, axis, message):
        """A node that needs the length of free axis ``axis``: the batch axis or a free spatial size."""
        if axis == 0:
            self.fail_batch(message)
        raise FreeSizeError(f"node {self.current_name!r} ({self.current.op_type}): {message}")


def shape_constant(ctx, node, attrs):
    shape = ctx.shape(node.input[0])
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    free = [axis for axis, d in list(enumerate(shape))[start:end] if axis and d is None]
    if free:
        ctx.fail_free(free[0], f"reads the free sizes of {tuple(shape)}")
    values = np.array([BATCH_MARKER if d is None else d for d in shape], dtype=np.int64)
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
        if 0 in shape[1:]:
            raise GraphError(f"{ctx.source}: input {name!r} has shape {shape} with a size 0; give the sizes with "
                             "--input-size")
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
    for name, shape in inputs.items():
        ctx.add_input(name, shape)
    unsupported = convert_nodes(ctx, model.graph.node, [o.name for o in model.graph.output], set())
    if unsupported:
        raise UnsupportedModelError(source, unsupported)
    outputs = finish_outputs(ctx, [o.name for o in model.graph.output if o.name not in ctx.dropped_outputs])
    ctx.nodes = fold_transposes(ctx.nodes, outputs, ctx.node_names, ctx.shapes)
    return ctx.finish(outputs, name=model.graph.name or os.path.basename(str(source)))


#: ``convert_node``'s answer for a supported node that reads an unsupported node's output.
DOWNSTREAM = object()


def graph_references(graph):
    """Every value name the nodes of ``graph`` (and of their subgraphs) read."""
    names = set()
    for node in graph.node:
        names.update(t for t in node.input if t)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == AttributeProto.GRAPH else list(attribute.graphs)):
                names |= graph_references(sub)
    return names


def live_nodes(nodes, outputs):
    """Indices of the nodes some of ``outputs`` depend on."""
    needed, live = set(outputs), set()
    for index in range(len(nodes) - 1, -1, -1):
        node = nodes[index]
        if needed.intersection(node.output):
            live.add(index)
            needed.update(t for t in node.input if t)
            for attribute in node.attribute:
                if attribute.type == AttributeProto.GRAPH:
                    needed |= graph_references(attribute.g)
    return live


def convert_nodes(ctx, nodes, outputs, broken, prefix=""):
    """Convert ``nodes`` in order; returns [(node, op type, why)] for the unsupported ones. A node no
    output depends on (a second output left out, a state no one reads) may fail without harm: its
    failure is not reported."""
    live = live_nodes(nodes, outputs)
    ctx.needed = getattr(ctx, "needed", set()) | set(outputs)
    unsupported = []
    for index, node in enumerate(nodes):
        ctx.current = node
        ctx.current_name = ctx.node_names.free(prefix + node_label(node, index))
        if all(ctx.resolve(t) in ctx.dropped_outputs for t in node.input if t) \
                and any(node.input):
            ctx.dropped_outputs.update(node.output)  # a Cast of a dropped label, say
            continue
        if node.domain not in ("", "ai.onnx", FUSED) and not (node.domain == ML_DOMAIN and node.op_type in ML_OPS):
            if index in live:
                unsupported.append((ctx.current_name, f"{node.domain}.{node.op_type}", "custom operator domain"))
            broken.update(node.output)
            continue
        try:
            with reading_at(ctx.where()):
                problem = convert_node(ctx, node, broken)
        except GraphError as error:
            if index not in live:
                problem = DOWNSTREAM
            elif isinstance(error, BatchAxisError):
                raise
            elif isinstance(error, FreeSizeError):
                where = "" if str(error).startswith("node ") else f"{ctx.where()}: "
                raise FreeSizeError(f"{ctx.source}: {where}{error}; this node needs a fixed input size: give it with "
                                    "--input-size (e.g. 224x224)") from None
            else:
                raise GraphError(f"{ctx.source}: {error}; the model's shapes do not fit together (a damaged file?)") \
                    from None
        if problem is not None:
            if problem is not DOWNSTREAM and index in live:
                unsupported.append((ctx.current_name, node.op_type, shortened(problem, 300)))
            broken.update(node.output)
    return unsupported


def inline_branch(ctx, node, attrs, broken):
    """An If whose condition is a constant (often once its inputs are bound): the taken branch's nodes
    in its place."""
    condition = np.asarray(ctx.const(node.input[0]))
    if condition.size != 1:
        raise ctx.invalid(f"the condition has {condition.size} values, not one")
    key = "then_branch" if bool(condition.reshape(-1)[0]) else "else_branch"
    branch = next(a.g for a in node.attribute if a.name == key)
    for tensor in branch.initializer:
        ctx.consts[tensor.name] = numpy_helper.to_array(tensor)
    wanted = [inner.name for inner, outer in zip(branch.output, node.output) if outer in ctx.needed]
    outer_name, outer_node = ctx.current_name, ctx.current
    problems = convert_nodes(ctx, branch.node, wanted, broken, prefix=f"{outer_name}/{key}/")
    ctx.current_name, ctx.current = outer_name, outer_node
    if problems:
        shown = "; ".join(f"{name} ({op}: {why})" if why else f"{name} ({op})" for name, op, why in problems[:3])
        raise Unsupported(f"in its {key}: {shown}")
    for inner, outer in zip(branch.output, node.output):
        if outer:
            ctx.set_alias(outer, inner.name)


def convert_node(ctx, node, broken):
    """Convert one node; returns None, why it is unsupported ("" for an unknown operator), or DOWNSTREAM."""
    where = ctx.where()
    try:
        attrs, kinds = attribute_values(ctx, node, where)
        if node.domain != FUSED:
            check_against_schema(ctx, node, kinds, where)
        if any(ctx.resolve(t) in broken for t in node.input if t):
            return "" if node.op_type not in CONVERTERS else DOWNSTREAM
        subgraphs = [name for name, kind in kinds.items()
                     if kind in (AttributeProto.GRAPH, AttributeProto.GRAPHS)]
        if node.op_type == "If" and ctx.const(node.input[0]) is not None:
            inline_branch(ctx, node, attrs, broken)
            return None
        if node.op_type == "If":
            raise Unsupported("an If on a computed condition (bind the inputs it depends on to constants)")
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


def finish_outputs(ctx, names):
    """The IR tensors of the graph outputs; an output name goes to the IR tensor a node makes where an
    Identity/Dropout in between was dropped. Renames are applied in one pass (a file can list thousands)."""
    taken = {name for name in names if ctx.resolve(name) == name}
    produced = {t for node in ctx.nodes for t in node.outputs}
    renamed, outputs = {}, []
    for name in names:
        with reading_at(f"graph output {name!r}"):
            target = ctx.resolve(name)
            if target in renamed:
                outputs.append(renamed[target])
                continue
            if target not in ctx.shapes:
                made = len(ctx.nodes)
                try:
                    target = ctx.tensor(target)
                except Unsupported as problem:
                    raise refuse(ctx.source, f"graph output {name!r}", str(problem)) from None
                produced.update(t for node in ctx.nodes[made:] for t in node.outputs)
            if target != name and target in produced and target not in taken:
                renamed[target] = name
                ctx.shapes[name] = ctx.shapes.pop(target)
                target = name
            outputs.append(target)
    if renamed:
        for node in ctx.nodes:
            node.inputs = [renamed.get(t, t) for t in node.inputs]
            node.outputs = [renamed.get(t, t) for t in node.outputs]
    return outputs


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


def fused_operators(model):
    """The model with GELU, layer normalisation, softmax and one-hot embeddings that an exporter wrote out in
    elementary nodes put back as single nodes (converters.onnx_patterns); the model as it is when none is
    found, when its weights live in external files, or when finding them fails."""
    from .onnx_patterns import fuse

    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return model
    try:
        fused, _ = fuse(model)
    except Exception:  # noqa: BLE001 - the model is then read node by node, and what is unsupported named
        return model
    return fused


def read_checked(model_or_path, bind, input_size):
    if isinstance(model_or_path, onnx.ModelProto):
        model, source, folder = model_or_path, "<model>", None
    else:
        source = str(model_or_path)
        model = load_onnx_proto(source)
        folder = os.path.dirname(os.path.abspath(source))
    check_structure(model, source)
    opset = default_opset(model, source)
    model = fused_operators(model)
    model, notes = explain_sums(model)
    initializers = read_initializers(model, source, folder)
    bind = dict(bind or {})
    options = dict(bind=bind, input_size=input_size, opset=opset, folder=folder, initializers=initializers)
    try:
        graph = convert(model, source, free_batch=True, **options)
    except BatchAxisError as first:
        try:
            graph = convert(model, source, free_batch=False, **options)
        except BatchAxisError:
            raise GraphError(f"{source}: {first}; the model declares no fixed batch size to fall back on") from None
    graph.metadata = {prop.key: prop.value for prop in model.metadata_props}
    graph.notes = notes
    return graph
