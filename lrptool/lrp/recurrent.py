"""Relevance and gradients through the recurrent layers (LSTM, GRU, RNN), step by step back in time.

The relevance follows Arras et al. 2017 ("Explaining Recurrent Neural Network Predictions in
Sentiment Analysis"), signal-take-all:

* gates (LSTM i, f, o; GRU z, r) receive no relevance — a product gate ⊙ signal sends all of it to
  the signal, with the gate held at its value;
* h_t = o ⊙ tanh(c_t): relevance passes to c_t (tanh passes it, the gate o takes none);
* c_t = f ⊙ c_{t−1} + i ⊙ g (LSTM) and h_t = (1 − z) ⊙ n + z ⊙ h_{t−1} (GRU): the ε rule splits
  relevance between the two summands;
* g = tanh(W_g x_t + R_g h_{t−1} + b_g): tanh passes it; the ε rule splits the pre-activation over
  the input units and the previous hidden units (GRU: over x_t and r ⊙ h_{t−1}, whose relevance
  goes to h_{t−1}; with ``linear_before_reset`` the gate scales the recurrence weights).

The ε rule is R_k = z_k · R / (z + ε·sign(z)), sign(0) = +1, over the summands z_k of z. The bias
and the stabiliser absorb their share (``bias="absorb"``, the default), or that share is spread
equally over the summands (``bias="spread"``: the input and hidden units of a pre-activation, the
two summands of a state update), so that the input relevance sums exactly to the explained score.

The eager computation runs in float64 on the recorded inputs of the node; ``recurrent_emitted``
writes the same relevance pass as ONNX nodes for the compiled explainer.
"""

import numpy as np

from ..errors import LrpToolError

DTYPE = np.float64


def stabilised(z, epsilon):
    return z + np.where(z >= 0, epsilon, -epsilon)


def epsilon_split(terms, total, relevance, epsilon, spread, live=None):
    """The ε rule over ``terms`` (arrays summing, with a bias, to ``total``): one relevance per term.
    ``live``: which terms take a spread share (an absent initial state takes none)."""
    live = live or [True] * len(terms)
    denominator = stabilised(total, epsilon)
    ratio = relevance / denominator
    shares = [term * ratio for term in terms]
    if spread:
        leftover = (denominator - sum(terms)) * ratio / sum(live)
        shares = [share + leftover if alive else share for share, alive in zip(shares, live)]
    return shares


def linear_split(relevance, pre, parts, epsilon, spread, live=None):
    """The ε rule over a pre-activation ``pre`` = Σ_parts (x_i · W_ji) + bias, for each part
    (x (N, K), W (H, K), row scale (N, H) or None). Returns one (N, K) relevance per part; with
    ``spread`` the bias and stabiliser share goes equally to every unit of the ``live`` parts."""
    live = live or [True] * len(parts)
    denominator = stabilised(pre, epsilon)
    ratio = relevance / denominator
    shares = []
    contributions = 0.0
    for x, weight, scale in parts:
        scaled = ratio if scale is None else ratio * scale
        shares.append(x * (scaled @ weight))
        contributions = contributions + (x @ weight.T if scale is None else scale * (x @ weight.T))
    if spread:
        units = sum(x.shape[1] for (x, _, _), alive in zip(parts, live) if alive)
        leftover = np.sum((denominator - contributions) * ratio, axis=1, keepdims=True) / units
        shares = [share + leftover if alive else share for share, alive in zip(shares, live)]
    return shares


def lstm_step(step, p, r_h, r_c, epsilon, spread):
    hidden = r_h.shape[1]
    gates = step.gates
    r_c = r_c + r_h
    r_c_prev, r_g = epsilon_split([gates["f"] * step.c_prev, gates["i"] * np.tanh(clip_of(step, "g", p))],
                                  step.c, r_c, epsilon, spread, [step.cell_live, True])
    rows = slice(3 * hidden, 4 * hidden)
    r_x, r_h_prev = linear_split(r_g, step.pre["g"], [(step.x, p["W"][rows], None), (step.h_prev, p["R"][rows], None)],
                                 epsilon, spread, [True, step.hidden_live])
    return r_x, r_h_prev, r_c_prev


