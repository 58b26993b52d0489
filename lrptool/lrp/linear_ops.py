"""The two primitives every linear operator gives the LRP rules: a forward pass and its transpose,
both under a *weight mode* that names a modification of the weights.

Weight modes: ``w`` (unchanged), ``pos`` (W⁺), ``neg`` (W⁻), ``ones`` (all ones), ``square`` (W²),
``gamma+`` (W + γW⁺) and ``gamma-`` (W + γW⁻); the same mode applies to the bias when a rule keeps
it. Operators without parameters (average pooling, mean reduction) have implicit positive
weights 1/d over each window of d taps, and the modes act on those.
"""

import numpy as np

from .. import kernels
from . import ort_primitives
from .canonize import per_channel_affine
from ..ops.linear import channel_view, to_2d


def modify(array, mode, gamma):
    if mode == "w":
        return array
    if mode == "pos":
        return np.maximum(array, 0)
    if mode == "neg":
        return np.minimum(array, 0)
    if mode == "ones":
        return np.ones_like(array)
    if mode == "square":
        return array * array
    if mode == "gamma+":
        return array + gamma * np.maximum(array, 0)
    if mode == "gamma-":
        return array + gamma * np.minimum(array, 0)
    raise ValueError(f"unknown weight mode {mode!r}")


class ParamCache:
    """Modified parameter arrays per (node, parameter, mode, γ, dtype), computed once per explainer;
    and, in float32, the onnxruntime sessions of the convolution primitives."""

    def __init__(self, use_onnxruntime=True):
        self.arrays = {}
        self.sessions = ort_primitives.ConvSessions() if use_onnxruntime and ort_primitives.available() else None

    def get(self, node, name, mode, gamma, dtype):
        key = (node.name, name, mode, gamma, np.dtype(dtype).str)
        if key not in self.arrays:
            # the unmodified weights are used in place: no copy of large dense layers
            self.arrays[key] = np.ascontiguousarray(modify(node.params[name].astype(dtype, copy=False), mode, gamma))
        return self.arrays[key]


class LinearAdapter:
    """forward(x, weight mode, bias mode or None) and transpose(s, weight mode) of one node."""

    def __init__(self, node, cache, input_shape, dtype):
        self.node = node
        self.cache = cache
        self.input_shape = tuple(input_shape)
        self.dtype = dtype

    def param(self, name, mode, gamma):
        return self.cache.get(self.node, name, mode, gamma, self.dtype)

    def bias(self, mode, gamma):
        if mode is None or "bias" not in self.node.params:
            return None
        return self.param("bias", mode, gamma)


class ConvAdapter(LinearAdapter):
    def geometry(self):
        a = self.node.attrs
        return to_2d(a["strides"], a["dilations"], a["pads"])

    def on_onnxruntime(self):
        return self.cache.sessions is not None and self.dtype == np.float32

    def forward(self, x, mode, bias_mode, gamma=0.0):
        w = self.param("weight", mode, gamma)
        if self.on_onnxruntime():
            return ort_primitives.conv_forward(self.cache.sessions, self.node, x, w, self.bias(bias_mode, gamma),
                                               (self.node.name, mode, bias_mode, gamma))
        strides, dilations, pads = self.geometry()
        one_d = w.ndim == 3
        if one_d:
            x, w = x[:, :, None, :], w[:, :, None, :]
        y = kernels.conv2d(x, w, self.bias(bias_mode, gamma), strides, dilations, pads, self.node.attrs["group"])
        return y[:, :, 0, :] if one_d else y

    def transpose(self, s, mode, gamma=0.0):
        w = self.param("weight", mode, gamma)
        if self.on_onnxruntime():
            return ort_primitives.conv_transpose(self.cache.sessions, self.node, s, w,
                                                 (s.shape[0],) + self.input_shape[1:], (self.node.name, mode, gamma))
        strides, dilations, pads = self.geometry()
        shape = self.input_shape
        if w.ndim == 3:
            s, w, shape = s[:, :, None, :], w[:, :, None, :], shape[:2] + (1,) + shape[2:]
        x = kernels.conv2d_transpose_input(np.ascontiguousarray(s), w, (s.shape[0],) + tuple(shape[1:]), strides,
                                           dilations, pads, self.node.attrs["group"])
        return x[:, :, 0, :] if len(self.input_shape) == 3 else x


