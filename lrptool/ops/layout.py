"""Operators that move data without arithmetic: they route relevance exactly as they route values."""

import numpy as np

from .base import REQUIRED, Operator, batch_fail, element_count, fail, free_fail, normalize_axis, register


def check_not_batch(node, axes, shape, what):
    if 0 in axes and shape[0] is None:
        batch_fail(node, f"{what} the batch axis")


def check_not_free(node, axes, shape, what):
    """Refuse work along a free axis (the batch axis or a free spatial size) that needs its length."""
    for axis in sorted(axes):
        if shape[axis] is None:
            free_fail(node, axis, f"{what} axis {axis}")


@register
class Concat(Operator):
    attributes = {"axis": REQUIRED}
    num_inputs = None

    def infer(self, node, shapes):
        rank = len(shapes[0])
        axis = normalize_axis(node, node.attrs["axis"], rank)
        check_not_batch(node, [axis], shapes[0], "concatenates along")
        for s in shapes[1:]:
            if len(s) != rank or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != axis):
                fail(node, f"inputs of shapes {shapes} do not concatenate along axis {axis}")
        total = None if any(s[axis] is None for s in shapes) else sum(s[axis] for s in shapes)
        return [shapes[0][:axis] + (total,) + shapes[0][axis + 1:]]

    def run(self, node, inputs, params):
        return [np.concatenate(inputs, axis=node.attrs["axis"])]


@register
class Split(Operator):
    attributes = {"axis": REQUIRED, "split": REQUIRED}

    def num_outputs(self, node):
        return len(node.attrs["split"])

    def infer(self, node, shapes):
        (shape,) = shapes
        axis = normalize_axis(node, node.attrs["axis"], len(shape))
        check_not_free(node, [axis], shape, "splits along")
        split = node.attrs["split"]
        if sum(split) != shape[axis] or min(split) < 0:
            fail(node, f"split sizes {split} do not add up to {shape[axis]}")
        return [shape[:axis] + (n,) + shape[axis + 1:] for n in split]

    def run(self, node, inputs, params):
        bounds = np.cumsum(node.attrs["split"])[:-1]
        return np.split(inputs[0], bounds, axis=node.attrs["axis"])


@register
class Slice(Operator):
    """Strided slice; starts/ends are clamped to the axis as Python slicing does."""

    attributes = {"starts": REQUIRED, "ends": REQUIRED, "axes": REQUIRED, "steps": REQUIRED}

    def slices(self, node, rank):
        a = node.attrs
        index = [slice(None)] * rank
        for start, end, axis, step in zip(a["starts"], a["ends"], a["axes"], a["steps"]):
            if step == 0:
                fail(node, "slice step 0")
            index[axis % rank] = slice(start, end, step)
        return tuple(index)

    def infer(self, node, shapes):
        (shape,) = shapes
        a = node.attrs
        if not len(a["starts"]) == len(a["ends"]) == len(a["axes"]) == len(a["steps"]):
            fail(node, "starts, ends, axes and steps differ in length")
        index = self.slices(node, len(shape))
        out = []
        for dim, sl in zip(shape, index):
            if dim is None:
                if sl != slice(None):
                    free_fail(node, len(out), f"slices axis {len(out)}")
                out.append(None)
            else:
                out.append(len(range(*sl.indices(dim))))
        return [tuple(out)]

    def run(self, node, inputs, params):
        return [inputs[0][self.slices(node, inputs[0].ndim)]]


@register
class Flatten(Operator):
    """Collapse to 2-D: (d0·…·d(axis−1), d(axis)·…)."""

    attributes = {"axis": 1}

    def infer(self, node, shapes):
        (shape,) = shapes
        axis = node.attrs["axis"]
        if not 0 <= axis <= len(shape):
            fail(node, f"axis {axis} out of range for shape {shape}")
        if shape[0] is None and axis != 1:
            batch_fail(node, f"flattening at axis {axis} mixes the batch axis")
        check_not_free(node, [i for i in range(1, len(shape)) if shape[i] is None], shape, "flattens")
        head = None if shape[0] is None else element_count(shape[:axis])
        return [(head, element_count(shape[axis:]))]

    def run(self, node, inputs, params):
        x = inputs[0]
        axis = node.attrs["axis"]
        return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)]


@register
class Reshape(Operator):
    """Reshape to ``shape``, every entry explicit; a leading ``None`` keeps the batch axis."""

    attributes = {"shape": REQUIRED}

    def infer(self, node, shapes):
        (shape,) = shapes
        target = tuple(node.attrs["shape"])
        if any(d is not None and d < 0 for d in target) or None in target[1:]:
            fail(node, f"target shape {target} must be explicit (only the batch entry may be free)")
        if (target[:1] == (None,)) != (shape[:1] == (None,)):
            batch_fail(node, f"reshape {shape} → {target} changes the batch axis")
        check_not_free(node, [i for i in range(1, len(shape)) if shape[i] is None], shape, "reshapes")
        if element_count([d for d in shape if d is not None]) != element_count([d for d in target if d is not None]):
            fail(node, f"cannot reshape {shape} into {target}")
        return [target]

    def run(self, node, inputs, params):
        x = inputs[0]
        target = node.attrs["shape"]
        return [x.reshape((x.shape[0],) + tuple(target[1:]) if target[0] is None else tuple(target))]


