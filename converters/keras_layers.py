"""One converter per Keras layer class, registered by class name.

Keras works channels-last (NHWC, NWC); the IR is channels-first. Every tensor of rank 3 or more
is therefore held in the IR with its Keras channel axis moved to axis 1, and each converter maps
Keras axes, kernels and pads onto that layout. Rank-2 tensors (N, features) are identical in both.
The one exception is a ``channels_first`` layer: the reader hands it its input in Keras' own order
(already NCHW), so the same converters apply unchanged.

A Flatten of a channels-last feature map is not emitted where it stands: its IR element order
(c, h, w) differs from Keras' (h, w, c). A Dense that reads it absorbs the difference by
permuting its weight rows once; any other reader gets an explicit Transpose + Flatten.
"""

import math

import numpy as np

from lrptool.errors import FreeSizeError
from lrptool.limits import check_shape

from .builder import Registry
from .keras_errors import WEIGHTS_ADVICE, BadLayer, Unsupported, WeightCountError, short

LAYERS = Registry("Keras layer class")
# Layers that combine several tensors; every other converter takes exactly one.
MERGE_LAYERS = ("Add", "Subtract", "Multiply", "Average", "Concatenate")


layer = LAYERS.register


def checked_axis(axis, rank):
    if not -rank <= axis < rank:
        raise BadLayer(f"axis {axis} is outside a tensor of {rank} axes")
    return axis


def to_keras_axis(axis, rank):
    """The IR axis of Keras axis ``axis`` (negative allowed) in a tensor of ``rank``."""
    axis %= rank
    if rank < 3 or axis == 0:
        return axis
    return 1 if axis == rank - 1 else axis + 1


def channels_last_perm(rank):
    return (0,) + tuple(range(2, rank)) + (1,)


def channels_first_perm(rank):
    return (0, rank - 1) + tuple(range(1, rank - 1))


def tuple_of(value, rank, what="setting"):
    if isinstance(value, int):
        return (value,) * rank
    if len(value) != rank:
        raise BadLayer(f"{what} {list(value)} has {len(value)} entries for a {rank}-D layer")
    return tuple(int(v) for v in value)


def check_data_format(cfg):
    """The reader hands channels_first layers their input in Keras' own order, which is already the
    IR's; anything else is unknown."""
    fmt = cfg.get("data_format", "channels_last")
    if fmt not in (None, "channels_last", "channels_first"):
        raise Unsupported(f"data_format {fmt!r}")


def wants_keras_order(class_name, cfg):
    """True when a layer must see its input exactly as Keras holds it (channels-first layers)."""
    if cfg.get("data_format") == "channels_first":
        return True
    axis = cfg.get("axis")
    if class_name == "BatchNormalization" and axis in (1, [1]):
        return True
    # a converter registered with keras_order=True (recurrent layers, plug-ins) reads Keras' own layout
    return bool(getattr(LAYERS.get(class_name), "keras_order", False))