class ConvTransposeAdapter(ConvAdapter):
    def forward(self, x, mode, bias_mode, gamma=0.0):
        w = self.param("weight", mode, gamma)
        a = self.node.attrs
        strides, dilations, pads = self.geometry()
        output_padding = tuple(a["output_padding"]) if w.ndim == 4 else (0, a["output_padding"][0])
        one_d = w.ndim == 3
        if one_d:
            x, w = x[:, :, None, :], w[:, :, None, :]
        y = kernels.conv_transpose2d(x, w, self.bias(bias_mode, gamma), strides, dilations, pads, output_padding,
                                     a["group"])
        return y[:, :, 0, :] if one_d else y

    def transpose(self, s, mode, gamma=0.0):
        # the adjoint of a transposed convolution is the convolution with the same kernel
        w = self.param("weight", mode, gamma)
        strides, dilations, pads = self.geometry()
        one_d = w.ndim == 3
        if one_d:
            s, w = s[:, :, None, :], w[:, :, None, :]
        x = kernels.conv2d(np.ascontiguousarray(s), w, None, strides, dilations, pads, self.node.attrs["group"])
        x = x[:, :, 0, :] if one_d else x
        return x[tuple(slice(0, d) for d in (x.shape[0],) + self.input_shape[1:])]


class DenseAdapter(LinearAdapter):
    def forward(self, x, mode, bias_mode, gamma=0.0):
        y = x @ self.param("weight", mode, gamma).T
        b = self.bias(bias_mode, gamma)
        return y + b if b is not None else y

    def transpose(self, s, mode, gamma=0.0):
        return s @ self.param("weight", mode, gamma)


class PerChannelAdapter(LinearAdapter):
    """BatchNorm, Scale and Bias: y = x·a + c per channel."""

    def forward(self, x, mode, bias_mode, gamma=0.0):
        a, c = per_channel_affine(self.node)
        y = x * channel_view(modify(a, mode, gamma).astype(self.dtype), x.ndim)
        if bias_mode is not None and c is not None:
            y = y + channel_view(modify(c, bias_mode, gamma).astype(self.dtype), x.ndim)
        return y

    def transpose(self, s, mode, gamma=0.0):
        a, _ = per_channel_affine(self.node)
        return s * channel_view(modify(a, mode, gamma).astype(self.dtype), s.ndim)


class MeanAdapter(LinearAdapter):
    """Average pooling and mean reduction: implicit weights 1/d over each window of d taps."""

    def implicit_weight(self, mode, gamma, d):
        """The modified value of the implicit weight 1/d, times d (so that forward = pooled mean × factor)."""
        inverse = np.divide(1.0, d, out=np.zeros_like(d, dtype=np.float64), where=d > 0)
        return (modify(inverse, mode, gamma) * d).astype(self.dtype)

    def counts(self, out_shape):
        node = self.node
        if node.op == "AveragePool":
            op = node.operator
            kernel, strides, dilations, pads = op.window_2d(node)
            h, w = (1,) + self.input_shape[2:] if len(self.input_shape) == 3 else self.input_shape[2:]
            oh, ow = (1, out_shape[-1]) if len(self.input_shape) == 3 else out_shape[2:]
            inverse = kernels._inverse_divisor(h, w, kernel, strides, dilations, pads, oh, ow,
                                               node.attrs["count_include_pad"], np.float64)
            d = np.divide(1.0, inverse, out=np.zeros_like(inverse), where=inverse > 0)
            return d.reshape(out_shape[2:])
        axes = self.axes()
        return np.asarray(float(np.prod([self.input_shape[a] for a in axes])))

    def axes(self):
        if self.node.op == "GlobalAveragePool":
            return tuple(range(2, len(self.input_shape)))
        return tuple(a % len(self.input_shape) for a in self.node.attrs["axes"])

    def forward(self, x, mode, bias_mode, gamma=0.0):
        y = self.node.operator.run(self.node, [x], {})[0]
        return y * self.implicit_weight(mode, gamma, self.counts(y.shape))

    def transpose(self, s, mode, gamma=0.0):
        s = s * self.implicit_weight(mode, gamma, self.counts(s.shape))
        node = self.node
        if node.op == "AveragePool":
            op = node.operator
            kernel, strides, dilations, pads = op.window_2d(node)
            one_d = len(self.input_shape) == 3
            g = s[:, :, None, :] if one_d else s
            shape = (s.shape[0], self.input_shape[1]) + ((1,) + self.input_shape[2:] if one_d else self.input_shape[2:])
            x = kernels.avg_pool2d_transpose(np.ascontiguousarray(g), shape, kernel, strides, dilations, pads,
                                             node.attrs["count_include_pad"])
            return x[:, :, 0, :] if one_d else x
        axes = self.axes()
        if not node.attrs.get("keepdims", True):
            s = np.expand_dims(s, axes)
        count = float(np.prod([self.input_shape[a] for a in axes]))
        return np.broadcast_to(s / count, (s.shape[0],) + self.input_shape[1:]).astype(self.dtype)
