"""Recurrent layers: LSTM, GRU and the simple RNN, with ONNX's semantics in the batch-first layout.

The IR holds them as ONNX defines them with ``layout = 1``: the input X is (N, T, C), the output
Y is (N, T, D, H) and the last states Y_h, Y_c are (N, D, H), where D is 2 for a bidirectional
layer (forward first, reverse second) and 1 otherwise. Parameters keep ONNX's gate order and
shapes: ``weight`` (D, G·H, C), ``recurrence`` (D, G·H, H), ``bias`` (D, 2·G·H: the input
biases, then the recurrence biases), for the LSTM an optional ``peephole`` (D, 3·H: i, o, f), with
G = 4 gates i, o, f, c for the LSTM, 3 gates z, r, h for the GRU and 1 for the RNN.

Optional tensor inputs follow X in the order named by ``optional_inputs``: ``lengths`` (N,), the
valid length of each sequence (given as numbers; steps past it leave the state alone and write
zeros to Y), ``initial_h`` (N, D, H) and, for the LSTM, ``initial_c`` (N, D, H).

``trace`` runs one direction step by step and keeps every gate, state and pre-activation, for the
relevance pass (``lrptool.lrp.recurrent``); ``run`` is the forward pass built on it.
"""

from dataclasses import dataclass

import numpy as np

from .base import REQUIRED, Operator, batch_fail, fail, register

DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def schedule(lengths, steps, reverse):
    """Per step s: the time index each sample reads (N,) and whether the sample is still running (N,)."""
    for s in range(steps):
        active = s < lengths
        if reverse:
            index = np.where(active, lengths - 1 - s, 0)
        else:
            index = np.full(lengths.shape, s)
        yield index, active


@dataclass
class Step:
    """One time step of one direction, for every sample: what the relevance pass reads."""
    index: np.ndarray      # (N,) the time index read and written
    active: np.ndarray     # (N,) False once the sample's sequence has ended
    x: np.ndarray          # (N, C) the input at that step
    h_prev: np.ndarray     # (N, H)
    h: np.ndarray          # (N, H)
    gates: dict            # name -> (N, H) gate activations (i, o, f; z, r)
    pre: dict              # name -> (N, H) pre-activations before clipping: the signal's (LSTM g, GRU n,
                           # RNN h) and the gates'
    c_prev: np.ndarray = None
    c: np.ndarray = None
    extra: dict = None     # GRU: "hidden" = R_h h_prev + Rb_h (linear_before_reset), or r ⊙ h_prev


