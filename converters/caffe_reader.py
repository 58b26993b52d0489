"""Read a Caffe model (``.prototxt`` network + optional ``.caffemodel`` weights) into the lrptool IR.

The network comes from the prototxt; the caffemodel only supplies blobs, matched to layers by
name (V2 ``layer`` and legacy V1 ``layers`` alike). Without a caffemodel the network still loads
with every parameter shaped from the inferred tensor shapes: filled with zeros (so a missing
weights file is never mistaken for a trained model; BatchNorm variances and Scale factors get 1
so the graph stays finite) or, with ``random_weights=True``, with seeded random values.

Layers are kept as Caffe would build them in the TEST phase. Data-source layers become graph
inputs (their shape must be given with ``input_shape`` since it lives in the database, not the
prototxt); loss, accuracy and silence layers are dropped. A blob written in place keeps its
Caffe name for its final value; earlier values are named ``<blob>/<layer>``.

A damaged or hostile file ends in one ``LrpToolError`` naming the file, the layer and the problem:
settings Caffe would refuse are checked as Caffe checks them, every parameter and tensor size is
checked against the memory budget before anything is allocated, and what no check foresaw is
caught per layer by the shared safety net (``converters.reading``).
"""

import os
import re
from contextlib import contextmanager

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from lrptool.errors import GraphError, LrpToolError, ModelFileError, UnsupportedModelError
from lrptool.graph import Graph
from lrptool.limits import check_bytes, check_shape, element_count

from . import caffe_proto
from .builder import GraphBuilder, Names, Unsupported
from .caffe_layers import LAYERS, Invalid
from .reading import reading_at, reading_file

#: V1 ``LayerType`` enum names → V2 type strings.
V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

DATA_LAYERS = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData"}
# ArgMax is not dropped: silently returning scores where the prototxt promises labels would mislead.
DROPPED_LAYERS = {"Accuracy", "Silence", "HDF5Output"}
ALIAS_LAYERS = {"Dropout", "Split"}

TEST_PHASE = 1

#: Deepest ``{ }`` nesting accepted in a prototxt. Caffe's schema needs four levels (net, layer,
#: parameter, shape or filler); protobuf's text parser recurses once per level and would hit
#: Python's recursion limit (slowly) on a file of nothing but braces.
MAX_NESTING = 32

_NESTING_TOKENS = re.compile(r'[{}<>]|"(?:[^"\\\n]|\\.)*"?|\'(?:[^\'\\\n]|\\.)*\'?|#[^\n]*')


