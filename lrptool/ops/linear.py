"""Operators that are affine maps of one input: Conv, ConvTranspose, Dense, BatchNorm, Scale, Bias.

Layouts are canonical: NCHW (or NCW) activations, OIHW convolution kernels, ConvTranspose
kernels (C_in, C_out/group, kH, kW) as in ONNX, and (out, in) dense weights.
Pads are ``(begin_1, ..., begin_k, end_1, ..., end_k)`` over the spatial axes, as in ONNX.
"""

import numpy as np

from .. import kernels
from .base import Operator, REQUIRED, batch_fail, check_channels, fail, free_fail, register, spatial_output_size


def channel_view(vector, rank):
    """Reshape a per-channel vector (C,) so that it broadcasts over an NC... tensor of ``rank``."""
    return vector.reshape((1, -1) + (1,) * (rank - 2))


def to_2d(strides, dilations, pads):
    """Map 1-D window settings to the 2-D kernels with a unit height."""
    if len(strides) == 2:
        return tuple(strides), tuple(dilations), tuple(pads)
    return (1, strides[0]), (1, dilations[0]), (0, pads[0], 0, pads[1])


def check_window_attrs(node, rank):
    a = node.attrs
    if len(a["strides"]) != rank or len(a["dilations"]) != rank or len(a["pads"]) != 2 * rank:
        fail(node, f"strides/dilations/pads do not match a {rank}-D window: {a}")
    if min(a["strides"]) < 1 or min(a["dilations"]) < 1 or min(a["pads"]) < 0:
        fail(node, f"strides and dilations must be >= 1 and pads >= 0: {a}")


@register
class Conv(Operator):
    """N-D convolution (1-D or 2-D) with groups (depthwise when group == channels), dilation and explicit pads."""

    attributes = {"strides": REQUIRED, "dilations": REQUIRED, "pads": REQUIRED, "group": 1}
    params = ("weight", "bias")
    optional_params = ("bias",)

    def infer(self, node, shapes):
        (shape,) = shapes
        w = node.params["weight"]
        rank = w.ndim - 2
        if rank not in (1, 2):
            fail(node, f"only 1-D and 2-D convolutions are supported, kernel has shape {w.shape}")
        if len(shape) != rank + 2:
            fail(node, f"input of shape {shape} does not match a {rank}-D kernel {w.shape}")
        check_window_attrs(node, rank)
        group = node.attrs["group"]
        check_channels(node, shape, w.shape[1] * group, f"the kernel {w.shape} with group={group}")
        if w.shape[0] % group:
            fail(node, f"{w.shape[0]} output channels do not split into {group} groups")
        b = node.params.get("bias")
        if b is not None and b.shape != (w.shape[0],):
            fail(node, f"bias shape {b.shape} does not match {w.shape[0]} output channels")
        a = node.attrs
        spatial = tuple(
            spatial_output_size(shape[2 + i], w.shape[2 + i], a["strides"][i], a["dilations"][i],
                                a["pads"][i], a["pads"][rank + i])
            for i in range(rank)
        )
        if min(d for d in spatial + (1,) if d is not None) < 1:
            fail(node, f"input {shape} is too small for kernel {w.shape[2:]}")
        return [(shape[0], w.shape[0]) + spatial]

    def run(self, node, inputs, params):
        x = inputs[0]
        w = params["weight"]
        strides, dilations, pads = to_2d(node.attrs["strides"], node.attrs["dilations"], node.attrs["pads"])
        one_d = w.ndim == 3
        if one_d:
            x, w = x[:, :, None, :], w[:, :, None, :]
        y = kernels.conv2d(np.ascontiguousarray(x), w, params.get("bias"), strides, dilations, pads,
                           node.attrs["group"])
        return [y[:, :, 0, :] if one_d else y]


