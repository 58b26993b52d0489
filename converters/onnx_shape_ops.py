"""Converters for ONNX operators that move data: Concat, Split, Slice, Flatten, Reshape, Transpose,
Squeeze, Unsqueeze, Pad, Upsample/Resize, and the ReduceMean reduction.

Shape-like operands (axes, pads, target shapes) must be constants (after folding) and become
IR attributes with every entry explicit.
"""

import math

import numpy as np

from .onnx_ops import Unsupported, axis_index, brief, converter, ints, scalar


def axes_operand(ctx, node, a, index, opset_moved):
    """Axes from the attribute (before ``opset_moved``) or from input ``index``; None when absent."""
    if ctx.opset < opset_moved:
        return ints(a["axes"]) if "axes" in a else None
    value = ctx.optional_const(node, index, "axes")
    return None if value is None else ints(np.asarray(value).reshape(-1))


@converter("Concat")
def convert_concat(ctx, node, a):
    inputs = [t for t in node.input if t]
    if len(inputs) == 1:
        return ctx.set_alias(node.output[0], inputs[0])
    ctx.add("Concat", inputs, node.output[0], dict(axis=int(a.get("axis", 1))))


@converter("Split")
def convert_split(ctx, node, a):
    shape = ctx.shape(node.input[0])
    axis = axis_index(ctx, a.get("axis", 0), len(shape))
    outputs = list(node.output)
    if ctx.opset < 13:
        split = ints(a["split"]) if "split" in a else None
    else:
        split = axes_operand(ctx, node, a, 1, 13)
    if split is None:
        size, parts = shape[axis], int(a.get("num_outputs", len(outputs)))
        if size is None:
            ctx.fail_free(axis, "splits along a free axis")
        if parts < 1:
            raise ctx.invalid(f"num_outputs {parts} must be at least 1")
        chunk = -(-size // parts)
        split = tuple(min(chunk, size - i * chunk) for i in range(parts))
    ctx.add("Split", node.input[:1], [o or ctx.temp(f"unused{i}") for i, o in enumerate(outputs)],
            dict(axis=axis, split=split))


@converter("Slice")
def convert_slice(ctx, node, a):
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    if ctx.opset < 10:
        starts, ends = ints(a.get("starts", ())), ints(a.get("ends", ()))
        axes = ints(a.get("axes", range(len(starts))))
        steps = (1,) * len(starts)
    else:
        starts = ints(np.asarray(ctx.require_const(node, 1, "starts")).reshape(-1))
        ends = ints(np.asarray(ctx.require_const(node, 2, "ends")).reshape(-1))
        axes = axes_operand(ctx, node, a, 3, 10) or tuple(range(len(starts)))
        steps = ctx.optional_const(node, 4, "steps")
        steps = (1,) * len(starts) if steps is None else ints(np.asarray(steps).reshape(-1))
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.invalid(f"starts {brief(starts)}, ends {brief(ends)}, axes {brief(axes)} and steps {brief(steps)} "
                          "differ in length")
    axes = tuple(axis_index(ctx, ax, rank, "slice axis") for ax in axes)
    # a slice of the whole free batch axis is no slice (jax2tf writes its end as 10⁹: no batch is that large)
    kept = [(s, e, ax, st) for s, e, ax, st in zip(starts, ends, axes, steps)
            if not (shape[ax] is None and s == 0 and st == 1 and e >= 10 ** 9)]
    ctx.add("Slice", node.input[:1], node.output[0],
            dict(starts=tuple(k[0] for k in kept), ends=tuple(k[1] for k in kept),
                 axes=tuple(k[2] for k in kept), steps=tuple(k[3] for k in kept)))


@converter("Flatten")
def convert_flatten(ctx, node, a):
    rank = len(ctx.shape(node.input[0]))
    axis = int(a.get("axis", 1))
    ctx.add("Flatten", node.input[:1], node.output[0], dict(axis=axis + rank if axis < 0 else axis))


def reshape_target(ctx, shape, target, allowzero):
    """Explicit IR target shape from an ONNX one (0 copies a dim, −1 is inferred, the batch marker)."""
    from .onnx_reader import BATCH_MARKER

    target = [int(d) for d in target]
    if any(d == BATCH_MARKER for d in target[1:]) or any(d < -1 and d != BATCH_MARKER for d in target):
        ctx.fail_batch(f"reshape target {brief(target)} moves the batch axis")
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(shape):
                raise Unsupported(f"target {brief(target)} copies a dimension the input {shape} lacks")
            d = shape[i]
        elif d == BATCH_MARKER:
            d = None
        out.append(d)
    if not out:
        raise Unsupported(f"reshape {shape} into a scalar")
    if None in shape[1:]:
        ctx.fail_free(shape.index(None, 1), f"reshapes {shape}")
    if shape[0] is None:
        # math.prod: exact for any size, where an int64 product of hostile dims wraps around
        known = math.prod(shape[1:])
        if out[0] is None:
            pass
        elif out[0] == -1 and -1 not in out[1:] and math.prod(out[1:]) == known:
            out[0] = None
        elif out[0] == ctx.declared_batch and -1 not in out[1:] and math.prod(out[1:]) == known:
            out[0] = None
        elif out[0] == ctx.declared_batch and out.count(-1) == 1:
            out[0] = None
        else:
            ctx.fail_batch(f"reshape {shape} → {brief(target)} changes the batch axis")
        total, rest = known, out[1:]
    else:
        total, rest = math.prod(shape), out
    if rest.count(-1) > 1:
        raise Unsupported(f"target {brief(target)} has more than one -1")
    if -1 in rest:
        others = math.prod(d for d in rest if d != -1)
        if others == 0 or total % others:
            raise Unsupported(f"cannot reshape {shape} into {brief(target)}")
        rest[rest.index(-1)] = total // others
    return tuple(out[:1] + rest) if shape[0] is None else tuple(rest)


@converter("Reshape")
def convert_reshape(ctx, node, a):
    if ctx.opset < 5:
        if "shape" not in a:
            raise ctx.invalid("lacks the target shape (attribute 'shape')")
        target = a["shape"]
    else:
        target = np.asarray(ctx.require_const(node, 1, "the target shape")).reshape(-1)
    shape = ctx.shape(node.input[0])
    ctx.add("Reshape", node.input[:1], node.output[0],
            dict(shape=reshape_target(ctx, shape, target, bool(a.get("allowzero", 0)))))


@converter("Transpose")
def convert_transpose(ctx, node, a):
    rank = len(ctx.shape(node.input[0]))
    perm = ints(a.get("perm", range(rank - 1, -1, -1)))
    if sorted(perm) != list(range(rank)):
        raise ctx.invalid(f"perm {brief(perm)} is not an order of the {rank} axes")
    ctx.add("Transpose", node.input[:1], node.output[0], dict(perm=perm))


@converter("Squeeze")
def convert_squeeze(ctx, node, a):
    shape = ctx.shape(node.input[0])
    axes = axes_operand(ctx, node, a, 1, 13)
    if axes is None:
        axes = tuple(i for i, d in enumerate(shape) if d == 1)
    if not axes:
        return ctx.set_alias(node.output[0], node.input[0])
    ctx.add("Squeeze", node.input[:1], node.output[0],
            dict(axes=tuple(axis_index(ctx, ax, len(shape)) for ax in axes)))


@converter("Unsqueeze")
def convert_unsqueeze(ctx, node, a):
    axes = axes_operand(ctx, node, a, 1, 13)
    if not axes:
        raise ctx.invalid("names no axes to insert")
    rank = len(ctx.shape(node.input[0])) + len(axes)
    ctx.add("Unsqueeze", node.input[:1], node.output[0], dict(axes=tuple(axis_index(ctx, ax, rank) for ax in axes)))


@converter("Pad")
def convert_pad(ctx, node, a):
    rank = len(ctx.shape(node.input[0]))
    if ctx.opset < 11:
        mode = a.get("mode", "constant")
        pads = ints(a.get("pads", a.get("paddings", [])))
        value = float(a.get("value", 0.0))
    else:
        mode = a.get("mode", "constant")
        pads = ints(np.asarray(ctx.require_const(node, 1, "pads")).reshape(-1))
        value_const = ctx.optional_const(node, 2, "the pad value")
        value = 0.0 if value_const is None or not np.size(value_const) else scalar(ctx, value_const, "the pad value")
        axes = axes_operand(ctx, node, a, 3, 18)
        if axes is not None:
            if len(pads) != 2 * len(axes):
                raise ctx.invalid(f"pads {brief(pads)} should have two entries for each of the axes {brief(axes)}")
            full = [0] * (2 * rank)
            for i, axis in enumerate(axes):
                axis = axis_index(ctx, axis, rank)
                full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
            pads = tuple(full)
    if len(pads) != 2 * rank:
        raise ctx.invalid(f"pads {brief(pads)} should have {2 * rank} entries for a rank-{rank} input")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in ("constant", "reflect", "edge"):
        raise Unsupported(f"mode {mode!r} (constant, reflect and edge padding are supported)")
    ctx.add("Pad", node.input[:1], node.output[0], dict(pads=pads, value=value, mode=mode))


@converter("Upsample", "Resize")
def convert_resize(ctx, node, a):
    shape = ctx.shape(node.input[0])
    mode = a.get("mode", "nearest")
    if mode != "nearest":
        raise Unsupported(f"mode {mode!r} (only nearest-neighbour resizing is supported)")
    if node.op_type == "Upsample" and ctx.opset < 9:
        if "scales" not in a:
            raise ctx.invalid("lacks the attribute 'scales'")
        scales = [float(s) for s in a["scales"]]
    elif node.op_type == "Upsample" or ctx.opset == 10:
        scales = [float(s) for s in np.asarray(ctx.require_const(node, 1, "scales")).reshape(-1)]
    else:
        scale_values, sizes = ctx.optional_const(node, 2, "scales"), ctx.optional_const(node, 3, "sizes")
        if scale_values is not None and np.asarray(scale_values).size:
            scales = [float(s) for s in np.asarray(scale_values).reshape(-1)]
        elif sizes is not None:
            sizes = ints(np.asarray(sizes).reshape(-1))
            if None in shape[2:]:
                ctx.fail_free(shape.index(None, 2), f"resizes to the fixed sizes {brief(sizes)}")
            scales = [1.0 if d is None else size / d if d else float("nan") for size, d in zip(sizes, shape)]
        else:
            raise Unsupported("scales or sizes must be constants")
        coordinates = a.get("coordinate_transformation_mode", "half_pixel")
        rounding = a.get("nearest_mode", "round_prefer_floor")
        if coordinates in ("align_corners", "tf_crop_and_resize"):
            raise Unsupported(f"coordinate_transformation_mode {coordinates!r}")
        if (coordinates == "asymmetric") != (rounding == "floor") and any(s != 1 for s in scales[2:]):
            raise Unsupported(f"nearest_mode {rounding!r} with {coordinates!r} coordinates does not repeat pixels")
    if not all(np.isfinite(scales)):
        raise ctx.invalid(f"scales {brief(scales)} are not all finite numbers")
    if len(scales) != len(shape) or len(shape) < 2 or scales[0] != 1 or scales[1] != 1:
        raise Unsupported(f"scales {brief(scales)} (only spatial axes can be resized)")
    if any(s != int(s) or s < 1 for s in scales[2:]):
        raise Unsupported(f"scales {brief(scales)} (only integer upsampling factors are supported)")
    ctx.add("Upsample", node.input[:1], node.output[0], dict(scales=ints(scales[2:])))


@converter("ReduceMean")
def convert_reduce_mean(ctx, node, a):
    rank = len(ctx.shape(node.input[0]))
    axes = axes_operand(ctx, node, a, 1, 18)
    if axes is None or not axes:
        if a.get("noop_with_empty_axes", 0):
            return ctx.set_alias(node.output[0], node.input[0])
        axes = tuple(range(rank))
    ctx.add("ReduceMean", node.input[:1], node.output[0],
            dict(axes=tuple(axis_index(ctx, ax, rank) for ax in axes), keepdims=bool(a.get("keepdims", 1))))


@converter("ReduceMax")
def convert_reduce_max(ctx, node, a):
    """Max over the trailing axes (over time in a text CNN, over space in an image model): GlobalMaxPool,
    then the kept axes squeezed away where keepdims is 0."""
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    axes = axes_operand(ctx, node, a, 1, 18)
    if axes is None or not axes:
        if a.get("noop_with_empty_axes", 0):
            return ctx.set_alias(node.output[0], node.input[0])
        axes = tuple(range(rank))
    axes = sorted({axis_index(ctx, ax, rank) for ax in axes})
    if rank < 3 or axes != list(range(2, rank)):
        raise Unsupported(f"ReduceMax over axes {axes} of a rank-{rank} tensor (lrptool takes the max over every "
                          "axis after the channel axis: over time or space)")
    if a.get("keepdims", 1):
        return ctx.add("GlobalMaxPool", node.input[:1], node.output[0])
    pooled = ctx.temp("pooled")
    ctx.add("GlobalMaxPool", node.input[:1], pooled, suffix="pool")
    ctx.add("Flatten", [pooled], node.output[0], dict(axis=1))


def gather_positions(ctx, node, a, indices):
    """A computed tensor indexed by constant positions (one time step, one layer's state): slices."""
    shape = ctx.shape(node.input[0])
    axis = axis_index(ctx, a.get("axis", 0), len(shape))
    size = shape[axis]
    if size is None:
        ctx.fail_batch("picks positions of the batch axis")
    if indices.dtype.kind not in "iu" or indices.ndim > 1:
        raise Unsupported(f"Gather of a computed tensor at positions of shape {indices.shape} along axis {axis}")
    positions = [int(i) for i in indices.reshape(-1)]
    if any(not -size <= i < size for i in positions):
        raise ctx.invalid(f"indices {brief(positions)} are out of range for {size} entries")
    parts = []
    for k, position in enumerate(positions):
        position %= size
        last = k == len(positions) - 1 and indices.ndim == 1 and len(positions) == 1
        name = node.output[0] if last else ctx.temp(f"position{k}")
        ctx.add("Slice", node.input[:1], name, dict(starts=(position,), ends=(position + 1,), axes=(axis,),
                                                    steps=(1,)), suffix=None if last else f"position{k}")
        parts.append(name)
    if indices.ndim == 0:
        return ctx.add("Squeeze", [parts[0]], node.output[0], dict(axes=(axis,)))
    if len(parts) > 1:
        ctx.add("Concat", parts, node.output[0], dict(axis=axis))


@converter("Gather")
def convert_gather(ctx, node, a):
    """A constant table indexed by a computed tensor of token ids: an embedding lookup."""
    table = ctx.input_const(node, 0)
    if table is None and ctx.input_const(node, 1) is not None:
        return gather_positions(ctx, node, a, np.asarray(ctx.input_const(node, 1)))
    if table is None:
        raise Unsupported("Gather from a computed tensor (lrptool reads Gather as an embedding lookup: a constant "
                          "table indexed by token ids)")
    table = np.asarray(table)
    if table.ndim != 2 or table.dtype.kind != "f":
        raise Unsupported(f"Gather from a constant of shape {table.shape} and type {table.dtype} (an embedding "
                          "table is a float matrix: tokens × features)")
    if axis_index(ctx, a.get("axis", 0), 2) != 0:
        raise Unsupported("Gather along axis 1 of a matrix (an embedding lookup gathers rows)")
    ctx.add("Embedding", node.input[1:2], node.output[0], params={"weight": table})


@converter("Cast")
def convert_cast(ctx, node, a):
    """A computed tensor is floating-point in the IR: a cast to a float type changes nothing."""
    if int(a.get("to", 0)) not in (1, 10, 11, 16):   # FLOAT, FLOAT16, DOUBLE, BFLOAT16
        raise Unsupported("a cast to a non-float type of a computed tensor")
    if ctx.resolve(node.input[0]) in ctx.model_inputs():
        raise Unsupported("a cast of a graph input (lrptool takes floats, or int64 token ids read by an embedding)")
    ctx.set_alias(node.output[0], node.input[0])


@converter("Gelu")
def convert_gelu(ctx, node, a):
    """ONNX Gelu (opset 20) and the GELU that converters.onnx_patterns finds in elementary nodes."""
    approximate = a.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
    if approximate not in ("none", "tanh"):
        raise ctx.invalid(f"approximate {approximate!r}: none or tanh")
    ctx.add("Gelu", node.input[:1], node.output[0], dict(approximate=approximate))


@converter("LayerNormalization", "LayerNorm")
def convert_layer_norm(ctx, node, a):
    """ONNX LayerNormalization (over the axes from ``axis`` on) and the fused LayerNorm (any axes)."""
    if any(name for name in node.output[1:]):
        raise Unsupported("the Mean and InvStdDev outputs")
    rank = len(ctx.shape(node.input[0]))
    if node.op_type == "LayerNorm":
        axes = tuple(axis_index(ctx, ax, rank) for ax in a.get("axes", []))
    else:
        axes = tuple(range(axis_index(ctx, a.get("axis", -1), rank), rank))
    scale = ctx.require_const(node, 1, "scale")
    bias = ctx.optional_const(node, 2, "bias")
    params = {"scale": np.asarray(scale, dtype=np.float64)}
    if bias is not None:
        params["bias"] = np.asarray(bias, dtype=np.float64)
    ctx.add("LayerNorm", node.input[:1], node.output[0], dict(axes=axes, epsilon=float(a.get("epsilon", 1e-5))),
            params)


@converter("CastLike")
def convert_cast_like(ctx, node, a):
    """CastLike(value, like) with a computed ``like``: the IR computes in floats. A constant value (the
    dynamo exporter's zero bias for a convolution without one) becomes a float constant; a computed
    float value passes through."""
    value = ctx.input_const(node, 0)
    if value is not None:
        value = np.asarray(value)
        if value.dtype.kind not in "fiub":
            raise Unsupported(f"a constant of type {value.dtype} cast like a computed tensor")
        ctx.consts[node.output[0]] = value.astype(np.float32)
        return
    if ctx.resolve(node.input[0]) in ctx.model_inputs():
        raise Unsupported("a cast of a graph input (lrptool takes floats, or int64 token ids read by an embedding)")
    ctx.set_alias(node.output[0], node.input[0])
