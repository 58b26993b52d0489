"""The lrptool graph IR.

A ``Graph`` holds named inputs (with shapes, first entry ``None`` when the batch size is
free; a later ``None`` is a free size, e.g. a fully convolutional model's height and width, which
``at_sizes`` fixes), nodes in topological order and named outputs. Every node is an operator from the
closed set in ``lrptool.ops`` with that operator's fixed attribute schema; parameter arrays
(weights, biases, constants) belong to the nodes of the graph. Building a graph checks it:
unknown operators or attributes, tensors used before they are made, and shapes that do not
fit are refused with the node named.
"""

import copy
from dataclasses import dataclass, field

import numpy as np

from .errors import GraphError
from .ops import OPERATORS, REQUIRED


def free_name(base, taken, separator="_", start=2):
    """``base``, or the first of base{separator}{start}, base{separator}{start + 1}, … not in ``taken``."""
    name, count = base, start
    while name in taken:
        name = f"{base}{separator}{count}"
        count += 1
    return name


@dataclass
class Node:
    name: str
    op: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    @property
    def operator(self):
        return OPERATORS[self.op]

    def parameter_count(self):
        if self.op == "Constant":
            return 0
        return int(sum(p.size for p in self.params.values()))


def normalize_node(node):
    """Check a node against its operator's schema and fill in attribute defaults."""
    where = f"node {node.name!r} ({node.op})"
    if node.op not in OPERATORS:
        raise GraphError(f"{where}: unknown operator; lrptool knows {', '.join(sorted(OPERATORS))}")
    op = OPERATORS[node.op]
    unknown = set(node.attrs) - set(op.attributes)
    if unknown:
        raise GraphError(f"{where}: unknown attribute(s) {sorted(unknown)}")
    attrs = {}
    for key, default in op.attributes.items():
        if key in node.attrs:
            value = node.attrs[key]
            attrs[key] = tuple(value) if isinstance(value, list) else value
        elif default is REQUIRED:
            raise GraphError(f"{where}: missing attribute {key!r}")
        else:
            attrs[key] = default
    node.attrs = attrs
    extra = set(node.params) - set(op.params)
    missing = set(op.params) - set(op.optional_params) - set(node.params)
    if extra or missing:
        raise GraphError(f"{where}: parameters {sorted(node.params)} do not match {list(op.params)}")
    for key, value in node.params.items():
        if not isinstance(value, np.ndarray):
            raise GraphError(f"{where}: parameter {key!r} is not a NumPy array")
    if op.num_inputs is not None and len(node.inputs) != op.num_inputs:
        raise GraphError(f"{where}: takes {op.num_inputs} input(s), got {len(node.inputs)}")
    if op.num_inputs is None and not node.inputs:
        raise GraphError(f"{where}: needs at least one input")
    if len(node.outputs) != op.num_outputs(node):
        raise GraphError(f"{where}: makes {op.num_outputs(node)} output(s), got {len(node.outputs)}")
    return node


