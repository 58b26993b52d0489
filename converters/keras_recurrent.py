"""Keras recurrent layers: LSTM, GRU, SimpleRNN, their CuDNN forms and the Bidirectional wrapper.

They become the IR's LSTM, GRU and RNN nodes (ONNX semantics, batch-first), reading their input in
Keras' own (N, T, C) order. Keras keeps the LSTM gates in the order i, f, c, o; ONNX (and the IR)
in i, o, f, c, so the kernel, recurrent kernel and bias columns are regrouped once here. GRU gates
z, r, h are in the same order in both. The CuDNN layout (``CuDNNLSTM``/``CuDNNGRU``, or a bias of
2·gates·units values in one row) keeps separate input and recurrent biases and stores each gate's
kernel block transposed (``from_cudnn``); a GRU with
``reset_after`` (the TensorFlow 2 default, and CuDNNGRU) is ONNX's ``linear_before_reset = 1``.
"""

import numpy as np

from .keras_errors import WEIGHTS_ADVICE, BadLayer, Unsupported
from .keras_layers import layer

#: Keras class → (IR operator, gates)
CELLS = {"LSTM": ("LSTM", 4), "CuDNNLSTM": ("LSTM", 4), "GRU": ("GRU", 3), "CuDNNGRU": ("GRU", 3),
         "SimpleRNN": ("RNN", 1)}
#: Keras LSTM blocks i, f, c, o regrouped as ONNX's i, o, f, c
LSTM_ORDER = (0, 3, 1, 2)


def activation_name(value):
    if isinstance(value, dict):
        inner = value.get("config")
        value = inner if isinstance(inner, str) else (inner or {}).get("name") or value.get("class_name")
    return str(value or "linear").lower()


def regroup(array, units, order, axis=-1):
    blocks = [np.take(array, np.arange(k * units, (k + 1) * units), axis=axis) for k in order]
    return np.concatenate(blocks, axis=axis)


def from_cudnn(kernel, gates, recurrent=False):
    """A kernel saved in the CuDNN layout, per gate block, in the layout of Keras' LSTM/GRU: the
    recurrent blocks transposed, the input blocks transposed and refilled in column-major order (as
    TensorFlow converts them when it loads CuDNN weights into an LSTM or GRU)."""
    blocks = np.hsplit(kernel, gates)
    if recurrent:
        return np.hstack([block.T for block in blocks])
    return np.hstack([block.T.reshape(block.shape, order="F") for block in blocks])


def masking_layer(config):
    """The name of the first layer that makes a mask (Masking, Embedding with mask_zero), or None."""
    from .keras_schema import layer_name, layer_specs

    for spec in layer_specs(config):
        cfg = spec.get("config") or {}
        if spec.get("class_name") == "Masking" or (isinstance(cfg, dict) and cfg.get("mask_zero")):
            return layer_name(spec)
        if isinstance(cfg, dict) and cfg.get("layers"):
            inner = masking_layer(spec)
            if inner:
                return inner
    return None


def check_masking(ctx):
    """Keras skips masked steps in a recurrent layer (the state is carried over them); lrptool's
    recurrent operators do not, so such a model would compute something else: refused."""
    masked = getattr(ctx, "masking", None)
    if masked:
        raise Unsupported(f"a mask from layer {masked!r} (mask_zero or Masking): Keras skips masked steps here, "
                          "lrptool's recurrent layers do not; save the model without masking to read it")


def check_cell_settings(class_name, cfg):
    for key, why in (("stateful", "stateful layers keep state between calls"),
                     ("return_state", "the states as extra outputs"), ("time_major", "time-major inputs")):
        if cfg.get(key):
            raise Unsupported(f"{key} = true ({why})")
    if class_name.startswith("CuDNN"):
        return
    activation = activation_name(cfg.get("activation", "tanh"))
    allowed = ("tanh", "relu") if class_name == "SimpleRNN" else ("tanh",)
    if activation not in allowed:
        raise Unsupported(f"activation {activation!r} (lrptool reads {' or '.join(allowed)})")
    if class_name != "SimpleRNN":
        gate = activation_name(cfg.get("recurrent_activation", "sigmoid"))
        if gate != "sigmoid":
            raise Unsupported(f"recurrent_activation {gate!r} (lrptool's gates are sigmoids)")


