"""The model config JSON of a Keras file: parsed, and its structure checked before the model
builder walks it — model classes, layer lists and names, inbound nodes (Keras 2 lists and Keras 3
objects), input and output endpoints, declared shapes — with the helpers that read those parts.
Each layer's own settings are checked when it is converted (``keras_settings``)."""

import json

from lrptool.errors import ModelFileError
from lrptool.limits import human_bytes

from .keras_errors import BadLayer, damaged, kind_of, short
from .keras_settings import LARGEST_SIZE, is_int

MODEL_CLASSES = ("Sequential", "Functional", "Model")
# JSON beyond this is no model config; it also bounds what a zip member may inflate to.
LARGEST_CONFIG = 64 * 2 ** 20
# Models within models and lists within lists deeper than this are damage, and would exhaust the stack.
DEEPEST_NESTING = 32


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
