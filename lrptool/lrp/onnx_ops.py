"""The emitting tensor backend: the operations of ``numpy_ops.NumpyOps`` on symbolic tensors, each
written as ONNX nodes into one graph — the compiled explainer.

A ``Sym`` is a named tensor of the graph being built, with its shape (``None`` for the free batch
axis). Tensors known at compile time — all-ones inputs, the zᴮ bounds, the forward pass of a rule
on them — are ``Sym`` objects with a ``value`` and a leading axis of 1; they are computed once, in
float64, and enter the graph as initializers. What the eager walk decides from the data (skip the
x⁻ term when x⁻ is all zeros) is decided here from the graph: ``nonnegative`` marks tensors that
cannot be below zero (a ReLU's output, data moved or pooled from one).
"""

import os

import numpy as np
from onnx import helper, numpy_helper

from ..errors import LrpToolError
from ..graph import free_name
from ..ops.linear import channel_view
from .canonize import per_channel_affine
from .linear_ops import MeanAdapter, ParamCache, modify


class Sym:
    def __init__(self, name, shape, nonnegative=False, value=None, zero=False):
        self.name = name
        self.shape = tuple(shape)
        self.nonnegative = nonnegative
        self.value = value          # a compile-time constant (float64, leading axis 1), or None
        self.zero = zero            # known to be all zeros
        self.rectified = None       # ReLU(self), where the relevance divided by self vanishes wherever that is 0
        self.difference = None      # (p, q): emitted as p − q when first named (see compile.fusable_summand)
        self.factors = None         # (x, t): x ⊙ t, emitted when first named (see OnnxOps.mul)
        self.recorded = False       # a tensor of the forward pass
        self.shifted = None         # x, where this is x + ε (a rectified sum's stabilised denominator)

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"Sym({self.name!r}, {self.shape})"


class Emitter:
    """Nodes and initializers of the graph being built, with unique names."""

    def __init__(self, taken=(), external=None):
        self.nodes = []
        self.initializers = []
        self.names = set(taken)
        self.cached = {}
        self.external = external    # a dict: large arrays go there, the model only names them

    def fresh(self, base):
        name = free_name(base, self.names)
        self.names.add(name)
        return name

    def node(self, op, inputs, attrs=None, outputs=1, base=None):
        names = [self.fresh(f"lrp/{base or op}") for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), names, name=self.fresh(f"lrp/{op}_node"),
                                           **(attrs or {})))
        return names if outputs > 1 else names[0]

    def constant(self, array, dtype=np.float32, key=None):
        """An initializer for ``array`` (shared when ``key`` was seen before)."""
        if key is not None and key in self.cached:
            return self.cached[key]
        name = self.fresh("lrp/const")
        array = np.ascontiguousarray(np.asarray(array, dtype=dtype))
        if self.external is not None and array.size > 16:
            from converters.onnx_writer import external_tensor

            self.external[name] = array
            self.initializers.append(external_tensor(name, array))
        else:
            self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self.cached[key] = name
        return name

    def ints(self, values):
        values = tuple(int(v) for v in values)
        return self.constant(np.asarray(values, dtype=np.int64), np.int64, key=("ints", values))

    def scalar(self, value):
        return self.constant(np.asarray(value, dtype=np.float32), key=("scalar", float(value)))


def broadcast(shape_a, shape_b):
    rank = max(len(shape_a), len(shape_b))
    a = (1,) * (rank - len(shape_a)) + tuple(shape_a)
    b = (1,) * (rank - len(shape_b)) + tuple(shape_b)
    out = []
    for p, q in zip(a, b):
        if p is None or q is None:
            out.append(None if (p in (None, 1) and q in (None, 1)) else (p if p not in (None, 1) else q))
        else:
            out.append(max(p, q))
    return tuple(out)


