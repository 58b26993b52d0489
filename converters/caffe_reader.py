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
"""

import os

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from lrptool.errors import GraphError, ModelFileError, UnsupportedModelError
from lrptool.graph import Graph, Node, free_name, normalize_node

from . import caffe_proto
from .caffe_layers import LAYERS, Unsupported

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


def parse_prototxt(path):
    try:
        with open(path, "r", encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ModelFileError(f"{path}: not a text prototxt (binary data?)") from None
    net = caffe_proto.NetParameter()
    try:
        # Training-only settings (fillers, data sources, solver hints) are not in the trimmed schema.
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as error:
        # protobuf's message starts with "line:column :"; say so in words for the one-line CLI error.
        line, column = error.GetLine(), error.GetColumn()
        message = str(error)
        if line is not None:
            prefix = f"{line}:{column} : "
            message = message[len(prefix):] if message.startswith(prefix) else message
            raise ModelFileError(f"{path}: prototxt syntax error at line {line}, column {column}: {message}") \
                from None
        raise ModelFileError(f"{path}: prototxt syntax error: {message}") from None
    return net


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
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ModelFileError(f"{path}: not a readable caffemodel (truncated or corrupt?): {error}") from None
    if not net.layer and not net.layers:
        raise ModelFileError(f"{path}: the caffemodel holds no layers (truncated or not a caffemodel?)")
    return net


def layer_type(lp):
    if isinstance(lp, caffe_proto.V1LayerParameter):
        enum = lp.DESCRIPTOR.fields_by_name["type"].enum_type
        name = enum.values_by_number[lp.type].name if lp.type in enum.values_by_number else str(lp.type)
        return V1_TYPES.get(name, name)
    return lp.type


def network_layers(net):
    if net.layer and net.layers:
        raise ModelFileError("the network mixes V2 'layer' and V1 'layers' definitions")
    return list(net.layer) or list(net.layers)


def blob_array(blob):
    """A BlobProto as a float32 array, with the legacy num/channels/height/width shape when
    the blob predates BlobShape (``legacy`` tells the caller so)."""
    if blob.HasField("shape"):
        shape, legacy = tuple(int(d) for d in blob.shape.dim), False
    else:
        shape, legacy = (blob.num, blob.channels, blob.height, blob.width), True
    values = blob.data if len(blob.data) else blob.double_data
    array = np.array(values, dtype=np.float32)
    if array.size != int(np.prod(shape, dtype=np.int64)):
        return array, shape, legacy, False
    return array.reshape(shape), shape, legacy, True


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


class CaffeContext:
    def __init__(self, source, weights, random_weights, seed):
        self.source = source
        self.weights = weights
        self.random_weights = random_weights
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.shapes = {}
        self.tensor_names = set()
        self.node_names = set()

    def shape(self, tensor):
        return self.shapes[tensor]

    def unique(self, base):
        name = free_name(base, self.tensor_names, "#")
        self.tensor_names.add(name)
        return name

    def add(self, op, name, inputs, attrs, params, outputs=1, output_names=None):
        name = free_name(name, self.node_names, "#")
        self.node_names.add(name)
        names = output_names or [f"{name}:{i}" if outputs > 1 else name for i in range(outputs)]
        node = Node(name, op, list(inputs), [self.unique(n) for n in names], dict(attrs), dict(params))
        normalize_node(node)
        out_shapes = node.operator.infer(node, [self.shapes[t] for t in node.inputs])
        for tensor, shape in zip(node.outputs, out_shapes):
            self.shapes[tensor] = tuple(shape)
        self.nodes.append(node)
        return list(node.outputs)

    def blob(self, lp, index, shape, fan_in=None, fill=None, positive=False, exact=False):
        """Parameter ``index`` of layer ``lp`` with the ``shape`` the network implies.

        Without stored blobs: zeros, except ones where ``fill`` is 1 (variances, scale factors),
        or seeded random values with ``random_weights`` — ``fan_in`` scales random weights,
        ``positive`` keeps random variances above zero and ``exact`` uses ``fill`` unperturbed.
        ``exact`` also accepts a stored blob of any shape with the right number of values (the
        BatchNorm moving-average factor is (1,) or a legacy (1, 1, 1, 1)).
        """
        stored = self.stored_blobs(lp)
        if stored is not None:
            if index >= len(stored):
                raise GraphError(f"layer {lp.name!r} ({layer_type(lp)}): the weights hold {len(stored)} blob(s), "
                                 f"parameter {index} is missing")
            array, stored_shape, legacy, whole = blob_array(stored[index])
            if not whole:
                raise GraphError(f"layer {lp.name!r} ({layer_type(lp)}): blob {index} holds {array.size} values "
                                 f"but declares shape {stored_shape}")
            if stored_shape == tuple(shape):
                return array
            squeezed = tuple(d for d in stored_shape if d != 1)
            # Old caffemodels pad every blob to 4-D with leading ones (bias (1, 1, 1, C), fc (1, 1, out, in)).
            if (legacy or exact) and array.size == int(np.prod(shape, dtype=np.int64)) \
                    or squeezed == tuple(d for d in shape if d != 1):
                return array.reshape(shape)
            raise GraphError(f"layer {lp.name!r} ({layer_type(lp)}): blob {index} has shape {stored_shape}, "
                             f"the network needs {tuple(shape)}")
        if self.random_weights:
            if fill is not None:
                if positive:
                    return self.rng.uniform(0.5, 1.5, shape).astype(np.float32)
                if exact:
                    return np.full(shape, fill, np.float32)
                return (fill + 0.1 * self.rng.standard_normal(shape)).astype(np.float32)
            scale = 1.0 / np.sqrt(max(fan_in or 1, 1))
            return (scale * self.rng.standard_normal(shape)).astype(np.float32)
        if fill == 1.0:
            return np.ones(shape, np.float32)
        return np.zeros(shape, np.float32)

    def stored_blobs(self, lp):
        if self.weights is not None:
            if lp.name not in self.weights:
                raise GraphError(f"layer {lp.name!r} ({layer_type(lp)}): not found in the caffemodel")
            blobs = self.weights[lp.name] or list(lp.blobs)
            if not blobs:
                raise GraphError(f"layer {lp.name!r} ({layer_type(lp)}): the caffemodel holds no blobs for it")
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
            raise ModelFileError(f"{path}: input {name!r} has no shape (input_shape or input_dim)")
        inputs[name] = shape
    return inputs


def free_batch(shape):
    return (None,) + tuple(int(d) for d in shape[1:])


def read_caffe(path, weights=None, random_weights=False, input_shape=None, seed=0):
    """Read ``path`` (a Caffe prototxt) and optionally ``weights`` (its caffemodel) into a Graph.

    ``input_shape``: a tuple (for every input) or a dict input name → shape that replaces the
    declared input shapes (e.g. a larger image for a fully convolutional net) and gives data-source
    layers (Data, ImageData, ...) the shape that lives in their database, not in the prototxt.
    Caffe's batch size is replaced by a free batch axis. ``random_weights``/``seed``: without ``weights``, fill
    parameters with seeded random values instead of zeros.
    """
    path = str(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    net = parse_prototxt(path)
    if not net.layer and not net.layers:
        # Unknown fields are skipped, so a solver file or other text proto parses as an empty net.
        raise ModelFileError(f"{path}: the prototxt defines no layers (is it a solver or other prototxt?)")
    stored = None
    if weights is not None:
        model = parse_caffemodel(str(weights))
        stored = {}
        for lp in network_layers(model):
            if lp.name not in stored or len(lp.blobs):
                stored[lp.name] = list(lp.blobs)
    ctx = CaffeContext(path, stored, random_weights, seed)

    current = {}  # Caffe blob name → IR tensor holding its latest value
    produced = []  # IR tensors made by layers, in order
    for name, shape in declared_inputs(net, path).items():
        ctx.shapes[name] = free_batch(chosen_shape(input_shape, name, shape))
        ctx.tensor_names.add(name)
        current[name] = name
    graph_inputs = dict(ctx.shapes)

    unsupported = []
    broken = set()  # Caffe blobs downstream of an unsupported layer
    for lp in network_layers(net):
        if not layer_in_phase(lp, TEST_PHASE):
            continue
        kind = layer_type(lp)
        tops = list(lp.top)
        bottoms = list(lp.bottom)
        if kind.endswith("Loss") or kind in DROPPED_LAYERS:
            continue
        # A Python layer without bottoms is how custom data readers are written.
        if kind == "Input" or kind in DATA_LAYERS or (kind == "Python" and not bottoms):
            shapes = input_shapes_for(lp, kind, tops, input_shape, path)
            for top, shape in shapes.items():
                ctx.shapes[top] = free_batch(chosen_shape(input_shape, top, shape))
                ctx.tensor_names.add(top)
                graph_inputs[top] = ctx.shapes[top]
                current[top] = top
            continue
        if any(b in broken for b in bottoms):
            broken.update(tops)
            continue
        missing = [b for b in bottoms if b not in current]
        if missing:
            raise GraphError(f"layer {lp.name!r} ({kind}): bottom {missing[0]!r} is not made by an earlier layer "
                             "or declared as an input")
        sources = [current[b] for b in bottoms]
        if kind in ALIAS_LAYERS:
            for top in tops:
                current[top] = sources[0]
            continue
        converter = LAYERS.get(kind)
        if converter is None:
            reason = "no lrptool operator for this layer type"
            if kind == "NONE":
                # V1 'layers' whose definition sits in a nested V0 'layer' block (pre-2014 Caffe).
                reason = "a V0 layer definition; upgrade the file with Caffe's upgrade_net_proto_text"
            unsupported.append((lp.name, kind, reason))
            broken.update(tops)
            continue
        count = len(ctx.nodes)
        try:
            outputs = converter(ctx, lp, sources)
        except Unsupported as problem:
            del ctx.nodes[count:]
            unsupported.append((lp.name, kind, str(problem)))
            broken.update(tops)
            continue
        if len(outputs) != len(tops):
            raise GraphError(f"layer {lp.name!r} ({kind}): {len(tops)} top(s) for {len(outputs)} output(s)")
        for top, tensor in zip(tops, outputs):
            current[top] = tensor
            produced.append((top, tensor))
    if unsupported:
        raise UnsupportedModelError(path, unsupported)

    finals = {current[top] for top in current}
    # As in Caffe, a top that no later layer reads is a network output.
    consumed = {t for node in ctx.nodes for t in node.inputs}
    outputs = []
    for top, tensor in produced:
        if tensor not in consumed and tensor in finals and tensor not in outputs:
            outputs.append(tensor)
    if not outputs:
        raise GraphError(f"{path}: the network computes nothing (no layers after the inputs)")
    nodes = rename_tensors(ctx.nodes, current, graph_inputs, outputs)
    renamed_outputs = [nodes[1].get(t, t) for t in outputs]
    return Graph(graph_inputs, nodes[0], renamed_outputs, name=net.name or os.path.basename(path))


def input_shapes_for(lp, kind, tops, input_shape, path):
    if kind == "Input":
        shapes = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
        if not shapes:
            raise ModelFileError(f"{path}: Input layer {lp.name!r} has no shape")
        if len(shapes) == 1:
            shapes = shapes * len(tops)
        if len(shapes) != len(tops):
            raise ModelFileError(f"{path}: Input layer {lp.name!r}: {len(shapes)} shapes for {len(tops)} tops")
        return dict(zip(tops, shapes))
    # A data-source layer's first top is the data; the others (labels) feed only losses.
    top = tops[0]
    shape = chosen_shape(input_shape, top, None)
    if shape is None:
        raise ModelFileError(f"{path}: layer {lp.name!r} ({kind}) reads its data from a database; "
                             f"give the shape of {top!r} (input_shape)")
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
    from .caffe_proto import BlobProto

    blob = BlobProto()
    try:
        with open(path, "rb") as handle:
            blob.ParseFromString(handle.read())
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read the mean file ({error.strerror or error})") from None
    except Exception as error:  # protobuf's DecodeError and friends
        raise ModelFileError(f"{path}: not a Caffe mean file (.binaryproto): {error}") from None
    values = blob_array(blob)[0]
    if values.size == 0:
        raise ModelFileError(f"{path}: the mean file holds no values")
    values = values.reshape((-1,) + values.shape[-2:]) if values.ndim >= 3 else values.reshape(-1, 1, 1)
    return [float(v) for v in values.reshape(values.shape[0], -1).mean(axis=1)]
