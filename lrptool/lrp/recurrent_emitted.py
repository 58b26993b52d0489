"""The recurrent relevance pass of ``lrp.recurrent`` written as ONNX nodes, for the compiled explainer:
every time step unrolled (the length is fixed in the graph). The forward pass of each direction is
recomputed step by step to get the gates, then the relevance is sent back with the same equations as
the eager walk. Sequence lengths, clipping and peepholes are left to the eager walk (refused here in
one line; the explainer then explains eagerly).
"""

import numpy as np

from ..errors import LrpToolError
from .recurrent import DTYPE


class Steps:
    """Helpers that emit one ONNX node each and return its output name."""

    def __init__(self, emit, epsilon):
        self.emit = emit
        self.epsilon = epsilon
        self.tag = None          # (node, direction): the weights of one direction are written once

    def node(self, op, *inputs, **attrs):
        return self.emit.node(op, list(inputs), attrs or None)

    def const(self, array, role=None):
        key = None if role is None else (self.tag, role)
        return self.emit.constant(np.asarray(array, dtype=np.float32), key=key)

    def matmul(self, a, weight, role):
        """a (N, K) @ weightᵀ for a weight (M, K)."""
        return self.node("MatMul", a, self.const(np.ascontiguousarray(weight.T), role + "ᵀ"))

    def back(self, a, weight, role):
        """a (N, M) @ weight (M, K)."""
        return self.node("MatMul", a, self.const(weight, role))

    def add(self, *terms):
        total = terms[0]
        for term in terms[1:]:
            total = self.node("Add", total, term)
        return total

    def stabilised(self, z):
        positive = self.node("GreaterOrEqual", z, self.emit.scalar(0.0))
        shift = self.node("Where", positive, self.emit.scalar(self.epsilon), self.emit.scalar(-self.epsilon))
        return self.node("Add", z, shift)

    def pick(self, x, index, axis):
        """x[:, index] along ``axis`` (the axis removed)."""
        taken = self.node("Gather", x, self.emit.ints([index]), axis=axis)
        return self.node("Squeeze", taken, self.emit.ints([axis]))

    def row_sum(self, a):
        return self.node("ReduceSum", a, self.emit.ints([1]), keepdims=1)


def unsupported(node, why):
    raise LrpToolError(f"node {node.name!r} ({node.op}): {why} has no compiled form; the eager walk explains it")


