"""Operators that exporters write out in elementary ONNX nodes, found again before a model is read.

JAX (jax2tf → tf2onnx), TensorFlow and older PyTorch exports spell GELU, layer normalisation, a
softmax and an embedding lookup as chains of Mul/Add/Tanh/Erf, ReduceSum/Sqrt/Reciprocal, Exp/Div and
one-hot Equal/Cast/MatMul. Each chain is found by its shape in the graph — a *region* of nodes from one
tensor x to one tensor y that reads nothing else but constants and leaks nothing else — and then
confirmed by its numbers: the model is run once in onnxruntime on random inputs and y must equal the
fused operator applied to x. A confirmed region becomes one node (``Gelu``, ``LayerNorm``, ``Softmax``,
``Gather``) in the model the reader then converts; anything unconfirmed is left as it was, and the
reader says what it cannot read.
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: The domain of the fused nodes (lrptool's own operators, read by converters.onnx_ops).
FUSED = "lrptool.fused"

ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "Pow", "Tanh", "Erf", "Sqrt", "Reciprocal", "Neg", "Identity"}
SHAPING = {"Reshape", "Expand", "Squeeze", "Unsqueeze", "Identity"}
NORMALISING = ELEMENTWISE | SHAPING | {"ReduceSum", "ReduceMean", "Max"}
SOFTMAXING = ELEMENTWISE | SHAPING | {"ReduceSum", "ReduceMax", "Max", "Exp"}
DEPTH = 12


class Model:
    """The graph's wiring: producers, consumers, which tensors are constant (initializers, Constant
    nodes, Shape of anything, and what only constants feed)."""

    def __init__(self, model):
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.producer = {t: n for n in self.nodes for t in n.output if t}
        self.consumers = {}
        for node in self.nodes:
            for tensor in node.input:
                if tensor:
                    self.consumers.setdefault(tensor, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
        self.initializers = {i.name: i for i in graph.initializer}
        static = set(self.initializers)
        for node in self.nodes:
            if node.op_type in ("Constant", "Shape", "Size") or (node.input and all(not t or t in static
                                                                                    for t in node.input)):
                static.update(node.output)
        self.static = static

    def computed_inputs(self, node):
        return [t for t in node.input if t and t not in self.static]

    def region(self, x, y, allowed, limit=40):
        """The nodes between x and y when they form a closed region of at most ``limit`` ``allowed`` operators,
        else None."""
        found, stack = {}, [y]
        while stack:
            tensor = stack.pop()
            if tensor == x:
                continue
            node = self.producer.get(tensor)
            if node is None or node.op_type not in allowed or len(found) > limit:
                return None
            if id(node) in found:
                continue
            found[id(node)] = node
            stack.extend(self.computed_inputs(node))
        if not found:
            return None
        made = {t for n in found.values() for t in n.output}
        for node in found.values():
            for tensor in node.output:
                if tensor == y or not tensor:
                    continue
                if tensor in self.outputs or any(id(c) not in found for c in self.consumers.get(tensor, [])):
                    return None
        if x not in {t for n in found.values() for t in self.computed_inputs(n)} or y not in made:
            return None
        return [n for n in self.nodes if id(n) in found]

    def ancestors(self, tensor, allowed, depth=DEPTH):
        """Computed tensors up from ``tensor`` through ``allowed`` nodes, nearest first."""
        seen, frontier = [], [tensor]
        for _ in range(depth):
            following = []
            for t in frontier:
                node = self.producer.get(t)
                if node is None or node.op_type not in allowed:
                    continue
                for source in self.computed_inputs(node):
                    if source not in seen:
                        seen.append(source)
                        following.append(source)
            frontier = following
        return seen

    def descendants(self, tensor, allowed, depth=DEPTH):
        seen, frontier = [], [tensor]
        for _ in range(depth):
            following = []
            for t in frontier:
                for node in self.consumers.get(t, []):
                    if node.op_type not in allowed:
                        continue
                    for out in node.output:
                        if out and out not in seen:
                            seen.append(out)
                            following.append(out)
            frontier = following
        return seen


def close(actual, expected, tolerance=2e-4):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape or not np.all(np.isfinite(actual)):
        return False
    return bool(np.max(np.abs(actual - expected)) <= tolerance * (1 + np.max(np.abs(expected))))


def probe_inputs(model, structure, rng, batch=4):
    """Random inputs: floats N(0, 1); integers below the smallest table or one-hot range they index."""
    high = 2
    for node in structure.nodes:
        if node.op_type == "Gather" and node.input[0] in structure.initializers:
            high = max(high, numpy_helper.to_array(structure.initializers[node.input[0]]).shape[0])
        if node.op_type == "Equal":
            for t in node.input:
                if t in structure.initializers:
                    high = max(high, int(numpy_helper.to_array(structure.initializers[t]).size))
    feeds = {}
    for value in model.graph.input:
        if value.name not in structure.inputs:
            continue
        kind = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in kind.shape.dim]
        if None in dims[1:]:
            return None
        shape = [batch] + dims[1:] if dims else []
        dtype = helper.tensor_dtype_to_np_dtype(kind.elem_type)
        if np.dtype(dtype).kind in "iu":
            feeds[value.name] = rng.integers(0, high, size=shape).astype(dtype)
        elif np.dtype(dtype).kind == "f":
            feeds[value.name] = rng.normal(size=shape).astype(dtype)
        else:
            return None
    return feeds


def probe(model, tensors, structure):
    """Values of ``tensors`` for random inputs (two draws, stacked on the batch axis), or None."""
    import onnxruntime

    feeds = probe_inputs(model, structure, np.random.default_rng(0))
    if feeds is None:
        return None
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    del probed.graph.output[:]
    for name in tensors:
        probed.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    session = onnxruntime.InferenceSession(probed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip(tensors, session.run(None, feeds)))


# -- the patterns ----------------------------------------------------------------------------------

def gelu_candidates(structure):
    for node in structure.nodes:
        if node.op_type not in ("Tanh", "Erf"):
            continue
        for x in structure.ancestors(node.input[0], ELEMENTWISE):
            for y in structure.descendants(node.output[0], ELEMENTWISE):
                region = structure.region(x, y, ELEMENTWISE)
                if region:
                    yield "gelu", x, y, region


def reduction_candidates(structure, anchor_ops, allowed, kind):
    for node in structure.nodes:
        if node.op_type not in anchor_ops:
            continue
        for x in structure.ancestors(node.output[0], allowed):
            for y in structure.descendants(node.output[0], allowed):
                region = structure.region(x, y, allowed)
                if region and any(n.op_type in ("ReduceSum", "ReduceMean") for n in region):
                    yield kind, x, y, region


def one_hot_candidates(structure):
    """ids → (Reshape/Expand/Unsqueeze) → Equal(·, arange(V)) → Cast → MatMul(·, table (V, D))."""
    for node in structure.nodes:
        if node.op_type != "Equal":
            continue
        computed = structure.computed_inputs(node)
        if len(computed) != 1:
            continue
        ids = computed[0]
        while ids not in structure.inputs and structure.producer.get(ids) is not None and \
                structure.producer[ids].op_type in SHAPING and len(structure.computed_inputs(structure.producer[ids])) == 1:
            ids = structure.computed_inputs(structure.producer[ids])[0]
        if ids not in structure.inputs:
            continue
        users = structure.consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Cast":
            continue
        matmuls = structure.consumers.get(users[0].output[0], [])
        if len(matmuls) != 1 or matmuls[0].op_type != "MatMul" or matmuls[0].input[1] not in structure.initializers:
            continue
        region = structure.region(ids, matmuls[0].output[0], SHAPING | {"Equal", "Cast", "MatMul"})
        if region:
            yield "one_hot", ids, matmuls[0].output[0], region


def reduce_axes(region, x, rank, structure, values):
    """The axes the region's first reductions of x (or of x·x) take, counted in x's rank."""
    axes = set()
    for node in region:
        if node.op_type not in ("ReduceSum", "ReduceMean", "ReduceMax"):
            continue
        source = node.input[0]
        producer = structure.producer.get(source)
        if source != x and not (producer is not None and producer.op_type in ("Mul", "Pow")
                                and x in producer.input):
            continue
        listed = None
        for attribute in node.attribute:
            if attribute.name == "axes":
                listed = list(attribute.ints)
        if listed is None and len(node.input) > 1 and node.input[1]:
            known = structure.initializers.get(node.input[1])
            listed = list(numpy_helper.to_array(known).reshape(-1)) if known is not None else \
                list(np.asarray(values.get(node.input[1], [])).reshape(-1))
        if not listed:
            return None
        axes.update(int(a) % rank for a in listed)
    return sorted(axes) or None


def confirm(kind, x, y, region, values, structure):
    """The fused node's settings when the numbers agree, else None."""
    xv, yv = values.get(x), values.get(y)
    if xv is None or yv is None:
        return None
    if kind == "gelu":
        if xv.shape != yv.shape or xv.dtype.kind != "f":
            return None
        x64, y64 = xv.astype(np.float64), yv.astype(np.float64)
        # the two forms differ by less than float32 noise on large values: take the closer one
        from lrptool.ops.normalization import gelu

        errors = {a: np.max(np.abs(y64 - gelu(x64, a))) for a in ("none", "tanh")}
        best = min(errors, key=errors.get)
        return {"approximate": best} if close(yv, gelu(x64, best)) else None
    if kind == "one_hot":
        table = numpy_helper.to_array(structure.initializers[region[-1].input[1]])
        if table.ndim != 2 or xv.dtype.kind not in "iu" or xv.max() >= table.shape[0]:
            return None
        return {"table": table} if close(yv, table[xv]) else None
    if xv.shape != yv.shape or xv.ndim < 2:
        return None
    axes = reduce_axes(region, x, xv.ndim, structure, values)
    if not axes or 0 in axes:
        return None
    x64, y64 = xv.astype(np.float64), yv.astype(np.float64)
    if kind == "softmax":
        shifted = np.exp(x64 - x64.max(axis=tuple(axes), keepdims=True))
        if len(axes) == 1 and close(y64, shifted / shifted.sum(axis=tuple(axes), keepdims=True)):
            return {"axis": axes[0]}
        return None
    return fit_layer_norm(x64, y64, axes, region, structure)


