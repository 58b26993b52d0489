"""The skeleton every reader shares: the graph under construction and the converter registry.

A reader parses its format and walks the model; for each layer or node it looks up a converter in
a ``Registry`` and the converter adds IR nodes through a ``GraphBuilder`` (each node checked
against its operator's schema, its output shapes inferred and checked against the memory budget,
its name made unique in one scheme: ``name``, ``name_2``, ``name_3``, …). A converter raises
``Unsupported`` for what the format allows but lrptool's operator set does not cover; the reader
collects every such place and reports them together. A new format needs only its own parsing.
"""

from lrptool.graph import Graph, Node, free_name, normalize_node
from lrptool.limits import check_shape


class Unsupported(Exception):
    """A layer or node (or one of its settings) that lrptool cannot represent; the message says which."""


class Registry(dict):
    """Converters keyed by layer type or operator name. ``register`` is a decorator; registering a
    key twice is a programming error and is refused when the module is imported."""

    def __init__(self, what):
        super().__init__()
        self.what = what

    def register(self, *keys, **properties):
        """Register the decorated function under every key in ``keys``; ``properties`` become its
        attributes (e.g. how many inputs it takes)."""
        def decorate(function):
            for name, value in properties.items():
                setattr(function, name, value)
            for key in keys:
                if key in self:
                    raise ValueError(f"{self.what} {key!r} has two converters: {self[key].__qualname__} and "
                                     f"{function.__qualname__}")
                self[key] = function
            return function
        return decorate


class Names:
    """One namespace of unique names: ``base``, else ``base_2``, ``base_3``, … (or ``base#2``, … with
    ``separator="#"``, for formats whose own names often end in ``_2``). The last suffix given out per
    base is remembered, so that thousands of layers of one name cost linear, not quadratic, time."""

    def __init__(self, separator="_"):
        self.separator = separator
        self.taken = set()
        self.suffixes = {}
        self.held = set()

    def __contains__(self, name):
        return name in self.taken

    def free(self, base):
        """The name ``unique`` would give, without taking it."""
        if base not in self.taken:
            return base
        name = free_name(base, self.taken, self.separator, start=self.suffixes.get(base, 2))
        # names are never given back, so no suffix below this one will be free again
        self.suffixes[base] = int(name.rsplit(self.separator, 1)[1])
        return name

    def unique(self, base):
        name = self.free(base)
        self.taken.add(name)
        return name

    def reserve(self, *names):
        self.taken.update(names)

    def hold(self, base):
        """A unique name kept for a node that is made later (``take_held``)."""
        name = self.unique(base)
        self.held.add(name)
        return name

    def take_held(self, name):
        self.held.remove(name)
        return name


class GraphBuilder:
    """A graph under construction: its inputs, IR nodes in order, the shape of every tensor made so far,
    and unique node names. ``finish`` checks the whole graph once more and returns it."""

    def __init__(self, separator="_"):
        self.inputs = {}
        self.nodes = []
        self.shapes = {}
        self.node_names = Names(separator)

    def shape(self, tensor):
        return self.shapes[tensor]

    def add_input(self, name, shape):
        """Declare graph input ``name`` (a name the caller made unique) of ``shape``."""
        self.inputs[name] = self.shapes[name] = tuple(shape)
        return name

    def add_node(self, name, op, inputs, outputs, attrs=None, params=None, held=False):
        """Add one IR node named ``name`` (made unique, or taken as held with ``Names.hold``); returns it.
        Its attributes and parameters are checked against the operator's schema and its output shapes
        inferred from its inputs'."""
        name = self.node_names.take_held(name) if held else self.node_names.unique(name)
        node = normalize_node(Node(name, op, list(inputs), list(outputs), dict(attrs or {}), dict(params or {})))
        shapes = node.operator.infer(node, [self.shapes[t] for t in node.inputs])
        for tensor, shape in zip(node.outputs, shapes):
            shape = tuple(int(d) if d is not None else None for d in shape)
            self.check_output(node, tensor, shape)
            self.shapes[tensor] = shape
        self.nodes.append(node)
        return node

    def check_output(self, node, tensor, shape):
        """Refuse an output that can never be computed: a few bytes of attributes can declare any size.
        Nothing is allocated here, but explaining one sample will be."""
        check_shape((1,) + tuple(shape[1:]), 4,
                    f"node {node.name!r} ({node.op}): output {tensor!r} of shape {tuple(shape)} (for one sample)")

    def finish(self, outputs, name):
        """The checked graph of everything added, with ``outputs``."""
        return Graph(self.inputs, self.nodes, outputs, name=name)
