"""Element-wise activations and the (Log)Softmax normalisers."""

import numpy as np

from .base import REQUIRED, Operator, batch_fail, broadcast_shapes, fail, normalize_axis, register


class Elementwise(Operator):
    def run(self, node, inputs, params):
        return [self.apply(inputs[0], node.attrs, params)]


def as_dtype(value, like):
    return np.asarray(value, dtype=like.dtype)


@register
class Relu(Elementwise):
    def apply(self, x, attrs, params):
        return np.maximum(x, as_dtype(0, x))


@register
class LeakyRelu(Elementwise):
    attributes = {"alpha": 0.01}

    def apply(self, x, attrs, params):
        return np.where(x >= 0, x, x * as_dtype(attrs["alpha"], x))


@register
class PRelu(Elementwise):
    """Leaky ReLU with a learned slope; ``slope`` broadcasts NumPy-style against the whole input."""

    params = ("slope",)

    def infer(self, node, shapes):
        (shape,) = shapes
        slope = node.params["slope"]
        if broadcast_shapes(node, shape, slope.shape) != shape:
            fail(node, f"slope of shape {slope.shape} does not broadcast to the input {shape}")
        return [shape]

    def apply(self, x, attrs, params):
        return np.where(x >= 0, x, x * params["slope"])


@register
class Elu(Elementwise):
    attributes = {"alpha": 1.0}

    def apply(self, x, attrs, params):
        return np.where(x > 0, x, as_dtype(attrs["alpha"], x) * np.expm1(np.minimum(x, 0)))


@register
class Selu(Elementwise):
    attributes = {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805}

    def apply(self, x, attrs, params):
        alpha, gamma = as_dtype(attrs["alpha"], x), as_dtype(attrs["gamma"], x)
        return gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


@register
class Sigmoid(Elementwise):
    def apply(self, x, attrs, params):
        # two branches keep exp() from overflowing for large |x|
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@register
class Tanh(Elementwise):
    def apply(self, x, attrs, params):
        return np.tanh(x)


@register
class HardSigmoid(Elementwise):
    attributes = {"alpha": 0.2, "beta": 0.5}

    def apply(self, x, attrs, params):
        return np.clip(x * as_dtype(attrs["alpha"], x) + as_dtype(attrs["beta"], x), 0, 1).astype(x.dtype)


@register
class HardSwish(Elementwise):
    """x · HardSigmoid(x) with α = 1/6, β = 1/2."""

    def apply(self, x, attrs, params):
        return x * np.clip(x / as_dtype(6, x) + as_dtype(0.5, x), 0, 1).astype(x.dtype)


@register
class Clip(Elementwise):
    """Clamp to [min, max]; ReLU6 is Clip(0, 6). Infinite bounds mean no bound."""

    attributes = {"min": -np.inf, "max": np.inf}

    def apply(self, x, attrs, params):
        return np.minimum(np.maximum(x, as_dtype(attrs["min"], x)), as_dtype(attrs["max"], x))


@register
class ThresholdedRelu(Elementwise):
    """x where x > alpha, else 0 (Keras ThresholdedReLU, ONNX ThresholdedRelu)."""

    attributes = {"alpha": 1.0}

    def apply(self, x, attrs, params):
        return np.where(x > as_dtype(attrs["alpha"], x), x, as_dtype(0, x))


@register
class Abs(Elementwise):
    def apply(self, x, attrs, params):
        return np.abs(x)


@register
class Sqrt(Elementwise):
    """√x (the magnitude of a spectrum, √(re² + im²), in audio front ends)."""

    def apply(self, x, attrs, params):
        return np.sqrt(x)


@register
class Pow(Elementwise):
    """x raised to a constant exponent (Caffe's Power after its affine part, ONNX Pow by a scalar)."""

    attributes = {"exponent": REQUIRED}

    def apply(self, x, attrs, params):
        return np.power(x, as_dtype(attrs["exponent"], x))


class SoftmaxBase(Operator):
    """Normalises over ``axes`` jointly (ONNX before opset 13 normalised over all axes from ``axis`` on)."""

    attributes = {"axes": (-1,)}

    def infer(self, node, shapes):
        (shape,) = shapes
        axes = [normalize_axis(node, a, len(shape)) for a in node.attrs["axes"]]
        if 0 in axes and shape[0] is None:
            batch_fail(node, "normalises over the batch axis")
        return [shape]

    def shifted(self, node, x):
        axes = tuple(a % x.ndim for a in node.attrs["axes"])
        shifted = x - np.max(x, axis=axes, keepdims=True)
        return shifted, np.sum(np.exp(shifted), axis=axes, keepdims=True)


@register
class Softmax(SoftmaxBase):
    def run(self, node, inputs, params):
        shifted, total = self.shifted(node, inputs[0])
        return [np.exp(shifted) / total]


@register
class LogSoftmax(SoftmaxBase):
    def run(self, node, inputs, params):
        shifted, total = self.shifted(node, inputs[0])
        return [shifted - np.log(total)]
