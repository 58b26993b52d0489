"""One small converter per ONNX operator, registered by op type.

A converter reads the ONNX node (with opset-dependent attribute/input forms), pays any layout
or convention cost, and adds IR nodes through the read context. ``Unsupported`` marks a node
(or a setting of it) that lrptool cannot represent; the reader reports all of them at once.
"""

import numpy as np

from lrptool.errors import FreeSizeError

from .builder import Registry, Unsupported  # noqa: F401  (Unsupported: what converters raise)

CONVERTERS = Registry("ONNX operator")
converter = CONVERTERS.register


def ints(values):
    return tuple(int(v) for v in values)


def brief(values, limit=8):
    """A list for a message: a hostile file's list can be millions of entries long."""
    values = list(values)
    if len(values) <= limit:
        return str(values)
    return "[" + ", ".join(str(v) for v in values[:limit]) + f", … ({len(values)} entries)]"


def axis_index(ctx, axis, rank, what="axis"):
    """``axis`` counted from 0, or the node's error when a rank-``rank`` tensor has no such axis."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise ctx.invalid(f"{what} {axis} is out of range for a rank-{rank} input")
    return axis % rank


def scalar(ctx, value, what):
    """One finite-or-infinite number from a constant operand (a bound, a pad value, an exponent)."""
    value = np.asarray(value)
    if value.size != 1 or value.dtype.kind not in "fiub":
        raise ctx.invalid(f"{what} must be one number, got {value.size} of type {value.dtype}")
    number = float(value.reshape(-1)[0])
    if np.isnan(number):
        raise ctx.invalid(f"{what} is NaN")
    return number


def check_lengths(ctx, rank, **settings):
    """Per-axis settings must have one entry per spatial axis (``pads``: two)."""
    for name, values in settings.items():
        wanted = 2 * rank if name == "pads" else rank
        if values is not None and len(values) != wanted:
            raise ctx.invalid(f"{name} {brief(values)} should have {wanted} entries for {rank} spatial axes")


def resolve_pads(a, spatial, kernel, strides, dilations):
    """Explicit (begin…, end…) pads from ONNX ``pads``/``auto_pad``."""
    rank = len(kernel)
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        return ints(a.get("pads", [0] * (2 * rank)))
    if auto_pad == "VALID":
        return (0,) * (2 * rank)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad {auto_pad!r}")
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        if size is None:
            if s != 1:
                # the padding then depends on the size: (size mod stride)
                raise FreeSizeError(f"auto_pad {auto_pad} with stride {s} on a free size")
            total = (k - 1) * d
        else:
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return tuple(begins + ends)


def window_settings(ctx, node, a, kernel):
    rank = len(kernel)
    if rank not in (1, 2):
        raise Unsupported(f"{rank}-D windows (lrptool supports 1-D and 2-D)")
    strides = ints(a.get("strides", [1] * rank))
    dilations = ints(a.get("dilations", [1] * rank))
    spatial = ctx.shape(node.input[0])[2:]
    if len(spatial) != rank:
        raise Unsupported(f"a {rank}-D window on an input of shape {ctx.shape(node.input[0])}")
    check_lengths(ctx, rank, strides=strides, dilations=dilations, pads=a.get("pads"))
    if min(strides) < 1 or min(dilations) < 1 or min(kernel) < 1:
        raise ctx.invalid(f"kernel {brief(kernel)}, strides {brief(strides)} and dilations {brief(dilations)} "
                          "must be at least 1")
    return strides, dilations, resolve_pads(a, spatial, kernel, strides, dilations)


@converter("Conv")
def convert_conv(ctx, node, a):
    weight = kernel_weight(ctx, node)
    bias = ctx.optional_const(node, 2, "the bias")
    kernel = ints(a.get("kernel_shape", weight.shape[2:]))
    if kernel != weight.shape[2:]:
        raise Unsupported(f"kernel_shape {kernel} differs from the kernel {weight.shape}")
    strides, dilations, pads = window_settings(ctx, node, a, kernel)
    ctx.add("Conv", node.input[:1], node.output[0],
            dict(strides=strides, dilations=dilations, pads=pads, group=group_count(ctx, a)),
            dict(weight=weight, bias=bias))


def kernel_weight(ctx, node):
    weight = np.asarray(ctx.require_const(node, 1, "the kernel"))
    if weight.ndim < 3:
        raise ctx.invalid(f"the kernel has shape {weight.shape}; a convolution kernel has at least 3 axes")
    return weight


def group_count(ctx, a):
    group = int(a.get("group", 1))
    if group < 1:
        raise ctx.invalid(f"group {group} must be at least 1")
    return group


@converter("ConvTranspose")
def convert_conv_transpose(ctx, node, a):
    weight = kernel_weight(ctx, node)
    bias = ctx.optional_const(node, 2, "the bias")
    kernel = ints(a.get("kernel_shape", weight.shape[2:]))
    rank = len(kernel)
    if rank not in (1, 2):
        raise Unsupported(f"{rank}-D transposed convolution")
    strides = ints(a.get("strides", [1] * rank))
    dilations = ints(a.get("dilations", [1] * rank))
    output_padding = list(ints(a.get("output_padding", [0] * rank)))
    spatial = ctx.shape(node.input[0])[2:]
    auto_pad = a.get("auto_pad", "NOTSET")
    pads = list(ints(a.get("pads", [0] * (2 * rank))))
    if len(spatial) != rank:
        raise Unsupported(f"a {rank}-D kernel on an input of shape {ctx.shape(node.input[0])}")
    check_lengths(ctx, rank, strides=strides, dilations=dilations, output_padding=output_padding, pads=pads)
    if "output_shape" in a and len(a["output_shape"]) < rank:
        raise ctx.invalid(f"output_shape {a['output_shape']} has fewer than {rank} entries")
    if auto_pad not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad {auto_pad!r}")
    if "output_shape" in a or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        wanted = ints(a["output_shape"])[-rank:] if "output_shape" in a else tuple(n * s for n, s in zip(spatial, strides))
        for i in range(rank):
            full = strides[i] * (spatial[i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1
            total = full - wanted[i]
            if total < 0:
                output_padding[i] -= total
                total = 0
            small, large = total // 2, total - total // 2
            # the ONNX rule: only SAME_UPPER puts the smaller half first
            pads[i], pads[rank + i] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * rank)
    ctx.add("ConvTranspose", node.input[:1], node.output[0],
            dict(strides=strides, dilations=dilations, pads=tuple(pads), output_padding=tuple(output_padding),
                 group=group_count(ctx, a)),
            dict(weight=weight, bias=bias))


def add_dense(ctx, x, output, weight, bias_value):
    """Dense with weight (out, in); a bias that is not one value per output becomes an Add."""
    out_features = weight.shape[0]
    bias = None
    extra = None
    if bias_value is not None:
        bias_value = np.asarray(bias_value)
        if bias_value.size == 1 or bias_value.shape in ((out_features,), (1, out_features)):
            bias = np.broadcast_to(bias_value.reshape(-1), (out_features,)).copy()
        else:
            extra = bias_value
    dense_out = output if extra is None else ctx.temp("dense")
    ctx.add("Dense", [x], dense_out, params=dict(weight=weight, bias=bias),
            suffix=None if extra is None else "dense")
    if extra is not None:
        constant = ctx.temp("bias")
        ctx.consts[constant] = extra
        ctx.add("Add", [dense_out, constant], output)


@converter("Gemm")
def convert_gemm(ctx, node, a):
    b = np.asarray(ctx.require_const(node, 1, "B"))
    if b.ndim != 2:
        raise ctx.invalid(f"B has shape {b.shape}; Gemm takes a matrix")
    c = ctx.input_const(node, 2)
    if c is not None and np.asarray(c).dtype.kind not in "fiub":
        raise Unsupported(f"C (input 2) is of type {np.asarray(c).dtype}, not numbers")
    dynamic_c = len(node.input) > 2 and node.input[2] and c is None
    if dynamic_c and float(a.get("beta", 1.0)) != 1.0:
        raise Unsupported("a computed C (input 2) with beta != 1")
    if len(ctx.shape(node.input[0])) != 2:
        raise Unsupported(f"A must be a matrix, got shape {ctx.shape(node.input[0])}")
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    weight = b if a.get("transB", 0) else b.T
    weight = weight * np.asarray(alpha, weight.dtype) if alpha != 1.0 else weight
    x = node.input[0]
    if a.get("transA", 0):
        x = ctx.temp("transposed")
        ctx.add("Transpose", node.input[:1], x, dict(perm=(1, 0)), suffix="transpose")
    if c is not None and beta != 1.0:
        c = c * np.asarray(beta, c.dtype)
    if dynamic_c:
        product = ctx.temp("product")
        ctx.add("Dense", [x], product, params=dict(weight=weight), suffix="dense")
        return ctx.add("Add", [product, node.input[2]], node.output[0])
    add_dense(ctx, x, node.output[0], weight, c if beta != 0.0 else None)


@converter("MatMul")
def convert_matmul(ctx, node, a):
    b = ctx.require_const(node, 1, "the right-hand matrix")
    if b.ndim != 2:
        raise Unsupported(f"a right-hand side of shape {b.shape} (only a constant matrix is a dense layer)")
    if len(ctx.shape(node.input[0])) < 2:
        raise Unsupported("a vector left-hand side")
    add_dense(ctx, node.input[0], node.output[0], b.T, None)


def per_channel_vector(shape, constant):
    """The (C,) vector when ``constant`` broadcast against ``shape`` varies only along axis 1."""
    rank = len(shape)
    if constant.ndim > rank or rank < 2 or shape[1] is None:
        return None
    aligned = constant.reshape((1,) * (rank - constant.ndim) + constant.shape)
    if aligned.shape[0] != 1 or any(d != 1 for d in aligned.shape[2:]):
        return None
    if aligned.shape[1] not in (1, shape[1]):
        return None
    return np.broadcast_to(aligned.reshape(-1), (shape[1],)).copy()


def legacy_broadcast(ctx, node, a, constant, data_shape):
    """Opset < 7 ``broadcast``/``axis``: align the second operand at ``axis``."""
    if ctx.opset >= 7 or not a.get("broadcast") or "axis" not in a:
        return constant
    axis = axis_index(ctx, a["axis"], len(data_shape))
    trailing = len(data_shape) - axis - constant.ndim
    return constant.reshape(constant.shape + (1,) * max(trailing, 0))


def add_per_channel(ctx, op_type, data, constant, output):
    """Add/Sub/Mul/Div by a per-channel constant become Bias/Scale; returns False otherwise."""
    vector = per_channel_vector(ctx.shape(data), constant)
    if vector is None or vector.dtype.kind not in "fiu":
        return False
    vector = vector.astype(np.float64) if vector.dtype.kind != "f" else vector
    if op_type in ("Add", "Sub"):
        ctx.add("Bias", [data], output, params=dict(bias=vector if op_type == "Add" else -vector))
    elif op_type == "Mul" or np.all(vector != 0):
        ctx.add("Scale", [data], output, params=dict(scale=vector if op_type == "Mul" else 1.0 / vector))
    else:
        return False
    return True


MOVES = {"Split", "Slice", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Flatten", "Concat"}


def made_by_gate(ctx, tensor):
    """Whether the IR tensor behind ONNX value ``tensor`` is a Sigmoid/HardSigmoid output, possibly moved."""
    producers = {t: n for n in ctx.nodes for t in n.outputs}
    node = producers.get(ctx.resolve(tensor))
    while node is not None and node.op in MOVES and len(node.inputs) == 1:
        node = producers.get(node.inputs[0])
    return node is not None and node.op in ("Sigmoid", "HardSigmoid")


@converter("Add", "Sub", "Mul", "Div")
def convert_binary(ctx, node, a):
    left, right = node.input[0], node.input[1]
    swapped = ctx.const(left) is not None and node.op_type in ("Add", "Mul")
    if swapped:
        left, right = right, left
    constant = ctx.const(right)
    if constant is not None and ctx.const(left) is None:
        aligned = np.asarray(constant) if swapped else legacy_broadcast(ctx, node, a, np.asarray(constant),
                                                                        ctx.shape(left))
        # a gate times a constant stays a product, so that the gate takes no relevance
        gated = node.op_type == "Mul" and made_by_gate(ctx, left)
        if not gated and add_per_channel(ctx, node.op_type, left, aligned, node.output[0]):
            return
        if aligned.shape != np.shape(constant):
            right = ctx.temp("operand")
            ctx.consts[right] = aligned
    ctx.add(node.op_type, [left, right], node.output[0])


@converter("Max")
def convert_max(ctx, node, a):
    if len(node.input) == 1:
        return ctx.set_alias(node.output[0], node.input[0])
    ctx.add("Max", list(node.input), node.output[0])


@converter("Pow")
def convert_pow(ctx, node, a):
    exponent = ctx.require_const(node, 1, "the exponent")
    if np.asarray(exponent).size != 1:
        raise Unsupported("an exponent tensor (only one exponent for all elements)")
    ctx.add("Pow", node.input[:1], node.output[0], dict(exponent=scalar(ctx, exponent, "the exponent")))


@converter("Sum")
def convert_sum(ctx, node, a):
    if len(node.input) == 1:
        ctx.set_alias(node.output[0], node.input[0])
    else:
        ctx.add("Sum", list(node.input), node.output[0])


def simple(op_type, ir_op=None, **defaults):
    @converter(op_type)
    def convert(ctx, node, a):
        attrs = {k: float(a.get(k, v)) for k, v in defaults.items()}
        ctx.add(ir_op or op_type, node.input[:1], node.output[0], attrs)
    return convert


simple("Relu")
simple("Abs")
simple("Sigmoid")
simple("Tanh")
simple("Sqrt")
simple("HardSwish")
simple("LeakyRelu", alpha=0.01)
simple("Elu", alpha=1.0)
simple("Selu", alpha=1.6732632423543772, gamma=1.0507009873554805)
simple("HardSigmoid", alpha=0.2, beta=0.5)
simple("ThresholdedRelu", alpha=1.0)


@converter("PRelu")
def convert_prelu(ctx, node, a):
    slope = np.asarray(ctx.require_const(node, 1, "the slope"))
    shape = ctx.shape(node.input[0])
    if ctx.opset < 7 and slope.ndim == 1 and len(shape) > 2 and slope.shape[0] == shape[1] != shape[-1]:
        slope = slope.reshape((-1,) + (1,) * (len(shape) - 2))
    ctx.add("PRelu", node.input[:1], node.output[0], params=dict(slope=slope))


@converter("Clip")
def convert_clip(ctx, node, a):
    if ctx.opset < 11:
        low, high = a.get("min", -np.inf), a.get("max", np.inf)
    else:
        low_value, high_value = ctx.optional_const(node, 1, "the bound"), ctx.optional_const(node, 2, "the bound")
        low = -np.inf if low_value is None else scalar(ctx, low_value, "the lower bound (input 1)")
        high = np.inf if high_value is None else scalar(ctx, high_value, "the upper bound (input 2)")
    ctx.add("Clip", node.input[:1], node.output[0], dict(min=float(low), max=float(high)))


@converter("Softmax", "LogSoftmax")
def convert_softmax(ctx, node, a):
    rank = len(ctx.shape(node.input[0]))
    if ctx.opset < 13:
        axis = axis_index(ctx, a.get("axis", 1), rank)
        axes = tuple(range(axis, rank))
    else:
        axes = (axis_index(ctx, a.get("axis", -1), rank),)
    ctx.add(node.op_type, node.input[:1], node.output[0], dict(axes=axes))


@converter("MaxPool", "AveragePool")
def convert_pool(ctx, node, a):
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        raise Unsupported("the Indices output")
    if "kernel_shape" not in a:
        raise ctx.invalid("lacks the required attribute 'kernel_shape'")
    kernel = ints(a["kernel_shape"])
    strides, dilations, pads = window_settings(ctx, node, a, kernel)
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations, pads=pads,
                 ceil_mode=bool(a.get("ceil_mode", 0)))
    if node.op_type == "AveragePool":
        attrs["count_include_pad"] = bool(a.get("count_include_pad", 0))
    ctx.add(node.op_type, node.input[:1], node.output[0], attrs)


@converter("GlobalAveragePool", "GlobalMaxPool")
def convert_global_pool(ctx, node, a):
    ctx.add(node.op_type, node.input[:1], node.output[0])


@converter("LRN")
def convert_lrn(ctx, node, a):
    if int(a.get("size", 0)) < 1:
        raise ctx.invalid(f"size {a.get('size')} must be at least 1")
    ctx.add("LRN", node.input[:1], node.output[0],
            dict(size=int(a["size"]), alpha=float(a.get("alpha", 1e-4)), beta=float(a.get("beta", 0.75)),
                 bias=float(a.get("bias", 1.0))))


@converter("BatchNormalization")
def convert_batchnorm(ctx, node, a):
    if any(name for name in node.output[1:]) and ctx.opset >= 7 and not a.get("is_test", 0):
        raise Unsupported("training-mode outputs (running mean/var)")
    if ctx.opset < 9 and a.get("spatial", 1) == 0:
        raise Unsupported("spatial=0 (per-activation statistics)")
    names = ("scale", "bias", "mean", "var")
    params = {name: np.asarray(ctx.require_const(node, i + 1, name)).reshape(-1) for i, name in enumerate(names)}
    epsilon = float(a.get("epsilon", 1e-5))
    with np.errstate(all="ignore"):
        # the square root of var + epsilon divides; NaN fails the comparison too
        if not np.all(params["var"].astype(np.float64) + epsilon > 0):
            raise ctx.invalid(f"variance + epsilon ({epsilon:g}) is not positive everywhere")
    ctx.add("BatchNorm", node.input[:1], node.output[0], dict(epsilon=epsilon), params)


@converter("Dropout", "Identity")
def convert_passthrough(ctx, node, a):
    if node.op_type == "Dropout":
        training = ctx.input_const(node, 2)
        if training is not None and np.any(training):
            raise Unsupported("training_mode=True")
    ctx.set_alias(node.output[0], node.input[0])