def printable(text):
    """``text`` with control and line-breaking characters escaped, so that a message stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def check_nesting(text, path):
    depth = 0
    for match in _NESTING_TOKENS.finditer(text):
        token = match.group()
        if token in ("{", "<"):
            depth += 1
            if depth > MAX_NESTING:
                line = text.count("\n", 0, match.start()) + 1
                raise ModelFileError(f"{path}: line {line}: blocks nested more than {MAX_NESTING} deep; a Caffe "
                                     "network needs only a few levels, so the file is damaged")
        elif token in ("}", ">"):
            depth -= 1


def parse_prototxt(path):
    try:
        with open(path, "r", encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ModelFileError(f"{path}: not a text prototxt (binary data?); give the network's .prototxt and "
                             "the .caffemodel with --weights") from None
    check_nesting(text, path)
    net = caffe_proto.NetParameter()
    try:
        # Training-only settings (fillers, data sources, solver hints) are not in the trimmed schema.
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as error:
        # protobuf's message starts with "line:column :"; say so in words for the one-line CLI error.
        line, column = error.GetLine(), error.GetColumn()
        message = printable(error)
        if line is not None:
            prefix = f"{line}:{column} : "
            message = message[len(prefix):] if message.startswith(prefix) else message
            raise ModelFileError(f"{path}: prototxt syntax error at line {line}, column {column}: {message}") \
                from None
        raise ModelFileError(f"{path}: prototxt syntax error: {message}") from None
    except RecursionError:
        raise ModelFileError(f"{path}: blocks nested too deeply; the file is damaged") from None
    return net


def looks_like_text(data):
    head = data[:4096].decode("utf-8", errors="ignore")
    return bool(head.strip()) and len(head) * 1.1 >= min(len(data), 4096) and \
        all(c.isprintable() or c in "\t\r\n" for c in head)


def parse_caffemodel(path):
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read: {error.strerror or error}") from None
    net = caffe_proto.NetParameter()
    try:
        net.ParseFromString(data)
        parsed = True
    except (DecodeError, RuntimeError, ValueError) as error:
        parsed, problem = False, printable(error)
    if (not parsed or not net.layer and not net.layers) and looks_like_text(data):
        raise ModelFileError(f"{path}: a text file, not a binary caffemodel; give the .caffemodel that Caffe "
                             "saved for this network with --weights")
    if not parsed:
        raise ModelFileError(f"{path}: not a readable caffemodel (truncated or corrupt?): {problem}")
    if not net.layer and not net.layers:
        raise ModelFileError(f"{path}: the caffemodel holds no layers (empty, truncated or not a caffemodel?)")
    return net


def layer_type(lp):
    if isinstance(lp, caffe_proto.V1LayerParameter):
        enum = lp.DESCRIPTOR.fields_by_name["type"].enum_type
        name = enum.values_by_number[lp.type].name if lp.type in enum.values_by_number else str(lp.type)
        return V1_TYPES.get(name, name)
    return lp.type


def network_layers(net, path):
    if net.layer and net.layers:
        raise ModelFileError(f"{path}: the network mixes V2 'layer' and V1 'layers' definitions; upgrade the "
                             "file with Caffe's upgrade_net_proto_text")
    return list(net.layer) or list(net.layers)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def to_float32(values, problem):
    """``values`` as float32, refusing NaN, infinities and doubles beyond float32's range (which
    would become infinities): ``problem(message)`` makes the error to raise."""
    with np.errstate(all="ignore"):  # NaN and overflow are refused below, in words rather than warnings
        array = np.asarray(values, dtype=np.float64)
    if array.size and not np.isfinite(array).all():
        raise problem("holds NaN or infinite values")
    if array.size and float(np.abs(array).max()) > FLOAT32_MAX:
        raise problem("holds values beyond the float32 range")
    return array.astype(np.float32)


def blob_array(blob, problem):
    """A BlobProto as a float32 array of its declared shape, with ``legacy`` True when the shape
    is the pre-BlobShape num/channels/height/width. A negative size, a value count that does
    not match the shape, or a value that is not a finite float32 is refused through ``problem``."""
    if blob.HasField("shape"):
        shape, legacy = tuple(int(d) for d in blob.shape.dim), False
    else:
        shape, legacy = (int(blob.num), int(blob.channels), int(blob.height), int(blob.width)), True
    if any(d < 0 for d in shape):
        raise problem(f"declares a negative size in its shape {shape}")
    # As Caffe's Blob::FromProto: double_data, where present, is the blob's data.
    values = blob.double_data if len(blob.double_data) else blob.data
    count = element_count(shape)
    if len(values) != count:
        raise problem(f"holds {len(values)} values but its shape {shape} needs {count}")
    return to_float32(values, problem).reshape(shape), shape, legacy


def rule_matches(rule, phase):
    if rule.HasField("phase") and rule.phase != phase:
        return False
    # The net state has level 0 and no stages when a model is deployed.
    if rule.HasField("min_level") and 0 < rule.min_level:
        return False
    if rule.HasField("max_level") and 0 > rule.max_level:
        return False
    return not rule.stage


def layer_in_phase(lp, phase):
    if lp.include:
        return any(rule_matches(rule, phase) for rule in lp.include)
    return not any(rule_matches(rule, phase) for rule in lp.exclude)


class CaffeContext(GraphBuilder):
    def __init__(self, source, weights, random_weights, seed, weights_path=None):
        # Caffe's own names often end in _2 (conv1_2, a layer after one named conv1): made-up names take #2
        super().__init__(separator="#")
        self.source = source
        self.weights = weights
        self.weights_path = weights_path
        self.random_weights = random_weights
        self.rng = np.random.default_rng(seed)
        # Caffe names blobs and layers apart, so a layer may share its name with its top.
        self.tensor_names = Names("#")
        self.parameter_bytes = 0
        self.current = {}  # Caffe blob name → IR tensor holding its latest value
        self.produced = []  # IR tensors made by layers, in order
        self.unsupported = []
        self.broken = set()  # Caffe blobs downstream of an unsupported layer

    def where(self, lp):
        return f"layer {printable(repr(lp.name))} ({printable(layer_type(lp))})"

    def weights_problem(self, lp, message):
        """An error in the stored blobs of ``lp``, naming the file they come from."""
        source = self.weights_path if self.weights is not None else self.source
        return GraphError(f"{source}: {self.where(lp)}: {message}; check that the weights belong to this "
                          "prototxt (or re-save them with Caffe)")

    def float32(self, lp, values, what):
        return to_float32(values, lambda message: self.weights_problem(lp, f"{what} {message}"))

    def declare_input(self, name, shape):
        self.tensor_names.reserve(name)
        self.current[name] = name
        return self.add_input(name, shape)

    def refuse(self, lp, kind, reason):
        """Note a layer lrptool cannot represent; its tops are marked broken."""
        self.unsupported.append((printable(lp.name), printable(kind), printable(reason)))
        self.broken.update(lp.top)

    def add(self, op, name, inputs, attrs, params, outputs=1, output_names=None):
        """Add the IR node ``name`` for the layer being converted; returns its output tensors."""
        name = self.node_names.free(name)
        names = output_names or [f"{name}:{i}" if outputs > 1 else name for i in range(outputs)]
        node = self.add_node(name, op, inputs, [self.tensor_names.unique(n) for n in names], attrs, params)
        return list(node.outputs)

    def check_output(self, node, tensor, shape):
        # Nothing is allocated here, but explaining one image will: refuse what can never run.
        check_shape((1,) + tuple(shape[1:]), 4, f"its output {tuple(shape)} (for one image)")

    def blob(self, lp, index, shape, fan_in=None, fill=None, positive=False, exact=False):
        """Parameter ``index`` of layer ``lp`` with the ``shape`` the network implies.

        Without stored blobs: zeros, except ones where ``fill`` is 1 (variances, scale factors),
        or seeded random values with ``random_weights`` — ``fan_in`` scales random weights,
        ``positive`` keeps random variances above zero and ``exact`` uses ``fill`` unperturbed.
        ``exact`` also accepts a stored blob of any shape with the right number of values (the
        BatchNorm moving-average factor is (1,) or a legacy (1, 1, 1, 1)).
        """
        shape = tuple(int(d) for d in shape)
        check_shape(shape, 4, f"parameter {index} of shape {shape}")
        # Each parameter may fit while all of them together do not (a thousand layers of 1 GiB each).
        self.parameter_bytes += 4 * element_count(shape)
        check_bytes(self.parameter_bytes, f"the total of all parameters up to parameter {index} of shape {shape}")
        stored = self.stored_blobs(lp)
        if stored is not None:
            if index >= len(stored):
                raise self.weights_problem(lp, f"the weights hold {len(stored)} blob(s), parameter {index} is missing")
            array, stored_shape, legacy = blob_array(
                stored[index], lambda message: self.weights_problem(lp, f"blob {index} {message}"))
            if stored_shape == shape:
                return array
            squeezed = tuple(d for d in stored_shape if d != 1)
            # Old caffemodels pad every blob to 4-D with leading ones (bias (1, 1, 1, C), fc (1, 1, out, in)).
            if (legacy or exact) and array.size == element_count(shape) \
                    or squeezed == tuple(d for d in shape if d != 1):
                return array.reshape(shape)
            raise self.weights_problem(lp, f"blob {index} has shape {stored_shape}, the network needs {shape}")
        if self.random_weights:
            if fill is not None:
                if positive:
                    return self.rng.uniform(0.5, 1.5, shape).astype(np.float32)
                if exact:
                    return np.full(shape, fill, np.float32)
                return (fill + 0.1 * self.rng.standard_normal(shape)).astype(np.float32)
            scale = 1.0 / np.sqrt(max(fan_in or 1, 1))
            # Drawn in float32 directly: a float64 draw would need twice the budget checked above.
            return (np.float32(scale) * self.rng.standard_normal(shape, dtype=np.float32))
        if fill == 1.0:
            return np.ones(shape, np.float32)
        return np.zeros(shape, np.float32)

    def stored_blobs(self, lp):
        if self.weights is not None:
            if lp.name not in self.weights:
                raise GraphError(f"{self.weights_path}: {self.where(lp)}: not found in the caffemodel; check that "
                                 "the caffemodel belongs to this prototxt")
            blobs = self.weights[lp.name] or list(lp.blobs)
            if not blobs:
                raise GraphError(f"{self.weights_path}: {self.where(lp)}: the caffemodel holds no blobs for it; "
                                 "check that the caffemodel belongs to this prototxt")
            return blobs
        return list(lp.blobs) if len(lp.blobs) else None


def declared_inputs(net, path):
    """Graph inputs declared at net level (``input`` + ``input_shape`` or legacy ``input_dim``)."""
    inputs = {}
    dims = [int(d) for d in net.input_dim]
    for index, name in enumerate(net.input):
        if index < len(net.input_shape):
            shape = tuple(int(d) for d in net.input_shape[index].dim)
        elif len(dims) >= 4 * (index + 1):
            shape = tuple(dims[4 * index:4 * index + 4])
        else:
            raise ModelFileError(f"{path}: input {printable(repr(name))} has no shape; give it input_shape "
                                 "or four input_dim values")
        if name in inputs:
            raise ModelFileError(f"{path}: input {printable(repr(name))} is declared twice; rename one of them")
        inputs[name] = shape
    return inputs


def input_problem(shape):
    """What is wrong with a declared input shape, or None. The batch size is replaced by a free
    axis, so only the other sizes matter."""
    if not shape:
        return "has no dimensions; give its shape as (N, C, H, W) or (N, features)"
    if any(int(d) < 1 for d in shape[1:]) or int(shape[0]) < 0:
        return f"has the shape {tuple(shape)}; every size but the batch must be at least 1"
    return None


def free_batch(shape):
    return (None,) + tuple(int(d) for d in shape[1:])


def checked_input(shape, what, error):
    problem = input_problem(shape)
    if problem:
        raise error(f"{what} {problem}")
    check_shape((1,) + tuple(shape[1:]), 4, f"{what} of shape {tuple(shape)} (for one image)")
    return free_batch(shape)


_IR_NODE_PREFIX = re.compile(r"^node (?:'[^']*'|\"[^\"]*\") \(\w+\): ")


@contextmanager
def layer_errors(path, weights_path, where):
    """Every failure while converting one layer as one error naming ``path`` and the layer: explicit
    checks and the IR's shape checks get the prefix (and a hint where they have none), anything
    unforeseen goes through the shared safety net with the layer as its location."""
    try:
        with reading_at(where):
            yield
    except UnsupportedModelError:
        raise
    except LrpToolError as error:
        message = printable(str(error))
        if message.startswith(f"{path}: ") or weights_path and message.startswith(f"{weights_path}: "):
            raise
        message = _IR_NODE_PREFIX.sub("", message)
        if message.startswith(f"{where}: "):
            message = message[len(where) + 2:]
        if ";" not in message:
            message += "; correct the layer in the prototxt"
        try:
            located = (GraphError if isinstance(error, Invalid) else type(error))(f"{path}: {where}: {message}")
        except TypeError:
            located = GraphError(f"{path}: {where}: {message}")
        raise located from None


def read_caffe(path, weights=None, random_weights=False, input_shape=None, seed=0):
    """Read ``path`` (a Caffe prototxt) and optionally ``weights`` (its caffemodel) into a Graph.

    ``input_shape``: a tuple (for every input) or a dict input name → shape that replaces the
    declared input shapes (e.g. a larger image for a fully convolutional net) and gives data-source
    layers (Data, ImageData, ...) the shape that lives in their database, not in the prototxt.
    Caffe's batch size is replaced by a free batch axis. ``random_weights``/``seed``: without ``weights``, fill
    parameters with seeded random values instead of zeros.
    """
    path = str(path)
    with reading_file(path):
        return _read_caffe(path, weights, random_weights, input_shape, seed)


def _read_caffe(path, weights, random_weights, input_shape, seed):
    net = read_network(path)
    weights_path = None if weights is None else str(weights)
    stored = None if weights is None else read_stored_blobs(weights_path)
    ctx = CaffeContext(path, stored, random_weights, seed, weights_path)
    for name, shape in declared_inputs(net, path).items():
        what = f"{path}: input {printable(repr(name))}"
        ctx.declare_input(name, checked_input(chosen_shape(input_shape, name, shape), what, ModelFileError))
    for lp in network_layers(net, path):
        if layer_in_phase(lp, TEST_PHASE):
            kind = layer_type(lp)
            if not (kind.endswith("Loss") or kind in DROPPED_LAYERS):
                with layer_errors(path, weights_path, ctx.where(lp)):
                    convert_layer(ctx, lp, kind, input_shape)
    if ctx.unsupported:
        raise UnsupportedModelError(path, ctx.unsupported)
    return finish_network(ctx, net.name or os.path.basename(path))


def read_network(path):
    """The prototxt's network, refused where it defines no layers."""
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    net = parse_prototxt(path)
    if not net.layer and not net.layers:
        # Unknown fields are skipped, so a solver file or other text proto parses as an empty net.
        raise ModelFileError(f"{path}: the prototxt defines no layers (is it a solver or other prototxt?)")
    return net


