"""The IR graph a Keras model is converted into, as the converters see it: nodes emitted with
unique names and inferred shapes, the axis order each tensor is held in (channels moved to axis 1,
or Keras' own for channels_first layers), and Flattens deferred until their reader is known."""

import math

import numpy as np

from lrptool.graph import Node, free_name, normalize_node

from .keras_layers import channels_first_perm, channels_last_perm


class Context:
    """Accumulates IR nodes, infers shapes as they are added, and tracks deferred Flattens."""

    def __init__(self, source, keras_major, keras1_backend=None):
        self.source = source
        self.keras_major = keras_major
        self.keras1_backend = keras1_backend
        self.nodes = []
        self.shapes = {}
        self.suffixes = {}
        self.inputs = {}
        self.deferred = {}
        self.materialized = {}
        self.unsupported = []
        self.class_name = None
        # Tensors held exactly as Keras holds them; all others have Keras' last axis moved to axis 1.
        self.keras_order = set()
        self.relaid = {}
        self.current_keras_order = False

    def unique(self, name):
        # Counting on from the last suffix given out keeps a layer called many times linear, not quadratic.
        if name not in self.shapes:
            return name
        unique = free_name(name, self.shapes, start=self.suffixes.get(name, 1))
        self.suffixes[name] = int(unique.rsplit("_", 1)[1]) + 1
        return unique

    def add_input(self, name, keras_shape, keras_order=False):
        shape = tuple(keras_shape)
        if len(shape) >= 3 and not keras_order:
            shape = (shape[0], shape[-1]) + shape[1:-1]
        name = self.unique(name)
        self.inputs[name] = (None,) + tuple(int(d) for d in shape[1:])
        self.shapes[name] = self.inputs[name]
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

    def emit(self, name, op, inputs, attrs=None, params=None):
        name = self.unique(name)
        params = {k: np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
                  for k, v in (params or {}).items()}
        node = normalize_node(Node(name, op, list(inputs), [name], dict(attrs or {}), params))
        (shape,) = node.operator.infer(node, [self.shapes[t] for t in node.inputs])
        self.shapes[name] = tuple(int(d) if d is not None else None for d in shape)
        self.nodes.append(node)
        return name

    def shape(self, tensor):
        return self.shapes[tensor]

    def keras_shape(self, tensor):
        if tensor in self.deferred:
            source_shape = self.deferred[tensor][1]
            return (None, math.prod(source_shape[1:]))
        shape = self.shapes[tensor]
        if len(shape) < 3 or tensor in self.keras_order:
            return shape
        return (shape[0],) + shape[2:] + (shape[1],)

    def defer_flatten(self, name, tensor, as_channels_last=False):
        name = self.unique(name)
        if as_channels_last:
            tensor = self.layout(tensor, keras_order=True)
            shape = self.shapes[tensor]
            keras_shape = (shape[0],) + shape[2:] + (shape[1],)
        else:
            tensor = self.layout(tensor, keras_order=False)
            keras_shape = self.keras_shape(tensor)
        self.deferred[name] = (tensor, keras_shape)
        # Reserve the name so nothing else claims it before it is materialized.
        self.shapes[name] = None
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
            del self.shapes[tensor]
            self.materialized[tensor] = self.emit(tensor, "Flatten", [moved], {"axis": 1})
        return self.materialized[tensor]