def emitted_relevance(walk, node, inputs, incoming):
    ops = walk.ops
    a = node.attrs
    given = dict(zip(a["optional_inputs"], inputs[1:]))
    if "lengths" in given:
        unsupported(node, "a recurrent layer with sequence lengths")
    if np.isfinite(a["clip"]):
        unsupported(node, "a clipped recurrent layer")
    if "peephole" in node.params:
        unsupported(node, "an LSTM with peepholes")
    if any(given[k].shape[0] != inputs[0].shape[0] for k in given):
        unsupported(node, "an initial state broadcast over the batch")
    s = Steps(ops.emit, walk.recurrent_epsilon)
    spread = walk.recurrent_bias == "spread"
    op = node.operator
    x = ops.name(inputs[0])
    steps, features = inputs[0].shape[1], inputs[0].shape[2]
    directions, hidden = op.directions(node), int(a["hidden_size"])
    params = {k: v.astype(DTYPE) for k, v in node.params.items()}
    r_y, r_last = (ops.name(r) for r in incoming[:2])
    r_cell_last = ops.name(incoming[2]) if node.op == "LSTM" else None
    first = s.pick(x, 0, 1)
    zeros = s.node("MatMul", first, s.const(np.zeros((features, hidden))))   # (N, H), batch-sized
    r_x = [None] * steps
    r_states = {}
    for d in range(directions):
        p = op.direction_params(node, params, d, DTYPE)
        s.tag = (node.name, d)
        reverse = a["direction"] == "reverse" or d == 1
        order = list(range(steps))[::-1] if reverse else list(range(steps))
        h = s.pick(ops.name(given["initial_h"]), d, 1) if "initial_h" in given else zeros
        c = s.pick(ops.name(given["initial_c"]), d, 1) if "initial_c" in given else zeros
        records = []
        for t in order:
            xt = s.pick(x, t, 1)
            record = forward_step(s, node, p, xt, h, c, hidden)
            record.update(t=t, x=xt, h_prev=h, c_prev=c)
            records.append(record)
            h, c = record["h"], record.get("c")
        r_h = s.pick(r_last, d, 1)
        r_c = s.pick(r_cell_last, d, 1) if r_cell_last else None
        for index in range(len(records) - 1, -1, -1):
            record = records[index]
            r_here = s.add(r_h, s.pick(s.pick(r_y, record["t"], 1), d, 1))
            hidden_live = index > 0 or "initial_h" in given
            cell_live = index > 0 or "initial_c" in given
            step_x, r_h, r_c = backward_step(s, node, p, record, r_here, r_c, spread, hidden_live, cell_live,
                                             features, hidden)
            r_x[record["t"]] = step_x if r_x[record["t"]] is None else s.add(r_x[record["t"]], step_x)
        r_states.setdefault("initial_h", []).append(r_h)
        if r_c is not None:
            r_states.setdefault("initial_c", []).append(r_c)
    stacked = s.node("Concat", *[s.node("Unsqueeze", r, ops.emit.ints([1])) for r in r_x], axis=1)
    result = [ops.sym(stacked, inputs[0].shape)]
    for name, value in zip(a["optional_inputs"], inputs[1:]):
        parts = [s.node("Unsqueeze", r, ops.emit.ints([1])) for r in r_states[name]]
        result.append(ops.sym(parts[0] if len(parts) == 1 else s.node("Concat", *parts, axis=1), value.shape))
    return result


def forward_step(s, node, p, xt, h, c, hidden):
    gates = s.add(s.matmul(xt, p["W"], "W"), s.matmul(h, p["R"], "R"), s.const(p["Wb"] + p["Rb"], "b")) \
        if node.op != "GRU" else None
    if node.op == "LSTM":
        zi, zo, zf, zg = (s.node("Slice", gates, s.emit.ints([k * hidden]), s.emit.ints([(k + 1) * hidden]),
                                 s.emit.ints([1])) for k in range(4))
        i, o, f = s.node("Sigmoid", zi), s.node("Sigmoid", zo), s.node("Sigmoid", zf)
        g = s.node("Tanh", zg)
        c_new = s.add(s.node("Mul", f, c), s.node("Mul", i, g))
        return dict(i=i, f=f, g=g, zg=zg, c=c_new, h=s.node("Mul", o, s.node("Tanh", c_new)))
    if node.op == "RNN":
        h_new = s.node("Tanh", gates) if node.attrs["activation"] == "Tanh" else s.node("Relu", gates)
        return dict(pre=gates, h=h_new)
    rows = slice(0, 2 * hidden)
    zr = s.add(s.matmul(xt, p["W"][rows], "W_zr"), s.matmul(h, p["R"][rows], "R_zr"),
               s.const(p["Wb"][rows] + p["Rb"][rows], "b_zr"))
    z = s.node("Sigmoid", s.node("Slice", zr, s.emit.ints([0]), s.emit.ints([hidden]), s.emit.ints([1])))
    r = s.node("Sigmoid", s.node("Slice", zr, s.emit.ints([hidden]), s.emit.ints([2 * hidden]), s.emit.ints([1])))
    rows = slice(2 * hidden, 3 * hidden)
    wn = s.add(s.matmul(xt, p["W"][rows], "W_n"), s.const(p["Wb"][rows], "Wb_n"))
    if node.attrs["linear_before_reset"]:
        pre = s.add(wn, s.node("Mul", r, s.add(s.matmul(h, p["R"][rows], "R_n"), s.const(p["Rb"][rows], "Rb_n"))))
    else:
        pre = s.add(wn, s.matmul(s.node("Mul", r, h), p["R"][rows], "R_n"), s.const(p["Rb"][rows], "Rb_n"))
    n = s.node("Tanh", pre)
    h_new = s.add(s.node("Mul", s.node("Sub", s.emit.scalar(1.0), z), n), s.node("Mul", z, h))
    return dict(z=z, r=r, n=n, pre=pre, h=h_new)


