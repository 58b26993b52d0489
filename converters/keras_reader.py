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

import collections
import io
import json
import math
import mmap
import os
import struct
import zipfile

import numpy as np

from lrptool.errors import GraphError, ModelFileError, UnsupportedModelError
from lrptool.graph import Graph, Node, free_name, normalize_node
from lrptool.limits import BudgetError, check_bytes, check_shape, human_bytes, memory_budget

from .keras_layers import (LAYERS, LARGEST_SIZE, MERGE_LAYERS, REFUSED, WEIGHTS_ADVICE, BadLayer, Unsupported,
                           WeightCountError, activation_nodes, channels_first_perm, channels_last_perm, check_settings,
                           is_int, keras1_layer, short, wants_keras_order)
from .reading import current_location, describe, reading_at

MODEL_CLASSES = ("Sequential", "Functional", "Model")
BROKEN = object()
DAMAGED = "the file is damaged; save the model again with Keras"
# JSON beyond this is no model config; it also bounds what a zip member may inflate to.
LARGEST_CONFIG = 64 * 2 ** 20
# Models within models and lists within lists deeper than this are damage, and would exhaust the stack.
DEEPEST_NESTING = 32
# Deflate, the strongest filter Keras-era HDF5 files use, shrinks data at most about 1:1032; a dataset
# claiming more than that decodes from fill values, not from data.
LARGEST_RATIO = 1100
# What h5py raises on a damaged file: a broken heap or B-tree surfaces as any of these.
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# HDF5's type classes (H5T_class_t) that never hold Keras text, for messages
H5_CLASSES = {2: "times", 4: "bit fields", 5: "opaque data", 6: "records (a compound type)", 7: "references",
              8: "an enumeration", 9: "variable-length sequences", 10: "fixed-size arrays"}


def failure(error):
    """h5py's or zipfile's own words for a failure (``describe`` would call h5py's KeyError a missing entry)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{first} ({type(error).__name__})" if first else describe(error)


def damaged(path, where, problem, advice=DAMAGED):
    return ModelFileError(f"{path}: {where + ': ' if where else ''}{problem}; {advice}")


def kind_of(value):
    """How a JSON value is called in messages."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