@register
class Transpose(Operator):
    attributes = {"perm": REQUIRED}

    def infer(self, node, shapes):
        (shape,) = shapes
        perm = tuple(node.attrs["perm"])
        if sorted(perm) != list(range(len(shape))):
            fail(node, f"perm {perm} is not a permutation of {len(shape)} axes")
        if shape[0] is None and perm[0] != 0:
            batch_fail(node, f"perm {perm} moves the batch axis")
        return [tuple(shape[p] for p in perm)]

    def run(self, node, inputs, params):
        return [np.transpose(inputs[0], node.attrs["perm"])]


@register
class Squeeze(Operator):
    attributes = {"axes": REQUIRED}

    def infer(self, node, shapes):
        (shape,) = shapes
        axes = {normalize_axis(node, a, len(shape)) for a in node.attrs["axes"]}
        check_not_free(node, axes, shape, "squeezes")
        if any(shape[a] != 1 for a in axes):
            fail(node, f"cannot squeeze axes {sorted(axes)} of shape {shape}")
        return [tuple(d for i, d in enumerate(shape) if i not in axes)]

    def run(self, node, inputs, params):
        return [np.squeeze(inputs[0], axis=tuple(node.attrs["axes"]))]


@register
class Unsqueeze(Operator):
    attributes = {"axes": REQUIRED}

    def infer(self, node, shapes):
        (shape,) = shapes
        rank = len(shape) + len(node.attrs["axes"])
        axes = {normalize_axis(node, a, rank) for a in node.attrs["axes"]}
        check_not_batch(node, axes, shape, "inserts an axis before")
        dims = iter(shape)
        return [tuple(1 if i in axes else next(dims) for i in range(rank))]

    def run(self, node, inputs, params):
        return [np.expand_dims(inputs[0], axis=tuple(node.attrs["axes"]))]


@register
class Pad(Operator):
    """Padding; ``pads`` = (begin per axis…, end per axis…) over all axes, negative crops. ``mode``:
    constant (``value``), reflect (mirrored without the edge) or edge (the edge repeated)."""

    attributes = {"pads": REQUIRED, "value": 0.0, "mode": "constant"}

    def infer(self, node, shapes):
        (shape,) = shapes
        pads = node.attrs["pads"]
        rank = len(shape)
        if len(pads) != 2 * rank:
            fail(node, f"pads {pads} do not match a rank-{rank} input")
        if shape[0] is None and (pads[0] or pads[rank]):
            batch_fail(node, "pads the batch axis")
        mode = node.attrs["mode"]
        if mode not in ("constant", "reflect", "edge"):
            fail(node, f"mode {mode!r}: constant, reflect or edge")
        if mode != "constant":
            if any(p < 0 for p in pads):
                fail(node, f"{mode} padding with negative pads {pads}")
            if mode == "reflect" and any(d is not None and (pads[i] >= d or pads[rank + i] >= d)
                                         for i, d in enumerate(shape) if pads[i] or pads[rank + i]):
                fail(node, f"reflect pads {pads} reach past the edge of shape {shape}")
        out = tuple(None if d is None else d + pads[i] + pads[rank + i] for i, d in enumerate(shape))
        if any(d is not None and d < 0 for d in out):
            fail(node, f"pads {pads} crop shape {shape} below zero")
        return [out]

    def run(self, node, inputs, params):
        x = inputs[0]
        pads = node.attrs["pads"]
        rank = x.ndim
        grow = [(max(pads[i], 0), max(pads[rank + i], 0)) for i in range(rank)]
        if node.attrs["mode"] != "constant":
            return [np.pad(x, grow, mode=node.attrs["mode"])]
        y = np.pad(x, grow, mode="constant", constant_values=np.asarray(node.attrs["value"], x.dtype))
        crop = tuple(slice(max(-pads[i], 0), y.shape[i] - max(-pads[rank + i], 0)) for i in range(rank))
        return [y[crop]]


@register
class Upsample(Operator):
    """Nearest-neighbour upsampling of the spatial axes by integer factors."""

    attributes = {"scales": REQUIRED}

    def infer(self, node, shapes):
        (shape,) = shapes
        scales = tuple(node.attrs["scales"])
        if len(scales) != len(shape) - 2 or min(scales) < 1:
            fail(node, f"scales {scales} must give one integer factor >= 1 per spatial axis of {shape}")
        return [shape[:2] + tuple(None if d is None else d * s for d, s in zip(shape[2:], scales))]

    def run(self, node, inputs, params):
        y = inputs[0]
        for axis, factor in enumerate(node.attrs["scales"], start=2):
            if factor != 1:
                y = np.repeat(y, factor, axis=axis)
        return [y]