def split_two(s, first, second, total, relevance, spread, second_live):
    """The ε rule over two summands of ``total``; with ``spread`` the stabiliser's share is shared."""
    denominator = s.stabilised(total)
    ratio = s.node("Div", relevance, denominator)
    one, two = s.node("Mul", first, ratio), s.node("Mul", second, ratio)
    if spread:
        leftover = s.node("Mul", s.node("Sub", denominator, s.add(first, second)), ratio)
        if second_live:
            leftover = s.node("Mul", leftover, s.emit.scalar(0.5))
            two = s.add(two, leftover)
        one = s.add(one, leftover)
    return one, two


def split_linear(s, relevance, pre, parts, spread, live):
    """The ε rule over pre = Σ_parts x·Wᵀ (row-scaled) + bias: one relevance per part."""
    denominator = s.stabilised(pre)
    ratio = s.node("Div", relevance, denominator)
    shares, contributions = [], []
    for (x, weight, scale), role in zip(parts, ("W", "R")):
        role = f"{role}_signal"
        scaled = ratio if scale is None else s.node("Mul", ratio, scale)
        shares.append(s.node("Mul", x, s.back(scaled, weight, role)))
        product = s.matmul(x, weight, role)
        contributions.append(product if scale is None else s.node("Mul", scale, product))
    if spread:
        units = sum(part[1].shape[1] for part, alive in zip(parts, live) if alive)
        leftover = s.row_sum(s.node("Mul", s.node("Sub", denominator, s.add(*contributions)), ratio))
        leftover = s.node("Mul", leftover, s.emit.scalar(1.0 / units))
        shares = [s.add(share, leftover) if alive else share for share, alive in zip(shares, live)]
    return shares


def backward_step(s, node, p, record, r_h, r_c, spread, hidden_live, cell_live, features, hidden):
    if node.op == "LSTM":
        r_c = s.add(r_c, r_h)
        r_c_prev, r_g = split_two(s, s.node("Mul", record["i"], record["g"]), s.node("Mul", record["f"], record["c_prev"]),
                                  record["c"], r_c, spread, cell_live)[::-1]
        rows = slice(3 * hidden, 4 * hidden)
        r_x, r_h_prev = split_linear(s, r_g, record["zg"], [(record["x"], p["W"][rows], None),
                                                            (record["h_prev"], p["R"][rows], None)],
                                     spread, [True, hidden_live])
        return r_x, r_h_prev, r_c_prev
    if node.op == "RNN":
        r_x, r_h_prev = split_linear(s, r_h, record["pre"], [(record["x"], p["W"], None),
                                                            (record["h_prev"], p["R"], None)],
                                     spread, [True, hidden_live])
        return r_x, r_h_prev, None
    z, r = record["z"], record["r"]
    r_n, r_direct = split_two(s, s.node("Mul", s.node("Sub", s.emit.scalar(1.0), z), record["n"]),
                              s.node("Mul", z, record["h_prev"]), record["h"], r_h, spread, hidden_live)
    rows = slice(2 * hidden, 3 * hidden)
    if node.attrs["linear_before_reset"]:
        parts = [(record["x"], p["W"][rows], None), (record["h_prev"], p["R"][rows], r)]
    else:
        parts = [(record["x"], p["W"][rows], None), (s.node("Mul", r, record["h_prev"]), p["R"][rows], None)]
    r_x, r_h_prev = split_linear(s, r_n, record["pre"], parts, spread, [True, hidden_live])
    return r_x, s.add(r_h_prev, r_direct), None
