"""Keras reader: legacy full-model ``.h5`` files (Keras 1 with TensorFlow ordering, Keras 2, tf.keras,
Keras 3), weights-only ``.h5`` files plus an architecture JSON, and Keras 3 ``.keras`` archives, into
lrptool's graph IR.

lrptool's Keras graphs take NCHW (NCW) input: the reader moves Keras' channels-last layout to the
IR's channels-first one once, at the graph input, and converts every kernel to match. Callers feed
``x_nhwc.transpose(0, 3, 1, 2)``; feature-map outputs come back channels-first, class scores
(N, K) are unchanged. A model whose input is read only by ``channels_first`` layers takes its
input exactly as Keras does. Only inference behaviour is kept: dropout and noise layers vanish,
``training_config`` and optimizer state are ignored.
"""

import io
import json
import os
import zipfile

import numpy as np

from lrptool.errors import GraphError, ModelFileError, UnsupportedModelError
from lrptool.graph import Graph, Node, free_name, normalize_node

from .keras_layers import (LAYERS, Unsupported, WeightCountError, activation_nodes, channels_first_perm,
                           channels_last_perm, keras1_layer, wants_keras_order, REFUSED)

MODEL_CLASSES = ("Sequential", "Functional", "Model")
BROKEN = object()


def text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def chunked_attr(obj, name):
    """A string-list attribute; Keras splits long ones into ``name0``, ``name1``, …"""
    if name in obj.attrs:
        return [text(v) for v in obj.attrs[name]]
    values, i = [], 0
    while f"{name}{i}" in obj.attrs:
        values.extend(text(v) for v in obj.attrs[f"{name}{i}"])
        i += 1
    return values


class WeightStore:
    """Weight arrays by layer name, from legacy ``layer_names``/``weight_names`` groups or a Keras 3
    ``.weights.h5`` (``layers/<auto name>/vars/<i>`` with the layer name as an attribute)."""

    def __init__(self, group):
        self.arrays = {}
        self.names = {}
        self.children = {}
        layer_names = chunked_attr(group, "layer_names")
        if layer_names:
            for layer_name in layer_names:
                if layer_name not in group:
                    continue
                sub = group[layer_name]
                weight_names = chunked_attr(sub, "weight_names")
                missing = [w for w in weight_names if w not in sub]
                if missing:
                    raise GraphError(f"layer {layer_name!r}: weights {missing} are listed but not stored")
                self.names[layer_name] = weight_names
                self.arrays[layer_name] = [np.asarray(sub[w][()]) for w in weight_names]
        elif "layers" in group:
            # Keras 3 names these groups after the layer class, so the layer name is read from ``vars``.
            for sub in group["layers"].values():
                if "vars" not in sub:
                    continue
                layer_name = text(sub["vars"].attrs.get("name", ""))
                count = len(sub["vars"])
                self.arrays[layer_name] = [np.asarray(sub["vars"][str(i)][()]) for i in range(count)]
                self.names[layer_name] = [str(i) for i in range(count)]
                if "layers" in sub:
                    self.children[layer_name] = WeightStore(sub)

    def get(self, layer_name):
        return list(self.arrays.get(layer_name, []))

    def nested(self, model_name, inner_layers):
        """Split a nested model's flat weight list among its layers by the layer name in each path."""
        if model_name in self.children:
            return self.children[model_name]
        arrays = self.arrays.get(model_name, [])
        names = self.names.get(model_name, [])
        store = WeightStore.__new__(WeightStore)
        store.arrays, store.names, store.children = {}, {}, {}
        inner = set(inner_layers)
        for weight_name, array in zip(names, arrays):
            parts = weight_name.split("/")
            owner = next((p for p in reversed(parts[:-1]) if p in inner), None)
            if owner is None:
                continue
            store.arrays.setdefault(owner, []).append(array)
            store.names.setdefault(owner, []).append(weight_name)
        return store


class Context:
    """Accumulates IR nodes, infers shapes as they are added, and tracks deferred Flattens."""

    def __init__(self, source, keras_major, keras1_backend=None):
        self.source = source
        self.keras_major = keras_major
        self.keras1_backend = keras1_backend
        self.nodes = []
        self.shapes = {}
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
        return free_name(name, self.shapes, start=1)

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
            return (None, int(np.prod(source_shape[1:])))
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


