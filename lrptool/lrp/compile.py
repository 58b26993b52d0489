"""The compiled explainer: the forward pass and the whole reverse walk of one method as one ONNX model.

The model takes ``x`` (the input batch: floats, or int64 token ids when the model's input is read by
Embedding nodes only — then ``relevance`` holds one value per token) and an optional int64 ``target`` (one class per sample;
absent or −1: the predicted class) and gives ``logits``, ``relevance`` (shaped like ``x``) and
``explained_target`` (the class explained per sample; ONNX cannot give an output the name of an
input). It runs in a stock ``onnxruntime.InferenceSession`` on
any execution provider, with nothing of lrptool installed. The reverse walk is the eager one
(``engine.ReverseWalk``) run on ``onnx_ops.OnnxOps``: one rule recipe and one reverse entry per
operator serve both.
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import LrpToolError
from .canonize import canonize
from .engine import ReverseWalk
from .onnx_ops import Emitter, OnnxOps, Sym
from .presets import assign_rules, default_start, rule_map_from_spec
from .reverse import reverse_of

#: Gradient methods with a compiled form; SmoothGrad and integrated gradients run the compiled
#: gradient in batches, random needs no graph.
COMPILED_GRADIENTS = {"gradient": "gradient", "sensitivity": "gradient", "gradient-x-input": "gradient",
                      "guided-backprop": "guided", "deconvnet": "deconvnet", "smoothgrad": "gradient",
                      "integrated-gradients": "gradient"}
NONNEGATIVE_OUTPUT = {"Relu", "Sigmoid", "HardSigmoid", "Softmax", "Abs"}
KEEPS_SIGN = {"MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "LRN", "Add", "Sum",
              "Mul", "Concat"}


def nonnegative_tensors(graph):
    """Tensors that cannot be below zero, from the graph alone: what the x⁻ terms of a rule may skip."""
    known = set()
    for node in graph.nodes:
        op, a = node.op, node.attrs
        if op in NONNEGATIVE_OUTPUT or (op == "Clip" and a["min"] >= 0) or (op == "ThresholdedRelu" and a["alpha"] >= 0):
            positive = True
        elif op == "Max":
            positive = any(t in known for t in node.inputs)
        elif op == "Pad":
            positive = node.inputs[0] in known and a["value"] >= 0
        elif op in KEEPS_SIGN or reverse_of(node).kind == "move":
            positive = bool(node.inputs) and all(t in known for t in node.inputs)
        else:
            positive = False
        if positive:
            known.update(node.outputs)
    return known


def compile_explainer(graph, method="epsilon-plus-flat", bounds=None, target=None, node_sums=False, epsilon=1e-6,
                      stabiliser=1e-6, gamma=0.25, maxpool="winner", start=None, input_name="x", external=None,
                      recurrent_epsilon=1e-3, recurrent_bias="absorb", providers=None):
    """The ONNX model explaining ``graph`` with ``method`` (an LRP preset or rule map, or a gradient
    method). ``target``: the class explained when the caller gives none (default: the prediction).
    ``node_sums``: also output, per sample, the relevance each node receives and passes on
    (``relevance_out/NODE``, ``relevance_in/NODE``) and the start (``relevance_start``): the
    conservation report.
    ``external``: a dict that receives the large arrays, which the model then only names (for
    onnxruntime's ``add_external_initializers``: no serialised copy of the weights).
    ``providers``: the onnxruntime execution providers the model is for (``cpu``, ``cuda``, …; default
    the CPU). Max-pools whose windows do not overlap route relevance with MaxUnpool only where every
    one of them is the CPU's: the other providers have no MaxUnpool, and a scatter keeps the whole
    explanation on their device."""
    return build_explainer(graph, [method], bounds, target, node_sums, epsilon, stabiliser, gamma, maxpool, start,
                           input_name, external, recurrent_epsilon, recurrent_bias,
                           max_unpool=cpu_only(providers))


def compile_methods(graph, methods, bounds=None, target=None, epsilon=1e-6, stabiliser=1e-6, gamma=0.25,
                    maxpool="winner", input_name="x", external=None, recurrent_epsilon=1e-3, recurrent_bias="absorb",
                    ranks=False, providers=None):
    """One ONNX model explaining ``graph`` with several methods at once: one forward pass, then one
    reverse walk per method, all for the same class. Outputs ``logits``, ``explained_target`` and
    ``relevance/METHOD`` per method (``method_label`` names them); the options are those of
    ``compile_explainer``. Modified weights two methods share (W⁺ of the z⁺ rule, …) are stored once.

    ``ranks``: the model also explains several classes per sample from the one forward pass. The
    ``target`` input then holds K·N entries for a batch of N (K rows of N, one row per class rank), and
    −r stands for the r-th largest output (−1 the prediction); ``relevance/METHOD`` and
    ``explained_target`` have K·N rows in the same order, ``logits`` N."""
    methods = list(methods)
    labels = [method_label(m, i) for i, m in enumerate(methods)]
    if len(set(labels)) != len(labels):
        raise LrpToolError(f"methods {', '.join(labels)}: a method is named twice")
    return build_explainer(graph, methods, bounds, target, False, epsilon, stabiliser, gamma, maxpool, None,
                           input_name, external, recurrent_epsilon, recurrent_bias, several=True, ranks=ranks,
                           max_unpool=cpu_only(providers))


def method_label(method, index):
    """The output name's part for ``method``: its name, or ``rules-INDEX`` for a rule map given as a list or dict."""
    return method if isinstance(method, str) else f"rules-{index}"


def is_gradient(method):
    return isinstance(method, str) and method in COMPILED_GRADIENTS


def rectified_sums(graph, walk):
    """{y: x} for each Add/Sum output y read only by a ReLU (x = ReLU(y)) whose relevance is zero
    wherever x is: every reader of x passes relevance back in proportion to x (LRP rules whose terms
    all take x, x⁺ or x⁻; proportional splits). Then the split at y may divide by x + ε instead of
    the sign-aware y ± ε: the two are equal where y ≥ 0, and where y < 0 the relevance is zero."""
    if walk.mode != "lrp":
        return {}
    readers = graph.consumers()

    def in_proportion(node, tensor):
        entry = reverse_of(node)
        if entry.kind == "split":
            return True
        rule = walk.rules.get(node.name)
        return (entry.kind == "rule" and node.inputs[0] == tensor and tensor not in node.inputs[1:]
                and rule is not None and bool(rule.parts)
                and all(term.inputs in ("x", "pos", "neg") for part in rule.parts for term in part.terms))

    outputs = set(graph.outputs)
    producers = graph.producers()
    pairs = {}
    for node in graph.nodes:
        if node.op != "Relu":
            continue
        (y,), (x,) = node.inputs, node.outputs
        source = producers.get(y)
        if (source is None or source.op not in ("Add", "Sum") or y in outputs or x in outputs
                or len(readers.get(y, [])) != 1 or not readers.get(x)):
            continue
        if all(in_proportion(reader, x) for reader in readers[x]):
            pairs[y] = x
    return pairs


def fusable_summand(graph, walk, y):
    """(a, b) for a rectified residual sum y = a + b (see rectified_sums) whose summand a comes from a
    convolution that nothing else reads, not even that convolution's rule; else None. The split's
    share a ⊙ s may then read a as ReLU(y) − b: equal where y ≥ 0, and s is zero where y < 0. So the
    reverse walk does not read a, and onnxruntime fuses the forward pass's convolution, sum and ReLU
    into one node as it does without the explanation."""
    producers = graph.producers()
    node = producers[y]
    if len(node.inputs) != 2 or any(graph.shapes[t] != graph.shapes[y] for t in node.inputs):
        return None
    readers = graph.consumers()
    for a, b in (node.inputs, node.inputs[::-1]):
        conv = producers.get(a)
        rule = walk.rules.get(conv.name) if conv is not None else None
        if (conv is None or conv.op != "Conv" or a == b or a in graph.outputs or len(readers.get(a, [])) != 1
                or rule is None or rule.needs_output):
            continue
        return a, b
    return None


def method_walk(canonical, method, bounds, epsilon, stabiliser, gamma, maxpool, recurrent_epsilon, recurrent_bias):
    """The float32 reverse walk of one method over the canonical graph; its relevance steps are emitted
    once the walk is given the emitting ops."""
    if is_gradient(method):
        recurrent = next((n for n in canonical.nodes if reverse_of(n).kind == "recurrent"), None)
        if recurrent is not None:  # refused before anything is built
            raise LrpToolError(f"node {recurrent.name!r} ({recurrent.op}): the gradient through a recurrent layer "
                               "has no compiled form; the eager walk computes it")
        return ReverseWalk(canonical, mode="gradient", relu_policy=COMPILED_GRADIENTS[method], dtype=np.float32,
                           primitives="numpy")
    if method == "random":
        raise LrpToolError("the random baseline has no compiled form (it needs no model)")
    rules = assign_rules(canonical, rule_map_from_spec(method, epsilon, stabiliser, gamma))
    if any(r.name == "zbox" for r in rules.values()) and bounds is None:
        raise LrpToolError("the zB (box) rule needs the input's bounds: give bounds=(low, high)")
    return ReverseWalk(canonical, mode="lrp", rules=rules, bounds=bounds, maxpool=maxpool, stabiliser=stabiliser,
                       dtype=np.float32, primitives="numpy", recurrent_epsilon=recurrent_epsilon,
                       recurrent_bias=recurrent_bias)


def build_explainer(graph, methods, bounds, target, node_sums, epsilon, stabiliser, gamma, maxpool, start, input_name,
                    external, recurrent_epsilon, recurrent_bias, several=False, ranks=False, max_unpool=True):
    from converters.onnx_writer import graph_to_onnx

    if graph.free_sizes():
        raise LrpToolError("the model leaves its input size free; the compiled explainer is made for one size: "
                           "give it (--input-size, or Graph.at_sizes)")
    canonical, _ = canonize(graph)
    if len(canonical.inputs) != 1 or len(canonical.outputs) != 1:
        raise LrpToolError(f"the model has {len(canonical.inputs)} inputs and {len(canonical.outputs)} outputs; "
                           "the compiled explainer takes one of each")
    walks = [method_walk(canonical, m, bounds, epsilon, stabiliser, gamma, maxpool, recurrent_epsilon, recurrent_bias)
             for m in methods]
    labels = [f"relevance/{method_label(m, i)}" for i, m in enumerate(methods)] if several else ["relevance"]

    forward = graph_to_onnx(canonical, external=external)
    taken = {t for n in forward.graph.node for t in list(n.input) + list(n.output)}
    taken |= {i.name for i in forward.graph.initializer} | {i.name for i in forward.graph.input}
    interface = {input_name, "target", "logits", "explained_target", *labels}
    taken |= interface
    emit = Emitter(taken, external)
    ops = OnnxOps(emit, canonical.shapes)
    ops.sums = node_sums
    ops.max_unpool = max_unpool
    positive = nonnegative_tensors(canonical)
    values = {t: Sym(t, shape, t in positive) for t, shape in canonical.shapes.items()}
    for value in values.values():
        value.recorded = True
    (source,) = canonical.inputs
    (output,) = canonical.outputs
    out_shape = canonical.shapes[output]
    classes = canonical.output_size()

    # the explained class: the target input where it is >= 0, else the prediction
    flat = emit.node("Reshape", [output, emit.ints([0, -1])])
    rows_like = output      # the tensor whose rows the seeds take
    if ranks:
        # K rows of the batch: every forward tensor the walks read is tiled K times, once
        rows = emit.node("Div", [emit.node("Shape", ["target"]), emit.node("Shape", [flat], {"end": 1})])
        values = Tiled(values, emit, rows)
        rows_like = values[output].name
        flat = emit.node("Reshape", [rows_like, emit.ints([0, -1])])
        chosen = ranked_targets(emit, flat, classes)
    else:
        predicted = emit.node("ArgMax", [flat], {"axis": 1, "keepdims": 0})
        chosen = emit.node("Where", [emit.node("Less", ["target", emit.ints([0])]), predicted, "target"])
        chosen = emit.node("Add", [chosen, emit.node("Mul", [predicted, emit.ints([0])])])  # one entry per sample
    # the one-hot mask scattered into zeros shaped like the logits, so that every tensor of the
    # reverse walk keeps the symbolic batch axis under shape inference (onnxruntime's blocked
    # layout takes element-wise steps only between tensors it can prove to be of equal shape)
    zeros = emit.node("Cast", [emit.node("Greater", [flat, flat])], {"to": TensorProto.FLOAT})
    ones = emit.node("Cast", [emit.node("Unsqueeze", [emit.node("Equal", [chosen, chosen]), emit.ints([1])])],
                     {"to": TensorProto.FLOAT})
    one_hot = emit.node("ScatterElements", [zeros, emit.node("Unsqueeze", [chosen, emit.ints([1])]), ones],
                        {"axis": 1})
    seeds = {}
    relevances, report, sums = [], None, []
    for method, walk in zip(methods, walks):
        origin = start or default_start(method, is_gradient(method))
        if origin not in seeds:
            explained = emit.node("Relu", [flat]) if origin == "positive" else flat
            seed = one_hot if origin == "one" else emit.node("Mul", [one_hot, explained])
            seeds[origin] = Sym(emit.node("Reshape", [seed, emit.ints([0] + [int(d) for d in out_shape[1:]])]),
                                out_shape)
        walk.ops = ops
        walk_values = values.copy()
        for y, x in rectified_sums(canonical, walk).items():
            walk_values[y] = Sym(values[y].name, values[y].shape, values[y].nonnegative)
            walk_values[y].recorded = True
            walk_values[y].rectified = values[x]
            summands = fusable_summand(canonical, walk, y)
            if summands is not None:
                a, b = summands
                walk_values[a] = Sym(None, values[a].shape)
                walk_values[a].difference = (values[x], values[b])
        result, report = walk.run(walk_values, {output: seeds[origin]})
        relevance = result[source]
        if method == "sensitivity":
            relevance = ops.mul(relevance, relevance)
        elif method == "gradient-x-input":
            relevance = ops.mul(relevance, values[source])
        ops.name(relevance)   # a product still to be emitted is emitted now, before the nodes are listed
        relevances.append(relevance)
    if node_sums:
        sums = [("relevance_start", report.start)]
        for entry in report.nodes:
            sums += [(f"relevance_out/{entry.node}", entry.relevance_out), (f"relevance_in/{entry.node}", entry.relevance_in)]
        sums = [(name, ops.name(value)) for name, value in sums if isinstance(value, Sym)]
    read_at_the_end = {ops.name(r) for r in relevances} | {name for _, name in sums} | {output, chosen}

    nodes = list(forward.graph.node) + late_first(fold_shifts(emit, read_at_the_end), {"target"})
    initializers = list(forward.graph.initializer) + emit.initializers
    # the model's own tensors give way to the explainer's interface names
    model_names = {t for n in forward.graph.node for t in list(n.input) + list(n.output)}
    model_names |= {i.name for i in forward.graph.initializer}
    rename = {source: input_name}
    for name in sorted(model_names - {source}):
        if name in interface or name.startswith("relevance"):
            rename[name] = emit.fresh(f"model/{name}")
    for node in nodes:
        node.input[:] = [rename.get(t, t) for t in node.input]
        node.output[:] = [rename.get(t, t) for t in node.output]
    for tensor in initializers:
        if tensor.name in rename:
            if external is not None and tensor.name in external:
                external[rename[tensor.name]] = external.pop(tensor.name)
            tensor.name = rename[tensor.name]

    def final(source_name, name):
        nodes.append(helper.make_node("Identity", [rename.get(source_name, source_name)], [name], name=f"lrp/{name}"))
    final(output, "logits")
    final(chosen, "explained_target")
    dims = ["batch" if d is None else int(d) for d in canonical.shapes[source]]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch"] + [int(d) for d in out_shape[1:]]),
               helper.make_tensor_value_info("explained_target", TensorProto.INT64, ["batch"])]
    if ranks:
        dims = ["rows"] + dims[1:]
        outputs[-1] = helper.make_tensor_value_info("explained_target", TensorProto.INT64, ["rows"])
    for label, relevance in zip(labels, relevances):
        final(ops.name(relevance), label)
        outputs.insert(len(outputs) - 1, helper.make_tensor_value_info(label, TensorProto.FLOAT, dims))
    if node_sums:
        for name, value in sums:
            final(value, name)
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"]))
    default = -1 if target is None else int(target)
    if not -1 <= default < classes:
        raise LrpToolError(f"target {default}: the model has {classes} outputs (0–{classes - 1})")
    # constants no node reads any more (a bias that took ε in) leave the model
    used = {t for node in nodes for t in node.input}
    for tensor in [t for t in initializers if t.name not in used]:
        initializers.remove(tensor)
        if external is not None:
            external.pop(tensor.name, None)
    initializers.append(onnx.numpy_helper.from_array(np.array([default], dtype=np.int64), "target"))
    element = TensorProto.INT64 if source in canonical.token_inputs() else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(input_name, element, dims),
              helper.make_tensor_value_info("target", TensorProto.INT64, ["targets"])]
    described = ", ".join(method_label(m, i) for i, m in enumerate(methods))
    model = helper.make_model(helper.make_graph(nodes, f"{canonical.name or 'model'} explained by {described}", inputs,
                                                outputs, initializer=initializers),
                              opset_imports=[helper.make_opsetid("", 19)], producer_name="lrptool")
    model.ir_version = 9
    model.metadata_props.add(key="lrptool.method", value=described)
    if external is None:
        onnx.checker.check_model(model)
    return model