def as_text(value):
    """An attribute or JSON value as text, or None where it is not text (or not UTF-8)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        return value if valid_text(value) else None
    return None


def valid_text(value):
    """False for strings that cannot be written out (lone surrogates from JSON escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_json(data, path, what):
    """JSON text (bytes or str) into Python values, every failure one message naming ``what``."""
    if len(data) > LARGEST_CONFIG:
        raise damaged(path, what, f"{human_bytes(len(data))} of JSON is more than a model config "
                                  f"(at most {human_bytes(LARGEST_CONFIG)})")
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as error:
            located = undecodable_layer(bytes(data))
            raise damaged(path, f"{what}: {located}" if located else what,
                          f"bytes that are not UTF-8 text (at byte {error.start})") from None
    try:
        return json.loads(data)
    except RecursionError:
        raise damaged(path, what, "JSON nested too deeply") from None
    except ValueError as error:
        raise damaged(path, what, f"not valid JSON ({error})") from None


def undecodable_layer(data):
    """Which layer of a JSON model config holds the bytes that are not UTF-8 (often its name), as
    ``layer 'NAME' (CLASS)``; None where that cannot be told."""
    try:
        config = json.loads(data.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None

    def search(spec, depth):
        cfg = spec.get("config") if isinstance(spec, dict) else None
        layers = cfg if isinstance(cfg, list) else cfg.get("layers") if isinstance(cfg, dict) else None
        for item in layers if isinstance(layers, list) and depth < DEEPEST_NESTING else ():
            if isinstance(item, dict) and not valid_text(json.dumps(item, ensure_ascii=False)):
                return search(item, depth + 1) or f"layer {layer_name(item)!r} ({shown_class(item)})"
        return None

    try:
        return search(config.get("config", config) if "class_name" not in config else config, 0)
    except (AttributeError, RecursionError, TypeError):
        return None


def shown_class(spec):
    """A layer's class name for a message: ``?`` where it is not printable text."""
    class_name = spec.get("class_name")
    return class_name if isinstance(class_name, str) and class_name and valid_text(class_name) else "?"


def endless_global_heap(data):
    """The offset of a global heap collection on which libhdf5 would loop forever, or None.

    libhdf5 (2.0 and earlier) walks the objects of a global heap collection — where variable-length
    strings such as ``model_config`` live — by each object's size, and never advances past a free-space
    object (index 0) of size 0: reading any string from such a collection hangs. A mutated heap
    address can point at any ``GCOL`` in the file, so every one is walked here the way libhdf5 walks it.
    """
    lengths = superblock_lengths(data)
    header, object_header = 8 + lengths, 8 + lengths
    at = data.find(b"GCOL")
    while at >= 0:
        if at + header <= len(data) and data[at + 4] == 1:
            size = int.from_bytes(data[at + 8:at + 8 + lengths], "little")
            end, place = at + size, at + header
            while place < end and place + object_header <= min(end, len(data)):
                index = struct.unpack_from("<H", data, place)[0]
                object_size = int.from_bytes(data[place + 8:place + 8 + lengths], "little")
                step = object_header + (object_size + 7) // 8 * 8 if index else object_size
                if step == 0:
                    return at
                place += step
        at = data.find(b"GCOL", at + 1)
    return None


def superblock_lengths(data):
    """The byte size of lengths in this HDF5 file (8 unless its superblock says otherwise)."""
    at = data.find(HDF5_SIGNATURE)
    if at < 0 or at + 16 > len(data):
        return 8
    field = at + (14 if data[at + 8] in (0, 1) else 10)
    return data[field] if data[field] in (2, 4, 8) else 8


class HDF5:
    """One HDF5 file's groups, attributes and datasets, read so that whatever h5py raises on a damaged
    file (a broken heap, a wrong type, a link to another file) becomes one message naming the part."""

    def __init__(self, path, size):
        self.path = path
        self.size = size
        self.loaded = 0  # bytes of weights read so far, against the memory budget

    def fail(self, where, problem, advice=DAMAGED):
        raise damaged(self.path, where, problem, advice)

    def member(self, group, key, where, kind):
        """``group[key]`` when it is a ``kind`` (h5py.Group or h5py.Dataset), None where it is absent."""
        import h5py

        try:
            link = group.get(key, getlink=True)
            if link is None:
                return None
            if isinstance(link, h5py.ExternalLink):
                self.fail(where, f"{key!r} links to another file ({link.filename!r})",
                          "lrptool reads a model from one file only")
            item = group[key]
        except H5_ERRORS as error:
            self.fail(where, f"cannot read {key!r} ({failure(error)})")
        if not isinstance(item, kind):
            found = "group" if isinstance(item, h5py.Group) else "dataset" if isinstance(item, h5py.Dataset) else "link"
            self.fail(where, f"{key!r} is a {found}, expected a {kind.__name__.lower()}")
        return item

    def keys(self, group, where):
        try:
            return [key for key in group.keys()]
        except H5_ERRORS as error:
            self.fail(where, f"cannot list the group's members ({failure(error)})")

    def attr(self, obj, name, where):
        """An attribute's value, or None where there is none. Keras writes text, lists of text and
        (for empty lists) numbers; any other HDF5 type is refused unread, since h5py's conversion of
        some damaged variable-length types crashes the process."""
        from h5py import h5t

        try:
            if name not in obj.attrs:
                return None
            attribute = obj.attrs.get_id(name)
            kind = attribute.get_type()
            if not isinstance(kind, (h5t.TypeStringID, h5t.TypeIntegerID, h5t.TypeFloatID)):
                self.fail(where, f"attribute {name!r} holds {H5_CLASSES.get(kind.get_class(), 'data')}, expected text")
            size = attribute.get_space().get_simple_extent_npoints() * kind.get_size()
            if size > LARGEST_CONFIG:
                self.fail(where, f"attribute {name!r} declares {human_bytes(size)}, more than any Keras attribute")
            return obj.attrs[name]
        except UnicodeError:
            self.fail(where, f"attribute {name!r} is not UTF-8 text")
        except H5_ERRORS as error:
            self.fail(where, f"cannot read attribute {name!r} ({failure(error)})")

    def text_attr(self, obj, name, where):
        value = self.attr(obj, name, where)
        if value is None:
            return None
        text = as_text(value)
        if text is None:
            self.fail(where, f"attribute {name!r} is {describe_value(value)}, expected UTF-8 text")
        return text

    def names_attr(self, obj, name, where):
        """A list-of-names attribute; Keras splits long ones into ``name0``, ``name1``, …"""
        values = self.attr(obj, name, where)
        parts = [values] if values is not None else []
        index = 0
        while values is None and (part := self.attr(obj, f"{name}{index}", where)) is not None:
            parts.append(part)
            index += 1
        names = []
        for part in parts:
            # Keras writes an empty list as an empty float array.
            if not isinstance(part, np.ndarray) or part.ndim != 1 or part.dtype.kind not in "SUO" and part.size:
                self.fail(where, f"attribute {name!r} is {describe_value(part)}, expected a list of names")
            for value in part:
                text = as_text(value)
                if text is None:
                    self.fail(where, f"attribute {name!r} holds {describe_value(value)}, expected UTF-8 names")
                names.append(text)
        return names

    def array(self, dataset, what):
        """A weight dataset as an array, after checking what it declares against the file and the
        memory budget; problems are ``BadLayer`` for the layer being converted to report."""
        try:
            dtype, shape = dataset.dtype, dataset.shape
            plist = dataset.id.get_create_plist()
            filters, external = plist.get_nfilters(), plist.get_external_count()
            virtual = dataset.is_virtual
            stored = dataset.id.get_storage_size()
        except H5_ERRORS as error:
            raise BadLayer(f"cannot read {what} ({failure(error)})") from None
        if external or virtual:
            raise BadLayer(f"{what} keeps its data in other files", "lrptool reads weights stored in the model file")
        if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
            raise BadLayer(f"{what} holds {describe_dtype(dtype)}, not floating-point numbers", WEIGHTS_ADVICE)
        if shape is None:
            raise BadLayer(f"{what} has no shape (an empty dataspace)")
        nbytes = math.prod(shape) * dtype.itemsize
        declared = f"{what} declares shape {list(shape)} ({human_bytes(nbytes)})"
        if not filters and nbytes > self.size:
            raise BadLayer(f"{declared}, more than the whole file ({human_bytes(self.size)})")
        if nbytes > (stored if not filters else LARGEST_RATIO * stored + 2 ** 20):
            raise BadLayer(f"{declared} but stores {human_bytes(stored)}")
        try:
            check_shape(shape, dtype.itemsize, what)
            self.loaded += nbytes
            check_bytes(self.loaded, "the weights read so far")
        except BudgetError as error:
            raise BadLayer(str(error), "unless the model is that large, the file is damaged") from None
        try:
            array = np.asarray(dataset[()])
        except H5_ERRORS as error:
            raise BadLayer(f"cannot read {what} ({failure(error)})") from None
        if not np.all(np.isfinite(array)):
            raise BadLayer(f"{what} holds NaN or infinite values", "the model cannot be explained; "
                           "check the training run that wrote it")
        return array


def describe_value(value):
    if isinstance(value, np.ndarray):
        return f"an array of {describe_dtype(value.dtype)} with shape {list(value.shape)}"
    if isinstance(value, (bytes, np.bytes_)):
        return f"{short(bytes(value))}, which is not UTF-8"
    if isinstance(value, str):
        return "text that cannot be written out"
    return f"{type(value).__name__} {short(value)}"


def describe_dtype(dtype):
    if dtype.names:
        return "records (a compound type)"
    if dtype.kind in "OSU":
        return "strings or objects"
    return str(dtype)


class StoredWeight:
    """One weight dataset, read and checked when a converter takes it (``np.asarray``): only the
    weights of converted layers are read, and each problem is reported for its layer."""

    def __init__(self, h5, dataset, name):
        self.h5 = h5
        self.dataset = dataset
        self.name = name
        self.value = None

    def __array__(self, dtype=None, copy=None):
        if self.value is None:
            self.value = self.h5.array(self.dataset, f"weight {self.name!r}")
        return self.value if dtype is None else self.value.astype(dtype)


class WeightStore:
    """Weight datasets by layer name, from legacy ``layer_names``/``weight_names`` groups or a Keras 3
    ``.weights.h5`` (``layers/<auto name>/vars/<i>`` with the layer name as an attribute).
    ``where(layer name)`` says how messages name a layer."""

    def __init__(self, h5, group, where):
        import h5py

        self.h5 = h5
        self.where = where
        self.arrays = {}
        self.names = {}
        self.children = {}
        layer_names = h5.names_attr(group, "layer_names", "the weights")
        if layer_names:
            for layer_name in layer_names:
                sub = h5.member(group, layer_name, where(layer_name), h5py.Group)
                if sub is None:
                    continue
                weight_names = h5.names_attr(sub, "weight_names", where(layer_name))
                datasets = [h5.member(sub, w, where(layer_name), h5py.Dataset) for w in weight_names]
                missing = [w for w, dataset in zip(weight_names, datasets) if dataset is None]
                if missing:
                    raise GraphError(f"{h5.path}: {where(layer_name)}: weights {missing} are listed but not stored; "
                                     f"{DAMAGED}")
                self.names[layer_name] = weight_names
                self.arrays[layer_name] = [StoredWeight(h5, d, w) for d, w in zip(datasets, weight_names)]
            return
        layers = h5.member(group, "layers", "the weights", h5py.Group)
        for key in h5.keys(layers, "the weights") if layers is not None else ():
            # Keras 3 names these groups after the layer class, so the layer name is read from ``vars``.
            sub = h5.member(layers, key, f"weights {key!r}", h5py.Group)
            variables = h5.member(sub, "vars", f"weights {key!r}", h5py.Group)
            if variables is None:
                continue
            layer_name = h5.text_attr(variables, "name", f"weights {key!r}") or ""
            count = len(h5.keys(variables, where(layer_name)))
            datasets = [h5.member(variables, str(i), where(layer_name), h5py.Dataset) for i in range(count)]
            if any(dataset is None for dataset in datasets):
                h5.fail(where(layer_name), f"weights {key!r} are not numbered 0 to {count - 1}")
            self.arrays[layer_name] = [StoredWeight(h5, d, f"{key}/vars/{i}") for i, d in enumerate(datasets)]
            self.names[layer_name] = [str(i) for i in range(count)]
            if h5.member(sub, "layers", where(layer_name), h5py.Group) is not None:
                self.children[layer_name] = sub

    def get(self, layer_name):
        return list(self.arrays.get(layer_name, []))

    def nested(self, model_name, inner_layers):
        """Split a nested model's flat weight list among its layers by the layer name in each path."""
        if model_name in self.children:
            return WeightStore(self.h5, self.children[model_name], self.where)
        arrays = self.arrays.get(model_name, [])
        names = self.names.get(model_name, [])
        store = WeightStore.__new__(WeightStore)
        store.h5, store.where = self.h5, self.where
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


def layer_inputs(inbound):
    """(layer, node index, tensor index) triples of one inbound node, Keras 2 or Keras 3 form;
    ``BadLayer`` where the node is not one of them."""
    if isinstance(inbound, dict):
        found = []

        def walk(value, depth):
            if depth > DEEPEST_NESTING:
                raise BadLayer("an inbound node nested too deeply")
            if isinstance(value, dict):
                if value.get("class_name") == "__keras_tensor__":
                    config = value.get("config")
                    history = config.get("keras_history") if isinstance(config, dict) else None
                    found.append(tensor_reference(history))
                else:
                    for item in value.values():
                        walk(item, depth + 1)
            elif isinstance(value, list):
                for item in value:
                    walk(item, depth + 1)

        walk(inbound.get("args", []), 0)
        return found
    if not isinstance(inbound, list):
        raise BadLayer(f"an inbound node is {kind_of(inbound)}, expected a list or an object")
    return [tensor_reference(entry, extra=True) for entry in inbound]


def tensor_reference(entry, extra=False):
    """``[layer name, node index, tensor index]`` (Keras 2 adds a kwargs object) as a checked triple."""
    if not isinstance(entry, list) or len(entry) not in ((3, 4) if extra else (3,)) \
            or not isinstance(entry[0], str) or not all(is_int(i) and i >= 0 for i in entry[1:3]) \
            or (len(entry) == 4 and not isinstance(entry[3], dict)):
        raise BadLayer(f"a tensor reference is {short(entry)}, expected [layer name, node index, tensor index]")
    return entry[0], entry[1], entry[2]


def endpoints(value):
    """``input_layers``/``output_layers``: Keras 3 writes a single endpoint unwrapped."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadLayer(f"is {short(value)}, expected a list of [layer name, node index, tensor index]")
    return [tensor_reference(v) for v in value]


def layer_name(spec):
    cfg = spec.get("config")
    return (cfg.get("name") if isinstance(cfg, dict) else None) or spec.get("name")


def input_shape_of(spec):
    cfg = spec.get("config", {})
    for key in ("batch_shape", "batch_input_shape"):
        if cfg.get(key):
            return tuple(cfg[key])
    if cfg.get("input_shape"):
        return (None,) + tuple(cfg["input_shape"])
    return None


def layer_specs(spec):
    cfg = spec.get("config", {})
    return cfg if isinstance(cfg, list) else cfg.get("layers", [])


def shape_problem(value, batch):
    """What is wrong with a declared shape (``batch``: it starts with the batch axis), or None."""
    if value is None:
        return None
    sizes = value[1:] if batch and isinstance(value, list) else value
    if not isinstance(value, list) or not sizes:
        return f"is {short(value)}, expected a list of sizes"
    if batch and value[0] is not None and not (is_int(value[0]) and value[0] >= 0):
        return f"has batch size {short(value[0])}"
    if not all(d is None or (is_int(d) and d > 0) for d in sizes):
        return f"{short(value)} holds a size that is not a positive int below {LARGEST_SIZE + 1} (or null)"
    return None


def check_model(path, spec, where="the model config", depth=0):
    """Refuse a model config whose structure the builder would trip over, naming the layer: the
    class names, the layer list, names, inbound nodes (Keras 2 lists and Keras 3 objects), endpoints
    and declared shapes. Layer settings are checked when each layer is converted."""
    if depth > DEEPEST_NESTING:
        raise damaged(path, where, f"models are nested more than {DEEPEST_NESTING} deep")
    if not isinstance(spec, dict):
        raise damaged(path, where, f"is {kind_of(spec)}, expected an object")
    class_name = spec.get("class_name")
    if class_name not in MODEL_CLASSES:
        raise ModelFileError(f"{path}: {where}: model class {short(class_name)} is not a Keras Sequential or "
                             "functional Model; lrptool reads those two")
    cfg = spec.get("config")
    sequential = class_name == "Sequential"
    if not (isinstance(cfg, dict) or sequential and isinstance(cfg, list)):
        raise damaged(path, where, f"the model's config is {kind_of(cfg)}, expected an object")
    layers = cfg if isinstance(cfg, list) else cfg.get("layers")
    if not isinstance(layers, list):
        raise damaged(path, where, f"the model's layers are {kind_of(layers)}, expected a list")
    names = set()
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise damaged(path, where, f"layer {index} is {kind_of(layer)}, expected an object")
        name, layer_class = layer_name(layer), layer.get("class_name")
        if not isinstance(name, str) or not name:
            raise damaged(path, where, f"layer {index} has the name {short(name)}, expected text")
        located = f"layer {name!r} ({shown_class(layer)})"
        if not valid_text(name):
            raise damaged(path, located, "the name is not UTF-8 text")
        if shown_class(layer) == "?":
            raise damaged(path, located, f"the class name is {short(layer_class)}, expected text")
        if name in names:
            raise damaged(path, located, "a second layer of this name")
        names.add(name)
        if layer_class in MODEL_CLASSES:
            check_model(path, layer, located, depth + 1)
        elif not isinstance(layer.get("config", {}), dict):
            raise damaged(path, located, f"the config is {kind_of(layer.get('config'))}, expected an object")
        cfg_of_layer = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        for key, batch in (("batch_shape", True), ("batch_input_shape", True), ("input_shape", False)):
            problem = shape_problem(cfg_of_layer.get(key), batch)
            if problem:
                raise damaged(path, located, f"{key} {problem}")
        if not sequential:
            inbound = layer.get("inbound_nodes") or []
            if not isinstance(inbound, list):
                raise damaged(path, located, f"inbound_nodes is {kind_of(inbound)}, expected a list")
            try:
                for node in inbound:
                    layer_inputs(node)
            except BadLayer as error:
                raise damaged(path, located, f"inbound_nodes: {error.problem}") from None
    if sequential:
        problem = shape_problem(cfg.get("build_input_shape") if isinstance(cfg, dict) else None, True)
        if problem:
            raise damaged(path, where, f"build_input_shape {problem}")
        return
    for key in ("input_layers", "output_layers"):
        try:
            for endpoint in endpoints(cfg.get(key)):
                if endpoint[0] not in names:
                    raise BadLayer(f"names {endpoint[0]!r}, which is not a layer of the model")
        except BadLayer as error:
            raise damaged(path, where, f"{key} {error.problem}") from None


def layer_classes(spec, classes=None, depth=0):
    """Layer name → class name over every model in the (checked) config, for naming layers in messages."""
    classes = {} if classes is None else classes
    for layer in layer_specs(spec):
        classes.setdefault(layer_name(layer), layer["class_name"])
        if layer["class_name"] in MODEL_CLASSES:
            layer_classes(layer, classes, depth + 1)
    return classes


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
        if any(d is None for d in shape[1:]):
            self.ctx.unsupported.append((name, "InputLayer", f"input shape {list(shape)} has free sizes "
                                         "besides the batch axis; fix them with --input-size"))
            return BROKEN
        try:
            check_shape(shape[1:], 4, f"one sample of input {name!r} {list(shape)}")
        except BudgetError as error:
            raise BudgetError(f"{self.path}: {error}") from None
        return self.ctx.add_input(name, shape, keras_order)

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


def archive_member(path, archive, name, largest):
    """One member of a .keras zip, refused before inflating where it declares more than ``largest``."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.file_size > largest:
        raise damaged(path, name, f"inflates to {human_bytes(info.file_size)}, more than lrptool reads "
                                  f"({human_bytes(largest)})")
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError,
            NotImplementedError) as error:
        raise damaged(path, name, f"cannot unpack it ({failure(error)})") from None
    except Exception as error:  # noqa: BLE001 - zlib.error and friends: a damaged member, whatever its kind
        raise damaged(path, name, f"cannot unpack it ({failure(error)})") from None


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


def regular_file(path, what):
    """Refuse what is not a file (a FIFO would block the read forever, a folder cannot be read)."""
    import stat

    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ModelFileError(f"{path}: {what} is not a regular file; give the file itself")


def check_global_heaps(path):
    with open(path, "rb") as stream:
        if os.fstat(stream.fileno()).st_size == 0:
            return
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            heap = endless_global_heap(data)
    if heap is not None:
        raise damaged(path, None, f"the global heap at byte {heap} is broken (an object of size 0)")


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
        outputs = ModelBuilder(ctx, path, input_shapes, input_size).build(config, weights)
    if ctx.unsupported:
        raise UnsupportedModelError(path, ctx.unsupported)
    outputs = [ctx.materialize(t) for t in outputs]
    try:
        return Graph(inputs=ctx.inputs, nodes=ctx.nodes, outputs=outputs, name=graph_name(config))
    except GraphError as error:
        raise GraphError(f"{path}: {error}; {DAMAGED}") from None
