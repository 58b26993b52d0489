"""Keras reader: legacy full-model ``.h5`` files (Keras 1 with TensorFlow ordering, Keras 2, tf.keras,
Keras 3), weights-only ``.h5`` files plus an architecture JSON, and Keras 3 ``.keras`` archives, into
lrptool's graph IR.

lrptool's Keras graphs take NCHW (NCW) input: the reader moves Keras' channels-last layout to the
IR's channels-first one once, at the graph input, and converts every kernel to match. Callers feed
``x_nhwc.transpose(0, 3, 1, 2)``; feature-map outputs come back channels-first, class scores
(N, K) are unchanged. A model whose input is read only by ``channels_first`` layers takes its
input exactly as Keras does. Only inference behaviour is kept: dropout and noise layers vanish,
``training_config`` and optimizer state are ignored.

This module finds the model config, the weights and the Keras version in the file and builds the
graph from Sequential, functional and nested models; the file access (``keras_hdf5``), the config's
structure (``keras_schema``), the weight layout (``keras_weights``), the graph under construction
(``keras_context``) and each layer's conversion (``keras_settings``, ``keras_layers``) live apart.
"""

import collections
import io
import os
import zipfile

import numpy as np

from lrptool.errors import FreeSizeError, GraphError, ModelFileError, UnsupportedModelError
from lrptool.limits import BudgetError, check_shape, memory_budget

from .keras_context import Context
from .keras_errors import DAMAGED, WEIGHTS_ADVICE, BadLayer, Unsupported, WeightCountError, damaged, kind_of
from .keras_hdf5 import (H5_ERRORS, HDF5, HDF5_SIGNATURE, archive_member, as_text, check_global_heaps,
                         describe_value, endless_global_heap, failure, regular_file)
from . import keras_recurrent  # noqa: F401  (registers the recurrent layers)
from .keras_layers import LAYERS, MERGE_LAYERS, REFUSED, check_activation, wants_keras_order
from .keras_schema import (LARGEST_CONFIG, MODEL_CLASSES, check_model, endpoints, input_shape_of, layer_classes,
                           layer_inputs, layer_name, layer_specs, parse_json, valid_text)
from .keras_settings import check_settings, keras1_layer
from .keras_weights import WeightStore
from .reading import current_location, reading_at

BROKEN = object()