def read_stored_blobs(weights_path):
    """Layer name → the blobs a caffemodel stores for it (the last non-empty entry of a name wins)."""
    stored = {}
    for lp in network_layers(parse_caffemodel(weights_path), weights_path):
        if lp.name not in stored or len(lp.blobs):
            stored[lp.name] = list(lp.blobs)
    return stored


def convert_layer(ctx, lp, kind, input_shape):
    """Convert one TEST-phase layer: a data layer declares inputs, Dropout and Split alias their
    bottom, every other type goes to its converter. What lrptool cannot represent is collected in
    ``ctx.unsupported`` and the layer's tops are marked broken, so that its readers are skipped."""
    tops, bottoms = list(lp.top), list(lp.bottom)
    check_tops(lp, kind, tops, bottoms, ctx.current)
    # A Python layer without bottoms is how custom data readers are written.
    if kind == "Input" or kind in DATA_LAYERS or (kind == "Python" and not bottoms):
        for top, shape in input_shapes_for(lp, kind, tops, input_shape, ctx.source).items():
            ctx.declare_input(top, checked_input(chosen_shape(input_shape, top, shape),
                                                 f"top {printable(repr(top))}", Invalid))
        return
    if any(b in ctx.broken for b in bottoms):
        ctx.broken.update(tops)
        return
    missing = [b for b in bottoms if b not in ctx.current]
    if missing:
        raise Invalid(f"bottom {printable(repr(missing[0]))} is not made by an earlier layer or declared "
                      "as an input; check the layer order and the blob names")
    sources = [ctx.current[b] for b in bottoms]
    if kind in ALIAS_LAYERS:
        check_bottom_count(len(bottoms), (1, 1))
        if kind == "Dropout" and len(tops) != 1:
            raise Invalid(f"Dropout has {len(tops)} tops, Caffe makes exactly one")
        for top in tops:
            ctx.current[top] = sources[0]
        return
    converter = LAYERS.get(kind)
    if converter is None:
        reason = "no lrptool operator for this layer type"
        if kind == "NONE":
            # V1 'layers' whose definition sits in a nested V0 'layer' block (pre-2014 Caffe).
            reason = "a V0 layer definition; upgrade the file with Caffe's upgrade_net_proto_text"
        ctx.refuse(lp, kind, reason)
        return
    check_bottom_count(len(bottoms), converter.bottoms)
    count = len(ctx.nodes)
    try:
        outputs = converter(ctx, lp, sources)
    except Unsupported as problem:
        del ctx.nodes[count:]
        ctx.refuse(lp, kind, problem)
        return
    if len(outputs) != len(tops):
        raise Invalid(f"{len(tops)} top(s) for the {len(outputs)} output(s) the layer makes")
    for top, tensor in zip(tops, outputs):
        ctx.current[top] = tensor
        ctx.produced.append(tensor)


