"""One converter per Caffe layer type, registered by the V2 type string.

A converter gets the read context, the layer message and the IR names of its bottoms; it adds
IR nodes through the context and returns the IR names of the layer's tops. ``Unsupported``
marks a layer (or a setting of it) outside lrptool's operator set; the reader collects them all.
"""

import numpy as np

LAYERS = {}


class Unsupported(Exception):
    pass


def layer(*types):
    def register(function):
        for layer_type in types:
            LAYERS[layer_type] = function
        return function
    return register


def _pair(repeated, h, w, has_h, has_w, default, what):
    """Caffe gives 2-D window settings either as a repeated field (1 value for both axes, or one
    per axis) or as the *_h / *_w pair; the pair wins when set."""
    if has_h or has_w:
        if not (has_h and has_w):
            raise Unsupported(f"{what}_h and {what}_w must be given together")
        return int(h), int(w)
    values = [int(v) for v in repeated]
    if not values:
        if default is None:
            raise Unsupported(f"no {what} given")
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise Unsupported(f"{len(values)}-D {what} (only 2-D windows are supported)")


def _window(p):
    kernel = _pair(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h"), p.HasField("kernel_w"), None,
                   "kernel")
    stride = _pair(p.stride, p.stride_h, p.stride_w, p.HasField("stride_h"), p.HasField("stride_w"), 1, "stride")
    pad = _pair(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h"), p.HasField("pad_w"), 0, "pad")
    dilation = _pair(p.dilation, 0, 0, False, False, 1, "dilation")
    return kernel, stride, pad, dilation


def _spatial_input(ctx, tensor, what):
    shape = ctx.shape(tensor)
    if len(shape) != 4:
        raise Unsupported(f"{what} on a rank-{len(shape)} input {shape} (only NCHW is supported)")
    return shape


@layer("Convolution", "Deconvolution")
def convolution(ctx, lp, bottoms):
    p = lp.convolution_param
    if p.axis not in (1, -3):
        raise Unsupported(f"convolution over axis {p.axis}")
    kernel, stride, pad, dilation = _window(p)
    shape = _spatial_input(ctx, bottoms[0], lp.type)
    group = int(p.group)
    channels, outputs = shape[1], int(p.num_output)
    if outputs < 1:
        raise Unsupported("num_output is not set")
    if channels % group or outputs % group:
        raise Unsupported(f"{channels} input / {outputs} output channels do not split into {group} groups")
    transposed = lp.type == "Deconvolution"
    if transposed:
        weight_shape = (channels, outputs // group) + kernel
    else:
        weight_shape = (outputs, channels // group) + kernel
    fan_in = (channels // group) * kernel[0] * kernel[1]
    params = {"weight": ctx.blob(lp, 0, weight_shape, fan_in=fan_in)}
    if p.bias_term:
        params["bias"] = ctx.blob(lp, 1, (outputs,), fan_in=fan_in)
    attrs = {"strides": stride, "dilations": dilation, "pads": pad + pad, "group": group}
    if transposed:
        attrs["output_padding"] = (0, 0)
    return ctx.add("ConvTranspose" if transposed else "Conv", lp.name, bottoms[:1], attrs, params)


@layer("InnerProduct")
def inner_product(ctx, lp, bottoms):
    p = lp.inner_product_param
    shape = ctx.shape(bottoms[0])
    axis = p.axis % len(shape)
    if axis == 0:
        raise Unsupported("inner product over the batch axis")
    source = bottoms[0]
    if axis == 1 and len(shape) > 2:
        # Caffe flattens C·H·W in C-major order, which is what Flatten(axis=1) does for NCHW.
        (source,) = ctx.add("Flatten", f"{lp.name}/flatten", [source], {"axis": 1}, {})
    elif axis < len(shape) - 1:
        # the axes before ``axis`` stay; the rest become one feature axis for the Dense on the last axis
        target = tuple(shape[:axis]) + (int(np.prod(shape[axis:], dtype=np.int64)),)
        (source,) = ctx.add("Reshape", f"{lp.name}/flatten", [source], {"shape": target}, {})
    features = int(np.prod(shape[axis:], dtype=np.int64))
    outputs = int(p.num_output)
    if outputs < 1:
        raise Unsupported("num_output is not set")
    if p.transpose:
        weight = ctx.blob(lp, 0, (features, outputs), fan_in=features).T.copy()
    else:
        weight = ctx.blob(lp, 0, (outputs, features), fan_in=features)
    params = {"weight": weight}
    if p.bias_term:
        params["bias"] = ctx.blob(lp, 1, (outputs,), fan_in=features)
    return ctx.add("Dense", lp.name, [source], {}, params)


@layer("Pooling")
def pooling(ctx, lp, bottoms):
    p = lp.pooling_param
    method = {0: "Max", 1: "Average"}.get(p.pool)
    if method is None:
        raise Unsupported("stochastic pooling")
    _spatial_input(ctx, bottoms[0], "pooling")
    if p.global_pooling:
        return ctx.add(f"Global{method}Pool", lp.name, bottoms[:1], {}, {})
    kernel = _pair([p.kernel_size] if p.HasField("kernel_size") else [], p.kernel_h, p.kernel_w,
                   p.HasField("kernel_h"), p.HasField("kernel_w"), None, "kernel")
    stride = _pair([p.stride], p.stride_h, p.stride_w, p.HasField("stride_h"), p.HasField("stride_w"), 1,
                   "stride")
    if p.HasField("pad_h") or p.HasField("pad_w"):
        pad = (int(p.pad_h), int(p.pad_w))
    else:
        pad = (int(p.pad), int(p.pad))
    attrs = {"kernel_shape": kernel, "strides": stride, "dilations": (1, 1), "pads": pad + pad,
             # Caffe's default CEIL rounding drops a last window that starts in the end padding,
             # which is exactly the IR's ceil_mode.
             "ceil_mode": p.round_mode == 0}
    if method == "Average":
        # Caffe divides by the window clipped to the padded extent, padding included.
        attrs["count_include_pad"] = True
    return ctx.add(f"{method}Pool", lp.name, bottoms[:1], attrs, {})


@layer("ReLU")
def relu(ctx, lp, bottoms):
    slope = float(lp.relu_param.negative_slope)
    if slope == 0:
        return ctx.add("Relu", lp.name, bottoms[:1], {}, {})
    return ctx.add("LeakyRelu", lp.name, bottoms[:1], {"alpha": slope}, {})


@layer("PReLU")
def prelu(ctx, lp, bottoms):
    shape = ctx.shape(bottoms[0])
    if len(shape) < 2:
        raise Unsupported(f"PReLU on a rank-{len(shape)} input")
    shared = lp.prelu_param.channel_shared
    channels = 1 if shared else shape[1]
    slope = ctx.blob(lp, 0, (channels,), fill=0.25)
    # The IR's slope broadcasts against the whole input, so lay the channel vector on axis 1.
    slope = slope.reshape((1, channels) + (1,) * (len(shape) - 2))
    return ctx.add("PRelu", lp.name, bottoms[:1], {}, {"slope": slope})


@layer("ELU")
def elu(ctx, lp, bottoms):
    return ctx.add("Elu", lp.name, bottoms[:1], {"alpha": float(lp.elu_param.alpha)}, {})


@layer("Sigmoid")
def sigmoid(ctx, lp, bottoms):
    return ctx.add("Sigmoid", lp.name, bottoms[:1], {}, {})


@layer("TanH")
def tanh(ctx, lp, bottoms):
    return ctx.add("Tanh", lp.name, bottoms[:1], {}, {})


@layer("Clip")
def clip(ctx, lp, bottoms):
    p = lp.clip_param
    if not (p.HasField("min") and p.HasField("max")):
        raise Unsupported("clip_param needs both min and max")
    return ctx.add("Clip", lp.name, bottoms[:1], {"min": float(p.min), "max": float(p.max)}, {})


@layer("LRN")
def lrn(ctx, lp, bottoms):
    p = lp.lrn_param
    shape = _spatial_input(ctx, bottoms[0], "LRN")
    if p.norm_region == 1:
        return lrn_within_channel(ctx, lp, bottoms[0], shape)
    attrs = {"size": int(p.local_size), "alpha": float(p.alpha), "beta": float(p.beta), "bias": float(p.k)}
    return ctx.add("LRN", lp.name, bottoms[:1], attrs, {})


@layer("BatchNorm")
def batch_norm(ctx, lp, bottoms):
    p = lp.batch_norm_param
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise Unsupported("use_global_stats: false normalises with the batch's own statistics")
    shape = ctx.shape(bottoms[0])
    channels = shape[1]
    mean = ctx.blob(lp, 0, (channels,), fill=0.0)
    var = ctx.blob(lp, 1, (channels,), fill=1.0, positive=True)
    factor = ctx.blob(lp, 2, (1,), fill=1.0, exact=True)
    # Caffe stores running sums; the third blob is the sum of the decay weights (0 means unset).
    s = float(factor.reshape(-1)[0])
    scale = 0.0 if s == 0 else 1.0 / s
    params = {"scale": np.ones(channels, np.float32), "bias": np.zeros(channels, np.float32),
              "mean": (mean * scale).astype(np.float32), "var": (var * scale).astype(np.float32)}
    return ctx.add("BatchNorm", lp.name, bottoms[:1], {"epsilon": float(p.eps)}, params)


def _per_channel_axis(ctx, lp, p, bottoms):
    if len(bottoms) != 1:
        raise Unsupported(f"{lp.type} with {len(bottoms)} bottoms (only a learned parameter is supported)")
    shape = ctx.shape(bottoms[0])
    if p.axis % len(shape) != 1 or p.num_axes != 1:
        raise Unsupported(f"axis {p.axis}, num_axes {p.num_axes} (only per-channel on axis 1)")
    return shape[1]


def scale_by_tensor(ctx, lp, bottoms):
    """Scale with a second bottom (e.g. squeeze-excitation): x · s, s aligned with x from ``axis``."""
    p = lp.scale_param
    x_shape, s_shape = ctx.shape(bottoms[0]), ctx.shape(bottoms[1])
    axis = p.axis % len(x_shape)
    if p.bias_term:
        raise Unsupported("bias_term with a second bottom")
    if axis + len(s_shape) > len(x_shape) or any(
            a != b for a, b in zip(x_shape[axis:axis + len(s_shape)], s_shape) if a is not None and b is not None):
        raise Unsupported(f"a scale of shape {s_shape} does not line up with {x_shape} at axis {axis}")
    if (axis == 0) != (s_shape[:1] == (None,)):
        raise Unsupported(f"a scale of shape {s_shape} at axis {axis} (the batch axes must line up)")
    scale = bottoms[1]
    padded = tuple(s_shape) + (1,) * (len(x_shape) - axis - len(s_shape))
    if padded != tuple(s_shape):
        (scale,) = ctx.add("Reshape", f"{lp.name}/align", [scale], {"shape": padded}, {})
    return ctx.add("Mul", lp.name, [bottoms[0], scale], {}, {})


@layer("Scale")
def scale_layer(ctx, lp, bottoms):
    p = lp.scale_param
    if len(bottoms) == 2:
        return scale_by_tensor(ctx, lp, bottoms)
    channels = _per_channel_axis(ctx, lp, p, bottoms)
    params = {"scale": ctx.blob(lp, 0, (channels,), fill=1.0)}
    if p.bias_term:
        params["bias"] = ctx.blob(lp, 1, (channels,), fill=0.0)
    return ctx.add("Scale", lp.name, bottoms[:1], {}, params)


@layer("Bias")
def bias_layer(ctx, lp, bottoms):
    channels = _per_channel_axis(ctx, lp, lp.bias_param, bottoms)
    return ctx.add("Bias", lp.name, bottoms[:1], {}, {"bias": ctx.blob(lp, 0, (channels,), fill=0.0)})


@layer("Eltwise")
def eltwise(ctx, lp, bottoms):
    p = lp.eltwise_param
    if len(bottoms) < 2:
        raise Unsupported("Eltwise needs at least two bottoms")
    if p.operation == 2:
        if p.coeff:
            raise Unsupported("coeff is only allowed with SUM")
        return ctx.add("Max", lp.name, bottoms, {}, {})
    if p.operation == 0:
        if p.coeff:
            raise Unsupported("coeff is only allowed with SUM")
        current = bottoms[0]
        for index, other in enumerate(bottoms[1:], start=1):
            name = lp.name if index == len(bottoms) - 1 else f"{lp.name}/mul{index}"
            (current,) = ctx.add("Mul", name, [current, other], {}, {})
        return [current]
    coeffs = [float(c) for c in p.coeff] or [1.0] * len(bottoms)
    if len(coeffs) != len(bottoms):
        raise Unsupported(f"{len(coeffs)} coefficients for {len(bottoms)} bottoms")
    terms = []
    for index, (tensor, coeff) in enumerate(zip(bottoms, coeffs)):
        if coeff != 1.0:
            shape = ctx.shape(tensor)
            if len(shape) < 2:
                raise Unsupported(f"coefficient on a rank-{len(shape)} bottom")
            # A per-channel Scale keeps the term linear for LRP (a Mul by a constant would not).
            (tensor,) = ctx.add("Scale", f"{lp.name}/coeff{index}", [tensor], {},
                                {"scale": np.full(shape[1], coeff, np.float32)})
        terms.append(tensor)
    if len(terms) == 2:
        return ctx.add("Add", lp.name, terms, {}, {})
    return ctx.add("Sum", lp.name, terms, {}, {})


@layer("Power")
def power(ctx, lp, bottoms):
    p = lp.power_param
    current = list(bottoms[:1])
    if p.scale != 1.0 or p.shift != 0.0:
        shape = ctx.shape(bottoms[0])
        if len(shape) < 2:
            raise Unsupported(f"Power on a rank-{len(shape)} input")
        params = {"scale": np.full(shape[1], p.scale, np.float32)}
        if p.shift != 0.0:
            params["bias"] = np.full(shape[1], p.shift, np.float32)
        current = ctx.add("Scale", lp.name if p.power == 1.0 else f"{lp.name}/affine", current, {}, params)
    if p.power == 1.0:
        return current
    return ctx.add("Pow", lp.name, current, {"exponent": float(p.power)}, {})


@layer("AbsVal")
def absval(ctx, lp, bottoms):
    return ctx.add("Abs", lp.name, bottoms[:1], {}, {})


@layer("Concat")
def concat(ctx, lp, bottoms):
    p = lp.concat_param
    axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
    rank = len(ctx.shape(bottoms[0]))
    if len(bottoms) == 1:
        return list(bottoms)
    return ctx.add("Concat", lp.name, bottoms, {"axis": int(axis) % rank}, {})


@layer("Slice")
def slice_layer(ctx, lp, bottoms):
    p = lp.slice_param
    shape = ctx.shape(bottoms[0])
    axis = (p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim) % len(shape)
    size = shape[axis]
    count = len(lp.top)
    if p.slice_point:
        points = [int(v) for v in p.slice_point]
        if len(points) != count - 1:
            raise Unsupported(f"{len(points)} slice points for {count} tops")
        bounds = [0] + points + [size]
        split = [b - a for a, b in zip(bounds, bounds[1:])]
    else:
        if size is None or size % count:
            raise Unsupported(f"axis {axis} of size {size} does not split evenly into {count} tops")
        split = [size // count] * count
    return ctx.add("Split", lp.name, bottoms[:1], {"axis": axis, "split": tuple(split)}, {}, outputs=count)


@layer("Flatten")
def flatten(ctx, lp, bottoms):
    p = lp.flatten_param
    shape = ctx.shape(bottoms[0])
    rank = len(shape)
    axis, end = p.axis % rank, p.end_axis % rank
    if axis == 1 and end == rank - 1:
        return ctx.add("Flatten", lp.name, bottoms[:1], {"axis": 1}, {})
    if axis == 0:
        raise Unsupported("flattening the batch axis")
    merged = int(np.prod(shape[axis:end + 1], dtype=np.int64))
    target = tuple(shape[:axis]) + (merged,) + tuple(shape[end + 1:])
    return ctx.add("Reshape", lp.name, bottoms[:1], {"shape": target}, {})


@layer("Reshape")
def reshape(ctx, lp, bottoms):
    p = lp.reshape_param
    shape = list(ctx.shape(bottoms[0]))
    rank = len(shape)
    start = p.axis if p.axis >= 0 else rank + 1 + p.axis
    end = rank if p.num_axes == -1 else start + p.num_axes
    dims = [int(d) for d in p.shape.dim]
    middle = []
    for index, d in enumerate(dims):
        # 0 copies the input's dimension at the same position (relative to ``axis``).
        middle.append(shape[start + index] if d == 0 else d)
    target = shape[:start] + middle + shape[end:]
    if target.count(-1) > 1:
        raise Unsupported("more than one -1 in the reshape dimensions")
    if -1 in target:
        known = int(np.prod([d for d in target if d not in (-1, None)], dtype=np.int64))
        total = int(np.prod([d for d in shape if d is not None], dtype=np.int64))
        if target[0] is None or shape[0] is not None:
            target[target.index(-1)] = total // known
        elif target.index(-1) == 0 and known == total:
            # Caffe's "-1 on the batch axis" keeps the batch when the other axes hold all the rest.
            target[0] = None
        else:
            raise Unsupported(f"reshape {tuple(shape)} with dims {dims} changes the batch axis")
    return ctx.add("Reshape", lp.name, bottoms[:1], {"shape": tuple(target)}, {})


@layer("Softmax")
def softmax(ctx, lp, bottoms):
    rank = len(ctx.shape(bottoms[0]))
    return ctx.add("Softmax", lp.name, bottoms[:1], {"axes": (lp.softmax_param.axis % rank,)}, {})


def lrn_within_channel(ctx, lp, tensor, shape):
    """Caffe's WITHIN_CHANNEL LRN, x · (1 + alpha/size² · Σ_{size×size window} x²)^(−beta), built from
    the IR's cross-channel LRN: the size² zero-padded spatial shifts of every channel are laid side
    by side on the channel axis, so that a cross-channel window of size² centred on the unshifted
    copy sums exactly the spatial neighbourhood; the centre copies are then picked out again.
    (Caffe ignores ``k`` in this mode.)"""
    p = lp.lrn_param
    size = int(p.local_size)
    if size % 2 == 0:
        raise Unsupported(f"WITHIN_CHANNEL with an even local_size {size}")
    half = (size - 1) // 2
    channels, height, width = shape[1:]
    shifted = []
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            # A negative pad crops: this copy holds x[h + dy, w + dx], zero outside the image.
            pads = (0, 0, -dy, -dx, 0, 0, dy, dx)
            shifted += ctx.add("Pad", f"{lp.name}/shift{dy:+d}{dx:+d}", [tensor], {"pads": pads}, {})
    taps = size * size
    (stacked,) = ctx.add("Concat", f"{lp.name}/stack", shifted, {"axis": 1}, {})
    (grouped,) = ctx.add("Reshape", f"{lp.name}/group", [stacked],
                         {"shape": (None, taps, channels, height * width)}, {})
    (by_channel,) = ctx.add("Transpose", f"{lp.name}/by_channel", [grouped], {"perm": (0, 2, 1, 3)}, {})
    (planes,) = ctx.add("Reshape", f"{lp.name}/planes", [by_channel],
                        {"shape": (None, channels * taps, height, width)}, {})
    attrs = {"size": taps, "alpha": float(p.alpha), "beta": float(p.beta), "bias": 1.0}
    (normalised,) = ctx.add("LRN", f"{lp.name}/lrn", [planes], attrs, {})
    centre = taps // 2
    return ctx.add("Slice", lp.name, [normalised],
                   {"starts": (centre,), "ends": (channels * taps,), "axes": (1,), "steps": (taps,)}, {})