class OnnxOps:
    eager = False

    def __init__(self, emitter, graph_shapes, dtype=np.float32):
        self.emit = emitter
        self.graph_shapes = graph_shapes
        self.dtype = np.dtype(dtype)
        self.sums = False
        self.max_unpool = True      # MaxUnpool for max-pools without overlap (the CPU has it, CUDA does not)
        self.cache = ParamCache(use_onnxruntime=False)

    # -- tensors -------------------------------------------------------------------------------
    def name(self, x):
        """The graph name of ``x``, emitting compile-time constants as initializers."""
        if x.value is not None and x.name is None:
            x.name = self.emit.constant(x.value)
        if x.zero and x.name is None:
            x.name = self.emit.node("ConstantOfShape", [self.emit.ints([1] + [d for d in x.shape[1:]])])
        if x.difference is not None and x.name is None:
            x.name = self.emit.node("Sub", [self.name(p) for p in x.difference])
        if x.factors is not None and x.name is None:
            x.name = self.emit.node("Mul", [self.name(p) for p in x.factors])
        return x.name

    def sym(self, name, shape, nonnegative=False):
        return Sym(name, shape, nonnegative)

    def known(self, value):
        return Sym(None, value.shape, bool(np.all(value >= 0)), value=np.asarray(value, dtype=np.float64))

    def unary(self, op, x, shape=None, nonnegative=False, attrs=None):
        return Sym(self.emit.node(op, [self.name(x)], attrs), shape or x.shape, nonnegative)

    def binary(self, op, a, b, compute, nonnegative=False):
        if a.value is not None and b.value is not None:
            return self.known(compute(a.value, b.value))
        return Sym(self.emit.node(op, [self.name(a), self.name(b)]), broadcast(a.shape, b.shape), nonnegative)

    def scalar(self, value):
        return Sym(self.emit.scalar(value), (), value >= 0)

    # -- element-wise ----------------------------------------------------------------------------
    def pos(self, x):
        if x.value is not None:
            return self.known(np.maximum(x.value, 0))
        if x.nonnegative:
            return x
        return self.unary("Relu", x, nonnegative=True)

    def neg(self, x):
        if x.value is not None:
            return self.known(np.minimum(x.value, 0))
        if x.nonnegative:
            return Sym(None, x.shape, zero=True)
        return Sym(self.emit.node("Min", [self.name(x), self.emit.scalar(0.0)]), x.shape)

    def ones_like(self, x):
        return self.known(np.ones((1,) + tuple(x.shape[1:])))

    def zeros_like(self, x):
        if x.value is not None:
            return self.known(np.zeros_like(x.value))
        shape = self.emit.node("Shape", [self.name(x)])
        return Sym(self.emit.node("ConstantOfShape", [shape]), x.shape, True)

    def bound(self, value, like):
        return self.known(np.broadcast_to(np.asarray(value, dtype=np.float64), (1,) + tuple(like.shape[1:])))

    def is_zero(self, x):
        return x.zero

    def add(self, a, b):
        if self.same_factor(a, b):  # x ⊙ t + x ⊙ u = x ⊙ (t + u): one product instead of two
            return self.factored(a.factors[0], self.add(a.factors[1], b.factors[1]))
        return self.binary("Add", a, b, np.add, a.nonnegative and b.nonnegative)

    @staticmethod
    def same_factor(a, b):
        return (a.factors is not None and b.factors is not None and a.name is None and b.name is None
                and a.factors[0].name == b.factors[0].name and a.factors[0].name is not None)

    def factored(self, x, t):
        product = Sym(None, x.shape, x.nonnegative and t.nonnegative)
        product.factors = (x, t)
        return product

    def sub(self, a, b):
        return self.binary("Sub", a, b, np.subtract)

    def mul(self, a, b):
        """a ⊙ b; the product of a forward tensor x and a tensor t of its shape stays x ⊙ t until
        it is named, so that products of x summed at x (a residual block's input, read by its
        convolution and by the sum) add their t first, and a division by x + ε reads t and x/(x + ε)."""
        for x, t in ((a, b), (b, a)):
            if (x.recorded and not t.recorded and x.name is not None and t.value is None and not t.zero
                    and tuple(x.shape) == tuple(t.shape)):
                return self.factored(x, t)
        return self.binary("Mul", a, b, np.multiply, a.nonnegative and b.nonnegative)

    def div(self, a, b):
        if (a.factors is not None and a.name is None and b.shifted is not None
                and b.shifted.name == a.factors[0].name and tuple(a.shape) == tuple(b.shape)):
            # (x ⊙ t) / (x + ε) = t ⊙ x/(x + ε): the ratio depends on the forward pass alone
            x, t = a.factors
            return self.binary("Mul", t, self.binary("Div", x, b, np.divide, True), np.multiply)
        return self.binary("Div", a, b, np.divide)

    def scale(self, a, factor):
        if a.value is not None:
            return self.known(a.value * factor)
        return Sym(self.emit.node("Mul", [self.name(a), self.emit.scalar(factor)]), a.shape,
                   a.nonnegative and factor >= 0)

    def stabilise(self, z, epsilon):
        """z + ε·sign(z) with sign(0) = +1."""
        if z.value is not None:
            shift = np.float32(epsilon)
            return self.known(z.value + np.where(z.value >= 0, shift, -shift))
        if z.rectified is not None:  # see compile.rectified_sums: ReLU(z) + ε serves, and is never below zero
            shifted = Sym(self.emit.node("Add", [self.name(z.rectified), self.emit.scalar(epsilon)]), z.shape, True)
            shifted.shifted = z.rectified
            return shifted
        name = self.name(z)
        if z.nonnegative:  # z⁺ denominators: sign(z) is +1 everywhere, one addition does
            return Sym(self.emit.node("Add", [name, self.emit.scalar(epsilon)]), z.shape, True)
        positive = self.emit.node("GreaterOrEqual", [name, self.emit.scalar(0.0)])
        shift = self.emit.node("Where", [positive, self.emit.scalar(epsilon), self.emit.scalar(-epsilon)])
        return Sym(self.emit.node("Add", [name, shift]), z.shape)

    def stabilise_zeros(self, z, epsilon):
        """z, with ε where z is exactly 0 (iNNvestigate's safe division)."""
        if z.value is not None:
            return self.known(np.where(z.value == 0, np.float32(epsilon), z.value))
        name = self.name(z)
        zero = self.emit.node("Equal", [name, self.emit.scalar(0.0)])
        return Sym(self.emit.node("Where", [zero, self.emit.scalar(epsilon), name]), z.shape, z.nonnegative)

    def mask(self, s, z, positive):
        keep = self.emit.node("Greater" if positive else "Less", [self.name(z), self.emit.scalar(0.0)])
        return Sym(self.emit.node("Where", [keep, self.name(s), self.emit.scalar(0.0)]), broadcast(s.shape, z.shape))

    def where(self, condition, a, b, shape):
        return Sym(self.emit.node("Where", [condition, self.name(a), self.name(b)]), shape)

    def cast(self, x):
        return x

    def unbroadcast(self, x, shape):
        """Sum ``x`` down to ``shape`` (the adjoint of broadcasting)."""
        if tuple(x.shape) == tuple(shape) and x.factors is not None and x.name is None:
            return x   # nothing to sum: the product stays factored
        name, have = self.name(x), tuple(x.shape)
        if len(have) > len(shape):
            lead = list(range(len(have) - len(shape)))
            name = self.emit.node("ReduceSum", [name, self.emit.ints(lead)], {"keepdims": 0})
            have = have[len(lead):]
        axes = [i for i, (h, w) in enumerate(zip(have, shape)) if w == 1 and h != 1]
        if not axes:
            return Sym(name, have, x.nonnegative)
        name = self.emit.node("ReduceSum", [name, self.emit.ints(axes)], {"keepdims": 1})
        return Sym(name, tuple(1 if i in axes else d for i, d in enumerate(have)), x.nonnegative)

    def offset(self, x, value):
        return Sym(self.emit.node("Add", [self.name(x), self.emit.scalar(value)]), x.shape, x.nonnegative and value >= 0)

    def constant(self, array):
        return Sym(self.emit.constant(np.asarray(array, dtype=np.float32)), np.shape(array), bool(np.all(array >= 0)))

    def reduce_sum(self, x, axes, keepdims=True):
        axes = sorted(a % len(x.shape) for a in axes)
        name = self.emit.node("ReduceSum", [self.name(x), self.emit.ints(axes)], {"keepdims": int(keepdims)})
        shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keepdims else \
            [d for i, d in enumerate(x.shape) if i not in axes]
        return Sym(name, shape, x.nonnegative)

    def reduce_mean(self, x, axes):
        axes = sorted(a % len(x.shape) for a in axes)
        name = self.emit.node("ReduceMean", [self.name(x), self.emit.ints(axes)], {"keepdims": 1})
        return Sym(name, [1 if i in axes else d for i, d in enumerate(x.shape)], x.nonnegative)

    def square_root(self, x):
        return Sym(self.emit.node("Sqrt", [self.name(x)]), x.shape, True)

    def total(self, tensors):
        """Σ per sample over the tensors, as a graph tensor of shape (batch,) when ``sums`` is on (for
        the conservation report's outputs), else nothing."""
        if not self.sums or not tensors:
            return 0.0
        total = None
        for x in tensors:
            name = self.name(x)
            axes = list(range(1, len(x.shape)))
            if axes:
                name = self.emit.node("ReduceSum", [name, self.emit.ints(axes)], {"keepdims": 0})
            total = name if total is None else self.emit.node("Add", [total, name])
        return Sym(total, (None,))

    def nonfinite(self, tensors):
        return 0

    # -- operator-specific steps -----------------------------------------------------------------
    def adapter(self, node, input_shape):
        from .reverse import linear_primitives

        return linear_primitives(node).emitting(self, node, input_shape)

    def reshape(self, x, shape, nonnegative=None):
        target = [0 if d is None else d for d in shape]
        return Sym(self.emit.node("Reshape", [self.name(x), self.emit.ints(target)]), shape,
                   x.nonnegative if nonnegative is None else nonnegative)

    def move_back(self, node, shapes, grads):
        op, a = node.op, node.attrs
        g = grads[0]
        emit = self.emit
        if op == "Concat":
            axis = a["axis"] % len(g.shape)
            sizes = [s[axis] for s in shapes]
            parts = emit.node("Split", [self.name(g), emit.ints(sizes)], {"axis": axis}, outputs=len(sizes))
            parts = parts if isinstance(parts, list) else [parts]
            return [Sym(p, s) for p, s in zip(parts, shapes)]
        if op == "Split":
            axis = a["axis"] % len(g.shape)
            return [Sym(emit.node("Concat", [self.name(r) for r in grads], {"axis": axis}), shapes[0])]
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            return [self.reshape(g, shapes[0])]
        if op == "Transpose":
            inverse = [int(i) for i in np.argsort(a["perm"])]
            return [Sym(emit.node("Transpose", [self.name(g)], {"perm": inverse}), shapes[0])]
        if op == "Slice":
            return [self.unslice(node, g, shapes[0])]
        if op == "Pad":
            if a["mode"] != "constant":
                raise LrpToolError(f"node {node.name!r} ({op}): {a['mode']} padding has no compiled form")
            return [self.unpad(node, g, shapes[0])]
        if op == "Upsample":
            shape = shapes[0]
            split, axes = [], []
            for axis, (size, factor) in enumerate(zip(shape, (1, 1) + tuple(a["scales"]))):
                split.append(0 if size is None else size)
                if axis >= 2 and factor != 1:
                    split.append(factor)
                    axes.append(len(split) - 1)
            if not axes:
                return [g]
            blocks = emit.node("Reshape", [self.name(g), emit.ints(split)])
            return [Sym(emit.node("ReduceSum", [blocks, emit.ints(axes)], {"keepdims": 0}), shape)]
        raise LrpToolError(f"node {node.name!r} ({op}): no compiled data movement")

    def unslice(self, node, g, shape):
        """The adjoint of a slice: the relevance placed back, zeros elsewhere (steps of 1 only)."""
        rank = len(shape)
        begin, end = [0] * rank, [0] * rank
        for axis, part in enumerate(node.operator.slices(node, rank)):
            if shape[axis] is None:
                continue
            start, stop, step = part.indices(shape[axis])
            if step != 1:
                raise LrpToolError(f"node {node.name!r} (Slice): steps other than 1 have no compiled form yet")
            begin[axis], end[axis] = start, shape[axis] - max(stop, start)
        return Sym(self.emit.node("Pad", [self.name(g), self.emit.ints(begin + end)]), shape)

    def unpad(self, node, g, shape):
        pads, rank = node.attrs["pads"], len(shape)
        starts = [max(p, 0) for p in pads[:rank]]
        ends = [-max(p, 0) if p > 0 else np.iinfo(np.int64).max for p in pads[rank:]]
        name = self.emit.node("Slice", [self.name(g), self.emit.ints(starts), self.emit.ints(ends),
                                        self.emit.ints(range(rank))])
        grow = [max(-p, 0) for p in pads[:rank]] + [max(-p, 0) for p in pads[rank:]]
        if any(grow):
            name = self.emit.node("Pad", [name, self.emit.ints(grow)])
        return Sym(name, shape)

    def max_route(self, node, x, g):
        """To each window's winner: MaxPool's indices, then a scatter-add into zeros shaped like x."""
        emit = self.emit
        if node.op == "GlobalMaxPool":
            window = [int(d) for d in x.shape[2:]]
            attrs = {"kernel_shape": window, "strides": window}
        else:
            a = node.attrs
            attrs = {"kernel_shape": list(a["kernel_shape"]), "strides": list(a["strides"]),
                     "dilations": list(a["dilations"]), "pads": list(a["pads"]), "ceil_mode": int(a["ceil_mode"])}
        _, indices = emit.node("MaxPool", [self.name(x)], attrs, outputs=2)
        if self.max_unpool and self.unpool_fits(attrs, x.shape, g.shape):
            # windows that do not overlap: each input has at most one window, so MaxUnpool's
            # placing equals the scatter-add, at about half its cost
            attrs = {k: attrs[k] for k in ("kernel_shape", "strides", "pads") if k in attrs}
            return Sym(emit.node("MaxUnpool", [self.name(g), indices], attrs), x.shape)
        flat_shape = emit.node("Shape", [emit.node("Reshape", [self.name(x), emit.ints([-1])])])
        zeros = emit.node("ConstantOfShape", [flat_shape])
        scattered = emit.node("ScatterElements", [zeros, emit.node("Reshape", [indices, emit.ints([-1])]),
                                                  emit.node("Reshape", [self.name(g), emit.ints([-1])])],
                              {"axis": 0, "reduction": "add"})
        target = [-1] + [int(d) for d in x.shape[1:]]  # constant, so shape inference keeps the batch axis
        return Sym(emit.node("Reshape", [scattered, emit.ints(target)]), x.shape)

    @staticmethod
    def unpool_fits(attrs, in_shape, out_shape):
        """Whether MaxUnpool routes a max-pool's relevance exactly: windows that do not overlap
        (kernel ≤ stride, no dilation) and MaxUnpool's own output size equal to the input's."""
        kernel = attrs["kernel_shape"]
        rank = len(kernel)
        strides = attrs.get("strides", [1] * rank)
        pads = attrs.get("pads", [0] * 2 * rank)
        if any(d != 1 for d in attrs.get("dilations", [1] * rank)) or any(k > s for k, s in zip(kernel, strides)):
            return False
        sizes = [(out_shape[2 + i] - 1) * strides[i] + kernel[i] - pads[i] - pads[rank + i] for i in range(rank)]
        return sizes == [int(d) for d in in_shape[2:]]

    def max_elementwise(self, inputs, g):
        """Each element to the first input holding the maximum."""
        emit = self.emit
        names = [self.name(x) for x in inputs]
        best = emit.node("Max", names)
        taken, routed = None, []
        zero = emit.scalar(0.0)
        for name, x in zip(names, inputs):
            wins = emit.node("Equal", [name, best])
            if taken is not None:
                wins = emit.node("And", [wins, emit.node("Not", [taken])])
            taken = wins if taken is None else emit.node("Or", [taken, wins])
            share = Sym(emit.node("Where", [wins, self.name(g), zero]), g.shape)
            routed.append(self.unbroadcast(share, x.shape))
        return routed

    def activation_vjp(self, node, x, y, g, policy):
        emit = self.emit
        a = node.attrs
        op = node.op
        xn, gn = self.name(x), self.name(g)
        zero = emit.scalar(0.0)

        def where(condition, when_true, when_false=zero):
            return Sym(emit.node("Where", [condition, when_true, when_false]), g.shape)

        def times(factor):
            return emit.node("Mul", [gn, factor])
        if op == "Relu":
            if policy == "deconvnet":
                return Sym(emit.node("Relu", [gn]), g.shape, True)
            active = emit.node("Greater", [xn, zero])
            if policy == "guided":
                active = emit.node("And", [active, emit.node("Greater", [gn, zero])])
            return where(active, gn)
        if op in ("LeakyRelu", "PRelu"):
            slope = emit.scalar(a["alpha"]) if op == "LeakyRelu" else emit.constant(node.params["slope"])
            return where(emit.node("GreaterOrEqual", [xn, zero]), gn, times(slope))
        if op in ("Elu", "Selu"):
            inner = times(emit.node("Mul", [emit.scalar(a["alpha"]), emit.node("Exp", [emit.node("Min", [xn, zero])])]))
            result = where(emit.node("Greater", [xn, zero]), gn, inner)
            return self.scale(result, a["gamma"]) if op == "Selu" else result
        if op == "Sigmoid":
            yn = self.name(y)
            return Sym(times(emit.node("Mul", [yn, emit.node("Sub", [emit.scalar(1.0), yn])])), g.shape)
        if op == "Tanh":
            yn = self.name(y)
            return Sym(times(emit.node("Sub", [emit.scalar(1.0), emit.node("Mul", [yn, yn])])), g.shape)
        if op == "HardSigmoid":
            inner = emit.node("Add", [emit.node("Mul", [xn, emit.scalar(a["alpha"])]), emit.scalar(a["beta"])])
            inside = emit.node("And", [emit.node("Greater", [inner, zero]), emit.node("Less", [inner, emit.scalar(1.0)])])
            return where(inside, times(emit.scalar(a["alpha"])))
        if op == "HardSwish":
            slope = emit.node("Div", [emit.node("Add", [emit.node("Mul", [xn, emit.scalar(2.0)]), emit.scalar(3.0)]),
                                      emit.scalar(6.0)])
            upper = emit.node("Where", [emit.node("GreaterOrEqual", [xn, emit.scalar(3.0)]), gn, times(slope)])
            return where(emit.node("LessOrEqual", [xn, emit.scalar(-3.0)]), zero, upper)
        if op == "Clip":
            inside = emit.node("And", [emit.node("Greater", [xn, emit.scalar(a["min"])]),
                                       emit.node("Less", [xn, emit.scalar(a["max"])])])
            return where(inside, gn)
        if op == "Abs":
            return Sym(times(emit.node("Sign", [xn])), g.shape)
        if op == "Gelu":
            return Sym(times(self.gelu_slope(xn, a["approximate"])), g.shape)
        if op == "ThresholdedRelu":
            return where(emit.node("Greater", [xn, emit.scalar(a["alpha"])]), gn)
        if op == "Sqrt":
            yn = self.name(y)
            slope = emit.node("Div", [emit.scalar(0.5), yn])
            return where(emit.node("Greater", [yn, zero]), times(slope))
        if op == "Pow":
            exponent = a["exponent"]
            if exponent == 1:
                return g
            power = emit.node("Pow", [xn, emit.scalar(exponent - 1)])
            return Sym(times(emit.node("Mul", [power, emit.scalar(exponent)])), g.shape)
        raise LrpToolError(f"node {node.name!r} ({op}): no compiled derivative")

    def gelu_slope(self, xn, approximate):
        """The derivative of GELU at ``xn`` (see routing.gelu_derivative), as ONNX nodes."""
        from ..ops.normalization import SQRT_2_OVER_PI

        emit = self.emit
        half, one = emit.scalar(0.5), emit.scalar(1.0)
        square = emit.node("Mul", [xn, xn])
        if approximate == "tanh":
            cubic = emit.node("Mul", [emit.node("Mul", [square, xn]), emit.scalar(0.044715)])
            t = emit.node("Tanh", [emit.node("Mul", [emit.node("Add", [xn, cubic]), emit.scalar(SQRT_2_OVER_PI)])])
            inner = emit.node("Add", [one, emit.node("Mul", [square, emit.scalar(3 * 0.044715)])])
            slope = emit.node("Mul", [emit.node("Mul", [emit.node("Sub", [one, emit.node("Mul", [t, t])]), inner]),
                                      emit.scalar(SQRT_2_OVER_PI)])
            return emit.node("Mul", [half, emit.node("Add", [emit.node("Add", [one, t]), emit.node("Mul", [xn, slope])])])
        cdf = emit.node("Mul", [half, emit.node("Add", [one, emit.node("Erf", [emit.node("Mul", [xn, emit.scalar(
            1 / np.sqrt(2.0))])])])])
        density = emit.node("Mul", [emit.node("Exp", [emit.node("Mul", [square, emit.scalar(-0.5)])]),
                                    emit.scalar(1 / np.sqrt(2 * np.pi))])
        return emit.node("Add", [cdf, emit.node("Mul", [xn, density])])

    def softmax_vjp(self, node, y, g):
        emit = self.emit
        axes = emit.ints([ax % len(y.shape) for ax in node.attrs["axes"]])
        yn, gn = self.name(y), self.name(g)
        if node.op == "Softmax":
            inner = emit.node("ReduceSum", [emit.node("Mul", [gn, yn]), axes], {"keepdims": 1})
            return Sym(emit.node("Mul", [yn, emit.node("Sub", [gn, inner])]), g.shape)
        total = emit.node("ReduceSum", [gn, axes], {"keepdims": 1})
        return Sym(emit.node("Sub", [gn, emit.node("Mul", [emit.node("Exp", [yn]), total])]), g.shape)

    def channel_window_sum(self, name, shape, before, size):
        """Σ over the channel window [c − before, c − before + size − 1], zero outside."""
        emit = self.emit
        rank = len(shape)
        channels = shape[1]
        pads = [0] * (2 * rank)
        pads[1], pads[rank + 1] = before, size - 1 - before
        padded = emit.node("Pad", [name, emit.ints(pads)])
        total = None
        for offset in range(size):
            part = emit.node("Slice", [padded, emit.ints([offset]), emit.ints([offset + channels]), emit.ints([1])])
            total = part if total is None else emit.node("Add", [total, part])
        return total

    def lrn_vjp(self, node, x, g):
        emit = self.emit
        a = node.attrs
        size = a["size"]
        before = (size - 1) // 2
        xn, gn = self.name(x), self.name(g)
        squares = emit.node("Mul", [xn, xn])
        scale = emit.node("Add", [emit.scalar(a["bias"]), emit.node("Mul", [
            emit.scalar(a["alpha"] / size), self.channel_window_sum(squares, x.shape, before, size)])])
        scaled = emit.node("Mul", [emit.node("Mul", [gn, xn]), emit.node("Pow", [scale, emit.scalar(-a["beta"] - 1)])])
        back = self.channel_window_sum(scaled, x.shape, size - 1 - before, size)
        first = emit.node("Mul", [gn, emit.node("Pow", [scale, emit.scalar(-a["beta"])])])
        second = emit.node("Mul", [emit.scalar(2 * a["alpha"] * a["beta"] / size), emit.node("Mul", [xn, back])])
        return Sym(emit.node("Sub", [first, second]), g.shape)


