"""How relevance (and, for the gradient methods, the gradient) crosses the non-linear operators.

Fixed policy for relevance: element-wise activations and LRN pass it through; max pooling sends
it to each window's winner; Add/Sum/Sub split it in proportion to the contributions (stabilised);
data-movement operators move it like the data; a multiplicative gate sends all of it to the signal.
Every operator also has its vector-Jacobian product, used by the gradient methods.
"""

import numpy as np

from .. import kernels
from ..errors import LrpToolError
from ..ops.pooling import channel_window_sum
from .rules import stabilise

ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip",
               "Abs", "Pow", "ThresholdedRelu"}
DATA_MOVEMENT = {"Concat", "Split", "Slice", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Pad",
                 "Upsample"}
GATES = {"Sigmoid", "HardSigmoid"}


def refuse(node, why):
    raise LrpToolError(f"node {node.name!r} ({node.op}): {why}")


def unbroadcast(array, shape):
    """Sum ``array`` down to ``shape`` (the adjoint of NumPy broadcasting); shape[0] may be None."""
    shape = tuple(array.shape[0] if d is None else d for d in shape)
    while array.ndim > len(shape):
        array = array.sum(axis=0)
    axes = tuple(i for i, (have, want) in enumerate(zip(array.shape, shape)) if want == 1 and have != 1)
    return array.sum(axis=axes, keepdims=True) if axes else array


# -- data movement: relevance and gradient move alike (the transpose of the movement) ------------