def cell_parameters(class_name, cfg, arrays):
    """(op, attrs, weight (G·H, C), recurrence (G·H, H), bias (2·G·H,)) of one direction."""
    op, gates = CELLS[class_name]
    units = int(cfg.get("units", 0))
    use_bias = cfg.get("use_bias", True) or class_name.startswith("CuDNN")
    if len(arrays) != (3 if use_bias else 2):
        raise BadLayer(f"{len(arrays)} weight arrays are stored, {3 if use_bias else 2} expected", WEIGHTS_ADVICE)
    kernel, recurrent = (np.asarray(a) for a in arrays[:2])
    if kernel.ndim != 2 or kernel.shape[1] != gates * units or recurrent.shape != (units, gates * units):
        raise BadLayer(f"kernel {list(kernel.shape)} and recurrent kernel {list(recurrent.shape)} do not fit "
                       f"{units} units of {gates} gate(s)", WEIGHTS_ADVICE)
    bias = np.asarray(arrays[2]) if use_bias else np.zeros(gates * units, kernel.dtype)
    size = gates * units
    if class_name.startswith("CuDNN") or bias.shape == (2 * size,):
        kernel, recurrent = from_cudnn(kernel, gates), from_cudnn(recurrent, gates, recurrent=True)
    attrs = {}
    if bias.shape == (size,):
        input_bias, recurrent_bias = bias, np.zeros_like(bias)
        if op == "GRU" and class_name == "GRU" and cfg.get("reset_after", False):
            raise BadLayer("reset_after = true needs a bias of shape (2, 3·units)", WEIGHTS_ADVICE)
    elif bias.shape in ((2 * size,), (2, size)):
        input_bias, recurrent_bias = bias.reshape(2, size)
        if op == "RNN":
            raise BadLayer(f"the bias has shape {list(bias.shape)}, expected [{size}]", WEIGHTS_ADVICE)
    else:
        raise BadLayer(f"the bias has shape {list(bias.shape)}, expected [{size}] or [2, {size}]", WEIGHTS_ADVICE)
    if op == "GRU":
        separate = bias.shape != (size,)
        if class_name == "GRU" and bool(cfg.get("reset_after", False)) != separate:
            raise BadLayer(f"reset_after = {cfg.get('reset_after', False)} does not fit a bias of shape "
                           f"{list(bias.shape)}", WEIGHTS_ADVICE)
        attrs["linear_before_reset"] = int(separate)
    if op == "RNN":
        attrs["activation"] = activation_name(cfg.get("activation", "tanh")).capitalize()
    weight, recurrence = kernel.T, recurrent.T
    if op == "LSTM":
        weight, recurrence = regroup(weight, units, LSTM_ORDER, 0), regroup(recurrence, units, LSTM_ORDER, 0)
        input_bias, recurrent_bias = regroup(input_bias, units, LSTM_ORDER), regroup(recurrent_bias, units, LSTM_ORDER)
    return op, attrs, weight, recurrence, np.concatenate([input_bias, recurrent_bias])


def emit_recurrent(ctx, lname, x, op, attrs, directions, units, params):
    """The IR node; returns (Y (N, T, D, H), Y_h (N, D, H))."""
    outputs = [ctx.node_names.unique(f"{lname}/{key}") for key in ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]]
    attrs = dict(attrs, hidden_size=units, direction=directions)
    params = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    ctx.add_node(f"{lname}/{op.lower()}", op, [x], outputs, attrs, params)
    return outputs[0], outputs[1]


def sequence_output(ctx, lname, y, steps, width, reverse_time=False):
    """(N, T, D, H) → Keras' (N, T, D·H); ``reverse_time``: in the order a go_backwards layer made them."""
    y = ctx.emit(f"{lname}/sequence", "Reshape", [y], {"shape": (None, steps, width)})
    if reverse_time:
        y = ctx.emit(f"{lname}/backwards", "Slice", [y], {"starts": (steps - 1,), "ends": (-steps - 1,), "axes": (1,),
                                                           "steps": (-1,)})
    return y