def layer_inputs(inbound):
    """(layer, node index, tensor index) triples of one inbound node, Keras 2 or Keras 3 form."""
    if isinstance(inbound, dict):
        found = []

        def walk(value):
            if isinstance(value, dict):
                if value.get("class_name") == "__keras_tensor__":
                    history = value["config"]["keras_history"]
                    found.append((history[0], int(history[1]), int(history[2])))
                else:
                    for item in value.values():
                        walk(item)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    walk(item)

        walk(inbound.get("args", []))
        return found
    return [(entry[0], int(entry[1]), int(entry[2])) for entry in inbound]


def endpoints(value):
    """``input_layers``/``output_layers``: Keras 3 writes a single endpoint unwrapped."""
    if value and isinstance(value[0], str):
        value = [value]
    return [(v[0], int(v[1]), int(v[2])) for v in value]


def layer_name(spec):
    return spec.get("config", {}).get("name") or spec.get("name")


def input_shape_of(spec):
    cfg = spec.get("config", {})
    for key in ("batch_shape", "batch_input_shape"):
        if cfg.get(key):
            return tuple(cfg[key])
    if cfg.get("input_shape"):
        return (None,) + tuple(cfg["input_shape"])
    return None


class ModelBuilder:
    def __init__(self, ctx, path, input_shapes=None, input_size=None):
        self.ctx = ctx
        self.path = path
        self.input_shapes = dict(input_shapes or {})
        self.input_size = tuple(input_size) if input_size else None

    def convert_layer(self, spec, inputs, weights, prefix):
        """Run one layer's converter; returns its output tensors (BROKEN when refused)."""
        ctx = self.ctx
        lname = layer_name(spec)
        shown = prefix + lname
        try:
            class_name, cfg = keras1_layer(spec["class_name"], spec.get("config", {}))
        except Unsupported as error:
            ctx.unsupported.append((shown, spec["class_name"], str(error)))
            return [BROKEN]
        if class_name in MODEL_CLASSES:
            if any(t is BROKEN for t in inputs):
                return [BROKEN]
            inner_names = [layer_name(s) for s in self.layer_specs(spec)]
            inner = weights.nested(lname, inner_names)
            return self.build(spec, inner, [ctx.materialize(t) for t in inputs], prefix=shown + "/")
        converter = LAYERS.get(class_name)
        if converter is None:
            reason = REFUSED.get(class_name, "no lrptool conversion for this Keras layer class")
            ctx.unsupported.append((shown, class_name, reason))
            return [BROKEN]
        ctx.class_name = class_name
        if any(t is BROKEN for t in inputs):
            try:
                if "activation" in cfg:
                    activation_nodes(ctx, cfg["activation"])
            except Unsupported as error:
                ctx.unsupported.append((shown, class_name, str(error)))
            return [BROKEN]
        if class_name != "Dense":
            inputs = [ctx.materialize(t) for t in inputs]
        keras_order = wants_keras_order(class_name, cfg)
        ctx.current_keras_order = keras_order
        if class_name != "Flatten":
            inputs = [ctx.layout(t, keras_order) for t in inputs]
        try:
            output = converter(ctx, shown, cfg, inputs, weights.get(lname))
            if keras_order and output not in ctx.deferred and len(ctx.shape(output)) >= 3:
                ctx.keras_order.add(output)
            return [output]
        except Unsupported as error:
            ctx.unsupported.append((shown, class_name, str(error)))
            return [BROKEN]
        except WeightCountError as error:
            raise GraphError(f"{self.path}: {error}") from None
        except GraphError as error:
            raise GraphError(f"{self.path}: layer {shown!r} ({class_name}): {error}") from None

    def layer_specs(self, spec):
        cfg = spec.get("config", {})
        return cfg if isinstance(cfg, list) else cfg.get("layers", [])

    def build(self, spec, weights, bound=None, prefix=""):
        if spec.get("class_name") == "Sequential":
            return self.sequential(spec, weights, bound, prefix)
        if spec.get("class_name") in ("Functional", "Model"):
            return self.functional(spec, weights, bound, prefix)
        raise ModelFileError(f"{self.path}: model class {spec.get('class_name')!r} is not a Keras "
                             "Sequential or functional Model")

    def sequential(self, spec, weights, bound, prefix):
        layers = list(self.layer_specs(spec))
        if not layers:
            raise ModelFileError(f"{self.path}: the Sequential model has no layers")
        if bound is not None:
            (x,) = bound
        else:
            shape = input_shape_of(layers[0])
            if shape is None and isinstance(spec.get("config"), dict):
                shape = spec["config"].get("build_input_shape")
            if shape is None:
                raise ModelFileError(f"{self.path}: the Sequential model does not record its input shape")
            first = layer_name(layers[0])
            # Keras names the implicit input of a Sequential model after its first layer.
            name = first if layers[0]["class_name"] == "InputLayer" else f"{first}_input"
            reader = next((layer for layer in layers if layer["class_name"] != "InputLayer"), {})
            x = self.input_tensor(prefix + name, shape, self.keras_order_input([reader]))
        for layer in layers:
            if layer["class_name"] == "InputLayer":
                continue
            (x,) = self.convert_layer(layer, [x], weights, prefix)
        return [x]

    def input_tensor(self, name, shape, keras_order=False):
        fixed = self.input_shapes.get(name)
        if fixed is not None:
            if len(fixed) != len(shape) - 1 or any(d is not None and d != f for d, f in zip(shape[1:], fixed)):
                raise ModelFileError(f"{self.path}: input {name!r} has shape {list(shape)}; "
                                     f"{list(fixed)} does not fit it")
            shape = (None,) + tuple(int(d) for d in fixed)
        free = [i for i, d in enumerate(shape) if i and d is None]
        if free and self.input_size and len(free) == len(self.input_size):
            sizes = iter(self.input_size)
            shape = tuple(next(sizes) if i in free else d for i, d in enumerate(shape))
        if any(d is None for d in shape[1:]):
            self.ctx.unsupported.append((name, "InputLayer", f"input shape {list(shape)} has free sizes "
                                         "besides the batch axis; fix them with --input-size"))
            return BROKEN
        return self.ctx.add_input(name, shape, keras_order)

    @staticmethod
    def keras_order_input(consumers):
        """A model read only by channels_first layers takes its input as Keras does (NCHW)."""
        try:
            specs = [keras1_layer(c["class_name"], c.get("config", {})) for c in consumers if c]
        except Unsupported:
            return False  # reported when that layer is converted
        return bool(specs) and all(wants_keras_order(name, cfg) for name, cfg in specs)

    def functional(self, spec, weights, bound, prefix):
        cfg = spec["config"]
        layers = {layer_name(layer): layer for layer in cfg["layers"]}
        inputs = endpoints(cfg["input_layers"])
        outputs = endpoints(cfg["output_layers"])
        calls, done = {}, set()
        for i, (name, _, _) in enumerate(inputs):
            if bound is not None:
                tensor = bound[i]
            else:
                shape = input_shape_of(layers[name])
                if shape is None:
                    raise ModelFileError(f"{self.path}: input layer {name!r} does not record its shape")
                readers = [layer for layer in cfg["layers"]
                           if any(t[0] == name for node in layer.get("inbound_nodes") or []
                                  for t in layer_inputs(node))]
                tensor = self.input_tensor(prefix + name, shape, self.keras_order_input(readers))
            calls[name] = [[tensor]]
            done.add(name)

        def resolve(name, node_index, tensor_index):
            outs = calls.get(name)
            if outs is None:
                return None
            if node_index < len(outs):
                return outs[node_index][tensor_index]
            if name in done:
                # Keras 2 counts a nested model's own construction as node 0.
                return outs[-1][tensor_index]
            return None

        pending = [layer for layer in cfg["layers"] if layer_name(layer) not in done]
        while pending:
            progressed, waiting = False, []
            for layer in pending:
                name = layer_name(layer)
                inbound = layer.get("inbound_nodes") or []
                start = len(calls.get(name, []))
                for node in inbound[start:]:
                    sources = [resolve(*triple) for triple in layer_inputs(node)]
                    if any(s is None for s in sources):
                        break
                    calls.setdefault(name, []).append(self.convert_layer(layer, sources, weights, prefix))
                    progressed = True
                if len(calls.get(name, [])) < len(inbound):
                    waiting.append(layer)
                else:
                    done.add(name)
            if not progressed:
                names = ", ".join(layer_name(layer) for layer in waiting)
                raise ModelFileError(f"{self.path}: layers {names} read tensors that no layer makes")
            pending = waiting
        result = []
        for triple in outputs:
            tensor = resolve(*triple)
            if tensor is None:
                raise ModelFileError(f"{self.path}: output {triple[0]!r} is not made by any layer")
            result.append(tensor)
        return result


