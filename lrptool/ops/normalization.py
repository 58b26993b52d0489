"""GELU and layer normalisation, as text models use them."""

import math

import numpy as np

from .base import REQUIRED, Operator, batch_fail, broadcast_shapes, fail, normalize_axis, register

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x, approximate):
    """x·Φ(x) (``none``) or its tanh approximation 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))) (``tanh``)."""
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + erf_array(x / math.sqrt(2.0)))


def erf_array(x):
    try:
        from scipy.special import erf as scipy_erf
        return scipy_erf(x)
    except ImportError:  # math.erf element by element: slower, the same values
        return np.vectorize(math.erf, otypes=[x.dtype])(x)


@register
class Gelu(Operator):
    attributes = {"approximate": "none"}

    def infer(self, node, shapes):
        if node.attrs["approximate"] not in ("none", "tanh"):
            fail(node, f"approximate {node.attrs['approximate']!r}: none or tanh")
        return [shapes[0]]

    def run(self, node, inputs, params):
        x = inputs[0]
        return [gelu(x, node.attrs["approximate"]).astype(x.dtype, copy=False)]


@register
class LayerNorm(Operator):
    """(x − mean) / √(var + epsilon) · scale + bias, mean and variance over ``axes`` (never the batch
    axis); ``scale`` and ``bias`` broadcast against one sample (NumPy-style, from the last axis)."""

    attributes = {"axes": REQUIRED, "epsilon": 1e-5}
    params = ("scale", "bias")
    optional_params = ("bias",)

    def infer(self, node, shapes):
        (shape,) = shapes
        axes = sorted({normalize_axis(node, a, len(shape)) for a in node.attrs["axes"]})
        if not axes or 0 in axes:
            batch_fail(node, "normalises over the batch axis") if 0 in axes else fail(node, "no axes")
        for name, value in node.params.items():
            if broadcast_shapes(node, shape, value.shape) != tuple(shape):
                fail(node, f"{name} of shape {value.shape} does not broadcast to the input {shape}")
        if not node.attrs["epsilon"] >= 0:
            fail(node, "epsilon must be ≥ 0")
        return [shape]

    def run(self, node, inputs, params):
        x = inputs[0]
        axes = tuple(a % x.ndim for a in node.attrs["axes"])
        centred = x - np.mean(x, axis=axes, keepdims=True)
        spread = np.sqrt(np.mean(centred * centred, axis=axes, keepdims=True) + x.dtype.type(node.attrs["epsilon"]))
        y = centred / spread * params["scale"]
        return [y + params["bias"] if "bias" in params else y]