class ModelBuilder:
    def __init__(self, ctx, path, input_shapes=None, input_size=None):
        self.ctx = ctx
        self.path = path
        self.input_shapes = dict(input_shapes or {})
        self.input_size = tuple(input_size) if input_size else None

    def convert_layer(self, spec, inputs, weights, prefix):
        """Run one layer's converter; returns its output tensors (BROKEN when refused)."""
        lname = layer_name(spec)
        shown = prefix + lname
        with reading_at(f"layer {shown!r} ({spec['class_name']})"):
            try:
                return self.convert_checked(spec, inputs, weights, prefix, shown)
            except BadLayer as error:
                raise ModelFileError(f"{self.path}: {current_location()}: {error.problem}; {error.advice}") from None
            except WeightCountError as error:
                raise GraphError(f"{self.path}: {current_location()}: {error}; {WEIGHTS_ADVICE}") from None
            except BudgetError as error:
                raise BudgetError(f"{self.path}: {current_location()}: {error}") from None
            except FreeSizeError as error:
                raise FreeSizeError(f"{self.path}: {current_location()}: {error}; this layer needs a fixed input "
                                    "size: give it with --input-size (e.g. 224x224)") from None
            except GraphError as error:
                raise GraphError(f"{self.path}: {current_location()}: {error}; the layer does not fit its input "
                                 "(a damaged file, or the wrong --model-config)") from None

    def convert_checked(self, spec, inputs, weights, prefix, shown):
        ctx = self.ctx
        lname = layer_name(spec)
        try:
            class_name, cfg = keras1_layer(spec["class_name"], spec.get("config", {}))
        except Unsupported as error:
            ctx.unsupported.append((shown, spec["class_name"], str(error)))
            return [BROKEN]
        if class_name in MODEL_CLASSES:
            if any(t is BROKEN for t in inputs):
                return [BROKEN]
            inner = weights.nested(lname, [layer_name(s) for s in layer_specs(spec)])
            return self.build(spec, inner, [ctx.materialize(t) for t in inputs], prefix=shown + "/")
        converter = LAYERS.get(class_name)
        if converter is None:
            reason = REFUSED.get(class_name, "no lrptool conversion for this Keras layer class")
            ctx.unsupported.append((shown, class_name, reason))
            return [BROKEN]
        check_settings(cfg)
        if (len(inputs) < 2) if class_name in MERGE_LAYERS else (len(inputs) != 1):
            raise BadLayer(f"called on {len(inputs)} tensors, expected {'several' if class_name in MERGE_LAYERS else 1}")
        ctx.class_name = class_name
        if any(t is BROKEN for t in inputs):
            try:
                check_activation(ctx, cfg)
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
        except Unsupported as error:
            ctx.unsupported.append((shown, class_name, str(error)))
            return [BROKEN]
        if keras_order and output not in ctx.deferred and len(ctx.shape(output)) >= 3:
            ctx.keras_order.add(output)
        return [output]

    def build(self, spec, weights, bound=None, prefix=""):
        if spec.get("class_name") == "Sequential":
            return self.sequential(spec, weights, bound, prefix)
        return self.functional(spec, weights, bound, prefix)

    def sequential(self, spec, weights, bound, prefix):
        layers = list(layer_specs(spec))
        if not layers:
            raise ModelFileError(f"{self.path}: the Sequential model has no layers; {DAMAGED}")
        if bound is not None:
            if len(bound) != 1:
                raise ModelFileError(f"{self.path}: layer {prefix[:-1]!r} (Sequential): called on {len(bound)} "
                                     f"tensors, expected 1; {DAMAGED}")
            (x,) = bound
        else:
            shape = input_shape_of(layers[0])
            if shape is None and isinstance(spec.get("config"), dict):
                shape = spec["config"].get("build_input_shape")
            if shape is None:
                raise ModelFileError(f"{self.path}: the Sequential model does not record its input shape; "
                                     "save it after building it (give the first layer an input shape)")
            first = layer_name(layers[0])
            # Keras names the implicit input of a Sequential model after its first layer.
            name = first if layers[0]["class_name"] == "InputLayer" else f"{first}_input"
            reader = next((layer for layer in layers if layer["class_name"] != "InputLayer"), {})
            x = self.input_tensor(prefix + name, shape, self.keras_order_input([reader]))
        for layer in layers:
            if layer["class_name"] == "InputLayer":
                continue
            (x,) = self.single_output(layer, self.convert_layer(layer, [x], weights, prefix), prefix)
        return [x]

    def single_output(self, layer, outputs, prefix):
        if len(outputs) != 1:
            raise ModelFileError(f"{self.path}: layer {prefix + layer_name(layer)!r} ({layer['class_name']}): "
                                 f"{len(outputs)} outputs in a Sequential model, which passes one on; {DAMAGED}")
        return outputs

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
        try:
            check_shape(shape[1:], 4, f"one sample of input {name!r} {list(shape)}")
        except BudgetError as error:
            raise BudgetError(f"{self.path}: {error}") from None
        return self.ctx.add_keras_input(name, shape, keras_order)

    @staticmethod
    def keras_order_input(consumers):
        """A model read only by channels_first layers takes its input as Keras does (NCHW)."""
        try:
            specs = [keras1_layer(c["class_name"], c.get("config", {})) for c in consumers if c]
        except Unsupported:
            return False  # reported when that layer is converted
        return bool(specs) and all(isinstance(cfg, dict) and wants_keras_order(name, cfg) for name, cfg in specs)

    def functional(self, spec, weights, bound, prefix):
        cfg = spec["config"]
        where = f"layer {prefix[:-1]!r} ({spec['class_name']})" if prefix else "the model"
        layers = {layer_name(layer): layer for layer in cfg["layers"]}
        inbound = {name: [layer_inputs(node) for node in layer.get("inbound_nodes") or []]
                   for name, layer in layers.items()}
        readers = {}
        for name, nodes in inbound.items():
            for producer in {triple[0] for node in nodes for triple in node}:
                readers.setdefault(producer, []).append(layers[name])
        inputs = endpoints(cfg["input_layers"])
        outputs = endpoints(cfg["output_layers"])
        if bound is not None and len(bound) != len(inputs):
            raise damaged(self.path, where, f"called on {len(bound)} tensors, but the model has {len(inputs)} inputs")
        calls, done = {}, set()
        for i, (name, _, _) in enumerate(inputs):
            if bound is not None:
                tensor = bound[i]
            else:
                shape = input_shape_of(layers[name])
                if shape is None:
                    raise ModelFileError(f"{self.path}: input layer {name!r} does not record its shape; {DAMAGED}")
                tensor = self.input_tensor(prefix + name, shape, self.keras_order_input(readers.get(name, [])))
            calls[name] = [[tensor]]
            done.add(name)

        def resolve(name, node_index, tensor_index):
            outs = calls.get(name)
            if outs is None:
                return None
            if node_index < len(outs):
                made = outs[node_index]
            elif name in done:
                # Keras 2 counts a nested model's own construction as node 0.
                made = outs[-1]
            else:
                return None
            if tensor_index >= len(made):
                raise damaged(self.path, f"layer {prefix + name!r} ({layers[name]['class_name']})",
                              f"output {tensor_index} is read, but the layer makes {len(made)}")
            return made[tensor_index]

        # Layers wait on the first tensor they cannot resolve and wake when its layer is called again:
        # each layer call is tried a bounded number of times, whatever order the config lists them in.
        queue = collections.deque(layer for layer in cfg["layers"] if layer_name(layer) not in done)
        waiting = {}
        while queue:
            layer = queue.popleft()
            name = layer_name(layer)
            nodes = inbound[name]
            blocked = None
            for node in nodes[len(calls.get(name, [])):]:
                sources = [resolve(*triple) for triple in node]
                if any(s is None for s in sources):
                    blocked = next(t[0] for t, s in zip(node, sources) if s is None)
                    break
                calls.setdefault(name, []).append(self.convert_layer(layer, sources, weights, prefix))
                queue.extend(waiting.pop(name, []))
            if blocked is not None:
                waiting.setdefault(blocked, []).append(layer)
            elif name not in done:
                done.add(name)
                queue.extend(waiting.pop(name, []))
        stuck = [layer_name(layer) for layers_waiting in waiting.values() for layer in layers_waiting]
        if stuck:
            raise damaged(self.path, where, f"layers {', '.join(map(repr, sorted(stuck)))} read tensors that no "
                                            "layer makes (a missing layer or a cycle)")
        result = []
        for triple in outputs:
            tensor = resolve(*triple)
            if tensor is None:
                raise damaged(self.path, where, f"output {triple[0]!r} is not made by any layer")
            result.append(tensor)
        return result


