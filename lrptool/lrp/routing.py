"""The NumPy implementations of the non-linear reverse steps: data moved back, max-pooling winners,
activation derivatives and the vector–Jacobian products of softmax and LRN. Which operator uses
which step is decided in one table, ``reverse.REVERSE``; ``numpy_ops.NumpyOps`` calls these.
"""

import numpy as np

from .. import kernels
from ..errors import LrpToolError
from ..ops.pooling import channel_window_sum

def stabilise(z, epsilon):
    """z + ε·sign(z) with sign(0) = +1, so no denominator is zero."""
    shift = z.dtype.type(epsilon)
    return z + np.where(z >= 0, shift, -shift)


def stabilise_zeros(z, epsilon):
    """z, with ε where z is exactly 0: only a zero denominator is changed (iNNvestigate's safe division)."""
    return np.where(z == 0, z.dtype.type(epsilon), z)


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
        # (the input's own first size: a graph with a fixed batch may squeeze axis 0 away)
        first = g.shape[0] if x_shapes[0][0] is None else x_shapes[0][0]
        return [g.reshape((first,) + tuple(x_shapes[0][1:]))]
    if op == "Transpose":
        return [np.transpose(g, np.argsort(a["perm"]))]
    if op == "Slice":
        first = g.shape[0] if x_shapes[0][0] is None else x_shapes[0][0]
        full = np.zeros((first,) + tuple(x_shapes[0][1:]), dtype=g.dtype)
        full[node.operator.slices(node, full.ndim)] = g
        return [full]
    if op == "Pad" and a["mode"] != "constant":
        return [unpad_mirrored(g, a["pads"], a["mode"], x_shapes[0])]
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


def unpad_mirrored(g, pads, mode, shape):
    """The adjoint of reflect/edge padding: each padded position's value goes back to the position it
    was copied from."""
    rank = g.ndim
    for axis in range(rank):
        before, after = pads[axis], pads[rank + axis]
        if not (before or after):
            continue
        size = g.shape[axis] - before - after
        source = np.pad(np.arange(size), (before, after), mode=mode)
        back = np.zeros(g.shape[:axis] + (size,) + g.shape[axis + 1:], dtype=g.dtype)
        np.add.at(back, (slice(None),) * axis + (source,), g)
        g = back
    return g


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
    if op == "Gelu":
        return gelu_derivative(x, a["approximate"])
    if op == "Sqrt":
        return 0.5 / np.where(y > 0, y, np.inf)   # the derivative at 0 is taken as 0, not infinity
    if op == "Pow":
        exponent = a["exponent"]
        return exponent * np.power(x, exponent - 1) if exponent != 1 else one
    raise AssertionError(op)


def gelu_derivative(x, approximate):
    """d/dx of x·Φ(x): Φ(x) + x·φ(x); of the tanh form: 0.5(1 + t) + 0.5·x·(1 − t²)·c·(1 + 3·0.044715·x²)."""
    from ..ops.normalization import SQRT_2_OVER_PI, erf_array

    if approximate == "tanh":
        t = np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
    return 0.5 * (1 + erf_array(x / np.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)


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