def gru_step(step, p, r_h, linear_before_reset, epsilon, spread):
    hidden = r_h.shape[1]
    z, r = step.gates["z"], step.gates["r"]
    n = np.tanh(clip_of(step, "n", p))
    r_n, r_direct = epsilon_split([(1 - z) * n, z * step.h_prev], step.h, r_h, epsilon, spread,
                                  [True, step.hidden_live])
    rows = slice(2 * hidden, 3 * hidden)
    wn, rn = p["W"][rows], p["R"][rows]
    if linear_before_reset:
        parts = [(step.x, wn, None), (step.h_prev, rn, r)]
    else:
        parts = [(step.x, wn, None), (r * step.h_prev, rn, None)]
    r_x, r_h_prev = linear_split(r_n, step.pre["n"], parts, epsilon, spread, [True, step.hidden_live])
    return r_x, r_h_prev + r_direct, None


def rnn_step(step, p, r_h, epsilon, spread):
    r_x, r_h_prev = linear_split(r_h, step.pre["h"], [(step.x, p["W"], None), (step.h_prev, p["R"], None)],
                                 epsilon, spread, [True, step.hidden_live])
    return r_x, r_h_prev, None


def clip_of(step, key, p):
    bound = p["clip"]
    return step.pre[key] if not np.isfinite(bound) else np.clip(step.pre[key], -bound, bound)


def walk_back(node, inputs, incoming, backward_step):
    """Shared bookkeeping of the relevance and gradient passes: every direction, step by step back in
    time, with the incoming (N, T, D, H) / (N, D, H) tensors spread over the steps that made them.
    ``backward_step(step, params, d_h, d_c) -> (d_x, d_h_prev, d_c_prev)``."""
    op = node.operator
    values = [np.asarray(v, dtype=DTYPE) for v in inputs]
    x, lengths, states = op.inputs_of(node, values)
    n, t = x.shape[:2]
    d_count, hidden = op.directions(node), int(node.attrs["hidden_size"])
    incoming = [np.zeros((n, t, d_count, hidden)) if r is None else np.asarray(r, dtype=DTYPE) for r in incoming]
    params = {k: v.astype(DTYPE) for k, v in node.params.items()}
    r_x = np.zeros_like(x)
    r_states = {k: np.zeros((n, d_count, hidden)) for k in op.state_names}
    rows = np.arange(n)
    for d in range(d_count):
        steps, _ = op.trace(node, x, lengths, states, params, d, DTYPE)
        given = set(node.attrs["optional_inputs"])
        for index, step in enumerate(steps):
            # the first step's previous state is a zero constant unless given: it takes no spread share
            step.hidden_live = index > 0 or "initial_h" in given
            step.cell_live = index > 0 or "initial_c" in given
        p = op.direction_params(node, params, d, DTYPE)
        p["clip"] = node.attrs["clip"]
        r_h = incoming[1][:, d].copy()
        r_c = incoming[2][:, d].copy() if "initial_c" in op.state_names else None
        for step in reversed(steps):
            active = step.active[:, None]
            r_here = r_h + np.where(active, incoming[0][rows, step.index, d], 0.0)
            step_x, h_prev, c_prev = backward_step(step, p, r_here, r_c)
            r_h = np.where(active, h_prev, r_h)
            if r_c is not None:
                r_c = np.where(active, c_prev, r_c)
            r_x[rows, step.index] += np.where(active, step_x, 0.0)
        r_states["initial_h"][:, d] = r_h
        if r_c is not None:
            r_states["initial_c"][:, d] = r_c
    result = [r_x]
    for name, value in zip(node.attrs["optional_inputs"], inputs[1:]):
        if name == "lengths":
            result.append(None)
        else:
            state = r_states[name]
            result.append(state.sum(axis=0, keepdims=True) if value.shape[0] == 1 and n != 1 else state)
    return result


def eager_only(walk, node):
    if not walk.ops.eager:
        raise LrpToolError(f"node {node.name!r} ({node.op}): the gradient through a recurrent layer has no compiled "
                           "form; the eager walk computes it")