def load_config(path, h5, handle, model_config):
    if model_config is not None:
        model_config = str(model_config)
        try:
            regular_file(model_config, "the model config")
            with open(model_config, "rb") as stream:
                data = stream.read(LARGEST_CONFIG + 1)
        except OSError as error:
            raise ModelFileError(f"{model_config}: cannot read the model config ({error.strerror})") from None
        return parse_json(data, model_config, "the model config")
    text = h5.attr(handle, "model_config", "the model config")
    if isinstance(text, np.ndarray) and text.shape == () and text.dtype.kind in "SO":
        text = text[()]
    if text is None:
        if h5.names_attr(handle, "layer_names", "the weights") or h5.member(handle, "layers", "the weights",
                                                                             object) is not None:
            raise ModelFileError(f"{path}: a weights-only Keras file; give its architecture JSON as well "
                                 "(--model-config, or model_config=)")
        raise ModelFileError(f"{path}: not a Keras model file (no model_config and no layer weights)")
    if isinstance(text, str) and not valid_text(text):
        try:
            # h5py hands back bytes that are not UTF-8 as surrogates; as bytes, the layer holding them is found
            text = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            pass
    if not isinstance(text, (str, bytes)):
        raise damaged(path, "the model config", f"attribute 'model_config' is {describe_value(text)}, "
                                                "expected JSON text")
    return parse_json(text, path, "the model config")


