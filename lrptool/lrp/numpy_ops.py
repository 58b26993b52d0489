"""The eager tensor backend: the operations rules and reverse entries are written in, on NumPy arrays.

``onnx_ops.OnnxOps`` offers the same operations on symbolic tensors and emits ONNX nodes instead,
so that one rule recipe and one reverse entry per operator serve both the eager walk (float64
reference, ``--low-memory``) and the compiled explainer.
"""

import numpy as np

from . import routing
from .linear_ops import ParamCache


class NumpyOps:
    eager = True

    def __init__(self, dtype=np.float64, primitives="onnxruntime"):
        self.dtype = np.dtype(dtype)
        self.cache = ParamCache(use_onnxruntime=primitives == "onnxruntime")

    # -- element-wise ----------------------------------------------------------------------------
    def pos(self, x):
        return np.maximum(x, 0)

    def neg(self, x):
        return np.minimum(x, 0)

    def ones_like(self, x):
        return np.ones_like(x)

    def zeros_like(self, x):
        return np.zeros_like(x)

    def bound(self, value, like):
        return np.broadcast_to(np.asarray(value, dtype=like.dtype), like.shape)

    def is_zero(self, x):
        return not x.any()

    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def mul(self, a, b):
        return a * b

    def div(self, a, b):
        return a / b

    def scale(self, a, factor):
        return a * factor

    def stabilise(self, z, epsilon):
        return routing.stabilise(z, epsilon)

    def stabilise_zeros(self, z, epsilon):
        return routing.stabilise_zeros(z, epsilon)

    def mask(self, s, z, positive):
        return s * (z > 0) if positive else s * (z < 0)

    def cast(self, x):
        return np.asarray(x, dtype=self.dtype)

    def unbroadcast(self, x, shape):
        return routing.unbroadcast(x, shape)

    def offset(self, x, value):
        return x + np.asarray(value, dtype=x.dtype)

    def constant(self, array):
        return np.asarray(array, dtype=self.dtype)

    def reduce_sum(self, x, axes, keepdims=True):
        return np.sum(x, axis=tuple(a % x.ndim for a in axes), keepdims=keepdims)

    def reduce_mean(self, x, axes):
        return np.mean(x, axis=tuple(a % x.ndim for a in axes), keepdims=True)

    def square_root(self, x):
        return np.sqrt(x)

    def total(self, tensors):
        """Σ over every element of the tensors (the whole batch), for the conservation report."""
        return float(sum(np.sum(x) for x in tensors))

    def nonfinite(self, tensors):
        return int(sum(np.count_nonzero(~np.isfinite(x)) for x in tensors))

    # -- operator-specific steps -----------------------------------------------------------------
    def adapter(self, node, input_shape):
        from .reverse import linear_primitives

        return linear_primitives(node).eager(node, self.cache, input_shape, self.dtype)

    def move_back(self, node, input_shapes, grads):
        return routing.move_back(node, input_shapes, grads)

    def max_route(self, node, x, g):
        return routing.max_winners(node, x, g)

    def max_elementwise(self, inputs, g):
        return routing.max_winners_elementwise(inputs, g)

    def activation_vjp(self, node, x, y, g, policy):
        if node.op == "Relu" and policy == "guided":
            return g * (x > 0) * (g > 0)
        if node.op == "Relu" and policy == "deconvnet":
            return np.maximum(g, 0)
        return g * routing.activation_derivative(node, x, y)

    def softmax_vjp(self, node, y, g):
        return routing.softmax_vjp(node, y, g)

    def lrn_vjp(self, node, x, g):
        return routing.lrn_vjp(node, x, g)
