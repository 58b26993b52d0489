"""Pooling, local response normalisation and mean reduction."""

import numpy as np

from .. import kernels
from .base import REQUIRED, Operator, batch_fail, fail, normalize_axis, register, spatial_output_size
from .linear import check_window_attrs, to_2d


class WindowPool(Operator):
    """Max/average pooling over 1-D or 2-D windows with explicit pads and Caffe/ONNX ceil mode."""

    attributes = {"kernel_shape": REQUIRED, "strides": REQUIRED, "dilations": REQUIRED, "pads": REQUIRED,
                  "ceil_mode": False}

    def infer(self, node, shapes):
        (shape,) = shapes
        a = node.attrs
        rank = len(a["kernel_shape"])
        if rank not in (1, 2) or len(shape) != rank + 2:
            fail(node, f"a {rank}-D window on an input of shape {shape} is not supported (1-D and 2-D only)")
        check_window_attrs(node, rank)
        for i in range(rank):
            if a["pads"][i] >= a["kernel_shape"][i] * a["dilations"][i] or \
                    a["pads"][rank + i] >= a["kernel_shape"][i] * a["dilations"][i]:
                fail(node, f"pads {a['pads']} reach a whole window past the input")
        spatial = tuple(
            spatial_output_size(shape[2 + i], a["kernel_shape"][i], a["strides"][i], a["dilations"][i],
                                a["pads"][i], a["pads"][rank + i], a["ceil_mode"])
            for i in range(rank)
        )
        if min(d for d in spatial + (1,) if d is not None) < 1:
            fail(node, f"input {shape} is too small for window {a['kernel_shape']}")
        return [shape[:2] + spatial]

    def window_2d(self, node):
        a = node.attrs
        strides, dilations, pads = to_2d(a["strides"], a["dilations"], a["pads"])
        kernel = tuple(a["kernel_shape"]) if len(a["kernel_shape"]) == 2 else (1, a["kernel_shape"][0])
        return kernel, strides, dilations, pads

    def run(self, node, inputs, params):
        x = inputs[0]
        one_d = x.ndim == 3
        if one_d:
            x = x[:, :, None, :]
        kernel, strides, dilations, pads = self.window_2d(node)
        out_hw = self.out_hw(node, x)
        y = self.pool(node, np.ascontiguousarray(x), kernel, strides, dilations, pads, out_hw)
        return [y[:, :, 0, :] if one_d else y]

    def out_hw(self, node, x):
        kernel, strides, dilations, pads = self.window_2d(node)
        return tuple(
            spatial_output_size(x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[2 + i],
                                node.attrs["ceil_mode"])
            for i in range(2)
        )


@register
class MaxPool(WindowPool):
    def pool(self, node, x, kernel, strides, dilations, pads, out_hw):
        return kernels.max_pool2d(x, kernel, strides, dilations, pads, out_hw, with_argmax=False)[0]


@register
class AveragePool(WindowPool):
    """Average pooling; ``count_include_pad`` divides by the taps inside the padded extent."""

    attributes = dict(WindowPool.attributes, count_include_pad=False)

    def pool(self, node, x, kernel, strides, dilations, pads, out_hw):
        return kernels.avg_pool2d(x, kernel, strides, dilations, pads, out_hw, node.attrs["count_include_pad"])


class GlobalPool(Operator):
    def infer(self, node, shapes):
        (shape,) = shapes
        if len(shape) < 3:
            fail(node, f"input of shape {shape} has no spatial axes")
        return [shape[:2] + (1,) * (len(shape) - 2)]


@register
class GlobalAveragePool(GlobalPool):

    def run(self, node, inputs, params):
        x = inputs[0]
        return [np.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


@register
class GlobalMaxPool(GlobalPool):
    def run(self, node, inputs, params):
        x = inputs[0]
        return [np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


def channel_window_sum(values, before, size):
    """Σ over the channel window [c − before, c − before + size − 1] for every channel c, zero outside;
    running sums in float64, the result in the values' dtype."""
    channels = values.shape[1]
    padded = np.zeros((values.shape[0], channels + size - 1) + values.shape[2:], dtype=np.float64)
    padded[:, before:before + channels] = values
    cumulative = np.concatenate([np.zeros_like(padded[:, :1]), np.cumsum(padded, axis=1)], axis=1)
    return (cumulative[:, size:size + channels] - cumulative[:, :channels]).astype(values.dtype)


@register
class LRN(Operator):
    """Local response normalisation across channels (ONNX form):
    y = x / (bias + alpha/size · Σ_{window} x²)^beta, window [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉]."""

    attributes = {"size": REQUIRED, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}

    def infer(self, node, shapes):
        (shape,) = shapes
        if len(shape) < 3:
            fail(node, f"input of shape {shape} has no spatial axes")
        if node.attrs["size"] < 1:
            fail(node, "size must be positive")
        return [shape]

    def run(self, node, inputs, params):
        x = inputs[0]
        a = node.attrs
        size = a["size"]
        window = channel_window_sum(np.square(x), (size - 1) // 2, size)
        scale = np.asarray(a["bias"], x.dtype) + np.asarray(a["alpha"] / size, x.dtype) * window
        return [x / scale ** np.asarray(a["beta"], x.dtype)]


@register
class ReduceMean(Operator):
    attributes = {"axes": REQUIRED, "keepdims": True}

    def infer(self, node, shapes):
        (shape,) = shapes
        axes = sorted({normalize_axis(node, a, len(shape)) for a in node.attrs["axes"]})
        if 0 in axes and shape[0] is None:
            batch_fail(node, "averages over the batch axis")
        if node.attrs["keepdims"]:
            return [tuple(1 if i in axes else d for i, d in enumerate(shape))]
        return [tuple(d for i, d in enumerate(shape) if i not in axes)]

    def run(self, node, inputs, params):
        x = inputs[0]
        axes = tuple(a % x.ndim for a in node.attrs["axes"])
        return [np.mean(x, axis=axes, keepdims=node.attrs["keepdims"])]
