"""Custom layer plug-in: textgenrnn's ``AttentionWeightedAverage`` (attention pooling over time).

    l_t = x_t · w,   a_t = exp(l_t − max_s l_s) / (Σ_s exp(l_s − max_s l_s) + 1e-7),   y = Σ_t a_t x_t

for an input x of shape (N, T, F) and one weight vector w (F, 1). Relevance: the attention weights
are held constant (as gates are in the LSTM rule), so y_f = Σ_t a_t x_tf is a weighted sum and the
ε rule splits R(y_f) over its terms: R(x_tf) = a_t x_tf · R(y_f) / (y_f + ε·sign(y_f)), with the
walk's stabiliser as ε. Nothing reaches w or the logits. The gradient is the true one.

Load it with ``--custom-layers lrptool.plugins.attention_weighted_average`` (or this file's path).
"""

import numpy as np

from lrptool.ops.base import Operator, fail
from lrptool.plugins import exporter, keras_layer, operator, reverse

EPSILON = 1e-7  # Keras' K.epsilon(), added to the softmax denominator


def attention_weights(x, w):
    logits = x @ w                                    # (N, T)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / (shifted.sum(axis=1, keepdims=True) + EPSILON)


@operator
class AttentionWeightedAverage(Operator):
    """(N, T, F) → (N, F): the attention-weighted average over time; parameter ``weight`` (F,)."""

    params = ("weight",)

    def infer(self, node, shapes):
        (shape,) = shapes
        if len(shape) != 3 or shape[2] != node.params["weight"].shape[0]:
            fail(node, f"input of shape {shape} is not (batch, time, {node.params['weight'].shape[0]})")
        return [(shape[0], shape[2])]

    def run(self, node, inputs, params):
        x = inputs[0]
        a = attention_weights(x, params["weight"].astype(x.dtype))
        return [np.einsum("nt,ntf->nf", a, x)]


def relevance(walk, node, inputs, outputs, incoming):
    if not walk.ops.eager:
        return emitted_relevance(walk, node, inputs, incoming)
    x = np.asarray(inputs[0], dtype=np.float64)
    a = attention_weights(x, node.params["weight"].astype(np.float64))
    y = np.einsum("nt,ntf->nf", a, x)
    ratio = incoming[0] / walk.ops.stabilise(y, walk.stabiliser)
    return [walk.ops.cast(a[:, :, None] * x * ratio[:, None, :])]


def emitted_relevance(walk, node, inputs, incoming):
    """The same relevance as ONNX nodes, for the compiled explainer."""
    ops, emit = walk.ops, walk.ops.emit
    x = ops.name(inputs[0])
    w = emit.constant(node.params["weight"].reshape(-1, 1))
    logits = emit.node("MatMul", [x, w])                                          # (N, T, 1)
    time = emit.ints([1])
    shifted = emit.node("Exp", [emit.node("Sub", [logits, emit.node("ReduceMax", [logits, time], {"keepdims": 1})])])
    total = emit.node("Add", [emit.node("ReduceSum", [shifted, time], {"keepdims": 1}), emit.scalar(EPSILON)])
    weights = emit.node("Div", [shifted, total])                                  # (N, T, 1)
    weighted = emit.node("Mul", [x, weights])
    y = ops.sym(emit.node("ReduceSum", [weighted, time], {"keepdims": 0}), incoming[0].shape)
    ratio = emit.node("Div", [ops.name(incoming[0]), ops.name(ops.stabilise(y, walk.stabiliser))])
    return [ops.sym(emit.node("Mul", [weighted, emit.node("Unsqueeze", [ratio, time])]), inputs[0].shape)]


def gradient(walk, node, inputs, outputs, incoming):
    if not walk.ops.eager:
        from lrptool.errors import LrpToolError

        raise LrpToolError(f"node {node.name!r} ({node.op}): its gradient has no compiled form; the eager walk "
                           "computes it")
    x = np.asarray(inputs[0], dtype=np.float64)
    w = node.params["weight"].astype(np.float64)
    a = attention_weights(x, w)
    g = np.asarray(incoming[0], dtype=np.float64)
    q = np.einsum("nf,ntf->nt", g, x)                   # g · x_t
    dlogits = a * (q - np.sum(a * q, axis=1, keepdims=True))
    return [walk.ops.cast(a[:, :, None] * g[:, None, :] + dlogits[:, :, None] * w[None, None, :])]


reverse("AttentionWeightedAverage", relevance, gradient,
        "ε rule over the weighted sum, attention weights held constant")


@exporter("AttentionWeightedAverage")
def export(b, node):
    name = node.name
    logits, top, shifted, exp, total, safe, weights, weighted = (
        b.unique(f"{name}/{part}") for part in ("logits", "max", "shifted", "exp", "sum", "safe", "weights",
                                                 "weighted"))
    w = node.params["weight"].reshape(-1, 1)
    b.node("MatMul", [node.inputs[0], b.constant(f"{name}.weight", w)], [logits], f"{name}/logits")
    b.node("ReduceMax", [logits, b.ints(f"{name}.time", [1])], [top], f"{name}/max", keepdims=1)
    b.node("Sub", [logits, top], [shifted], f"{name}/shift")
    b.node("Exp", [shifted], [exp], f"{name}/exp")
    b.node("ReduceSum", [exp, b.ints(f"{name}.time_sum", [1])], [total], f"{name}/sum", keepdims=1)
    b.node("Add", [total, b.constant(f"{name}.epsilon", np.float32(EPSILON))], [safe], f"{name}/epsilon")
    b.node("Div", [exp, safe], [weights], f"{name}/weights")
    b.node("Mul", [node.inputs[0], weights], [weighted], f"{name}/weigh")
    b.node("ReduceSum", [weighted, b.ints(f"{name}.time_average", [1])], node.outputs, name, keepdims=0)


@keras_layer("AttentionWeightedAverage", keras_order=True)
def convert(ctx, lname, cfg, inputs, weights):
    from converters.keras_errors import BadLayer, Unsupported

    (x,) = inputs
    if cfg.get("return_attention"):
        raise Unsupported("return_attention = true (the attention weights as a second output)")
    if len(weights) != 1:
        raise BadLayer(f"{len(weights)} weight arrays are stored, 1 expected (W of shape (features, 1))")
    w = np.asarray(weights[0])
    shape = ctx.shape(x)
    if len(shape) != 3 or w.shape != (shape[2], 1):
        raise BadLayer(f"W has shape {list(w.shape)} for an input of shape {list(shape)}")
    return ctx.emit(lname, "AttentionWeightedAverage", [x], {}, {"weight": w.reshape(-1)})
