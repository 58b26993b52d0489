"""The reverse behaviour of every IR operator, in one table: how relevance crosses it and its
vector–Jacobian product (for the gradient methods).

Each entry is written once against a tensor backend (``walk.ops``): ``NumpyOps`` runs it eagerly,
``OnnxOps`` emits it as ONNX nodes for the compiled explainer. ``kind`` says what relevance does:

* ``rule`` — a linear operator; the LRP rule assigned to the node decides (``rules.Rule``);
* ``pass`` — element-wise activations and LRN: relevance passes unchanged;
* ``move`` — data movement: relevance moves back like the data;
* ``winner`` — max pooling and element-wise Max: to the winning input;
* ``split`` — Add/Sum/Sub: in proportion to each input's contribution (stabilised, no bias);
* ``gate`` — Mul/Div: all to the signal, none to the gate or constant;
* ``constant`` — no inputs: absorbs nothing, passes nothing;
* ``normalise`` — LayerNorm (σ held constant) and Softmax inside the network (AttnLRP);
* ``refuse`` — no relevance routing (a log-softmax inside the network): refused before anything runs;
* ``recurrent`` — LSTM, GRU, RNN: signal-take-all through time (``lrp.recurrent``; compiled by
  unrolling the steps, ``lrp.recurrent_emitted``);
* ``embedding`` — token embeddings: a token receives the sum of its vector's relevance.
"""

from dataclasses import dataclass
from typing import Callable

from ..errors import LrpToolError
from ..graph import Node, normalize_node
from . import linear_ops as L
from . import onnx_ops as E
from .recurrent import recurrent_gradient, recurrent_relevance
from .routing import refuse
from .rules import norm_rule


@dataclass(frozen=True)
class Primitives:
    """A linear operator's forward(x, weight mode, bias mode) and transpose(s, weight mode), eager
    (``linear_ops``) and emitted as ONNX nodes (``onnx_ops``)."""
    eager: type
    emitting: type


@dataclass(frozen=True)
class Reverse:
    kind: str
    describe: str
    relevance: Callable      # (walk, node, inputs, outputs, incoming) -> [relevance per input or None]
    gradient: Callable       # (walk, node, inputs, outputs, incoming) -> [gradient per input or None]
    reads: tuple = ()        # recorded tensors the relevance pass reads: "inputs", "outputs"
    linear: Primitives = None  # kind "rule": the primitives the rules run on


# -- relevance ---------------------------------------------------------------------------------

def rule_relevance(walk, node, inputs, outputs, incoming):
    adapter = walk.ops.adapter(node, inputs[0].shape)
    rule = walk.rules[node.name]
    return [rule.apply(adapter, inputs[0], incoming[0], walk.bounds, z=outputs[0], ops=walk.ops)]


def passes(walk, node, inputs, outputs, incoming):
    return [incoming[0]]


def moves(walk, node, inputs, outputs, incoming):
    shapes = [value.shape for value in inputs]
    return walk.ops.move_back(node, shapes, incoming)


def max_pool_relevance(walk, node, inputs, outputs, incoming):
    if walk.maxpool == "average" and node.op == "MaxPool":
        average = normalize_node(Node(node.name, "AveragePool", node.inputs, node.outputs,
                                      dict(node.attrs, count_include_pad=False)))
        adapter = walk.ops.adapter(average, inputs[0].shape)
        return [norm_rule(walk.stabiliser).apply(adapter, inputs[0], incoming[0], ops=walk.ops)]
    return [walk.ops.max_route(node, inputs[0], incoming[0])]


def max_route(walk, node, inputs, outputs, incoming):
    return [walk.ops.max_route(node, inputs[0], incoming[0])]


def max_elementwise(walk, node, inputs, outputs, incoming):
    return walk.ops.max_elementwise(inputs, incoming[0])


def proportional(signs):
    """R_i = σ_i x_i · R / stabilise(Σ σ_j x_j), summed back over broadcast axes."""
    def split(walk, node, inputs, outputs, incoming):
        ops = walk.ops
        factors = signs or [1.0] * len(inputs)
        signed = [x if s == 1.0 else ops.scale(x, s) for s, x in zip(factors, inputs)]
        if not ops.eager and all(tuple(x.shape) == tuple(outputs[0].shape) for x in inputs):
            total = outputs[0]  # the graph holds Σ σ_j x_j already (the eager walk records no outputs here)
        else:
            total = signed[0]
            for term in signed[1:]:
                total = ops.add(total, term)
        ratio = ops.div(incoming[0], ops.stabilise(total, walk.stabiliser))
        return [ops.unbroadcast(ops.mul(term, ratio), x.shape)
                for term, x in zip(signed, inputs)]
    return split


def gate_relevance(walk, node, inputs, outputs, incoming):
    receiver = multiplicative_routing(node, walk.producers)
    if is_constant(node.inputs[receiver], walk.producers):
        return [None, None]   # a constant takes it: absorbed
    if walk.graph.shapes[node.inputs[receiver]] != walk.graph.shapes[node.outputs[0]]:
        refuse(node, "the signal input is broadcast; relevance cannot be routed to it")
    routed = [None, None]
    routed[receiver] = incoming[0]
    return routed


