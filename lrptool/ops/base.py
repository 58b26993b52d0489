"""The operator registry: every IR operator is one small class with a fixed attribute schema.

Shapes are tuples whose first entry is ``None`` when the batch size is free; a later ``None`` is a
free spatial size (a fully convolutional model's height or width), which each operator either
carries through or refuses with ``size_fail``. An operator
declares:

* ``attributes`` — name → default (``REQUIRED`` when the attribute has no default);
* ``params`` — names of the parameter arrays it owns, and which of them are optional;
* ``num_inputs`` — the number of tensor inputs (``None`` for variadic, at least one);
* ``infer(node, shapes)`` — output shapes from input shapes (raises ``GraphError``);
* ``run(node, inputs, params)`` — NumPy forward computation, returns a list of arrays.
"""

import numpy as np

from ..errors import BatchAxisError, FreeSizeError, GraphError

REQUIRED = object()

OPERATORS = {}


def register(cls):
    OPERATORS[cls.__name__] = cls()
    return cls


class Operator:
    attributes = {}
    params = ()
    optional_params = ()
    num_inputs = 1

    @property
    def name(self):
        return type(self).__name__

    def num_outputs(self, node):
        return 1

    def infer(self, node, shapes):
        return [shapes[0]]

    def run(self, node, inputs, params):
        raise NotImplementedError


def fail(node, message):
    raise GraphError(f"node {node.name!r} ({node.op}): {message}")


def batch_fail(node, message):
    raise BatchAxisError(f"node {node.name!r} ({node.op}): {message}")


def size_fail(node, message):
    raise FreeSizeError(f"node {node.name!r} ({node.op}): {message}")


def free_fail(node, axis, message):
    """A node that cannot work on free axis ``axis``: the batch axis (0) or a free spatial size."""
    if axis == 0:
        batch_fail(node, message)
    size_fail(node, f"{message}, which is free")


def normalize_axis(node, axis, rank):
    if not -rank <= axis < rank:
        fail(node, f"axis {axis} out of range for a rank-{rank} input")
    return axis % rank


def broadcast_shapes(node, *shapes):
    """NumPy broadcasting where ``None`` (the free batch size) broadcasts only with 1 or None."""
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = [s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0]
        if any(d is None for d in dims):
            if any(d is not None and d != 1 for d in dims):
                free_fail(node, i, f"cannot broadcast {shapes} along a free axis")
            out.append(None)
            continue
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            fail(node, f"shapes {shapes} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def element_count(shape):
    return int(np.prod(shape, dtype=np.int64))


def spatial_output_size(size, kernel, stride, dilation, pad_begin, pad_end, ceil_mode=False):
    """Output length of a sliding window; ceil mode drops a last window starting in the end padding.
    A free size (None) gives a free size."""
    if size is None:
        return None
    span = dilation * (kernel - 1) + 1
    extent = size + pad_begin + pad_end - span
    if extent < 0:
        return 0
    if not ceil_mode:
        return extent // stride + 1
    out = -(-extent // stride) + 1
    if (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def check_channels(node, shape, channels, what):
    if len(shape) < 2:
        fail(node, f"input of shape {shape} has no channel axis")
    if shape[1] is None:
        size_fail(node, "the channel count is free")
    if shape[1] != channels:
        fail(node, f"input has {shape[1]} channels but {what} has {channels}")
