"""Custom layers: a plug-in point for Keras layer classes lrptool does not know.

A plug-in is a Python module. It registers a converter for a named Keras layer class and, when the
layer has no form in lrptool's operators, the operator itself: its forward pass, how relevance and
the gradient cross it, and its ONNX form. ``attention_weighted_average`` beside this file is a
complete example. Plug-ins are loaded

* by the CLI option ``--custom-layers FILE.py`` (or a module name), on every command that reads a
  model, or ``load_custom_layers(path)`` in Python;
* automatically from the entry point group ``lrptool.plugins`` of installed packages (each entry
  names a module; importing it registers what it holds).

The registration helpers::

    @keras_layer("MyLayer", keras_order=True)      # converter(ctx, name, config, inputs, weights) -> tensor
    @operator                                       # an ops.base.Operator subclass (forward, shapes)
    reverse("MyOp", relevance, gradient, describe)  # relevance/gradient(walk, node, inputs, outputs, incoming)
    @exporter("MyOp")                               # ONNX writer: function(builder, node)

A name registered twice (by lrptool or another plug-in) is refused with one line.
"""

import importlib
import importlib.util
import os
import sys

from ..errors import LrpToolError

ENTRY_POINT_GROUP = "lrptool.plugins"
_loaded = {}
_entry_points_loaded = False


def keras_layer(*class_names, keras_order=False):
    """Register the decorated function as the converter of Keras layer classes ``class_names``.
    ``keras_order``: the layer reads its (rank ≥ 3) inputs as Keras holds them, channels last."""
    from converters.keras_layers import LAYERS

    def decorate(function):
        for name in class_names:
            if name in LAYERS:
                raise LrpToolError(f"Keras layer class {name!r} already has a converter; a plug-in cannot replace it")
        return LAYERS.register(*class_names, keras_order=keras_order)(function)
    return decorate


def operator(cls):
    """Register an IR operator class (see ``lrptool.ops.base.Operator``) under its class name."""
    from ..ops.base import OPERATORS, register

    if cls.__name__ in OPERATORS:
        raise LrpToolError(f"operator {cls.__name__!r} already exists; a plug-in cannot replace it")
    return register(cls)


def reverse(op, relevance, gradient, describe, reads=("inputs",)):
    """How relevance (and the gradient) cross operator ``op``: functions (walk, node, inputs, outputs,
    incoming) → one array (or None) per input. Eager only unless they are written in ``walk.ops``."""
    from ..lrp.reverse import REVERSE, Reverse

    if op in REVERSE:
        raise LrpToolError(f"operator {op!r} already has its relevance routing; a plug-in cannot replace it")
    REVERSE[op] = Reverse("custom", describe, relevance, gradient, tuple(reads))


def exporter(op):
    """Register the decorated function (builder, node) as operator ``op``'s ONNX form."""
    from converters.onnx_writer import EXPORTERS

    def decorate(function):
        if op in EXPORTERS:
            raise LrpToolError(f"operator {op!r} already has an ONNX form; a plug-in cannot replace it")
        EXPORTERS[op] = function
        return function
    return decorate


def load_custom_layers(source):
    """Import the plug-in ``source``: a ``.py`` file or a module name. Loading one twice does nothing."""
    source = str(source)
    key = os.path.abspath(source) if source.endswith(".py") else source
    if key in _loaded:
        return _loaded[key]
    try:
        if source.endswith(".py"):
            if not os.path.isfile(source):
                raise LrpToolError(f"{source}: no such plug-in file")
            name = "lrptool_plugin_" + "".join(c if c.isalnum() else "_" for c in os.path.splitext(key)[0])
            spec = importlib.util.spec_from_file_location(name, source)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
    except LrpToolError as error:
        raise LrpToolError(f"{source}: {error}" if not str(error).startswith(source) else str(error)) from None
    except ModuleNotFoundError as error:
        raise LrpToolError(f"{source}: cannot load the custom layers: no module named {error.name!r} "
                           "(give a .py file or an importable module)") from None
    except Exception as error:  # noqa: BLE001 - a broken plug-in is the user's file, named in one line
        first = (str(error).strip().splitlines() or [""])[0]
        raise LrpToolError(f"{source}: cannot load the custom layers: {type(error).__name__}: {first}") from None
    _loaded[key] = module
    return module


def load_entry_points():
    """Import every installed plug-in named in the ``lrptool.plugins`` entry point group, once."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        load_custom_layers(entry.value.split(":")[0])