def same_pads(spatial, kernel, strides, dilations):
    """TensorFlow's 'same': output ceil(in/stride), any odd pad goes at the end."""
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        if size is None:
            if s != 1:
                # the padding then depends on the size (size mod stride)
                raise FreeSizeError(f"padding 'same' with stride {s} on a free size")
            total = (k - 1) * d
        else:
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        begins.append(total // 2)
        ends.append(total - total // 2)
    return tuple(begins + ends)


def window_pads(padding, spatial, kernel, strides, dilations):
    if padding == "valid":
        return (0,) * (2 * len(kernel))
    if padding == "same":
        return same_pads(spatial, kernel, strides, dilations)
    if padding == "causal" and len(kernel) == 1:
        return ((kernel[0] - 1) * dilations[0], 0)
    raise Unsupported(f"padding {padding!r}")


# Fused ``activation=`` strings; each returns the IR nodes as (op, attrs) pairs.
def activation_nodes(ctx, name):
    if isinstance(name, dict):
        # A serialised activation: the name sits in ``config`` (a string or a dict) or is the class.
        inner = name.get("config")
        name = inner if isinstance(inner, str) else (inner or {}).get("name") or name.get("class_name")
    if name is not None and not isinstance(name, str):
        raise BadLayer(f"activation {short(name)} is not a name")
    name = (name or "linear").lower()
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "selu": "Selu", "elu": "Elu",
              "hard_swish": "HardSwish"}
    if name == "linear":
        return []
    if name in simple:
        return [(simple[name], {})]
    if name == "softmax":
        return [("Softmax", {"axes": (1,)})]
    if name == "relu6":
        return [("Clip", {"min": 0.0, "max": 6.0})]
    if name == "hard_sigmoid":
        # Keras 2 used 0.2·x + 0.5; Keras 3 switched to relu6(x + 3)/6.
        return [("HardSigmoid", {"alpha": 1 / 6 if ctx.keras_major >= 3 else 0.2, "beta": 0.5})]
    if name in ("swish", "silu", "softplus", "softsign", "gelu", "exponential", "mish", "log_softmax"):
        raise Unsupported(f"activation {name!r} has no lrptool operator")
    raise Unsupported(f"unknown activation {name!r}")


def apply_activation(ctx, lname, tensor, name):
    for i, (op, attrs) in enumerate(activation_nodes(ctx, name)):
        rank = len(ctx.shape(tensor))
        if op == "Softmax" and ctx.current_keras_order and rank >= 3:
            # Keras normalises the last axis, which a channels_first layer's output keeps last.
            attrs = {"axes": (rank - 1,)}
        tensor = ctx.emit(f"{lname}/{op.lower()}" if i == 0 else f"{lname}/{op.lower()}{i}", op, [tensor], attrs)
    return tensor


def check_activation(ctx, cfg):
    if "activation" in cfg:
        activation_nodes(ctx, cfg["activation"])


def take(weights, lname, count, ranks=None):
    """The layer's ``count`` weight arrays, read now (the reader checks each as it reads it);
    ``ranks`` is the number of axes each must have."""
    if len(weights) != count:
        raise WeightCountError(f"{len(weights)} weight arrays are stored, {count} expected")
    arrays = [np.asarray(w) for w in weights]
    for index, (array, rank) in enumerate(zip(arrays, ranks or ())):
        if array.ndim != rank:
            raise BadLayer(f"weight {index} has shape {list(array.shape)}, expected {rank} axes", WEIGHTS_ADVICE)
    return arrays


def expect_shape(array, shape, what):
    if tuple(array.shape) != tuple(shape):
        raise BadLayer(f"{what} has shape {list(array.shape)}, expected {list(shape)}", WEIGHTS_ADVICE)


def bias_of(w, index, channels):
    expect_shape(w[index], (channels,), "the bias")
    return w[index]


# ---------------------------------------------------------------- convolutions

def conv_common(ctx, cfg, x, rank):
    check_data_format(cfg)
    kernel = tuple_of(required(cfg, "kernel_size"), rank, "kernel_size")
    strides = tuple_of(cfg.get("strides") or 1, rank, "strides")
    dilations = tuple_of(cfg.get("dilation_rate", 1), rank, "dilation_rate")
    spatial = ctx.shape(x)[2:]
    if len(spatial) != rank:
        raise Unsupported(f"a {rank}-D convolution on an input of shape {ctx.keras_shape(x)}")
    pads = window_pads(cfg.get("padding", "valid"), spatial, kernel, strides, dilations)
    return {"strides": strides, "dilations": dilations, "pads": pads, "kernel": kernel}


def required(cfg, key):
    if key not in cfg:
        raise BadLayer(f"the config has no {key!r}")
    return cfg[key]


def check_kernel(array, kernel, what="the kernel"):
    """Keras stores kernels as (k…, in, out): the window must be the configured one."""
    if tuple(array.shape[:len(kernel)]) != tuple(kernel) or min(array.shape, default=0) < 1:
        raise BadLayer(f"{what} has shape {list(array.shape)}, which does not fit kernel_size {list(kernel)}",
                       WEIGHTS_ADVICE)


def conv_kernel(k):
    """(k…, in, out) → (out, in, k…)."""
    rank = k.ndim - 2
    return np.ascontiguousarray(np.transpose(k, (rank + 1, rank) + tuple(range(rank))))


@layer("Conv1D", "Conv2D", "Convolution1D", "Convolution2D")
def conv(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    rank = 1 if "1D" in ctx.class_name else 2
    attrs = conv_common(ctx, cfg, x, rank)
    use_bias = cfg.get("use_bias", True)
    w = take(weights, lname, 2 if use_bias else 1, (rank + 2, 1))
    check_kernel(w[0], attrs.pop("kernel"))
    attrs["group"] = int(cfg.get("groups", 1) or 1)
    kernel = w[0]
    if ctx.keras_major == 1:
        # Keras 1 files do not say which backend wrote them; Theano's convolution flips the kernel
        if ctx.keras1_backend not in ("tensorflow", "theano"):
            raise Unsupported("a Keras 1 file does not record its backend, and Theano-backend kernels are stored "
                              "for a flipped convolution: say which wrote it (--keras1-backend tensorflow|theano)")
        if ctx.keras1_backend == "theano":
            kernel = kernel[tuple(slice(None, None, -1) for _ in range(rank))]
    params = {"weight": conv_kernel(np.ascontiguousarray(kernel))}
    if use_bias:
        params["bias"] = bias_of(w, 1, kernel.shape[-1])
    y = ctx.emit(lname, "Conv", [x], attrs, params)
    return apply_activation(ctx, lname, y, cfg.get("activation"))


def depthwise_weight(k):
    """(k…, C, mult) → (C·mult, 1, k…), output channel c·mult + m as Keras orders it."""
    rank = k.ndim - 2
    channels, mult = k.shape[-2], k.shape[-1]
    w = np.transpose(k, (rank, rank + 1) + tuple(range(rank)))
    return np.ascontiguousarray(w.reshape((channels * mult, 1) + k.shape[:rank]))


@layer("DepthwiseConv1D", "DepthwiseConv2D")
def depthwise(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    rank = 1 if "1D" in ctx.class_name else 2
    attrs = conv_common(ctx, cfg, x, rank)
    use_bias = cfg.get("use_bias", True)
    w = take(weights, lname, 2 if use_bias else 1, (rank + 2, 1))
    check_kernel(w[0], attrs.pop("kernel"))
    attrs["group"] = int(w[0].shape[-2])
    params = {"weight": depthwise_weight(w[0])}
    if use_bias:
        params["bias"] = bias_of(w, 1, w[0].shape[-2] * w[0].shape[-1])
    y = ctx.emit(lname, "Conv", [x], attrs, params)
    return apply_activation(ctx, lname, y, cfg.get("activation"))


@layer("SeparableConv1D", "SeparableConv2D")
def separable(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    rank = 1 if "1D" in ctx.class_name else 2
    attrs = conv_common(ctx, cfg, x, rank)
    use_bias = cfg.get("use_bias", True)
    w = take(weights, lname, 3 if use_bias else 2, (rank + 2, rank + 2, 1))
    check_kernel(w[0], attrs.pop("kernel"), "the depthwise kernel")
    check_kernel(w[1], (1,) * rank, "the pointwise kernel")
    attrs["group"] = int(w[0].shape[-2])
    y = ctx.emit(f"{lname}/depthwise", "Conv", [x], attrs, {"weight": depthwise_weight(w[0])})
    params = {"weight": conv_kernel(w[1])}
    if use_bias:
        params["bias"] = bias_of(w, 2, w[1].shape[-1])
    ones = (1,) * rank
    y = ctx.emit(lname, "Conv", [y], {"strides": ones, "dilations": ones, "pads": (0,) * (2 * rank)}, params)
    return apply_activation(ctx, lname, y, cfg.get("activation"))


@layer("Conv2DTranspose", "Conv1DTranspose")
def conv_transpose(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    check_data_format(cfg)
    rank = 1 if "1D" in ctx.class_name else 2
    kernel = tuple_of(required(cfg, "kernel_size"), rank, "kernel_size")
    strides = tuple_of(cfg.get("strides") or 1, rank, "strides")
    dilations = tuple_of(cfg.get("dilation_rate", 1), rank, "dilation_rate")
    if cfg.get("output_padding") is not None:
        raise Unsupported("output_padding")
    if max(dilations) != 1:
        raise Unsupported("dilated transposed convolution")
    padding = cfg.get("padding", "valid")
    pads, extra = [0] * (2 * rank), [0] * rank
    if padding == "same":
        # The transpose of a 'same' convolution whose input is stride × ours.
        for i, (k, s) in enumerate(zip(kernel, strides)):
            total = max(k - s, 0)
            pads[i], pads[rank + i] = total // 2, total - total // 2
            extra[i] = max(s - k, 0)
    elif padding != "valid":
        raise Unsupported(f"padding {padding!r}")
    use_bias = cfg.get("use_bias", True)
    w = take(weights, lname, 2 if use_bias else 1, (rank + 2, 1))
    check_kernel(w[0], kernel)
    # Keras stores (k…, out, in); the IR wants (in, out, k…).
    params = {"weight": conv_kernel(w[0])}
    if use_bias:
        params["bias"] = bias_of(w, 1, w[0].shape[-2])
    y = ctx.emit(lname, "ConvTranspose", [x], {"strides": strides, "dilations": dilations, "pads": tuple(pads),
                                               "output_padding": tuple(extra)}, params)
    return apply_activation(ctx, lname, y, cfg.get("activation"))


@layer("Dense")
def dense(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    use_bias = cfg.get("use_bias", True)
    w = take(weights, lname, 2 if use_bias else 1, (2, 1))
    kernel = w[0]
    flat = ctx.flattened(x)
    if flat is not None:
        source, keras_shape = flat
        spatial, channels = keras_shape[1:-1], keras_shape[-1]
        features = math.prod(keras_shape[1:])
        if kernel.shape[0] != features:
            raise BadLayer(f"the kernel has {kernel.shape[0]} rows for {features} flattened inputs", WEIGHTS_ADVICE)
        # Rows arrive in Keras (h, w, c) order; the IR flattens (c, h, w).
        rows = kernel.reshape(tuple(spatial) + (channels, -1))
        order = (len(spatial),) + tuple(range(len(spatial))) + (len(spatial) + 1,)
        kernel = np.transpose(rows, order).reshape(kernel.shape)
        x = ctx.emit(f"{lname}/flatten", "Flatten", [source], {"axis": 1})
    params = {"weight": np.ascontiguousarray(kernel.T)}
    if use_bias:
        params["bias"] = bias_of(w, 1, kernel.shape[1])
    rank = len(ctx.shape(x))
    if rank >= 3:
        x = ctx.emit(f"{lname}/to_last", "Transpose", [x], {"perm": channels_last_perm(rank)})
        y = ctx.emit(f"{lname}/dense", "Dense", [x], {}, params)
        y = ctx.emit(lname, "Transpose", [y], {"perm": channels_first_perm(rank)})
    else:
        y = ctx.emit(lname, "Dense", [x], {}, params)
    return apply_activation(ctx, lname, y, cfg.get("activation"))


@layer("BatchNormalization")
def batch_norm(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    rank = len(ctx.shape(x))
    axis = cfg.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise Unsupported(f"normalisation over axes {axis}")
        axis = axis[0]
    checked_axis(axis, rank)
    ir_axis = axis % rank if ctx.in_keras_order(x) else to_keras_axis(axis, rank)
    if ir_axis != 1:
        raise Unsupported(f"axis {axis} is not the channel axis")
    scale, center = cfg.get("scale", True), cfg.get("center", True)
    w = list(take(weights, lname, 2 + scale + center, (1,) * (2 + scale + center)))
    channels = ctx.shape(x)[1]
    for array in w:
        expect_shape(array, (channels,), "a normalisation vector")
    gamma = w.pop(0) if scale else None
    beta = w.pop(0) if center else None
    mean, var = w
    epsilon = float(cfg.get("epsilon", 1e-3))
    if np.any(var < 0) or np.any(var.astype(np.float64) + epsilon <= 0):
        raise BadLayer("the moving variance is negative, or zero with epsilon 0 (a division by zero)", WEIGHTS_ADVICE)
    params = {"scale": gamma if gamma is not None else np.ones_like(mean),
              "bias": beta if beta is not None else np.zeros_like(mean), "mean": mean, "var": var}
    return ctx.emit(lname, "BatchNorm", [x], {"epsilon": epsilon}, params)


# ---------------------------------------------------------------- activations

@layer("Activation")
def activation(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    nodes = activation_nodes(ctx, cfg.get("activation"))
    if not nodes:
        return x
    for i, (op, attrs) in enumerate(nodes):
        x = ctx.emit(lname if i == 0 else f"{lname}/{i}", op, [x], attrs)
    return x


@layer("ReLU")
def relu(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    if float(cfg.get("threshold", 0.0) or 0.0) != 0.0:
        raise Unsupported("threshold != 0")
    slope = float(cfg.get("negative_slope", 0.0) or 0.0)
    max_value = cfg.get("max_value")
    if slope and max_value is not None:
        raise Unsupported("negative_slope together with max_value")
    if slope:
        return ctx.emit(lname, "LeakyRelu", [x], {"alpha": slope})
    if max_value is not None:
        return ctx.emit(lname, "Clip", [x], {"min": 0.0, "max": float(max_value)})
    return ctx.emit(lname, "Relu", [x])


@layer("LeakyReLU")
def leaky_relu(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    alpha = cfg.get("negative_slope", cfg.get("alpha", 0.3))
    return ctx.emit(lname, "LeakyRelu", [x], {"alpha": float(0.3 if alpha is None else alpha)})


@layer("ELU")
def elu(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    return ctx.emit(lname, "Elu", [x], {"alpha": float(cfg.get("alpha", 1.0))})


@layer("ThresholdedReLU")
def thresholded_relu(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    theta = float(cfg.get("theta", 1.0))
    if theta == 0.0:
        return ctx.emit(lname, "Relu", [x])
    return ctx.emit(lname, "ThresholdedRelu", [x], {"alpha": theta})


@layer("PReLU")
def prelu(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    (alpha,) = take(weights, lname, 1)
    if alpha.ndim >= 1 and alpha.ndim != len(ctx.shape(x)) - 1:
        raise BadLayer(f"the slopes have shape {list(alpha.shape)} for an input of {len(ctx.shape(x)) - 1} axes",
                       WEIGHTS_ADVICE)
    if alpha.ndim >= 2:
        # Keras' slope has the input's (…, C) shape without batch; move C first as in the IR.
        alpha = np.moveaxis(alpha, -1, 0)
    return ctx.emit(lname, "PRelu", [x], {}, {"slope": np.ascontiguousarray(alpha)})


@layer("Softmax")
def softmax(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    rank = len(ctx.shape(x))
    axis = cfg.get("axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return ctx.emit(lname, "Softmax", [x], {"axes": tuple(to_keras_axis(checked_axis(a, rank), rank) for a in axes)})


@layer("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
       "ActivityRegularization")
def identity(ctx, lname, cfg, inputs, weights):
    return inputs[0]


# ---------------------------------------------------------------- embeddings

@layer("Embedding")
def embedding(ctx, lname, cfg, inputs, weights):
    """Token ids (N, T) → vectors, held channels-first like every rank-3 tensor: (N, features, T)."""
    (x,) = inputs
    (table,) = take(weights, lname, 1, (2,))
    if len(ctx.shape(x)) != 2:
        raise Unsupported(f"an embedding of input shape {ctx.shape(x)} (lrptool takes token ids of shape (N, T))")
    vectors = ctx.emit(f"{lname}/lookup", "Embedding", [x], {}, {"weight": table})
    return ctx.emit(lname, "Transpose", [vectors], {"perm": (0, 2, 1)})


# ---------------------------------------------------------------- pooling

def pool(ctx, lname, cfg, inputs, op, rank):
    (x,) = inputs
    check_data_format(cfg)
    kernel = tuple_of(cfg.get("pool_size", 2), rank, "pool_size")
    strides = tuple_of(cfg.get("strides") or kernel, rank, "strides")
    ones = (1,) * rank
    pads = window_pads(cfg.get("padding", "valid"), ctx.shape(x)[2:], kernel, strides, ones)
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": ones, "pads": pads, "ceil_mode": False}
    if op == "AveragePool":
        attrs["count_include_pad"] = False
    return ctx.emit(lname, op, [x], attrs)


@layer("MaxPooling2D", "MaxPool2D")
def max_pool2d(ctx, lname, cfg, inputs, weights):
    return pool(ctx, lname, cfg, inputs, "MaxPool", 2)


@layer("MaxPooling1D", "MaxPool1D")
def max_pool1d(ctx, lname, cfg, inputs, weights):
    return pool(ctx, lname, cfg, inputs, "MaxPool", 1)


@layer("AveragePooling2D", "AvgPool2D")
def avg_pool2d(ctx, lname, cfg, inputs, weights):
    return pool(ctx, lname, cfg, inputs, "AveragePool", 2)


@layer("AveragePooling1D", "AvgPool1D")
def avg_pool1d(ctx, lname, cfg, inputs, weights):
    return pool(ctx, lname, cfg, inputs, "AveragePool", 1)


@layer("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAvgPool1D", "GlobalAvgPool2D",
       "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPool1D", "GlobalMaxPool2D")
def global_pool(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    check_data_format(cfg)
    op = "GlobalMaxPool" if "Max" in ctx.class_name else "GlobalAveragePool"
    if cfg.get("keepdims"):
        return ctx.emit(lname, op, [x])
    y = ctx.emit(f"{lname}/pool", op, [x])
    return ctx.emit(lname, "Flatten", [y], {"axis": 1})


# ---------------------------------------------------------------- data movement

@layer("Flatten")
def flatten(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    check_data_format(cfg)
    if len(ctx.shape(x)) <= 2:
        return x
    # Keras flattens a channels_first input as if it were channels_last: (h, w, c) order. The IR
    # tensor it receives then stands for exactly that channels-last view.
    return ctx.defer_flatten(lname, x, as_channels_last=cfg.get("data_format") == "channels_first")


def border_spans(value, rank):
    """(begin, end) per spatial axis from a Keras padding/cropping setting: an int, one size per axis,
    or (begin, end) per axis; a 1-D layer also takes a bare (begin, end)."""
    if isinstance(value, int):
        return [(value, value)] * rank
    if rank == 1 and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [(value[0], value[1])]
    if len(value) != rank:
        raise BadLayer(f"{short(value)} does not give one span per axis of a {rank}-D layer")
    return [(item, item) if isinstance(item, int) else (item[0], item[1]) for item in value]


@layer("ZeroPadding1D", "ZeroPadding2D")
def zero_padding(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    check_data_format(cfg)
    rank = 1 if "1D" in ctx.class_name else 2
    spans = border_spans(cfg.get("padding", 1), rank)
    pads = (0, 0) + tuple(b for b, _ in spans) + (0, 0) + tuple(e for _, e in spans)
    return ctx.emit(lname, "Pad", [x], {"pads": pads, "value": 0.0})


@layer("Cropping1D", "Cropping2D")
def cropping(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    check_data_format(cfg)
    rank = 1 if "1D" in ctx.class_name else 2
    spans = border_spans(cfg.get("cropping", 1), rank)
    spatial = ctx.shape(x)[2:]
    starts = tuple(b for b, _ in spans)
    ends = tuple(size - e for size, (_, e) in zip(spatial, spans))
    return ctx.emit(lname, "Slice", [x], {"starts": starts, "ends": ends, "axes": tuple(range(2, 2 + rank)),
                                          "steps": (1,) * rank})


@layer("UpSampling1D", "UpSampling2D")
def upsampling(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    check_data_format(cfg)
    rank = 1 if "1D" in ctx.class_name else 2
    if cfg.get("interpolation", "nearest") != "nearest":
        raise Unsupported(f"interpolation {cfg.get('interpolation')!r}")
    size = tuple_of(cfg.get("size", 2), rank, "size")
    return ctx.emit(lname, "Upsample", [x], {"scales": size})


@layer("Reshape")
def reshape(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    keras_in = ctx.keras_shape(x)
    if None in keras_in[1:]:
        raise FreeSizeError(f"reshapes {list(keras_in)}, whose sizes are free")
    target = [int(d) for d in required(cfg, "target_shape")]
    if target.count(-1) > 1:
        raise Unsupported(f"target_shape {target}")
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = math.prod(keras_in[1:]) // known
    rank = len(ctx.shape(x))
    if rank >= 3:
        x = ctx.emit(f"{lname}/to_last", "Transpose", [x], {"perm": channels_last_perm(rank)})
    out_rank = len(target) + 1
    name = lname if out_rank < 3 else f"{lname}/reshape"
    y = ctx.emit(name, "Reshape", [x], {"shape": (None,) + tuple(target)})
    if out_rank >= 3:
        y = ctx.emit(lname, "Transpose", [y], {"perm": channels_first_perm(out_rank)})
    return y


@layer("Permute")
def permute(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    rank = len(ctx.shape(x))
    dims = (0,) + tuple(int(d) for d in required(cfg, "dims"))
    if sorted(dims) != list(range(rank)):
        raise BadLayer(f"dims {list(dims[1:])} is not an order of the axes 1..{rank - 1}")
    # IR axes in Keras order, permuted as Keras does, then back to the IR layout.
    keras_axes = [channels_last_perm(rank)[i] for i in range(rank)] if rank >= 3 else list(range(rank))
    permuted = [keras_axes[d] for d in dims]
    back = channels_first_perm(rank) if rank >= 3 else tuple(range(rank))
    return ctx.emit(lname, "Transpose", [x], {"perm": tuple(permuted[b] for b in back)})


@layer("Concatenate")
def concatenate(ctx, lname, cfg, inputs, weights):
    rank = len(ctx.shape(inputs[0]))
    axis = cfg.get("axis", -1)
    if isinstance(axis, list):
        raise BadLayer(f"axis {axis} is not one axis")
    return ctx.emit(lname, "Concat", list(inputs), {"axis": to_keras_axis(checked_axis(axis, rank), rank)})


@layer("Add")
def add(ctx, lname, cfg, inputs, weights):
    if len(inputs) == 2:
        return ctx.emit(lname, "Add", list(inputs))
    return ctx.emit(lname, "Sum", list(inputs))


@layer("Subtract")
def subtract(ctx, lname, cfg, inputs, weights):
    return ctx.emit(lname, "Sub", list(inputs))


@layer("Multiply")
def multiply(ctx, lname, cfg, inputs, weights):
    y = inputs[0]
    for i, other in enumerate(inputs[1:], start=1):
        y = ctx.emit(lname if i == len(inputs) - 1 else f"{lname}/{i}", "Mul", [y, other])
    return y


@layer("Average")
def average(ctx, lname, cfg, inputs, weights):
    total = ctx.emit(f"{lname}/sum", "Sum", list(inputs))
    channels = ctx.shape(total)[1]
    check_shape((channels,), 4, f"the averaging factors of {channels} channels")
    factor = np.full(channels, 1.0 / len(inputs), dtype=np.float32)
    return ctx.emit(lname, "Scale", [total], {}, {"scale": factor})


# Layers that are known but have no exact IR form, with the reason given to the user.
REFUSED = {
    "Maximum": "element-wise maximum of tensors has no lrptool operator",
    "Minimum": "element-wise minimum of tensors has no lrptool operator",
    "Dot": "tensor products between activations have no lrptool operator",
    "Lambda": "arbitrary Python code cannot be read from the file",
    "TFOpLambda": "a raw TensorFlow operation",
    "LayerNormalization": "per-sample normalisation has no lrptool operator",
    "Masking": "masks have no lrptool counterpart",
    "TimeDistributed": "wrapper layers are not read",
    "Conv3D": "the IR has 1-D and 2-D windows only",
    "MaxPooling3D": "the IR has 1-D and 2-D windows only",
    "AveragePooling3D": "the IR has 1-D and 2-D windows only",
}