@layer(*CELLS, keras_order=True)
def recurrent(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    class_name = ctx.class_name
    check_masking(ctx)
    check_cell_settings(class_name, cfg)
    shape = ctx.shape(x)
    if len(shape) != 3:
        raise Unsupported(f"an input of rank {len(shape)} (recurrent layers read (batch, time, features))")
    op, attrs, weight, recurrence, bias = cell_parameters(class_name, cfg, list(weights))
    units = recurrence.shape[1]
    backwards = bool(cfg.get("go_backwards", False))
    params = dict(weight=weight[None], recurrence=recurrence[None], bias=bias[None])
    y, y_h = emit_recurrent(ctx, lname, x, op, attrs, "reverse" if backwards else "forward", units, params)
    if cfg.get("return_sequences", False):
        return sequence_output(ctx, lname, y, shape[1], units, reverse_time=backwards)
    return ctx.emit(lname, "Reshape", [y_h], {"shape": (None, units)})


@layer("Bidirectional", keras_order=True)
def bidirectional(ctx, lname, cfg, inputs, weights):
    (x,) = inputs
    check_masking(ctx)
    inner = cfg.get("layer") or {}
    class_name, inner_cfg = inner.get("class_name"), inner.get("config") or {}
    if class_name not in CELLS:
        raise Unsupported(f"a Bidirectional wrapper around {class_name!r}")
    backward = cfg.get("backward_layer")
    if backward and (backward.get("class_name") != class_name
                     or (backward.get("config") or {}).get("units") != inner_cfg.get("units")):
        raise Unsupported("a backward layer unlike the forward one")
    if inner_cfg.get("go_backwards"):
        raise Unsupported("a forward layer with go_backwards = true")
    merge = cfg.get("merge_mode", "concat")
    if merge not in ("concat", "sum", "ave", "mul"):
        raise Unsupported(f"merge_mode {merge!r} (two separate outputs)")
    check_cell_settings(class_name, inner_cfg)
    shape = ctx.shape(x)
    if len(shape) != 3:
        raise Unsupported(f"an input of rank {len(shape)} (recurrent layers read (batch, time, features))")
    arrays = list(weights)
    half = len(arrays) // 2
    if len(arrays) % 2:
        raise BadLayer(f"{len(arrays)} weight arrays are stored, an even number expected", WEIGHTS_ADVICE)
    parts = [cell_parameters(class_name, inner_cfg, arrays[:half]),
             cell_parameters(class_name, inner_cfg, arrays[half:])]
    op, attrs = parts[0][0], parts[0][1]
    if parts[1][1] != attrs:
        raise BadLayer("the forward and backward layers' weights differ in form", WEIGHTS_ADVICE)
    params = {key: np.stack([p[index] for p in parts]) for index, key in ((2, "weight"), (3, "recurrence"),
                                                                          (4, "bias"))}
    units = parts[0][3].shape[1]
    y, y_h = emit_recurrent(ctx, lname, x, op, attrs, "bidirectional", units, params)
    sequences = inner_cfg.get("return_sequences", False)
    source, axis = (y, 2) if sequences else (y_h, 1)
    if merge == "concat":
        if sequences:
            return sequence_output(ctx, lname, y, shape[1], 2 * units)
        return ctx.emit(lname, "Reshape", [y_h], {"shape": (None, 2 * units)})
    if merge == "ave":
        merged = ctx.emit(f"{lname}/{merge}", "ReduceMean", [source], {"axes": (axis,), "keepdims": False})
    else:
        first = ctx.emit(f"{lname}/forward", "Slice", [source], {"starts": (0,), "ends": (1,), "axes": (axis,),
                                                                  "steps": (1,)})
        second = ctx.emit(f"{lname}/backward", "Slice", [source], {"starts": (1,), "ends": (2,), "axes": (axis,),
                                                                    "steps": (1,)})
        both = ctx.emit(f"{lname}/{merge}", "Add" if merge == "sum" else "Mul", [first, second])
        merged = both
    target = (None, shape[1], units) if sequences else (None, units)
    return ctx.emit(lname, "Reshape", [merged], {"shape": target})