def fold_shifts(emit, kept):
    """The emitted nodes, with a constant shift (a stabiliser's + ε) taken into the bias of the
    matrix product (a 1×1 convolution's) whose output it alone reads: one element-wise pass fewer
    per such layer. ``kept``: tensors that must stay as they are (the model's outputs).

    A convolution keeps its separate addition: in onnxruntime's blocked layout the convolution
    becomes a new node, and the division would then read two new nodes, whose order no longer
    says which one runs first (see late_first); the addition, an original node, keeps z⁺ late."""
    nodes = emit.nodes
    producer = {t: node for node in nodes for t in node.output}
    readers = {}
    for node in nodes:
        for t in node.input:
            readers[t] = readers.get(t, 0) + 1
    values = {tensor.name: tensor for tensor in emit.initializers}

    def constant(name):
        if name not in values:
            return None
        if emit.external is not None and name in emit.external:
            return emit.external[name]
        return onnx.numpy_helper.to_array(values[name])

    def alone(t):
        return readers.get(t) == 1 and t not in kept and t in producer

    removed = set()
    for node in nodes:
        if node.op_type != "Add" or not node.name.startswith("lrp/"):
            continue
        shift = constant(node.input[1])
        if shift is None or shift.size != 1 or not alone(node.input[0]):
            continue
        shift = float(shift.reshape(()))
        source = producer[node.input[0]]
        if source.op_type != "Reshape" or not alone(source.input[0]):
            continue
        target = producer[source.input[0]]
        if target.op_type != "Add" or producer[target.input[0]].op_type != "MatMul" or constant(target.input[1]) is None:
            continue
        target.input[1] = emit.constant(constant(target.input[1]).astype(np.float64) + shift,
                                        key=("shifted", target.input[1], shift))
        source.output[0] = node.output[0]   # the shifted tensor is what the Add made
        removed.add(id(node))
    return [node for node in nodes if id(node) not in removed]