def fit_layer_norm(x, y, axes, region, structure):
    """Scale and bias (per position of the normalised axes) by least squares, ε from the region's small
    added constants; accepted when the fit reproduces y."""
    candidates = {0.0}
    for node in region:
        if node.op_type == "Add":
            for t in node.input:
                if t in structure.initializers:
                    value = numpy_helper.to_array(structure.initializers[t])
                    if value.size == 1 and 0 < float(value.reshape(-1)[0]) < 0.1:
                        candidates.add(float(value.reshape(-1)[0]))
    reduced = tuple(axes)
    centred = x - x.mean(axis=reduced, keepdims=True)
    variance = (centred * centred).mean(axis=reduced, keepdims=True)
    others = tuple(i for i in range(x.ndim) if i not in axes)
    for epsilon in sorted(candidates, reverse=True):
        normal = centred / np.sqrt(variance + epsilon)
        # one (scale, bias) per position of the normalised axes, shared by every other position
        moved_n = np.moveaxis(normal, others, range(len(others))).reshape(-1, int(np.prod([x.shape[a] for a in axes])))
        moved_y = np.moveaxis(y, others, range(len(others))).reshape(moved_n.shape)
        n_mean, y_mean = moved_n.mean(axis=0), moved_y.mean(axis=0)
        spread = ((moved_n - n_mean) ** 2).sum(axis=0)
        if np.any(spread <= 1e-12):
            continue
        scale = ((moved_n - n_mean) * (moved_y - y_mean)).sum(axis=0) / spread
        bias = y_mean - scale * n_mean
        if not close(moved_y, moved_n * scale + bias):
            continue
        shape = [x.shape[i] if i in axes else 1 for i in range(1, x.ndim)]
        while shape and shape[0] == 1:
            shape.pop(0)
        return {"axes": axes, "epsilon": epsilon, "scale": scale.reshape(shape),
                "bias": bias.reshape(shape) if np.any(np.abs(bias) > 1e-7 * (1 + np.abs(scale).max())) else None}
    return None


