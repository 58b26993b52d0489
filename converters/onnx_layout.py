"""Undoing an NHWC exporter's layout Transposes after an ONNX graph is read.

tf2onnx writes a Keras model's channels-last graph as ONNX's channels-first operators, each wrapped in
a Transpose pair (NHWC → NCHW before, back after); with its optimiser off nearly every layer is, and
element-wise layers and bias additions stay in NHWC between the pairs. Such a graph computes the
right values, but its layers are not where lrptool's rules expect them: a BatchNorm or a bias behind
a Transpose is not folded into its convolution, and relevance is split differently.

``fold_transposes`` moves each Transpose down through element-wise operators (unary activations;
Add, Sub, Mul, Div, Sum and Max of transposed tensors and constants, the constants permuted to
match), merges two Transposes in a row (none where they cancel), turns an Add of a constant that
varies only along the channel axis into a Bias, and removes what nothing reads any more. The values
the graph computes do not change.
"""

import numpy as np

from lrptool.graph import Node

#: Operators that act on each element alone (no parameters shaped by the layout).
UNARY = {"Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip",
         "ThresholdedRelu", "Abs", "Sqrt", "Pow"}
#: Operators that combine tensors element by element with broadcasting.
COMBINING = {"Add", "Sub", "Mul", "Div", "Sum", "Max"}


def inverse(perm):
    order = [0] * len(perm)
    for axis, source in enumerate(perm):
        order[source] = axis
    return tuple(order)


class Rewrite:
    def __init__(self, nodes, outputs, node_names):
        self.nodes = list(nodes)
        self.outputs = set(outputs)
        self.node_names = node_names
        self.tensors = {t for node in self.nodes for t in node.inputs + node.outputs}

    def producers(self):
        return {t: node for node in self.nodes for t in node.outputs}

    def fresh(self, base):
        name, count = base, 2
        while name in self.tensors:
            name, count = f"{base}_{count}", count + 1
        self.tensors.add(name)
        return name

    def node(self, name, op, inputs, outputs, attrs=None, params=None):
        return Node(self.node_names.unique(name), op, list(inputs), list(outputs), dict(attrs or {}),
                    dict(params or {}))

    def sink_one(self):
        """Move one Transpose below the element-wise node it feeds; True when something moved."""
        producers = self.producers()
        for index, node in enumerate(self.nodes):
            if node.op not in UNARY and node.op not in COMBINING:
                continue
            sources = [producers.get(t) for t in node.inputs]
            perms = {tuple(s.attrs["perm"]) for s in sources if s is not None and s.op == "Transpose"}
            if len(perms) != 1:
                continue
            (perm,) = perms
            rank = len(perm)
            inputs, added = [], []
            for tensor, source in zip(node.inputs, sources):
                if source is not None and source.op == "Transpose":
                    inputs.append(source.inputs[0])
                elif source is not None and source.op == "Constant" and np.ndim(source.params["value"]) <= rank:
                    value = np.asarray(source.params["value"])
                    value = np.transpose(value.reshape((1,) * (rank - value.ndim) + value.shape), inverse(perm))
                    moved = self.fresh(f"{tensor}/before_transpose")
                    added.append(self.node(f"{source.name}/before_transpose", "Constant", [], [moved],
                                           params={"value": np.ascontiguousarray(value)}))
                    inputs.append(moved)
                else:
                    break
            else:
                (output,) = node.outputs
                before = self.fresh(f"{output}/before_transpose")
                moved_node = Node(node.name, node.op, inputs, [before], dict(node.attrs), dict(node.params))
                transpose = self.node(f"{node.name}/transpose", "Transpose", [before], [output], {"perm": perm})
                self.nodes[index:index + 1] = added + [moved_node, transpose]
                return True
        return False

    def merge_pairs(self):
        """Two Transposes in a row become one, or none where they cancel."""
        changed = True
        while changed:
            changed = False
            producers = self.producers()
            for index, node in enumerate(self.nodes):
                first = producers.get(node.inputs[0]) if node.op == "Transpose" else None
                if first is None or first.op != "Transpose":
                    continue
                perm = tuple(first.attrs["perm"][p] for p in node.attrs["perm"])
                (output,) = node.outputs
                if perm == tuple(range(len(perm))) and output not in self.outputs:
                    self.rename(output, first.inputs[0])
                    del self.nodes[index]
                else:
                    self.nodes[index] = Node(node.name, "Transpose", first.inputs[:1], [output], {"perm": perm})
                changed = True
                break

    def rename(self, old, new):
        for node in self.nodes:
            node.inputs = [new if t == old else t for t in node.inputs]

    def channel_biases(self, shapes):
        """Add(x, constant varying along axis 1 only) → Bias, which canonization folds into a convolution."""
        producers = self.producers()
        for index, node in enumerate(self.nodes):
            if node.op != "Add" or len(node.inputs) != 2:
                continue
            constant = producers.get(node.inputs[1])
            if constant is None or constant.op != "Constant":
                continue
            value = np.asarray(constant.params["value"])
            if value.ndim < 2 or value.dtype.kind != "f" or any(d != 1 for i, d in enumerate(value.shape) if i != 1):
                continue
            data = producers.get(node.inputs[0])
            rank = len(shapes.get(node.inputs[0], ()))
            if data is not None and data.op == "Constant" or rank != value.ndim:
                continue
            self.nodes[index] = Node(node.name, "Bias", node.inputs[:1], list(node.outputs), {},
                                     {"bias": np.ascontiguousarray(value.reshape(-1))})

    def drop_unread(self):
        while True:
            read = {t for node in self.nodes for t in node.inputs} | self.outputs
            kept = [node for node in self.nodes if read & set(node.outputs)]
            if len(kept) == len(self.nodes):
                return
            self.nodes = kept


def fold_transposes(nodes, outputs, node_names, shapes):
    """The nodes with an NHWC exporter's Transposes folded (see the module's docstring); ``shapes``: the
    shape of every tensor, for the rank checks of the Bias rewrite. Graphs without a Transpose feeding an
    element-wise node or another Transpose come back unchanged."""
    rewrite = Rewrite(nodes, outputs, node_names)
    if not any(node.op == "Transpose" for node in rewrite.nodes):
        return list(nodes)
    steps = 0
    while rewrite.sink_one() and steps < 10 * len(nodes) + 10:
        steps += 1
        rewrite.merge_pairs()
    rewrite.merge_pairs()
    rewrite.channel_biases(shapes)
    rewrite.drop_unread()
    return rewrite.nodes