def late_first(nodes, sources):
    """The reverse walk's nodes, those that read none of ``sources`` (the target, hence the relevance)
    moved ahead of the others, each part in its own order.

    onnxruntime runs a graph in the order of a depth-first walk from its outputs that visits a node's
    inputs from the most recently listed producer to the first. Listed this way, the relevance
    reaching a rule is computed before the forward-only tensors it meets there (z⁺ of the recorded
    input, a stabilised denominator, a residual summand), which then run just before they are read
    instead of during the forward pass, where they would all stay alive until the reverse walk
    reached them: ResNet-50 at batch 16 peaked at 2269 MiB, and 851 MiB this way."""
    tainted = set(sources)
    early, late = [], []
    for node in nodes:
        if tainted.intersection(node.input):
            tainted.update(node.output)
            late.append(node)
        else:
            early.append(node)
    return early + late


class Tiled(dict):
    """The forward pass's tensors, each tiled ``rows`` times along the batch axis on first use (a
    ranks model: K class ranks of one batch, explained together). Copies share the tiled tensors."""

    def __init__(self, values, emit, rows, tiled=None):
        super().__init__()
        self.values, self.emit, self.rows = values, emit, rows
        self.tiled = {} if tiled is None else tiled

    def __missing__(self, name):
        if name not in self.tiled:
            base = self.values[name]
            repeats = self.rows
            if len(base.shape) > 1:
                repeats = self.emit.node("Concat", [self.rows, self.emit.ints([1] * (len(base.shape) - 1))],
                                         {"axis": 0})
            self.tiled[name] = Sym(self.emit.node("Tile", [base.name, repeats]), base.shape, base.nonnegative)
            self.tiled[name].recorded = True
        return self.tiled[name]

    def copy(self):
        twin = Tiled(self.values, self.emit, self.rows, self.tiled)
        twin.update(self)
        return twin