def embedding_relevance(walk, node, inputs, outputs, incoming):
    return [walk.ops.reduce_sum(incoming[0], [-1], keepdims=False)]


def embedding_gradient(walk, node, inputs, outputs, incoming):
    # ids have no gradient: each token gets the gradient times its vector, Σ_d ∂f/∂e_d · e_d
    return [walk.ops.reduce_sum(walk.ops.mul(incoming[0], outputs[0]), [-1], keepdims=False)]


def layer_norm_parts(ops, node, x):
    """(x − mean, √(var + ε)) over the node's axes, as the forward pass computes them."""
    axes = node.attrs["axes"]
    centred = ops.sub(x, ops.reduce_mean(x, axes))
    return centred, ops.square_root(ops.offset(ops.reduce_mean(ops.mul(centred, centred), axes), node.attrs["epsilon"]))


def layer_norm_relevance(walk, node, inputs, outputs, incoming):
    """The scale σ held constant (Ali et al. 2022): y is then affine in x, y_j = Σ_i x_i (δ_ij − 1/n) γ_j/σ + β_j,
    and the ε rule on it gives R_i = x_i (s_i − mean(s)) with s_j = γ_j R_j / (σ (y_j + ε·sign y_j));
    the bias β keeps its share."""
    ops, x = walk.ops, inputs[0]
    _, spread = layer_norm_parts(ops, node, x)
    share = ops.div(ops.mul(incoming[0], ops.constant(node.params["scale"])),
                    ops.mul(spread, ops.stabilise(outputs[0], walk.stabiliser)))
    return [ops.mul(x, ops.sub(share, ops.reduce_mean(share, node.attrs["axes"])))]


def layer_norm_gradient(walk, node, inputs, outputs, incoming):
    ops, axes = walk.ops, node.attrs["axes"]
    centred, spread = layer_norm_parts(ops, node, inputs[0])
    normalised = ops.div(centred, spread)
    scaled = ops.mul(incoming[0], ops.constant(node.params["scale"]))
    inner = ops.add(ops.reduce_mean(scaled, axes), ops.mul(normalised, ops.reduce_mean(ops.mul(scaled, normalised), axes)))
    return [ops.div(ops.sub(scaled, inner), spread)]


def softmax_relevance(walk, node, inputs, outputs, incoming):
    """AttnLRP (Achtibat et al. 2024): the first-order Taylor decomposition of the softmax at its input,
    R_i = x_i (R_i − s_i Σ_j R_j) over the normalised axes."""
    ops, relevance = walk.ops, incoming[0]
    total = ops.reduce_sum(relevance, node.attrs["axes"])
    return [ops.mul(inputs[0], ops.sub(relevance, ops.mul(outputs[0], total)))]


def nothing(walk, node, inputs, outputs, incoming):
    return []


def refused(walk, node, inputs, outputs, incoming):
    refuse(node, REVERSE[node.op].describe)


# -- gates: which input of a product is the signal -----------------------------------------------

GATES = {"Sigmoid", "HardSigmoid"}


def traces_to_gate(tensor, producers):
    """True when ``tensor`` is made by a Sigmoid/HardSigmoid, possibly through data movement."""
    node = producers.get(tensor)
    while node is not None and REVERSE[node.op].kind == "move" and len(node.inputs) == 1:
        node = producers.get(node.inputs[0])
    return node is not None and node.op in GATES


def is_constant(tensor, producers):
    node = producers.get(tensor)
    return node is not None and node.op == "Constant"


def multiplicative_routing(node, producers):
    """Index of the input that receives all relevance of a Mul (or Div by a constant)."""
    left, right = node.inputs
    if node.op == "Div":
        if is_constant(right, producers):
            return 0
        refuse(node, "division by a computed tensor has no relevance routing")
    constants = [is_constant(t, producers) for t in node.inputs]
    gates = [traces_to_gate(t, producers) for t in node.inputs]
    if constants[0] != constants[1]:
        computed = 1 if constants[0] else 0
        # a gate times a constant (an unrolled LSTM's f ⊙ c₀ with the state bound): the gate takes
        # nothing, the constant absorbs; any other tensor times a constant takes everything
        return 1 - computed if gates[computed] else computed
    if gates[0] != gates[1]:
        return 1 if gates[0] else 0
    refuse(node, "a product of two tensors where neither (or both) is a sigmoid-type gate: "
                 "no relevance routing; make the gate a Sigmoid/HardSigmoid output")


# -- gradients ---------------------------------------------------------------------------------

def linear_gradient(walk, node, inputs, outputs, incoming):
    adapter = walk.ops.adapter(node, inputs[0].shape)
    return [adapter.transpose(incoming[0], "w")]


def activation_gradient(walk, node, inputs, outputs, incoming):
    return [walk.ops.activation_vjp(node, inputs[0], outputs[0], incoming[0], walk.relu_policy)]


