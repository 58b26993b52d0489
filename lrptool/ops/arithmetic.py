"""Binary arithmetic with NumPy broadcasting, n-ary Sum, and Constant tensors."""

import numpy as np

from .base import Operator, broadcast_shapes, register


class Binary(Operator):
    num_inputs = 2

    def infer(self, node, shapes):
        return [broadcast_shapes(node, *shapes)]

    def run(self, node, inputs, params):
        return [self.apply(inputs[0], inputs[1])]


@register
class Add(Binary):
    def apply(self, a, b):
        return a + b


@register
class Sub(Binary):
    def apply(self, a, b):
        return a - b


@register
class Mul(Binary):
    def apply(self, a, b):
        return a * b


@register
class Div(Binary):
    def apply(self, a, b):
        return a / b


@register
class Sum(Operator):
    num_inputs = None

    def infer(self, node, shapes):
        return [broadcast_shapes(node, *shapes)]

    def run(self, node, inputs, params):
        total = inputs[0]
        for other in inputs[1:]:
            total = total + other
        return [total]


@register
class Max(Operator):
    """Element-wise maximum of any number of tensors (Caffe's Eltwise MAX, ONNX Max)."""

    num_inputs = None

    def infer(self, node, shapes):
        return [broadcast_shapes(node, *shapes)]

    def run(self, node, inputs, params):
        result = inputs[0]
        for other in inputs[1:]:
            result = np.maximum(result, other)
        return [result]


@register
class Constant(Operator):
    """A fixed tensor (no batch axis of its own; broadcasts against batched tensors)."""

    num_inputs = 0
    params = ("value",)

    def infer(self, node, shapes):
        return [tuple(node.params["value"].shape)]

    def run(self, node, inputs, params):
        return [params["value"]]