def ranked_targets(emit, flat, classes):
    """The class per row of a ranks model: the ``target`` entry where it is >= 0, else for −r the r-th
    largest of the row's outputs (on ties the lower index first, as a stable sort)."""
    negative = emit.node("Less", ["target", emit.ints([0])])
    rank = emit.node("Max", [emit.node("Neg", ["target"]), emit.ints([1])])          # r (1 for targets >= 0)
    deepest = emit.node("Min", [emit.node("ReduceMax", [rank], {"keepdims": 1}), emit.ints([classes])])
    _, order = emit.node("TopK", [flat, deepest], {"axis": 1, "largest": 1, "sorted": 1}, outputs=2)
    index = emit.node("Min", [emit.node("Sub", [rank, emit.ints([1])]), emit.node("Sub", [deepest, emit.ints([1])])])
    picked = emit.node("GatherElements", [order, emit.node("Unsqueeze", [index, emit.ints([1])])], {"axis": 1})
    picked = emit.node("Reshape", [picked, emit.ints([-1])])
    return emit.node("Where", [negative, picked, "target"])


def write_explainer(model, path):
    """Write a compiled explainer; past protobuf's 2 GiB the weights go to ``PATH.data`` beside it."""
    import os

    from ..files import write_atomically

    if model.ByteSize() < 2 ** 31 - 2 ** 24:
        write_atomically(path, model.SerializeToString(), make_folders=False)
        return [path]
    location = os.path.basename(path) + ".data"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location)
    return [path, os.path.join(os.path.dirname(path), location)]


