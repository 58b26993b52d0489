"""One converter per Caffe layer type, registered by the V2 type string.

A converter gets the read context, the layer message and the IR names of its bottoms; it adds
IR nodes through the context and returns the IR names of the layer's tops. ``Unsupported``
marks a layer (or a setting of it) that Caffe runs but lrptool's operator set does not cover; the
reader collects them all. ``Invalid`` marks a setting Caffe itself would refuse (a zero kernel, an
axis out of range, slice points out of order): the file is wrong, and the reader says so at once.
Each converter declares how many bottoms it takes, so the reader checks that before calling it.
"""

import math

import numpy as np

from lrptool.errors import GraphError

from .builder import Registry, Unsupported  # noqa: F401  (Unsupported: what converters raise)

LAYERS = Registry("Caffe layer type")


class Invalid(GraphError):
    """A layer setting that Caffe refuses too; the message says what is wrong with it."""


def layer(*types, bottoms=(1, 1)):
    """Register a converter; ``bottoms`` is the (least, most) number of bottoms it takes (None: any)."""
    return LAYERS.register(*types, bottoms=bottoms)


def canonical_axis(axis, rank, what="axis"):
    """Caffe's ``CanonicalAxisIndex``: -rank <= axis < rank, negative counted from the end."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise Invalid(f"{what} {axis} is out of range for a rank-{rank} input")
    return axis % rank


def finite(value, what):
    value = float(value)
    if not math.isfinite(value):
        raise Invalid(f"{what} is {value}")
    return value


def at_least(value, least, what):
    value = int(value)
    if value < least:
        raise Invalid(f"{what} is {value}, it must be at least {least}")
    return value


def _pair(repeated, h, w, has_h, has_w, default, what):
    """Caffe gives 2-D window settings either as a repeated field (1 value for both axes, or one
    per axis) or as the *_h / *_w pair; the pair wins when set."""
    if has_h or has_w:
        if not (has_h and has_w):
            raise Invalid(f"{what}_h and {what}_w must be given together")
        return int(h), int(w)
    values = [int(v) for v in repeated]
    if not values:
        if default is None:
            raise Invalid(f"no {what} given (kernel_size, or kernel_h and kernel_w)")
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
    for values, least, what in ((kernel, 1, "kernel size"), (stride, 1, "stride"), (dilation, 1, "dilation")):
        for value in values:
            at_least(value, least, what)
    return kernel, stride, pad, dilation


def _window_fits(shape, kernel, pad, dilation, what):
    """A window must fit the padded input at least once; checked before the kernel is allocated."""
    for axis, (size, k, p, d) in enumerate(zip(shape[2:], kernel, pad, dilation)):
        span = d * (k - 1) + 1
        if span > size + 2 * p:
            raise Invalid(f"the {what} window {tuple(kernel)} (span {span}) is larger than the padded input "
                          f"{tuple(shape[2:])} with pad {tuple(pad)}")


def _spatial_input(ctx, tensor, what):
    shape = ctx.shape(tensor)
    if len(shape) != 4:
        raise Unsupported(f"{what} on a rank-{len(shape)} input {shape} (only NCHW is supported)")
    return shape


@layer("Convolution", "Deconvolution", bottoms=(1, None))
def convolution(ctx, lp, bottoms):
    p = lp.convolution_param
    if len(bottoms) > 1:
        raise Unsupported(f"{len(bottoms)} bottoms convolved with shared weights (one bottom per layer is supported)")
    shape = ctx.shape(bottoms[0])
    if canonical_axis(p.axis, len(shape)) != 1:
        raise Unsupported(f"convolution over axis {p.axis}")
    kernel, stride, pad, dilation = _window(p)
    shape = _spatial_input(ctx, bottoms[0], lp.type)
    group = at_least(p.group, 1, "group")
    channels = shape[1]
    outputs = at_least(p.num_output, 1, "num_output")
    if channels % group or outputs % group:
        raise Invalid(f"{channels} input / {outputs} output channels do not split into {group} groups")
    transposed = lp.type == "Deconvolution"
    if not transposed:
        _window_fits(shape, kernel, pad, dilation, "convolution")
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
    axis = canonical_axis(p.axis, len(shape))
    if axis == 0:
        raise Unsupported("inner product over the batch axis")
    source = bottoms[0]
    if axis == 1 and len(shape) > 2:
        # Caffe flattens C·H·W in C-major order, which is what Flatten(axis=1) does for NCHW.
        (source,) = ctx.add("Flatten", f"{lp.name}/flatten", [source], {"axis": 1}, {})
    elif axis < len(shape) - 1:
        # the axes before ``axis`` stay; the rest become one feature axis for the Dense on the last axis
        target = tuple(shape[:axis]) + (_count(shape[axis:]),)
        (source,) = ctx.add("Reshape", f"{lp.name}/flatten", [source], {"shape": target}, {})
    features = _count(shape[axis:])
    outputs = at_least(p.num_output, 1, "num_output")
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
    for values, what in ((kernel, "kernel size"), (stride, "stride")):
        for value in values:
            at_least(value, 1, what)
    if p.HasField("pad_h") or p.HasField("pad_w"):
        pad = (int(p.pad_h), int(p.pad_w))
    else:
        pad = (int(p.pad), int(p.pad))
    # Caffe checks pad < kernel: a window must hold at least one input pixel.
    if any(pp >= k for pp, k in zip(pad, kernel)):
        raise Invalid(f"pad {pad} must be smaller than the kernel {kernel}")
    _window_fits(ctx.shape(bottoms[0]), kernel, pad, (1, 1), "pooling")
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
    slope = finite(lp.relu_param.negative_slope, "negative_slope")
    if slope == 0:
        return ctx.add("Relu", lp.name, bottoms[:1], {}, {})
    return ctx.add("LeakyRelu", lp.name, bottoms[:1], {"alpha": slope}, {})


@layer("PReLU")
def prelu(ctx, lp, bottoms):
    shape = ctx.shape(bottoms[0])
    if len(shape) < 2:
        raise Invalid(f"PReLU needs a channel axis, the input has shape {shape}")
    shared = lp.prelu_param.channel_shared
    channels = 1 if shared else shape[1]
    slope = ctx.blob(lp, 0, (channels,), fill=0.25)
    # The IR's slope broadcasts against the whole input, so lay the channel vector on axis 1.
    slope = slope.reshape((1, channels) + (1,) * (len(shape) - 2))
    return ctx.add("PRelu", lp.name, bottoms[:1], {}, {"slope": slope})


@layer("ELU")
def elu(ctx, lp, bottoms):
    return ctx.add("Elu", lp.name, bottoms[:1], {"alpha": finite(lp.elu_param.alpha, "alpha")}, {})


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
        raise Invalid("clip_param needs both min and max")
    low, high = finite(p.min, "min"), finite(p.max, "max")
    if low > high:
        raise Invalid(f"min {low} is above max {high}")
    return ctx.add("Clip", lp.name, bottoms[:1], {"min": low, "max": high}, {})


@layer("LRN")
def lrn(ctx, lp, bottoms):
    p = lp.lrn_param
    shape = _spatial_input(ctx, bottoms[0], "LRN")
    size = at_least(p.local_size, 1, "local_size")
    if size % 2 == 0:
        raise Invalid(f"local_size {size} is even; Caffe's LRN needs an odd window")
    alpha, beta, k = finite(p.alpha, "alpha"), finite(p.beta, "beta"), finite(p.k, "k")
    if p.norm_region == 1:
        return lrn_within_channel(ctx, lp, bottoms[0], shape)
    widest = 2 * shape[1] - 1
    if size > widest:
        # Any window this wide sums every channel for every channel; a narrower one with alpha/size
        # kept computes the same, without the running sums over size padded channels per pixel.
        alpha, size = alpha * widest / size, widest
    attrs = {"size": size, "alpha": alpha, "beta": beta, "bias": k}
    return ctx.add("LRN", lp.name, bottoms[:1], attrs, {})


@layer("BatchNorm")
def batch_norm(ctx, lp, bottoms):
    p = lp.batch_norm_param
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise Unsupported("use_global_stats: false normalises with the batch's own statistics")
    shape = ctx.shape(bottoms[0])
    if len(shape) < 2:
        raise Invalid(f"BatchNorm needs a channel axis, the input has shape {shape}")
    eps = finite(p.eps, "eps")
    if eps < 0:
        raise Invalid(f"eps is {eps}, it must not be negative")
    channels = shape[1]
    mean = ctx.blob(lp, 0, (channels,), fill=0.0)
    var = ctx.blob(lp, 1, (channels,), fill=1.0, positive=True)
    factor = ctx.blob(lp, 2, (1,), fill=1.0, exact=True)
    # Caffe stores running sums; the third blob is the sum of the decay weights (0 means unset).
    s = float(factor.reshape(-1)[0])
    scale = 0.0 if s == 0 else 1.0 / s
    mean = ctx.float32(lp, mean.astype(np.float64) * scale, "the mean (blob 0 / blob 2)")
    var = ctx.float32(lp, var.astype(np.float64) * scale, "the variance (blob 1 / blob 2)")
    if (var.astype(np.float64) + eps <= 0).any():
        raise ctx.weights_problem(lp, "the variance (blob 1) is negative, or zero with eps 0")
    params = {"scale": np.ones(channels, np.float32), "bias": np.zeros(channels, np.float32),
              "mean": mean, "var": var}
    return ctx.add("BatchNorm", lp.name, bottoms[:1], {"epsilon": eps}, params)


def _per_channel_axis(ctx, lp, p, bottoms):
    if len(bottoms) != 1:
        raise Unsupported(f"{lp.type} with {len(bottoms)} bottoms (only a learned parameter is supported)")
    shape = ctx.shape(bottoms[0])
    axis = canonical_axis(p.axis, len(shape))
    if p.num_axes < -1 or p.num_axes >= 0 and axis + p.num_axes > len(shape):
        raise Invalid(f"num_axes {p.num_axes} from axis {p.axis} does not fit a rank-{len(shape)} input")
    if axis != 1 or p.num_axes != 1:
        raise Unsupported(f"axis {p.axis}, num_axes {p.num_axes} (only per-channel on axis 1)")
    return shape[1]


def scale_by_tensor(ctx, lp, bottoms):
    """Scale with a second bottom (e.g. squeeze-excitation): x · s, s aligned with x from ``axis``."""
    p = lp.scale_param
    x_shape, s_shape = ctx.shape(bottoms[0]), ctx.shape(bottoms[1])
    axis = canonical_axis(p.axis, len(x_shape))
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


@layer("Scale", bottoms=(1, 2))
def scale_layer(ctx, lp, bottoms):
    p = lp.scale_param
    if len(bottoms) == 2:
        return scale_by_tensor(ctx, lp, bottoms)
    channels = _per_channel_axis(ctx, lp, p, bottoms)
    params = {"scale": ctx.blob(lp, 0, (channels,), fill=1.0)}
    if p.bias_term:
        params["bias"] = ctx.blob(lp, 1, (channels,), fill=0.0)
    return ctx.add("Scale", lp.name, bottoms[:1], {}, params)


@layer("Bias", bottoms=(1, 2))
def bias_layer(ctx, lp, bottoms):
    channels = _per_channel_axis(ctx, lp, lp.bias_param, bottoms)
    return ctx.add("Bias", lp.name, bottoms[:1], {}, {"bias": ctx.blob(lp, 0, (channels,), fill=0.0)})


@layer("Eltwise", bottoms=(2, None))
def eltwise(ctx, lp, bottoms):
    p = lp.eltwise_param
    shapes = [ctx.shape(b) for b in bottoms]
    if any(s != shapes[0] for s in shapes[1:]):
        # Caffe adds, multiplies and compares blobs of one shape only; it does not broadcast.
        raise Invalid(f"the bottoms have different shapes {shapes}")
    if p.operation == 2:
        if p.coeff:
            raise Unsupported("coeff is only allowed with operation SUM")
        return ctx.add("Max", lp.name, bottoms, {}, {})
    if p.operation == 0:
        if p.coeff:
            raise Unsupported("coeff is only allowed with operation SUM")
        current = bottoms[0]
        for index, other in enumerate(bottoms[1:], start=1):
            name = lp.name if index == len(bottoms) - 1 else f"{lp.name}/mul{index}"
            (current,) = ctx.add("Mul", name, [current, other], {}, {})
        return [current]
    coeffs = [finite(c, "coeff") for c in p.coeff] or [1.0] * len(bottoms)
    if len(coeffs) != len(bottoms):
        raise Invalid(f"{len(coeffs)} coefficients for {len(bottoms)} bottoms")
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
    for value, what in ((p.power, "power"), (p.scale, "scale"), (p.shift, "shift")):
        finite(value, what)
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


@layer("Concat", bottoms=(1, None))
def concat(ctx, lp, bottoms):
    p = lp.concat_param
    axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
    axis = canonical_axis(axis, len(ctx.shape(bottoms[0])))
    if len(bottoms) == 1:
        return list(bottoms)
    return ctx.add("Concat", lp.name, bottoms, {"axis": axis}, {})


@layer("Slice")
def slice_layer(ctx, lp, bottoms):
    p = lp.slice_param
    shape = ctx.shape(bottoms[0])
    axis = canonical_axis(p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim, len(shape))
    size = shape[axis]
    if size is None:
        raise Unsupported("slicing the batch axis")
    count = len(lp.top)
    if p.slice_point:
        points = [int(v) for v in p.slice_point]
        if len(points) != count - 1:
            raise Invalid(f"{len(points)} slice points for {count} tops (give one fewer than the tops)")
        bounds = [0] + points + [size]
        if any(b <= a for a, b in zip(bounds, bounds[1:])):
            raise Invalid(f"slice points {points} must increase strictly within axis {axis} of size {size}")
        split = [b - a for a, b in zip(bounds, bounds[1:])]
    else:
        if size % count:
            raise Invalid(f"axis {axis} of size {size} does not split evenly into {count} tops")
        split = [size // count] * count
    return ctx.add("Split", lp.name, bottoms[:1], {"axis": axis, "split": tuple(split)}, {}, outputs=count)


@layer("Flatten")
def flatten(ctx, lp, bottoms):
    p = lp.flatten_param
    shape = ctx.shape(bottoms[0])
    rank = len(shape)
    axis, end = canonical_axis(p.axis, rank), canonical_axis(p.end_axis, rank, "end_axis")
    if end < axis:
        raise Invalid(f"end_axis {p.end_axis} comes before axis {p.axis}")
    if axis == 1 and end == rank - 1:
        return ctx.add("Flatten", lp.name, bottoms[:1], {"axis": 1}, {})
    if axis == 0:
        raise Unsupported("flattening the batch axis")
    merged = _count(shape[axis:end + 1])
    target = tuple(shape[:axis]) + (merged,) + tuple(shape[end + 1:])
    return ctx.add("Reshape", lp.name, bottoms[:1], {"shape": target}, {})


@layer("Reshape")
def reshape(ctx, lp, bottoms):
    p = lp.reshape_param
    shape = list(ctx.shape(bottoms[0]))
    rank = len(shape)
    # Caffe's ranges: axis in [-(rank + 1), rank], num_axes >= -1, and the replaced axes inside the input.
    start = p.axis if p.axis >= 0 else rank + 1 + p.axis
    if not 0 <= start <= rank:
        raise Invalid(f"axis {p.axis} is out of range for a rank-{rank} input")
    if p.num_axes < -1 or p.num_axes != -1 and start + p.num_axes > rank:
        raise Invalid(f"num_axes {p.num_axes} from axis {p.axis} does not fit a rank-{rank} input")
    end = rank if p.num_axes == -1 else start + p.num_axes
    dims = [int(d) for d in p.shape.dim]
    if any(d < -1 for d in dims):
        raise Invalid(f"reshape dimensions {dims}: only -1 (inferred), 0 (copied) and sizes are allowed")
    middle = []
    for index, d in enumerate(dims):
        # 0 copies the input's dimension at the same position (relative to ``axis``).
        if d == 0 and start + index >= rank:
            raise Invalid(f"dimension {index} of {dims} copies axis {start + index}, which the input {tuple(shape)} "
                          "does not have")
        middle.append(shape[start + index] if d == 0 else d)
    target = shape[:start] + middle + shape[end:]
    if target.count(-1) > 1:
        raise Invalid("more than one -1 in the reshape dimensions")
    if -1 in target:
        known = _count(d for d in target if d not in (-1, None))
        total = _count(d for d in shape if d is not None)
        if known == 0 or total % known:
            raise Invalid(f"the input {tuple(shape)} does not reshape into {dims}")
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
    axis = canonical_axis(lp.softmax_param.axis, len(ctx.shape(bottoms[0])))
    return ctx.add("Softmax", lp.name, bottoms[:1], {"axes": (axis,)}, {})


WITHIN_CHANNEL_LIMIT = 15


def _count(dims):
    """Elements in ``dims`` as an exact Python int (NumPy's int64 product wraps around on huge sizes)."""
    total = 1
    for d in dims:
        total *= int(d)
    return total


def lrn_within_channel(ctx, lp, tensor, shape):
    """Caffe's WITHIN_CHANNEL LRN, x · (1 + alpha/size² · Σ_{size×size window} x²)^(−beta), built from
    the IR's cross-channel LRN: the size² zero-padded spatial shifts of every channel are laid side
    by side on the channel axis, so that a cross-channel window of size² centred on the unshifted
    copy sums exactly the spatial neighbourhood; the centre copies are then picked out again.
    (Caffe ignores ``k`` in this mode.)"""
    p = lp.lrn_param
    size = int(p.local_size)
    if size > WITHIN_CHANNEL_LIMIT:
        # The construction below makes size² nodes; real networks use 3 or 5.
        raise Unsupported(f"WITHIN_CHANNEL with local_size {size} (up to {WITHIN_CHANNEL_LIMIT} is supported)")
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