def load_config(path, handle, model_config):
    if model_config is not None:
        try:
            with open(model_config, encoding="utf-8") as stream:
                return json.load(stream)
        except OSError as error:
            raise ModelFileError(f"{model_config}: cannot read the model config ({error.strerror})") from None
        except ValueError as error:
            raise ModelFileError(f"{model_config}: not a JSON model config ({error})") from None
    if "model_config" not in handle.attrs:
        if chunked_attr(handle, "layer_names") or "layers" in handle:
            raise ModelFileError(f"{path}: a weights-only Keras file; give its architecture JSON as well "
                                 "(--model-config, or model_config=)")
        raise ModelFileError(f"{path}: not a Keras model file (no model_config and no layer weights)")
    try:
        return json.loads(text(handle.attrs["model_config"]))
    except ValueError as error:
        raise ModelFileError(f"{path}: model_config is not valid JSON ({error})") from None


def open_keras_archive(path):
    """A Keras 3 ``.keras`` zip: ``config.json``, ``metadata.json`` and ``model.weights.h5``."""
    import h5py

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            try:
                metadata = json.loads(archive.read("metadata.json"))
            except KeyError:
                metadata = {}
            weights = archive.read("model.weights.h5")
    except (KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ModelFileError(f"{path}: not a Keras .keras archive ({error})") from None
    version = major_version(metadata.get("keras_version")) or 3
    return h5py.File(io.BytesIO(weights), "r"), config, version


def major_version(value):
    try:
        return int(text(value).split(".")[0]) if value is not None else None
    except ValueError:
        return None


def keras_major_version(handle):
    for obj in (handle, handle.get("model_weights")):
        if obj is not None and major_version(obj.attrs.get("keras_version")):
            return major_version(obj.attrs["keras_version"])
    return 2


def read_keras(path, model_config=None, input_shapes=None, keras1_backend=None, input_size=None):
    """Read a Keras HDF5 model (or weights file plus ``model_config`` JSON) into a ``Graph``.

    ``keras1_backend`` (``tensorflow`` or ``theano``): which backend wrote a Keras 1 file with
    convolutions; Keras 1 does not record it and Theano's kernels are stored flipped.

    ``input_shapes`` (input layer name → Keras shape without the batch axis, e.g. ``(12, 12, 3)``)
    fixes the sizes a fully convolutional model leaves free, since every IR size but the batch is fixed;
    ``input_size`` (e.g. ``(12, 12)``) fills the free spatial sizes of every input in order.
    """
    import h5py

    path = str(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    archive_config, version = None, None
    if zipfile.is_zipfile(path):
        handle, archive_config, version = open_keras_archive(path)
    else:
        try:
            handle = h5py.File(path, "r")
        except OSError as error:
            raise ModelFileError(f"{path}: not an HDF5 file or .keras archive ({error})") from None
    with handle:
        config = archive_config if model_config is None and archive_config is not None else \
            load_config(path, handle, model_config)
        if isinstance(config, dict) and "class_name" not in config and "config" in config:
            config = config["config"]
        if not isinstance(config, dict) or "class_name" not in config:
            raise ModelFileError(f"{path}: the model config has no model class")
        group = handle["model_weights"] if "model_weights" in handle else handle
        try:
            weights = WeightStore(group)
        except GraphError as error:
            raise GraphError(f"{path}: {error}") from None
        if version is None and model_config is not None:
            version = major_version(config.get("keras_version"))
        ctx = Context(path, version or keras_major_version(handle), keras1_backend)
        outputs = ModelBuilder(ctx, path, input_shapes, input_size).build(config, weights)
    if ctx.unsupported:
        raise UnsupportedModelError(path, ctx.unsupported)
    outputs = [ctx.materialize(t) for t in outputs]
    name = config.get("config", {}).get("name", "keras") if isinstance(config.get("config"), dict) else "keras"
    try:
        return Graph(inputs=ctx.inputs, nodes=ctx.nodes, outputs=outputs, name=name)
    except GraphError as error:
        raise GraphError(f"{path}: {error}") from None
