"""The IR graph a Keras model is converted into, as the converters see it: nodes emitted with
unique names and inferred shapes, the axis order each tensor is held in (channels moved to axis 1,
or Keras' own for channels_first layers), and Flattens deferred until their reader is known."""

import math

import numpy as np

from lrptool.errors import FreeSizeError

from .builder import GraphBuilder
from .keras_layers import channels_first_perm, channels_last_perm


class Context(GraphBuilder):
    """Accumulates IR nodes, infers shapes as they are added, and tracks deferred Flattens. Every node
    makes one tensor of its own name, so node and tensor names share one namespace."""

    def __init__(self, source, keras_major, keras1_backend=None):
        super().__init__()
        self.source = source
        self.keras_major = keras_major
        self.keras1_backend = keras1_backend
        self.deferred = {}
        self.materialized = {}
        self.unsupported = []
        self.class_name = None
        # Tensors held exactly as Keras holds them; all others have Keras' last axis moved to axis 1.
        self.keras_order = set()
        self.relaid = {}
        self.current_keras_order = False

    def add_keras_input(self, name, keras_shape, keras_order=False):
        shape = tuple(keras_shape)
        if len(shape) >= 3 and not keras_order:
            shape = (shape[0], shape[-1]) + shape[1:-1]
        name = self.add_input(self.node_names.unique(name), (None,) + tuple(None if d is None else int(d)
                                                                            for d in shape[1:]))
        if keras_order:
            self.keras_order.add(name)
        return name

    def in_keras_order(self, tensor):
        return tensor in self.keras_order

    def layout(self, tensor, keras_order):
        """``tensor`` with Keras' own axis order (channels_first layers) or channels moved to axis 1."""
        if tensor in self.deferred or len(self.shapes[tensor]) < 3 or (tensor in self.keras_order) == keras_order:
            return tensor
        key = (tensor, keras_order)
        if key not in self.relaid:
            rank = len(self.shapes[tensor])
            if keras_order:
                moved = self.emit(f"{tensor}/keras_order", "Transpose", [tensor], {"perm": channels_last_perm(rank)})
                self.keras_order.add(moved)
            else:
                moved = self.emit(f"{tensor}/channels_first", "Transpose", [tensor],
                                  {"perm": channels_first_perm(rank)})
            self.relaid[key] = moved
        return self.relaid[key]

    def emit(self, name, op, inputs, attrs=None, params=None, held=False):
        """Add one node making the tensor of its own (unique) name; returns the name."""
        params = {k: np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
                  for k, v in (params or {}).items()}
        name = name if held else self.node_names.free(name)
        return self.add_node(name, op, inputs, [name], attrs, params, held=held).name

    def keras_shape(self, tensor):
        if tensor in self.deferred:
            source_shape = self.deferred[tensor][1]
            return (None, math.prod(source_shape[1:]))
        shape = self.shapes[tensor]
        if len(shape) < 3 or tensor in self.keras_order:
            return shape
        return (shape[0],) + shape[2:] + (shape[1],)

    def defer_flatten(self, name, tensor, as_channels_last=False):
        if None in self.keras_shape(tensor)[1:]:
            raise FreeSizeError(f"flattens {list(self.keras_shape(tensor))}, whose sizes are free")
        # Held, so that nothing else claims the name before it is materialized.
        name = self.node_names.hold(name)
        if as_channels_last:
            tensor = self.layout(tensor, keras_order=True)
            shape = self.shapes[tensor]
            keras_shape = (shape[0],) + shape[2:] + (shape[1],)
        else:
            tensor = self.layout(tensor, keras_order=False)
            keras_shape = self.keras_shape(tensor)
        self.deferred[name] = (tensor, keras_shape)
        return name

    def flattened(self, tensor):
        return self.deferred.get(tensor)

    def materialize(self, tensor):
        """The tensor in Keras element order: a deferred Flatten becomes Transpose + Flatten."""
        if tensor not in self.deferred:
            return tensor
        if tensor not in self.materialized:
            source, _ = self.deferred[tensor]
            rank = len(self.shapes[source])
            moved = self.emit(f"{tensor}/to_last", "Transpose", [source], {"perm": channels_last_perm(rank)})
            self.materialized[tensor] = self.emit(tensor, "Flatten", [moved], {"axis": 1}, held=True)
        return self.materialized[tensor]