def available_providers():
    import onnxruntime

    return list(onnxruntime.get_available_providers())


PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
                  "rocm": "ROCMExecutionProvider", "dml": "DmlExecutionProvider", "coreml": "CoreMLExecutionProvider",
                  "openvino": "OpenVINOExecutionProvider"}


def provider_name(provider):
    """onnxruntime's name of a provider given short (``cuda``) or full (``CUDAExecutionProvider``)."""
    return PROVIDER_NAMES.get(provider.lower(), provider)


def cpu_only(providers):
    """Whether a model built for ``providers`` runs on the CPU alone (no providers: the CPU)."""
    return all(provider_name(p) == "CPUExecutionProvider" for p in providers or ())


def resolve_providers(providers):
    """onnxruntime provider names from short ones (``cpu``, ``cuda``, …) or full ones; the CPU is always
    the last fallback. A provider this onnxruntime lacks is a one-line error naming those it has."""
    available = available_providers()
    if not providers:
        return ["CPUExecutionProvider"]
    names = []
    for provider in providers:
        name = provider_name(provider)
        if name not in available:
            short = {v: k for k, v in PROVIDER_NAMES.items()}
            listed = ", ".join(short.get(a, a) for a in available)
            raise LrpToolError(f"execution provider {provider!r} is not available in this onnxruntime; "
                               f"available: {listed}")
        names.append(name)
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")
    return names