def finish_network(ctx, name):
    """The checked graph: as in Caffe, a top that no later layer reads is a network output, and each
    blob's final value carries the blob's name."""
    finals = set(ctx.current.values())
    consumed = {t for node in ctx.nodes for t in node.inputs}
    outputs = list(dict.fromkeys(tensor for tensor in ctx.produced if tensor not in consumed and tensor in finals))
    if not outputs:
        raise GraphError(f"{ctx.source}: the network computes nothing (no layers after the inputs)")
    nodes, mapping = rename_tensors(ctx.nodes, ctx.current, ctx.inputs, outputs)
    try:
        return Graph(ctx.inputs, nodes, [mapping.get(t, t) for t in outputs], name=name)
    except GraphError as error:
        raise GraphError(f"{ctx.source}: {printable(error)}") from None


def check_bottom_count(count, accepted):
    least, most = accepted
    if count < least or most is not None and count > most:
        wanted = f"{least}" if least == most else f"{least} or more" if most is None else f"{least} to {most}"
        raise Invalid(f"{count} bottom(s), the layer takes {wanted}")


def check_tops(lp, kind, tops, bottoms, current):
    """Caffe's rules for tops: at least one, none twice, and a blob made earlier may only be
    written again in place (top i named as bottom i) — anything else is "produced by multiple
    sources" in Caffe, and would make the order of the blob's values ambiguous here."""
    if not tops:
        raise Invalid("no top; give the layer a top")
    seen = set()
    for index, top in enumerate(tops):
        if top in seen:
            raise Invalid(f"top {printable(repr(top))} appears twice")
        seen.add(top)
        in_place = index < len(bottoms) and bottoms[index] == top
        if top in current and not in_place:
            raise Invalid(f"top {printable(repr(top))} is already made by an earlier layer or an input and this "
                          "layer does not work in place on it; give the top a new name")