@register
class ConvTranspose(Operator):
    """Transposed convolution (1-D or 2-D); kernel (C_in, C_out/group, k...); output cropped by pads."""

    attributes = {"strides": REQUIRED, "dilations": REQUIRED, "pads": REQUIRED, "output_padding": REQUIRED,
                  "group": 1}
    params = ("weight", "bias")
    optional_params = ("bias",)

    def infer(self, node, shapes):
        (shape,) = shapes
        w = node.params["weight"]
        rank = w.ndim - 2
        if rank not in (1, 2) or len(shape) != rank + 2:
            fail(node, f"input {shape} and kernel {w.shape} are not a 1-D or 2-D transposed convolution")
        check_window_attrs(node, rank)
        a = node.attrs
        group = a["group"]
        check_channels(node, shape, w.shape[0], f"the kernel {w.shape}")
        out_channels = w.shape[1] * group
        b = node.params.get("bias")
        if b is not None and b.shape != (out_channels,):
            fail(node, f"bias shape {b.shape} does not match {out_channels} output channels")
        spatial = tuple(
            None if shape[2 + i] is None else
            a["strides"][i] * (shape[2 + i] - 1) + a["output_padding"][i]
            + (w.shape[2 + i] - 1) * a["dilations"][i] + 1 - a["pads"][i] - a["pads"][rank + i]
            for i in range(rank)
        )
        if min(d for d in spatial + (1,) if d is not None) < 1:
            fail(node, f"output size {spatial} is empty")
        return [(shape[0], out_channels) + spatial]

    def run(self, node, inputs, params):
        x = inputs[0]
        w = params["weight"]
        a = node.attrs
        strides, dilations, pads = to_2d(a["strides"], a["dilations"], a["pads"])
        output_padding = tuple(a["output_padding"]) if w.ndim == 4 else (0, a["output_padding"][0])
        one_d = w.ndim == 3
        if one_d:
            x, w = x[:, :, None, :], w[:, :, None, :]
        y = kernels.conv_transpose2d(np.ascontiguousarray(x), w, params.get("bias"), strides, dilations, pads,
                                     output_padding, a["group"])
        return [y[:, :, 0, :] if one_d else y]


@register
class Dense(Operator):
    """Fully connected layer on the last axis: y = x Wᵀ + b, W of shape (out, in)."""

    params = ("weight", "bias")
    optional_params = ("bias",)

    def infer(self, node, shapes):
        (shape,) = shapes
        w = node.params["weight"]
        if w.ndim != 2:
            fail(node, f"weight must be (out, in), got {w.shape}")
        if len(shape) < 2:
            batch_fail(node, f"input of shape {shape} has no feature axis besides the batch axis")
        if shape[-1] is None:
            free_fail(node, len(shape) - 1, "its input's feature axis is free")
        if shape[-1] != w.shape[1]:
            fail(node, f"input has {shape[-1]} features but the weight {w.shape} expects {w.shape[1]}")
        b = node.params.get("bias")
        if b is not None and b.shape != (w.shape[0],):
            fail(node, f"bias shape {b.shape} does not match {w.shape[0]} outputs")
        return [shape[:-1] + (w.shape[0],)]

    def run(self, node, inputs, params):
        y = inputs[0] @ params["weight"].T
        if "bias" in params:
            y += params["bias"]
        return [y]


class PerChannel(Operator):
    """Base for operators with per-channel vectors (channel axis 1)."""

    def infer(self, node, shapes):
        (shape,) = shapes
        for name in self.params:
            if name in node.params:
                vector = node.params[name]
                if vector.ndim != 1:
                    fail(node, f"parameter {name} must be a vector, got shape {vector.shape}")
                check_channels(node, shape, vector.shape[0], f"parameter {name}")
        return [shape]


@register
class BatchNorm(PerChannel):
    """Inference-mode batch normalisation over axis 1: (x − mean)/√(var + ε)·scale + bias."""

    attributes = {"epsilon": 1e-5}
    params = ("scale", "bias", "mean", "var")

    def run(self, node, inputs, params):
        x = inputs[0]
        rank = x.ndim
        factor = params["scale"] / np.sqrt(params["var"] + np.asarray(node.attrs["epsilon"], x.dtype))
        shift = params["bias"] - params["mean"] * factor
        return [x * channel_view(factor, rank) + channel_view(shift, rank)]


@register
class Scale(PerChannel):
    """Per-channel multiplication (Caffe's Scale layer, Mul by a per-channel constant); optional bias."""

    params = ("scale", "bias")
    optional_params = ("bias",)

    def run(self, node, inputs, params):
        x = inputs[0]
        y = x * channel_view(params["scale"], x.ndim)
        if "bias" in params:
            y += channel_view(params["bias"], x.ndim)
        return [y]


@register
class Bias(PerChannel):
    """Per-channel addition (Caffe's Bias layer, Add of a per-channel constant)."""

    params = ("bias",)

    def run(self, node, inputs, params):
        x = inputs[0]
        return [x + channel_view(params["bias"], x.ndim)]