def open_keras_archive(path):
    """A Keras 3 ``.keras`` zip: ``config.json``, ``metadata.json`` and ``model.weights.h5``."""
    import h5py

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ModelFileError(f"{path}: not a Keras .keras archive ({failure(error)}); {DAMAGED}") from None
    with archive:
        config = archive_member(path, archive, "config.json", LARGEST_CONFIG)
        metadata = archive_member(path, archive, "metadata.json", LARGEST_CONFIG)
        weights = archive_member(path, archive, "model.weights.h5", memory_budget())
    for name, member in (("config.json", config), ("model.weights.h5", weights)):
        if member is None:
            raise ModelFileError(f"{path}: not a Keras .keras archive (it has no {name}); {DAMAGED}")
    config = parse_json(config, path, "config.json")
    metadata = parse_json(metadata, path, "metadata.json") if metadata is not None else {}
    if not isinstance(metadata, dict):
        raise damaged(path, "metadata.json", f"is {kind_of(metadata)}, expected an object")
    version = major_version(metadata.get("keras_version")) or 3
    heap = endless_global_heap(weights)
    if heap is not None:
        raise damaged(path, "model.weights.h5", f"the global heap at byte {heap} is broken (an object of size 0)")
    try:
        handle = h5py.File(io.BytesIO(weights), "r")
    except H5_ERRORS as error:
        raise damaged(path, "model.weights.h5", f"not an HDF5 file ({failure(error)})") from None
    return handle, HDF5(path, len(weights)), config, version


def major_version(value):
    text = as_text(value) if not isinstance(value, (int, float)) else str(value)
    try:
        return int(text.split(".")[0]) if text is not None else None
    except ValueError:
        return None


def keras_major_version(h5, handle):
    import h5py

    weights = h5.member(handle, "model_weights", "the weights", h5py.Group)
    for obj in (handle, weights):
        if obj is not None and major_version(h5.attr(obj, "keras_version", "the file's Keras version")):
            return major_version(h5.attr(obj, "keras_version", "the file's Keras version"))
    return 2


def graph_name(config):
    """The model's name for the graph (and the ONNX file): always text, "keras" where there is none."""
    cfg = config.get("config")
    name = cfg.get("name") if isinstance(cfg, dict) else None
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        return str(name)
    return name if isinstance(name, str) and name and valid_text(name) else "keras"


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
    regular_file(path, "the model")
    archive_config, version = None, None
    with open(path, "rb") as stream:
        starts_as_hdf5 = stream.read(8) == HDF5_SIGNATURE
    # an HDF5 file's weights may hold a zip's end-of-archive bytes by chance; its own signature decides
    if not starts_as_hdf5 and zipfile.is_zipfile(path):
        handle, h5, archive_config, version = open_keras_archive(path)
    else:
        try:
            check_global_heaps(path)
            handle = h5py.File(path, "r")
        except H5_ERRORS as error:
            raise ModelFileError(f"{path}: not an HDF5 file or .keras archive ({failure(error)})") from None
        h5 = HDF5(path, os.path.getsize(path))
    with handle:
        config = archive_config if model_config is None and archive_config is not None else \
            load_config(path, h5, handle, model_config)
        if isinstance(config, dict) and "class_name" not in config and "config" in config:
            config = config["config"]
        if not isinstance(config, dict) or "class_name" not in config:
            raise ModelFileError(f"{path}: the model config has no model class; {DAMAGED}")
        check_model(path, config)
        classes = layer_classes(config)
        group = h5.member(handle, "model_weights", "the weights", h5py.Group)
        weights = WeightStore(h5, handle if group is None else group, lambda name: f"layer {name!r} ({classes.get(name, 'not in the config')})")
        if version is None and model_config is not None:
            version = major_version(config.get("keras_version"))
        ctx = Context(path, version or keras_major_version(h5, handle), keras1_backend)
        ctx.masking = keras_recurrent.masking_layer(config)
        outputs = ModelBuilder(ctx, path, input_shapes, input_size).build(config, weights)
    if ctx.unsupported:
        raise UnsupportedModelError(path, ctx.unsupported)
    outputs = [ctx.materialize(t) for t in outputs]
    try:
        return ctx.finish(outputs, name=graph_name(config))
    except GraphError as error:
        raise GraphError(f"{path}: {error}; {DAMAGED}") from None