# -- the linear primitives, emitted ---------------------------------------------------------------

class EmittingAdapter:
    """forward(x, weight mode, bias mode) and transpose(s, weight mode) of one node, as ONNX nodes.
    Compile-time constant inputs (ones, bounds) are run eagerly in float64 instead."""

    def __init__(self, ops, node, input_shape):
        self.ops = ops
        self.emit = ops.emit
        self.node = node
        self.input_shape = tuple(input_shape)

    def eager(self):
        from .reverse import linear_primitives

        return linear_primitives(self.node).eager(self.node, self.ops.cache, (1,) + self.input_shape[1:], np.float64)

    def weight(self, name, mode, gamma):
        array = modify(self.node.params[name].astype(np.float64), mode, gamma)
        return self.emit.constant(array, key=(self.node.name, name, mode, gamma))

    def bias(self, mode, gamma):
        if mode is None or "bias" not in self.node.params:
            return None
        return self.weight("bias", mode, gamma)

    def forward(self, x, mode, bias_mode, gamma=0.0):
        if x.value is not None:
            return self.ops.known(self.eager().forward(x.value, mode, bias_mode, gamma))
        return self.emit_forward(x, mode, bias_mode, gamma)

    def out_shape(self):
        return tuple(self.ops.graph_shapes[self.node.outputs[0]])