def input_shapes_for(lp, kind, tops, input_shape, path):
    if kind == "Input":
        shapes = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
        if not shapes:
            raise Invalid("no shape; give input_param { shape { dim: ... } }")
        if len(shapes) == 1:
            shapes = shapes * len(tops)
        if len(shapes) != len(tops):
            raise Invalid(f"{len(shapes)} shapes for {len(tops)} tops")
        return dict(zip(tops, shapes))
    # A data-source layer's first top is the data; the others (labels) feed only losses.
    top = tops[0]
    shape = chosen_shape(input_shape, top, None)
    if shape is None:
        raise ModelFileError(f"reads its data from a database, which holds the shape of {printable(repr(top))}; "
                             "replace the layer with an Input layer that gives the shape (or pass input_shape to "
                             "read_caffe)")
    return {top: tuple(shape)}


def chosen_shape(input_shape, name, declared):
    """The caller's shape for input ``name`` if it gave one, else the declared shape."""
    if isinstance(input_shape, dict):
        given = input_shape.get(name)
    else:
        given = input_shape
    return declared if given is None else tuple(given)


def rename_tensors(nodes, current, graph_inputs, outputs):
    """Give each Caffe blob's final value the blob's own name; earlier in-place values become
    ``<blob>/<producing layer>`` so that every IR tensor name stays unique."""
    producer = {t: node for node in nodes for t in node.outputs}
    mapping = {}
    for blob, tensor in current.items():
        if tensor == blob or blob in graph_inputs or tensor not in producer:
            continue
        if blob in producer:
            mapping[blob] = f"{blob}/{producer[blob].name}"
        mapping[tensor] = blob
    taken = set(producer) | set(graph_inputs)
    for old, new in list(mapping.items()):
        if new in taken and new not in mapping:
            # Only rename into names that are free after the swap.
            del mapping[old]
    if mapping and len(set(mapping.values())) != len(mapping):
        mapping = {}
    for node in nodes:
        node.inputs = [mapping.get(t, t) for t in node.inputs]
        node.outputs = [mapping.get(t, t) for t in node.outputs]
    return nodes, mapping