class Graph:
    """A checked, shape-inferred graph. ``shapes`` maps every tensor name to its shape."""

    def __init__(self, inputs, nodes, outputs, name="graph"):
        self.name = name
        self.inputs = {k: tuple(v) for k, v in inputs.items()}
        self.nodes = list(nodes)
        self.outputs = list(outputs)
        self.shapes = {}
        self.metadata = {}      # the model file's key/value metadata (ONNX metadata_props), where it has any
        self.notes = []         # what reading changed about the model's outputs, for the user to be told once
        self._check()

    def _check(self):
        shapes = dict(self.inputs)
        for input_name, shape in self.inputs.items():
            if any(d is not None and (not isinstance(d, (int, np.integer)) or d < 0) for d in shape):
                raise GraphError(f"input {input_name!r}: bad shape {shape}")
        seen = set()
        for node in self.nodes:
            if node.name in seen:
                raise GraphError(f"node {node.name!r} ({node.op}): the name is used twice")
            seen.add(node.name)
            normalize_node(node)
            for tensor in node.inputs:
                if tensor not in shapes:
                    raise GraphError(f"node {node.name!r} ({node.op}): input {tensor!r} is not made by an "
                                     "earlier node or a graph input")
            out_shapes = node.operator.infer(node, [shapes[t] for t in node.inputs])
            for tensor, shape in zip(node.outputs, out_shapes):
                if tensor in shapes:
                    raise GraphError(f"node {node.name!r} ({node.op}): output {tensor!r} is made twice")
                shapes[tensor] = tuple(int(d) if d is not None else None for d in shape)
        for tensor in self.outputs:
            if tensor not in shapes:
                raise GraphError(f"graph output {tensor!r} is not made by any node")
        self.shapes = shapes

    @property
    def batch_free(self):
        return all(shape[:1] == (None,) for shape in self.inputs.values())

    def parameter_count(self):
        return sum(node.parameter_count() for node in self.nodes)

    def free_sizes(self):
        """Whether some input leaves a size besides the batch free (a fully convolutional model)."""
        return any(None in shape[1:] for shape in self.inputs.values())

    def at_sizes(self, sizes):
        """This graph with its free spatial sizes fixed: ``sizes`` maps an input name to one sample's
        shape (without the batch axis), or is one such shape for a single-input graph. Nodes are copied
        (parameters shared), shapes inferred anew."""
        if not isinstance(sizes, dict):
            if len(self.inputs) != 1:
                raise GraphError(f"the graph has {len(self.inputs)} inputs; give one shape per input name")
            sizes = {next(iter(self.inputs)): sizes}
        inputs = {}
        for name, shape in self.inputs.items():
            given = tuple(int(d) for d in sizes.get(name, shape[1:]))
            if len(given) != len(shape) - 1 or any(d is not None and d != g for d, g in zip(shape[1:], given)):
                raise GraphError(f"input {name!r} of shape {shape} cannot take one sample of shape {given}")
            inputs[name] = shape[:1] + given
        nodes = [copy.copy(node) for node in self.nodes]
        return Graph(inputs, nodes, self.outputs, self.name)

    def channels_first(self):
        """This graph taking channels-first pictures, where it takes channels-last ones (N, H, W, C) that
        a Transpose turns channels-first before anything else reads them (tf2onnx's exports): the
        Transpose's output becomes the input. None where the graph is not of that kind."""
        if len(self.inputs) != 1:
            return None
        ((name, shape),) = self.inputs.items()
        readers = self.consumers().get(name, [])
        if len(shape) != 4 or len(readers) != 1 or name in self.outputs:
            return None
        (first,) = readers
        if first.op != "Transpose" or list(first.attrs.get("perm", ())) != [0, 3, 1, 2] or \
                first.outputs[0] in self.outputs:
            return None
        inputs = {first.outputs[0]: (shape[0], shape[3], shape[1], shape[2])}
        graph = Graph(inputs, [node for node in self.nodes if node is not first], self.outputs, self.name)
        graph.metadata, graph.notes = dict(self.metadata), list(self.notes)
        return graph

    def token_inputs(self):
        """Inputs that hold token ids: read by Embedding nodes and nothing else. They are fed as
        int64; every other input is fed as floats."""
        readers = {}
        for node in self.nodes:
            for tensor in node.inputs:
                readers.setdefault(tensor, []).append(node.op)
        return {name for name in self.inputs if readers.get(name) and set(readers[name]) == {"Embedding"}}

    def input_dtype(self, name, dtype):
        """The dtype input ``name`` is fed in: int64 for token ids, else ``dtype``."""
        return np.dtype(np.int64) if name in self.token_inputs() else np.dtype(dtype)

    def output_size(self):
        """How many values the (first) output has per sample — the range of class indices — or None
        where a size is free."""
        shape = self.shapes[self.outputs[0]]
        if any(d is None for d in shape[1:]):
            return None
        total = 1
        for size in shape[1:]:
            total *= int(size)
        return total

    def producers(self):
        return {t: node for node in self.nodes for t in node.outputs}

    def consumers(self):
        users = {}
        for node in self.nodes:
            for t in node.inputs:
                users.setdefault(t, []).append(node)
        return users

    def __repr__(self):
        return f"<Graph {self.name!r}: {len(self.nodes)} nodes, inputs {self.inputs}, outputs {self.outputs}>"