def fused_node(kind, x, y, settings, index):
    name = f"fused_{kind}_{index}"
    if kind == "gelu":
        return [helper.make_node("Gelu", [x], [y], name=name, domain=FUSED, approximate=settings["approximate"])], []
    if kind == "softmax":
        return [helper.make_node("Softmax", [x], [y], name=name, axis=settings["axis"])], []
    if kind == "one_hot":
        table = numpy_helper.from_array(settings["table"], f"{name}/table")
        return [helper.make_node("Gather", [table.name, x], [y], name=name, axis=0)], [table]
    tensors = [numpy_helper.from_array(np.asarray(settings["scale"], np.float32), f"{name}/scale")]
    inputs = [x, tensors[0].name]
    if settings["bias"] is not None:
        tensors.append(numpy_helper.from_array(np.asarray(settings["bias"], np.float32), f"{name}/bias"))
        inputs.append(tensors[1].name)
    return [helper.make_node("LayerNorm", inputs, [y], name=name, domain=FUSED, axes=list(settings["axes"]),
                             epsilon=float(settings["epsilon"]))], tensors


def fuse(model):
    """The model with every confirmed region replaced by its one node, and the names of what was fused
    (an empty list, and the model itself, when nothing was)."""
    anchors = {n.op_type for n in model.graph.node}
    if not anchors & {"Tanh", "Erf", "Sqrt", "Reciprocal", "Exp", "Equal"}:
        return model, []
    structure = Model(model)
    candidates = list(one_hot_candidates(structure)) + list(gelu_candidates(structure))
    candidates += list(reduction_candidates(structure, {"Sqrt", "Reciprocal"}, NORMALISING, "layer_norm"))
    candidates += list(reduction_candidates(structure, {"Exp"}, SOFTMAXING, "softmax"))
    if not candidates:
        return model, []
    try:
        # onnxruntime runs only what the ONNX checker passes (with its shape inference)
        onnx.checker.check_model(model, full_check=True)
    except Exception:  # noqa: BLE001 - the reader reports what is wrong with the file itself
        return model, []
    wanted = sorted({t for _, x, y, _ in candidates for t in (x, y)} |
                    {t for _, _, _, r in candidates for n in r for t in n.input if t and t not in structure.initializers})
    try:
        values = probe(model, wanted, structure)
    except Exception:  # noqa: BLE001 - a model onnxruntime cannot run is read as it is
        return model, []
    if values is None:
        return model, []
    taken, chosen = set(), []
    # embeddings, then GELU, layer normalisation and softmax (a layer norm is blind to a scale before it and
    # would otherwise swallow the last Mul of a GELU); within a kind the largest confirmed region; no overlaps
    priority = {"one_hot": 0, "gelu": 1, "layer_norm": 2, "softmax": 3}
    for kind, x, y, region in sorted(candidates, key=lambda c: (priority[c[0]], -len(c[3]))):
        ids = {id(n) for n in region}
        if ids & taken:
            continue
        try:
            settings = confirm(kind, x, y, region, values, structure)
        except Exception:  # noqa: BLE001 - numbers that do not fit are simply not this pattern
            settings = None
        if settings is None:
            continue
        taken |= ids
        chosen.append((kind, x, y, region, settings))
    if not chosen:
        return model, []
    last = {id(region[-1]): (kind, x, y, settings) for kind, x, y, region, settings in chosen}
    nodes, initializers, names = [], [], []
    for node in structure.nodes:
        if id(node) in last:
            kind, x, y, settings = last[id(node)]
            made, tensors = fused_node(kind, x, y, settings, len(names))
            nodes += made
            initializers += tensors
            names.append(f"{kind} ({x} → {y})")
        elif id(node) not in taken:
            nodes.append(node)
    return with_nodes(model, nodes, initializers), names


def with_nodes(model, nodes, initializers=()):
    """A copy of ``model`` with ``nodes`` in place of its own and ``initializers`` added."""
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    del changed.graph.node[:]
    changed.graph.node.extend(nodes)
    changed.graph.initializer.extend(initializers)
    return changed