class Recurrent(Operator):
    gate_count = 1
    state_names = ("initial_h",)
    attributes = {"hidden_size": REQUIRED, "direction": "forward", "clip": float("inf"), "optional_inputs": ()}
    params = ("weight", "recurrence", "bias")
    optional_params = ("bias",)
    num_inputs = None

    def num_outputs(self, node):
        return 1 + len(self.state_names)

    def directions(self, node):
        return DIRECTIONS[node.attrs["direction"]]

    def infer(self, node, shapes):
        a = node.attrs
        if a["direction"] not in DIRECTIONS:
            fail(node, f"direction {a['direction']!r}: forward, reverse or bidirectional")
        allowed = ("lengths",) + self.state_names
        extra = tuple(a["optional_inputs"])
        if len(set(extra)) != len(extra) or not set(extra) <= set(allowed) or len(shapes) != 1 + len(extra):
            fail(node, f"optional inputs {list(extra)} (each at most once, of {list(allowed)}) do not match "
                       f"its {len(shapes) - 1} extra input(s)")
        x = shapes[0]
        if len(x) != 3:
            fail(node, f"input of shape {x} is not (batch, time, features)")
        d, hidden, gates = self.directions(node), int(a["hidden_size"]), self.gate_count
        expected = {"weight": (d, gates * hidden, x[2]), "recurrence": (d, gates * hidden, hidden),
                    "bias": (d, 2 * gates * hidden), "peephole": (d, 3 * hidden)}
        for key, value in node.params.items():
            if value.shape != expected[key]:
                fail(node, f"parameter {key} has shape {value.shape}, expected {expected[key]}")
        for name, shape in zip(extra, shapes[1:]):
            want = (x[0],) if name == "lengths" else (x[0], d, hidden)
            if len(shape) == len(want) and x[0] is None and shape[0] not in (None, 1) and shape[1:] == want[1:]:
                batch_fail(node, f"{name} of shape {shape} fixes the batch size")
            if tuple(shape[1:]) != want[1:] or shape[0] not in (x[0], 1):
                fail(node, f"{name} has shape {shape}, expected {want}")
        state = (x[0], d, hidden)
        return [(x[0], x[1], d, hidden)] + [state] * len(self.state_names)

    def inputs_of(self, node, inputs):
        """(x, lengths as int64, {state name: array (N, D, H)}) with defaults for what is absent."""
        x = inputs[0]
        given = dict(zip(node.attrs["optional_inputs"], inputs[1:]))
        n, t = x.shape[:2]
        lengths = given.get("lengths")
        lengths = np.full(n, t, dtype=np.int64) if lengths is None else np.broadcast_to(
            np.asarray(lengths).astype(np.int64), (n,))
        if np.any(lengths < 0) or np.any(lengths > t):
            fail(node, f"sequence lengths {lengths.tolist()} outside 0…{t}")
        shape = (n, self.directions(node), int(node.attrs["hidden_size"]))
        states = {k: np.broadcast_to(given[k], shape) if k in given else np.zeros(shape, dtype=x.dtype)
                  for k in self.state_names}
        return x, lengths, states

    def direction_params(self, node, params, d, dtype):
        hidden, gates = int(node.attrs["hidden_size"]), self.gate_count
        bias = params.get("bias")
        bias = np.zeros(2 * gates * hidden, dtype) if bias is None else bias[d].astype(dtype)
        weights = dict(W=params["weight"][d].astype(dtype), R=params["recurrence"][d].astype(dtype),
                       Wb=bias[:gates * hidden], Rb=bias[gates * hidden:])
        if "peephole" in params:
            weights["P"] = params["peephole"][d].astype(dtype)
        return weights

    def trace(self, node, x, lengths, states, params, d, dtype):
        """The steps of direction ``d`` (0 forward or as the node says, 1 the reverse half of a
        bidirectional layer), in the order they were computed."""
        reverse = node.attrs["direction"] == "reverse" or d == 1
        p = self.direction_params(node, params, d, dtype)
        x = x.astype(dtype)
        state = {k: v[:, d].astype(dtype) for k, v in states.items()}
        rows = np.arange(x.shape[0])
        steps = []
        for index, active in schedule(lengths, x.shape[1], reverse):
            step = self.step(node, x[rows, index], state, p)
            step.index, step.active = index, active
            keep = active[:, None]
            state = {"initial_h": np.where(keep, step.h, state["initial_h"])}
            if step.c is not None:
                state["initial_c"] = np.where(keep, step.c, step.c_prev)
            steps.append(step)
        return steps, state

    def clip(self, node, z):
        bound = node.attrs["clip"]
        return z if not np.isfinite(bound) else np.clip(z, -bound, bound)

    def run(self, node, inputs, params):
        x, lengths, states = self.inputs_of(node, inputs)
        n, t = x.shape[:2]
        d_count, hidden = self.directions(node), int(node.attrs["hidden_size"])
        y = np.zeros((n, t, d_count, hidden), dtype=x.dtype)
        last = {k: np.zeros((n, d_count, hidden), dtype=x.dtype) for k in self.state_names}
        rows = np.arange(n)
        for d in range(d_count):
            steps, final = self.trace(node, x, lengths, states, params, d, x.dtype)
            for step in steps:
                y[rows, step.index, d] = np.where(step.active[:, None], step.h, y[rows, step.index, d])
            for k in self.state_names:
                last[k][:, d] = final[k]
        return [y] + [last[k] for k in self.state_names]