def recurrent_relevance(walk, node, inputs, outputs, incoming):
    if not walk.ops.eager:
        from .recurrent_emitted import emitted_relevance

        return emitted_relevance(walk, node, inputs, incoming)
    epsilon = walk.recurrent_epsilon
    spread = walk.recurrent_bias == "spread"
    if node.op == "LSTM":
        def step(s, p, r_h, r_c):
            return lstm_step(s, p, r_h, r_c, epsilon, spread)
    elif node.op == "GRU":
        def step(s, p, r_h, r_c):
            return gru_step(s, p, r_h, node.attrs["linear_before_reset"], epsilon, spread)
    else:
        def step(s, p, r_h, r_c):
            return rnn_step(s, p, r_h, epsilon, spread)
    return [None if r is None else walk.ops.cast(r) for r in walk_back(node, inputs, incoming, step)]


# -- gradients ---------------------------------------------------------------------------------

def inside(step, key, p):
    """1 where the pre-activation was not clipped (its derivative passes), else 0."""
    bound = p["clip"]
    return 1.0 if not np.isfinite(bound) else (np.abs(step.pre[key]) <= bound).astype(DTYPE)


def lstm_gradient_step(step, p, d_h, d_c):
    hidden = d_h.shape[1]
    i, f, o = step.gates["i"], step.gates["f"], step.gates["o"]
    g = np.tanh(clip_of(step, "g", p))
    tanh_c = np.tanh(step.c)
    d_zo = d_h * tanh_c * o * (1 - o) * inside(step, "o", p)
    d_c = d_c + d_h * o * (1 - tanh_c ** 2)
    if "P" in p:
        d_c = d_c + d_zo * p["P"][hidden:2 * hidden]
    d_zi = d_c * g * i * (1 - i) * inside(step, "i", p)
    d_zf = d_c * step.c_prev * f * (1 - f) * inside(step, "f", p)
    d_zg = d_c * i * (1 - g ** 2) * inside(step, "g", p)
    d_c_prev = d_c * f
    if "P" in p:
        d_c_prev = d_c_prev + d_zi * p["P"][:hidden] + d_zf * p["P"][2 * hidden:]
    d_z = np.concatenate([d_zi, d_zo, d_zf, d_zg], axis=1)
    return d_z @ p["W"], d_z @ p["R"], d_c_prev


def gru_gradient_step(step, p, d_h, linear_before_reset):
    hidden = d_h.shape[1]
    z, r = step.gates["z"], step.gates["r"]
    n = np.tanh(clip_of(step, "n", p))
    d_pre = d_h * (1 - z) * (1 - n ** 2) * inside(step, "n", p)
    d_z = d_h * (step.h_prev - n) * z * (1 - z) * inside(step, "z", p)
    d_h_prev = d_h * z
    rows = slice(2 * hidden, 3 * hidden)
    d_x = d_pre @ p["W"][rows]
    if linear_before_reset:
        d_r = d_pre * step.extra["hidden"]
        d_h_prev = d_h_prev + (d_pre * r) @ p["R"][rows]
    else:
        back = d_pre @ p["R"][rows]
        d_r = back * step.h_prev
        d_h_prev = d_h_prev + back * r
    d_zr = np.concatenate([d_z, d_r * r * (1 - r) * inside(step, "r", p)], axis=1)
    gates = slice(0, 2 * hidden)
    return d_x + d_zr @ p["W"][gates], d_h_prev + d_zr @ p["R"][gates], None


def rnn_gradient_step(step, p, d_h, activation):
    if activation == "Tanh":
        d_pre = d_h * (1 - step.h ** 2) * inside(step, "h", p)
    else:
        d_pre = d_h * (step.pre["h"] > 0) * inside(step, "h", p)
    return d_pre @ p["W"], d_pre @ p["R"], None


def recurrent_gradient(walk, node, inputs, outputs, incoming):
    eager_only(walk, node)
    if node.op == "LSTM":
        step = lstm_gradient_step
    elif node.op == "GRU":
        def step(s, p, d_h, d_c):
            return gru_gradient_step(s, p, d_h, node.attrs["linear_before_reset"])
    else:
        def step(s, p, d_h, d_c):
            return rnn_gradient_step(s, p, d_h, node.attrs["activation"])
    return [None if r is None else walk.ops.cast(r) for r in walk_back(node, inputs, incoming, step)]