def lrn_gradient(walk, node, inputs, outputs, incoming):
    return [walk.ops.lrn_vjp(node, inputs[0], incoming[0])]


def softmax_gradient(walk, node, inputs, outputs, incoming):
    return [walk.ops.softmax_vjp(node, outputs[0], incoming[0])]


def sum_gradient(walk, node, inputs, outputs, incoming):
    return [walk.ops.unbroadcast(incoming[0], x.shape) for x in inputs]


def sub_gradient(walk, node, inputs, outputs, incoming):
    ops, g = walk.ops, incoming[0]
    return [ops.unbroadcast(g, inputs[0].shape),
            ops.unbroadcast(ops.scale(g, -1.0), inputs[1].shape)]


def mul_gradient(walk, node, inputs, outputs, incoming):
    ops, g = walk.ops, incoming[0]
    a, b = inputs
    return [ops.unbroadcast(ops.mul(g, b), a.shape),
            ops.unbroadcast(ops.mul(g, a), b.shape)]


def div_gradient(walk, node, inputs, outputs, incoming):
    ops, g = walk.ops, incoming[0]
    a, b = inputs
    return [ops.unbroadcast(ops.div(g, b), a.shape),
            ops.unbroadcast(ops.scale(ops.div(ops.mul(g, a), ops.mul(b, b)), -1.0), b.shape)]


# -- the table ---------------------------------------------------------------------------------

INNER_LOG_SOFTMAX = "a log-softmax inside the network has no relevance routing"


def linear(eager, emitting):
    return Reverse("rule", "its LRP rule", rule_relevance, linear_gradient, ("inputs",), Primitives(eager, emitting))


ACTIVATION = Reverse("pass", "pass", passes, activation_gradient)
MOVEMENT = Reverse("move", "moves with the data", moves, moves)

REVERSE = {
    "Conv": linear(L.ConvAdapter, E.ConvEmitter),
    "ConvTranspose": linear(L.ConvTransposeAdapter, E.ConvTransposeEmitter),
    "Dense": linear(L.DenseAdapter, E.DenseEmitter),
    **{op: linear(L.PerChannelAdapter, E.PerChannelEmitter) for op in ("BatchNorm", "Scale", "Bias")},
    **{op: linear(L.MeanAdapter, E.MeanEmitter) for op in ("AveragePool", "GlobalAveragePool", "ReduceMean")},
    **{op: ACTIVATION for op in ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "Tanh", "HardSigmoid",
                                 "HardSwish", "Clip", "Abs", "Pow", "ThresholdedRelu", "Sqrt")},
    "LRN": Reverse("pass", "pass", passes, lrn_gradient),
    **{op: MOVEMENT for op in ("Concat", "Split", "Slice", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                               "Pad", "Upsample")},
    "MaxPool": Reverse("winner", "to the window's winner", max_pool_relevance, max_route, ("inputs",)),
    "GlobalMaxPool": Reverse("winner", "to the window's winner", max_route, max_route, ("inputs",)),
    "Max": Reverse("winner", "to the larger input", max_elementwise, max_elementwise, ("inputs",)),
    "Add": Reverse("split", "split in proportion", proportional(None), sum_gradient, ("inputs",)),
    "Sum": Reverse("split", "split in proportion", proportional(None), sum_gradient, ("inputs",)),
    "Sub": Reverse("split", "split in proportion", proportional([1.0, -1.0]), sub_gradient, ("inputs",)),
    "Mul": Reverse("gate", "all to the signal", gate_relevance, mul_gradient),
    "Div": Reverse("gate", "all to the signal", gate_relevance, div_gradient),
    "Softmax": Reverse("normalise", "x ⊙ (R − s ⊙ ΣR) (AttnLRP)", softmax_relevance, softmax_gradient,
                       ("inputs", "outputs")),
    "LogSoftmax": Reverse("refuse", INNER_LOG_SOFTMAX, refused, softmax_gradient),
    "LayerNorm": Reverse("normalise", "σ held constant, ε rule on the centring (Ali et al. 2022)",
                         layer_norm_relevance, layer_norm_gradient, ("inputs", "outputs")),
    "Gelu": ACTIVATION,
    "Constant": Reverse("constant", "absorbs its share", nothing, nothing),
    **{op: Reverse("recurrent", "signal-take-all through time (gates take none, ε rule on the sums)",
                   recurrent_relevance, recurrent_gradient, ("inputs",)) for op in ("LSTM", "GRU", "RNN")},
    "Embedding": Reverse("embedding", "to the token: Σ over its vector", embedding_relevance, embedding_gradient),
}

#: Operators that take an LRP rule.
RULE_OPERATORS = frozenset(op for op, entry in REVERSE.items() if entry.kind == "rule")


def linear_primitives(node):
    primitives = reverse_of(node).linear
    if primitives is None:
        raise LrpToolError(f"node {node.name!r} ({node.op}): not a linear operator, no LRP rule applies")
    return primitives


def reverse_of(node):
    entry = REVERSE.get(node.op)
    if entry is None:
        raise LrpToolError(f"node {node.name!r} ({node.op}): no relevance routing for this operator")
    return entry
