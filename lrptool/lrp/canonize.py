"""Graph passes that put a graph into the form LRP rules expect, without changing its outputs.

* BatchNorm, Scale and Bias right after a Conv, ConvTranspose (group 1) or Dense whose output
  feeds nothing else are folded into that layer's weights and bias.
* A trailing Softmax/LogSoftmax is removed, so that logits are explained.

The passes return a new graph; the original is left as it was (for checking the forward pass).
"""

import copy

import numpy as np

from ..errors import GraphError
from ..graph import Graph, Node
from ..ops.linear import channel_view

FOLDABLE_INTO = {"Conv", "ConvTranspose", "Dense"}
PER_CHANNEL = {"BatchNorm", "Scale", "Bias"}


def per_channel_affine(node):
    """(a, c) with node(x) = x·a + c per channel, in float64; c is None for a Scale without bias."""
    p = {k: v.astype(np.float64) for k, v in node.params.items()}
    if node.op == "BatchNorm":
        a = p["scale"] / np.sqrt(p["var"] + node.attrs["epsilon"])
        return a, p["bias"] - p["mean"] * a
    if node.op == "Scale":
        return p["scale"], p.get("bias")
    return np.ones_like(p["bias"]), p["bias"]


def fold_into(layer, affine_node):
    """A copy of ``layer`` whose output equals affine_node(layer(x))."""
    a, c = per_channel_affine(affine_node)
    weight = layer.params["weight"].astype(np.float64)
    bias = layer.params.get("bias")
    bias = np.zeros(len(a)) if bias is None else bias.astype(np.float64)
    if layer.op == "ConvTranspose":
        weight = weight * a.reshape((1, -1) + (1,) * (weight.ndim - 2))
    else:
        weight = weight * a.reshape((-1,) + (1,) * (weight.ndim - 1))
    dtype = layer.params["weight"].dtype
    shift = bias * a if c is None else bias * a + c
    with np.errstate(over="ignore", invalid="ignore"):
        params = {"weight": weight.astype(dtype), "bias": shift.astype(dtype)}
    if not all(np.isfinite(value).all() for value in params.values()):
        # Finite weights whose product overflows: only a damaged file has them, and the cast would warn.
        raise GraphError(f"node {affine_node.name!r} ({affine_node.op}): folded into {layer.name!r} ({layer.op}) "
                         "it gives weights beyond the float32 range; the model's weights are damaged")
    return Node(layer.name, layer.op, list(layer.inputs), list(affine_node.outputs), dict(layer.attrs), params)


def can_fold(layer, affine_node, consumers, outputs):
    if layer.op not in FOLDABLE_INTO or affine_node.op not in PER_CHANNEL:
        return False
    if layer.op == "ConvTranspose" and layer.attrs["group"] != 1:
        return False
    tensor = layer.outputs[0]
    return len(consumers.get(tensor, [])) == 1 and tensor not in outputs


def fold_affine(graph):
    """Fold per-channel affine nodes into the linear layer before them; returns (graph, folded names)."""
    producers = graph.producers()
    consumers = graph.consumers()
    replaced, removed, folded = {}, set(), []
    for node in graph.nodes:
        if node.op not in PER_CHANNEL:
            continue
        layer = producers.get(node.inputs[0])
        if layer is None or not can_fold(layer, node, consumers, graph.outputs):
            continue
        if layer.op == "Dense" and len(graph.shapes[node.inputs[0]]) != 2:
            continue  # a Dense on the last axis of a 3-D+ tensor does not map channels to axis 1
        replaced[layer.name] = fold_into(layer, node)
        producers[node.outputs[0]] = replaced[layer.name]
        removed.add(node.name)
        folded.append(node.name)
    nodes = [replaced.get(n.name, n) for n in graph.nodes if n.name not in removed]
    return Graph(graph.inputs, nodes, graph.outputs, graph.name), folded


#: Output normalisers left out: the explained scores are the values before them (the logits).
OUTPUT_NORMALISERS = ("Softmax", "LogSoftmax", "Sigmoid")


def strip_softmax(graph):
    """Remove Softmax/LogSoftmax/Sigmoid nodes that make graph outputs; returns (graph, removed names)."""
    producers = graph.producers()
    consumers = graph.consumers()
    outputs, removed = list(graph.outputs), []
    for index, tensor in enumerate(outputs):
        node = producers.get(tensor)
        if node is not None and node.op in OUTPUT_NORMALISERS and not consumers.get(tensor):
            outputs[index] = node.inputs[0]
            removed.append(node.name)
    if not removed:
        return graph, []
    nodes = [n for n in graph.nodes if n.name not in removed]
    return Graph(graph.inputs, nodes, outputs, graph.name), removed


def model_outputs(canonization, logits):
    """The model's own outputs (rows of ``logits``, the explained values): the output softmax, log-softmax
    or sigmoid that ``canonize`` left out, applied again."""
    values = np.asarray(logits, dtype=np.float64)
    for op in canonization.get("output_operators", []):
        if op == "Sigmoid":
            values = 1.0 / (1.0 + np.exp(-values))
            continue
        shifted = values - values.max(axis=1, keepdims=True)
        if op == "LogSoftmax":
            values = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        else:
            values = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return values


def canonize(graph):
    """The graph the explainer walks: affine nodes folded, a trailing softmax or sigmoid removed."""
    graph = Graph(graph.inputs, [copy.copy(n) for n in graph.nodes], graph.outputs, graph.name)
    graph, folded = fold_affine(graph)
    operators = {node.name: node.op for node in graph.nodes}
    graph, stripped = strip_softmax(graph)
    return graph, {"folded": folded, "softmax_removed": stripped,
                   "output_operators": sorted({operators[name] for name in stripped})}


__all__ = ["canonize", "fold_affine", "strip_softmax", "channel_view", "model_outputs"]