def read_mean_file(path):
    """Per-channel means from a Caffe ``.binaryproto`` mean file (a BlobProto, usually C×H×W):
    the pixel means averaged over the image, in the file's channel order (BGR for Caffe models)."""
    image = read_mean_image(path)
    return [float(v) for v in image.reshape(len(image), -1).mean(axis=1)]


def read_mean_image(path):
    """The mean image of a Caffe ``.binaryproto`` mean file as (C, H, W) float64, in the file's channel
    order (BGR for Caffe models); a blob of one value per channel comes back as (C, 1, 1)."""
    path = str(path)
    # Called by the command line outside ``load_model``: this guard is the mean file's own.
    with reading_file(path):
        return _read_mean_file(path)


def _read_mean_file(path):
    blob = caffe_proto.BlobProto()
    try:
        with open(path, "rb") as handle:
            blob.ParseFromString(handle.read())
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read the mean file ({error.strerror or error})") from None
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ModelFileError(f"{path}: not a Caffe mean file (.binaryproto): {printable(error)}; give the "
                             "mean file saved with the model, or --mean") from None

    def problem(message):
        return ModelFileError(f"{path}: the mean blob {message}; the mean file is damaged (give --mean instead)")

    values = blob_array(blob, problem)[0]
    if values.size == 0:
        raise ModelFileError(f"{path}: the mean file holds no values; give the mean file saved with the model, "
                             "or --mean")
    # Caffe's mean files are (1, C, H, W) or (C, H, W); smaller blobs hold one value per channel.
    values = values.reshape((-1,) + values.shape[-2:]) if values.ndim >= 3 else values.reshape(-1, 1, 1)
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ModelFileError(f"{path}: the mean file holds NaN or infinite values")
    return values