def move_back(node, x_shapes, grads):
    op, a = node.op, node.attrs
    g = grads[0]
    if op == "Concat":
        bounds = np.cumsum([s[a["axis"]] for s in x_shapes])[:-1]
        return np.split(g, bounds, axis=a["axis"])
    if op == "Split":
        return [np.concatenate(grads, axis=a["axis"])]
    if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
        return [g.reshape((g.shape[0],) + tuple(x_shapes[0][1:]))]
    if op == "Transpose":
        return [np.transpose(g, np.argsort(a["perm"]))]
    if op == "Slice":
        full = np.zeros((g.shape[0],) + tuple(x_shapes[0][1:]), dtype=g.dtype)
        full[node.operator.slices(node, full.ndim)] = g
        return [full]
    if op == "Pad":
        pads, rank = a["pads"], g.ndim
        crop = tuple(slice(max(pads[i], 0), g.shape[i] - max(pads[rank + i], 0)) for i in range(rank))
        inner = g[crop]
        grow = [(max(-pads[i], 0), max(-pads[rank + i], 0)) for i in range(rank)]
        return [np.pad(inner, grow)] if any(any(p) for p in grow) else [inner]
    if op == "Upsample":
        for axis, factor in enumerate(a["scales"], start=2):
            if factor != 1:
                shape = g.shape[:axis] + (g.shape[axis] // factor, factor) + g.shape[axis + 1:]
                g = g.reshape(shape).sum(axis=axis + 1)
        return [g]
    raise AssertionError(op)


# -- max pooling --------------------------------------------------------------------------------

def max_winners(node, x, g):
    """Send ``g`` to the winning tap of each max-pooling window."""
    if node.op == "GlobalMaxPool":
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        winners = np.argmax(flat, axis=2)
        out = np.zeros_like(flat)
        np.put_along_axis(out, winners[..., None], g.reshape(g.shape[0], g.shape[1], 1), axis=2)
        return out.reshape(x.shape)
    op = node.operator
    kernel, strides, dilations, pads = op.window_2d(node)
    one_d = x.ndim == 3
    x4 = np.ascontiguousarray(x[:, :, None, :] if one_d else x)
    g4 = np.ascontiguousarray(g[:, :, None, :] if one_d else g)
    _, argmax = kernels.max_pool2d(x4, kernel, strides, dilations, pads, g4.shape[2:])
    out = kernels.max_pool2d_route(g4, argmax, x4.shape)
    return out[:, :, 0, :] if one_d else out


# -- element-wise derivatives -------------------------------------------------------------------

def activation_derivative(node, x, y):
    a = node.attrs
    one = np.ones_like(x)
    op = node.op
    if op == "Relu":
        return (x > 0).astype(x.dtype)
    if op == "LeakyRelu":
        return np.where(x >= 0, one, a["alpha"] * one)
    if op == "PRelu":
        return np.where(x >= 0, one, node.params["slope"].astype(x.dtype) * one)
    if op == "Elu":
        return np.where(x > 0, one, a["alpha"] * np.exp(np.minimum(x, 0)))
    if op == "Selu":
        return a["gamma"] * np.where(x > 0, one, a["alpha"] * np.exp(np.minimum(x, 0)))
    if op == "Sigmoid":
        return y * (1 - y)
    if op == "Tanh":
        return 1 - y * y
    if op == "HardSigmoid":
        inner = x * a["alpha"] + a["beta"]
        return np.where((inner > 0) & (inner < 1), a["alpha"] * one, 0 * one)
    if op == "HardSwish":
        return np.where(x <= -3, 0 * one, np.where(x >= 3, one, (2 * x + 3) / 6))
    if op == "Clip":
        return ((x > a["min"]) & (x < a["max"])).astype(x.dtype)
    if op == "Abs":
        return np.sign(x)
    if op == "ThresholdedRelu":
        return (x > a["alpha"]).astype(x.dtype)
    if op == "Pow":
        exponent = a["exponent"]
        return exponent * np.power(x, exponent - 1) if exponent != 1 else one
    raise AssertionError(op)


def max_winners_elementwise(inputs, relevance):
    """Max of tensors: each element's relevance (or gradient) to the input that wins it (the first on ties)."""
    shape = relevance.shape
    stacked = np.stack([np.broadcast_to(x, shape) for x in inputs])
    winner = np.argmax(stacked, axis=0)
    return [unbroadcast(np.where(winner == index, relevance, 0), x.shape) for index, x in enumerate(inputs)]


def softmax_vjp(node, y, g):
    axes = tuple(ax % y.ndim for ax in node.attrs["axes"])
    if node.op == "Softmax":
        return y * (g - np.sum(g * y, axis=axes, keepdims=True))
    return g - np.exp(y) * np.sum(g, axis=axes, keepdims=True)


def lrn_vjp(node, x, g):
    a = node.attrs
    size = a["size"]
    before = (size - 1) // 2
    scale = a["bias"] + a["alpha"] / size * channel_window_sum(x * x, before, size)
    g_scaled = g * x * scale ** (-a["beta"] - 1)
    # channel j feeds every output i whose window holds j: the mirrored window
    back = channel_window_sum(g_scaled, size - 1 - before, size)
    return g * scale ** (-a["beta"]) - 2 * a["alpha"] * a["beta"] / size * x * back


# -- gates ----------------------------------------------------------------------------------------

def traces_to_gate(tensor, producers):
    """True when ``tensor`` is made by a Sigmoid/HardSigmoid, possibly through data movement."""
    node = producers.get(tensor)
    while node is not None and node.op in DATA_MOVEMENT | {"Upsample"} and len(node.inputs) == 1:
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
    if constants[0] != constants[1]:
        return 1 if constants[0] else 0
    gates = [traces_to_gate(t, producers) for t in node.inputs]
    if gates[0] != gates[1]:
        return 1 if gates[0] else 0
    refuse(node, "a product of two tensors where neither (or both) is a sigmoid-type gate: "
                 "no relevance routing; make the gate a Sigmoid/HardSigmoid output")


def proportional_split(node, inputs, relevance, epsilon, signs=None):
    """Add/Sum/Sub: R_i = σ_i x_i · R / stabilise(Σ σ_j x_j), summed back over broadcast axes."""
    signs = signs or [1.0] * len(inputs)
    total = sum(s * x for s, x in zip(signs, inputs))
    ratio = relevance / stabilise(np.asarray(total, dtype=relevance.dtype), epsilon)
    return [unbroadcast(s * x * ratio, x.shape) for s, x in zip(signs, inputs)]


def gradient_of(node, inputs, outputs, grads, producers, relu_policy="gradient", maxpool=None):
    """The vector-Jacobian product of one non-linear or data-movement node."""
    op = node.op
    g = grads[0]
    x = inputs[0] if inputs else None
    if op in DATA_MOVEMENT:
        return move_back(node, [i.shape for i in inputs], grads)
    if op == "Relu" and relu_policy == "guided":
        return [g * (x > 0) * (g > 0)]
    if op == "Relu" and relu_policy == "deconvnet":
        return [np.maximum(g, 0)]
    if op in ACTIVATIONS:
        return [g * activation_derivative(node, x, outputs[0])]
    if op in ("MaxPool", "GlobalMaxPool"):
        return [max_winners(node, x, g)]
    if op in ("Softmax", "LogSoftmax"):
        return [softmax_vjp(node, outputs[0], g)]
    if op == "LRN":
        return [lrn_vjp(node, x, g)]
    if op in ("Add", "Sum"):
        return [unbroadcast(g, i.shape) for i in inputs]
    if op == "Max":
        return max_winners_elementwise(inputs, g)
    if op == "Sub":
        return [unbroadcast(g, inputs[0].shape), unbroadcast(-g, inputs[1].shape)]
    if op == "Mul":
        return [unbroadcast(g * inputs[1], inputs[0].shape), unbroadcast(g * inputs[0], inputs[1].shape)]
    if op == "Div":
        return [unbroadcast(g / inputs[1], inputs[0].shape),
                unbroadcast(-g * inputs[0] / (inputs[1] * inputs[1]), inputs[1].shape)]
    if op == "Constant":
        return []
    raise AssertionError(op)