@register
class LSTM(Recurrent):
    """ONNX LSTM (gate order i, o, f, c; sigmoid gates, tanh cell and output activations)."""

    gate_count = 4
    state_names = ("initial_h", "initial_c")
    params = ("weight", "recurrence", "bias", "peephole")
    optional_params = ("bias", "peephole")

    def step(self, node, x, state, p):
        h_prev, c_prev = state["initial_h"], state["initial_c"]
        hidden = h_prev.shape[1]
        z = x @ p["W"].T + h_prev @ p["R"].T + p["Wb"] + p["Rb"]
        zi, zo, zf, zc = (z[:, k * hidden:(k + 1) * hidden] for k in range(4))
        if "P" in p:
            zi = zi + p["P"][:hidden] * c_prev
            zf = zf + p["P"][2 * hidden:] * c_prev
        i, f = sigmoid(self.clip(node, zi)), sigmoid(self.clip(node, zf))
        g = np.tanh(self.clip(node, zc))
        c = f * c_prev + i * g
        if "P" in p:
            zo = zo + p["P"][hidden:2 * hidden] * c
        o = sigmoid(self.clip(node, zo))
        h = o * np.tanh(c)
        return Step(None, None, x, h_prev, h, {"i": i, "o": o, "f": f}, {"g": zc, "i": zi, "o": zo, "f": zf},
                    c_prev, c)


@register
class GRU(Recurrent):
    """ONNX GRU (gate order z, r, h; h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}); ``linear_before_reset`` 1
    applies the reset gate after the recurrence product: n = tanh(W_h x + r ⊙ (R_h h + Rb_h) + Wb_h)."""

    gate_count = 3
    attributes = dict(Recurrent.attributes, linear_before_reset=0)

    def step(self, node, x, state, p):
        h_prev = state["initial_h"]
        hidden = h_prev.shape[1]
        wx = x @ p["W"].T + p["Wb"]
        rz = slice(0, 2 * hidden)
        zr = wx[:, rz] + h_prev @ p["R"][rz].T + p["Rb"][rz]
        pre_z, pre_r = zr[:, :hidden], zr[:, hidden:]
        z, r = sigmoid(self.clip(node, zr[:, :hidden])), sigmoid(self.clip(node, zr[:, hidden:]))
        wn, rn, rbn = wx[:, 2 * hidden:], p["R"][2 * hidden:], p["Rb"][2 * hidden:]
        if node.attrs["linear_before_reset"]:
            hidden_term = h_prev @ rn.T + rbn
            pre = wn + r * hidden_term
        else:
            hidden_term = r * h_prev
            pre = wn + hidden_term @ rn.T + rbn
        n = np.tanh(self.clip(node, pre))
        h = (1 - z) * n + z * h_prev
        return Step(None, None, x, h_prev, h, {"z": z, "r": r}, {"n": pre, "z": pre_z, "r": pre_r},
                    extra={"hidden": hidden_term})


@register
class RNN(Recurrent):
    """ONNX RNN with one activation (Tanh, the default, or Relu): h_t = act(W x + R h_{t−1} + Wb + Rb)."""

    attributes = dict(Recurrent.attributes, activation="Tanh")

    def infer(self, node, shapes):
        if node.attrs["activation"] not in ("Tanh", "Relu"):
            fail(node, f"activation {node.attrs['activation']!r}: Tanh or Relu")
        return super().infer(node, shapes)

    def step(self, node, x, state, p):
        h_prev = state["initial_h"]
        pre = x @ p["W"].T + h_prev @ p["R"].T + p["Wb"] + p["Rb"]
        clipped = self.clip(node, pre)
        h = np.tanh(clipped) if node.attrs["activation"] == "Tanh" else np.maximum(clipped, 0)
        return Step(None, None, x, h_prev, h, {}, {"h": pre})