class ConvEmitter(EmittingAdapter):
    def attrs(self):
        a = self.node.attrs
        return {"strides": list(a["strides"]), "dilations": list(a["dilations"]), "pads": list(a["pads"]),
                "group": a["group"]}

    def emit_forward(self, x, mode, bias_mode, gamma):
        nonnegative = x.nonnegative and mode in ("pos", "ones", "square") and bias_mode in (None, "pos", "square")
        if self.pointwise():
            return Sym(self.pointwise_product(x, mode, gamma, bias_mode), self.out_shape(), nonnegative)
        inputs = [self.ops.name(x), self.weight("weight", mode, gamma)]
        bias = self.bias(bias_mode, gamma)
        if bias is not None:
            inputs.append(bias)
        return Sym(self.emit.node("Conv", inputs, self.attrs()), self.out_shape(), nonnegative)

    def pointwise(self):
        """Whether this is a 1×1 convolution of stride 1 without padding or groups over a known
        spatial size: a matrix product over the channels at every position."""
        a = self.node.attrs
        weight = self.node.params["weight"]
        return (POINTWISE_PRODUCTS and a["group"] == 1 and all(k == 1 for k in weight.shape[2:])
                and all(v == 1 for v in a["strides"]) and not any(a["pads"])
                and all(isinstance(d, int) for d in self.input_shape[2:]))

    def pointwise_product(self, x, mode, gamma, bias_mode=None, transposed=False):
        """The 1×1 convolution (or its transpose) as one MatMul of the (C_out, C_in) weights with
        x viewed as (N, C_in, positions): onnxruntime runs it in the plain layout, so the reverse
        walk's divisions and products around it need no layout changes."""
        weight = self.node.params["weight"]
        matrix = modify(weight.astype(np.float64), mode, gamma).reshape(weight.shape[:2])
        key = (self.node.name, "weight", mode, gamma, "matrix")
        if transposed:
            matrix, key = matrix.T, key + ("T",)
        emit = self.emit
        rows = emit.node("Reshape", [self.ops.name(x), emit.ints([0, matrix.shape[1], -1])])
        product = emit.node("MatMul", [emit.constant(matrix, key=key), rows])
        if bias_mode is not None and "bias" in self.node.params:
            bias = modify(self.node.params["bias"].astype(np.float64), bias_mode, gamma).reshape(-1, 1)
            product = emit.node("Add", [product, emit.constant(bias, key=(self.node.name, "bias", bias_mode, gamma,
                                                                          "column"))])
        shape = self.input_shape if transposed else self.out_shape()
        return emit.node("Reshape", [product, emit.ints([0] + [int(d) for d in shape[1:]])])

    def transpose(self, s, mode, gamma=0.0):
        if mode == "ones":
            return self.transpose_of_ones(s)
        if self.pointwise():
            return Sym(self.pointwise_product(s, mode, gamma, transposed=True), (s.shape[0],) + self.input_shape[1:])
        flipped = self.as_flipped_convolution(s, mode, gamma)
        if flipped is not None:
            return flipped
        name = self.emit.node("ConvTranspose", [self.ops.name(s), self.weight("weight", mode, gamma)],
                              self.transpose_attrs())
        return Sym(name, (s.shape[0],) + self.input_shape[1:])

    def transpose_attrs(self):
        """ConvTranspose's attributes for the adjoint of this convolution (output size = input size)."""
        weight = self.node.params["weight"]
        a = self.node.attrs
        rank = weight.ndim - 2
        out = self.out_shape()
        extra = []
        for i in range(rank):
            produced = (a["strides"][i] * (out[2 + i] - 1) + (weight.shape[2 + i] - 1) * a["dilations"][i] + 1
                        - a["pads"][i] - a["pads"][rank + i])
            extra.append(self.input_shape[2 + i] - produced)
        attrs = dict(self.attrs(), output_padding=[max(e, 0) for e in extra])
        pads = list(a["pads"])
        for i, e in enumerate(extra):
            if e < 0:
                pads[rank + i] -= e
        attrs["pads"] = pads
        return attrs

    def transpose_of_ones(self, s):
        """The transpose with an all-ones kernel (the flat rule): every input channel of a group gets
        the same value, so sum the group's output channels first, transpose one channel per group,
        and repeat it over the group's input channels (a fraction of the full transpose's work)."""
        weight = self.node.params["weight"]
        emit = self.emit
        group = self.node.attrs["group"]
        out_per_group, in_per_group = weight.shape[0] // group, weight.shape[1]
        spatial = [int(d) for d in s.shape[2:]]
        name = self.ops.name(s)
        if out_per_group > 1:  # a convolution with a ones kernel: the same sums whatever the batch size
            ones = np.ones((group, out_per_group) + (1,) * len(spatial))
            name = emit.node("Conv", [name, emit.constant(ones, key=("ones-kernel", ones.shape))], {"group": group})
        kernel = np.ones((group, 1) + weight.shape[2:])
        name = emit.node("ConvTranspose", [name, emit.constant(kernel, key=("ones-kernel", kernel.shape))],
                         self.transpose_attrs())
        shape = (s.shape[0],) + self.input_shape[1:]
        if in_per_group > 1:
            size = [int(d) for d in self.input_shape[2:]]
            name = emit.node("Unsqueeze", [name, emit.ints([2])])
            name = emit.node("Expand", [name, emit.ints([1, group, in_per_group] + size)])
            name = emit.node("Reshape", [name, emit.ints([0] + [int(d) for d in self.input_shape[1:]])])
        return Sym(name, shape)


    def as_flipped_convolution(self, s, mode, gamma):
        """A stride-1 convolution's transpose as a convolution with the flipped kernel, its in and out
        channels swapped (onnxruntime's Conv is faster than its ConvTranspose); None where the
        padding is wider than the kernel reaches, which this form cannot express."""
        a = self.node.attrs
        weight = self.node.params["weight"]
        rank = weight.ndim - 2
        if FLIPPED_TRANSPOSE is False or any(stride != 1 for stride in a["strides"]):
            return None
        reach = [a["dilations"][i] * (weight.shape[2 + i] - 1) for i in range(rank)]
        pads = [reach[i] - a["pads"][i] for i in range(rank)] + [reach[i] - a["pads"][rank + i] for i in range(rank)]
        if min(pads) < 0:
            return None
        key = (self.node.name, "weight", mode, gamma, "flipped")
        if key not in self.emit.cached:
            group = a["group"]
            out_channels, in_per_group = weight.shape[:2]
            kernel = modify(weight.astype(np.float64), mode, gamma)
            kernel = kernel.reshape((group, out_channels // group, in_per_group) + weight.shape[2:])
            kernel = np.swapaxes(kernel, 1, 2).reshape((group * in_per_group, out_channels // group) + weight.shape[2:])
            kernel = np.flip(kernel, axis=tuple(range(2, 2 + rank)))
            self.emit.constant(kernel, key=key)
        name = self.emit.node("Conv", [self.ops.name(s), self.emit.cached[key]],
                              {"strides": [1] * rank, "dilations": list(a["dilations"]), "pads": pads,
                               "group": a["group"]})
        return Sym(name, (s.shape[0],) + self.input_shape[1:])


#: Whether stride-1 transposes run as convolutions with flipped kernels (an extra copy of those
#: kernels for speed); LRPTOOL_FLIPPED_TRANSPOSE=0 turns it off, for measuring.
FLIPPED_TRANSPOSE = os.environ.get("LRPTOOL_FLIPPED_TRANSPOSE", "1") != "0"
#: Whether 1×1 convolutions of the rules run as MatMul (LRPTOOL_POINTWISE_PRODUCTS=0 turns it off,
#: for measuring).
POINTWISE_PRODUCTS = os.environ.get("LRPTOOL_POINTWISE_PRODUCTS", "1") != "0"


class ConvTransposeEmitter(ConvEmitter):
    def emit_forward(self, x, mode, bias_mode, gamma):
        a = self.node.attrs
        inputs = [self.ops.name(x), self.weight("weight", mode, gamma)]
        bias = self.bias(bias_mode, gamma)
        if bias is not None:
            inputs.append(bias)
        attrs = dict(self.attrs(), output_padding=list(a["output_padding"]))
        return Sym(self.emit.node("ConvTranspose", inputs, attrs), self.out_shape())

    def transpose(self, s, mode, gamma=0.0):
        # the adjoint of a transposed convolution is the convolution with the same kernel, cropped
        name = self.emit.node("Conv", [self.ops.name(s), self.weight("weight", mode, gamma)], self.attrs())
        rank = len(self.input_shape)
        ends = [d for d in self.input_shape[2:]]
        name = self.emit.node("Slice", [name, self.emit.ints([0] * (rank - 2)), self.emit.ints(ends),
                                        self.emit.ints(range(2, rank))])
        return Sym(name, (s.shape[0],) + self.input_shape[1:])


class DenseEmitter(EmittingAdapter):
    def transposed_weight(self, mode, gamma):
        array = modify(self.node.params["weight"].astype(np.float64), mode, gamma).T
        return self.emit.constant(array, key=(self.node.name, "weight.T", mode, gamma))

    def emit_forward(self, x, mode, bias_mode, gamma):
        y = self.emit.node("MatMul", [self.ops.name(x), self.transposed_weight(mode, gamma)])
        bias = self.bias(bias_mode, gamma)
        if bias is not None:
            y = self.emit.node("Add", [y, bias])
        return Sym(y, self.out_shape())

    def transpose(self, s, mode, gamma=0.0):
        name = self.emit.node("MatMul", [self.ops.name(s), self.weight("weight", mode, gamma)])
        return Sym(name, (s.shape[0],) + self.input_shape[1:])


class PerChannelEmitter(EmittingAdapter):
    def factors(self, mode, gamma, which):
        a, c = per_channel_affine(self.node)
        vector = a if which == "scale" else c
        rank = len(self.input_shape)
        return self.emit.constant(channel_view(modify(vector, mode, gamma), rank),
                                  key=(self.node.name, which, mode, gamma))

    def emit_forward(self, x, mode, bias_mode, gamma):
        y = self.emit.node("Mul", [self.ops.name(x), self.factors(mode, gamma, "scale")])
        if bias_mode is not None and per_channel_affine(self.node)[1] is not None:
            y = self.emit.node("Add", [y, self.factors(bias_mode, gamma, "bias")])
        return Sym(y, self.out_shape())

    def transpose(self, s, mode, gamma=0.0):
        return Sym(self.emit.node("Mul", [self.ops.name(s), self.factors(mode, gamma, "scale")]),
                   (s.shape[0],) + self.input_shape[1:])


class MeanEmitter(EmittingAdapter):
    """Average pooling and mean reduction: forward is the operator times the implicit weight's factor;
    the transpose spreads each output over its window (a depthwise ConvTranspose of ones for
    pooling, a broadcast for reductions)."""

    def numbers(self):
        return MeanAdapter(self.node, self.ops.cache, (1,) + self.input_shape[1:], np.float64)

    def factor(self, mode, gamma):
        out = self.out_shape()
        numbers = self.numbers()
        return numbers.implicit_weight(mode, gamma, numbers.counts((1,) + out[1:]))

    def emit_forward(self, x, mode, bias_mode, gamma):
        node, emit = self.node, self.emit
        a = node.attrs
        if node.op == "AveragePool":
            attrs = {"kernel_shape": list(a["kernel_shape"]), "strides": list(a["strides"]),
                     "dilations": list(a["dilations"]), "pads": list(a["pads"]), "ceil_mode": int(a["ceil_mode"]),
                     "count_include_pad": int(a["count_include_pad"])}
            y = emit.node("AveragePool", [self.ops.name(x)], attrs)
        elif node.op == "GlobalAveragePool":
            y = emit.node("GlobalAveragePool", [self.ops.name(x)])
        else:
            y = emit.node("ReduceMean", [self.ops.name(x), emit.ints(a["axes"])], {"keepdims": int(a["keepdims"])})
        factor = self.factor(mode, gamma)
        if not np.all(factor == 1):
            y = emit.node("Mul", [y, emit.constant(factor)])
        return Sym(y, self.out_shape(), x.nonnegative and mode in ("w", "pos", "ones", "square"))

    def transpose(self, s, mode, gamma=0.0):
        node, emit = self.node, self.emit
        shape = (s.shape[0],) + self.input_shape[1:]
        factor = self.factor(mode, gamma)
        numbers = self.numbers()
        name = self.ops.name(s)
        if node.op == "AveragePool":
            counts = numbers.counts((1,) + self.out_shape()[1:])
            inverse = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
            name = emit.node("Mul", [name, emit.constant(factor * inverse)])
            a = node.attrs
            channels, rank = self.input_shape[1], len(self.input_shape) - 2
            kernel = np.ones((channels, 1) + tuple(a["kernel_shape"]))
            out = self.out_shape()
            extra = []
            for i in range(rank):
                produced = (a["strides"][i] * (out[2 + i] - 1) + (a["kernel_shape"][i] - 1) * a["dilations"][i] + 1
                            - a["pads"][i] - a["pads"][rank + i])
                extra.append(self.input_shape[2 + i] - produced)
            pads = list(a["pads"])
            for i, e in enumerate(extra):
                if e < 0:
                    pads[rank + i] -= e
            attrs = {"strides": list(a["strides"]), "dilations": list(a["dilations"]), "pads": pads,
                     "group": channels, "output_padding": [max(e, 0) for e in extra]}
            name = emit.node("ConvTranspose", [name, emit.constant(kernel, key=("ones-kernel", kernel.shape))], attrs)
            return Sym(name, shape)
        axes = numbers.axes()
        count = float(np.prod([self.input_shape[ax] for ax in axes]))
        if node.op == "ReduceMean" and not node.attrs.get("keepdims", True):
            name = emit.node("Unsqueeze", [name, emit.ints(axes)])
        name = emit.node("Mul", [name, emit.constant(factor / count)])
        target = [1] + [int(d) for d in self.input_shape[1:]]
        return Sym(emit.node("Expand", [name, emit.ints(target)]), shape)


__all__ = ["OnnxOps", "Emitter", "Sym"]