_ARENA = []


def shared_cpu_arena():
    """Register, once per process, the CPU arena the compiled sessions share; False where this
    onnxruntime refuses it (the sessions then allocate without an arena)."""
    import onnxruntime

    if not _ARENA:
        try:
            info = onnxruntime.OrtMemoryInfo("Cpu", onnxruntime.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                             onnxruntime.OrtMemType.DEFAULT)
            onnxruntime.create_and_register_allocator(info, onnxruntime.OrtArenaCfg({"arena_extend_strategy": 1}))
            _ARENA.append(True)
        except Exception:  # an older onnxruntime, or an allocator registered by the caller
            _ARENA.append(False)
    return _ARENA[0]


class CompiledSession:
    """An onnxruntime session of a compiled explainer: ``run(x, targets)`` → (logits, relevance, targets)."""

    def __init__(self, model, providers=None, threads=None, external=None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if external:
            options.add_external_initializers(list(external), [onnxruntime.OrtValue.ortvalue_from_numpy(a)
                                                               for a in external.values()])
        options.log_severity_level = 3
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # memory: one process-wide arena that grows by exactly what is asked (no power-of-two
        # overshoot), tensor by tensor (no per-run memory pattern, which the arena would keep
        # besides the first run's chunks); it spares the page faults of fresh allocations on every
        # call (see docs/performance.md). Without it, no arena at all.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        if shared_cpu_arena():
            options.add_session_config_entry("session.use_env_allocators", "1")
        if threads:
            options.intra_op_num_threads = threads
        profile = os.environ.get("LRPTOOL_ORT_PROFILE")
        if profile:  # onnxruntime's per-node times, written to PREFIX_<date>.json by session.end_profiling()
            options.enable_profiling = True
            options.profile_file_prefix = profile
        self.session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                    providers=resolve_providers(providers))
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.x_dtype = np.int64 if self.session.get_inputs()[0].type == "tensor(int64)" else np.float32

    def run(self, x, targets):
        feeds = {"x": np.ascontiguousarray(x, dtype=self.x_dtype),
                 "target": np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)}
        results = self.session.run(None, feeds)
        return dict(zip(self.outputs, results))
