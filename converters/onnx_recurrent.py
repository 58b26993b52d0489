"""Converters for ONNX's recurrent operators: LSTM, GRU and RNN.

The IR keeps them batch-first (ONNX ``layout = 1``). A time-major node (``layout = 0``, what
PyTorch exports) gets transposes around it; they move the batch axis, so such a model is read
with the batch size it declares.
"""

import numpy as np

from .onnx_ops import Unsupported, converter

#: ONNX's default activations per operator (for one direction).
DEFAULT_ACTIVATIONS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh"), "RNN": ("tanh",)}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def activations_of(ctx, node, a, directions):
    """The IR activation for the RNN (Tanh or Relu); other activations than ONNX's defaults are refused."""
    given = a.get("activations")
    if given is None:
        return "Tanh"
    names = tuple(str(v.decode() if isinstance(v, bytes) else v).lower() for v in given)
    default = DEFAULT_ACTIVATIONS[node.op_type]
    if len(names) != len(default) * directions:
        raise ctx.invalid(f"activations {list(names)} should name {len(default) * directions} functions")
    if node.op_type == "RNN" and len(set(names)) == 1 and names[0] in ("tanh", "relu"):
        return names[0].capitalize()
    if names != default * directions:
        raise Unsupported(f"activations {list(names)} (lrptool reads the default {list(default)})")
    return "Tanh"


@converter("LSTM", "GRU", "RNN")
def convert_recurrent(ctx, node, a):
    op = node.op_type
    direction = a.get("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.invalid(f"direction {direction!r} is not forward, reverse or bidirectional")
    directions = 2 if direction == "bidirectional" else 1
    if int(a.get("input_forget", 0)):
        raise Unsupported("input_forget = 1 (coupled input and forget gates)")
    layout = int(a.get("layout", 0))
    if layout not in (0, 1):
        raise ctx.invalid(f"layout {layout} is not 0 or 1")
    weight = np.asarray(ctx.require_const(node, 1, "W"))
    recurrence = np.asarray(ctx.require_const(node, 2, "R"))
    bias = ctx.optional_const(node, 3, "B")
    hidden = int(a.get("hidden_size", recurrence.shape[-1] if recurrence.ndim == 3 else 0))
    gates = GATES[op]
    if weight.ndim != 3 or recurrence.shape != (directions, gates * hidden, hidden):
        raise ctx.invalid(f"W {weight.shape} and R {recurrence.shape} do not fit {directions} direction(s) of "
                          f"{gates} gate(s) with hidden size {hidden}")
    attrs = dict(hidden_size=hidden, direction=direction)
    if "clip" in a:
        attrs["clip"] = float(a["clip"])
    if op == "GRU":
        attrs["linear_before_reset"] = int(a.get("linear_before_reset", 0))
    activation = activations_of(ctx, node, a, directions)
    if op == "RNN":
        attrs["activation"] = activation
    params = dict(weight=weight, recurrence=recurrence, bias=None if bias is None else np.asarray(bias))
    if op == "LSTM":
        peephole = ctx.optional_const(node, 7, "P")
        params["peephole"] = None if peephole is None else np.asarray(peephole)

    def batch_first(name, perm, suffix):
        if layout == 1:
            return ctx.tensor(name)
        moved = ctx.temp(suffix)
        ctx.add("Transpose", [name], moved, dict(perm=perm), suffix=suffix)
        return moved

    inputs = [batch_first(node.input[0], (1, 0, 2), "batch_first")]
    optional = []
    states = ("initial_h", "initial_c") if op == "LSTM" else ("initial_h",)
    for index, name in ((4, "lengths"), (5, "initial_h"), (6, "initial_c")):
        if name not in ("lengths",) + states or len(node.input) <= index or not node.input[index]:
            continue
        optional.append(name)
        inputs.append(ctx.tensor(node.input[index]) if name == "lengths"
                      else batch_first(node.input[index], (1, 0, 2), f"{name}_batch_first"))
    attrs["optional_inputs"] = tuple(optional)
    names = list(node.output) + [""] * (1 + len(states) - len(node.output))
    outputs = [ctx.temp(f"output{k}") if layout == 0 or not name else name for k, name in enumerate(names)]
    ctx.add_node(ctx.current_name, op, inputs, outputs, attrs, params)
    if layout == 0:
        for k, name in enumerate(names):
            if name:
                ctx.add("Transpose", [outputs[k]], name, dict(perm=(1, 2, 0, 3) if k == 0 else (1, 0, 2)),
                        suffix=f"time_major{k}")
