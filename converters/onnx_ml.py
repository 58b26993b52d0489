"""ONNX-ML linear models (domain ``ai.onnx.ml``): LinearClassifier, LinearRegressor and SVMClassifier
with a linear kernel become one Dense node (weights (targets, features)) and, for a classifier, the
post-transform it names. The predicted-label output of a classifier (an integer or a string, not a
score) is left out of the graph: lrptool explains the scores.
"""

import numpy as np

from .onnx_ops import Unsupported, converter

ML_DOMAIN = "ai.onnx.ml"
ML_OPS = {"LinearClassifier", "LinearRegressor", "SVMClassifier", "Normalizer"}
POST_TRANSFORMS = {"NONE": None, "SOFTMAX": "Softmax", "LOGISTIC": "Sigmoid"}


def text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def features_of(ctx, node):
    shape = ctx.shape(node.input[0])
    if len(shape) != 2:
        raise Unsupported(f"an input of shape {shape} (linear models take (N, features))")
    return shape[1]


def add_linear(ctx, node, weight, bias, post_transform, output):
    """Dense (+ the post-transform) making ``output``."""
    transform = POST_TRANSFORMS.get(post_transform, "?")
    if transform == "?":
        raise Unsupported(f"post_transform {post_transform} (lrptool reads NONE, SOFTMAX and LOGISTIC)")
    params = {"weight": np.asarray(weight, dtype=np.float64), "bias": np.asarray(bias, dtype=np.float64)}
    if transform is None:
        ctx.add("Dense", node.input[:1], output, {}, params)
        return
    scores = ctx.temp("scores")
    ctx.add("Dense", node.input[:1], scores, {}, params, suffix="scores")
    attrs = {"axes": (1,)} if transform == "Softmax" else {}
    ctx.add(transform, [scores], output, attrs, suffix=transform.lower())


def drop_label(ctx, node):
    """The classifier's first output is the predicted label, not a score: nothing to explain."""
    if node.output and node.output[0]:
        ctx.dropped_outputs.add(node.output[0])


@converter("LinearClassifier")
def convert_linear_classifier(ctx, node, a):
    features = features_of(ctx, node)
    coefficients = np.asarray(a.get("coefficients", []), dtype=np.float64)
    intercepts = np.asarray(a.get("intercepts", []), dtype=np.float64)
    if features is None or coefficients.size % features or not coefficients.size:
        raise ctx.invalid(f"{coefficients.size} coefficients do not fill rows of {features} features")
    weight = coefficients.reshape(-1, features)
    if intercepts.size not in (0, weight.shape[0]):
        raise ctx.invalid(f"{intercepts.size} intercepts for {weight.shape[0]} classes")
    bias = intercepts if intercepts.size else np.zeros(weight.shape[0])
    drop_label(ctx, node)
    if len(node.output) < 2 or not node.output[1]:
        raise Unsupported("no score output (Z)")
    add_linear(ctx, node, weight, bias, text(a.get("post_transform", b"NONE")), node.output[1])


@converter("LinearRegressor")
def convert_linear_regressor(ctx, node, a):
    features = features_of(ctx, node)
    coefficients = np.asarray(a.get("coefficients", []), dtype=np.float64)
    targets = int(a.get("targets", 1))
    if not coefficients.size or coefficients.size != targets * features:
        raise ctx.invalid(f"{coefficients.size} coefficients for {targets} target(s) of {features} features")
    intercepts = np.asarray(a.get("intercepts", [0.0] * targets), dtype=np.float64)
    if intercepts.size != targets:
        raise ctx.invalid(f"{intercepts.size} intercepts for {targets} target(s)")
    add_linear(ctx, node, coefficients.reshape(targets, features), intercepts,
               text(a.get("post_transform", b"NONE")), node.output[0])


@converter("SVMClassifier")
def convert_svm_classifier(ctx, node, a):
    """A linear-kernel SVM with two classes: d(x) = Σ_i c_i ⟨s_i, x⟩ + ρ (onnxruntime's linear kernel is the
    plain dot product) is one weight vector w = Σ_i c_i s_i with bias ρ; the scores are (−d, d), as
    onnxruntime gives them (skl2onnx stores ρ and c with the sign opposite to scikit-learn's decision
    function, so the first score is scikit-learn's)."""
    kernel = text(a.get("kernel_type", b"LINEAR"))
    if kernel != "LINEAR":
        raise Unsupported(f"kernel {kernel} (lrptool reads linear-kernel SVMs only: a kernel SVM is no linear model)")
    labels = a.get("classlabels_ints") or a.get("classlabels_strings") or []
    if a.get("prob_a") or a.get("prob_b"):
        raise Unsupported("Platt-scaled probabilities (export the SVM without probability=True)")
    features = features_of(ctx, node)
    if len(labels) > 2:
        add_pairwise(ctx, node, a, features, len(labels))
        return
    if len(labels) != 2:
        raise Unsupported(f"{len(labels)} classes")
    vectors = np.asarray(a.get("support_vectors", []), dtype=np.float64)
    coefficients = np.asarray(a.get("coefficients", []), dtype=np.float64)
    if not vectors.size or vectors.size % features or coefficients.size != vectors.size // features:
        raise ctx.invalid(f"{vectors.size} support-vector values and {coefficients.size} coefficients for "
                          f"{features} features")
    rho = float(np.asarray(a.get("rho", [0.0]), dtype=np.float64).reshape(-1)[0])
    direction = coefficients @ vectors.reshape(-1, features)
    offset = rho
    drop_label(ctx, node)
    if len(node.output) < 2 or not node.output[1]:
        raise Unsupported("no score output (Z)")
    add_linear(ctx, node, np.stack([-direction, direction]), np.array([-offset, offset]),
               text(a.get("post_transform", b"NONE")), node.output[1])


def add_pairwise(ctx, node, a, features, classes):
    """A one-vs-one SVM's scores: its k(k−1)/2 pairwise decision values d_ij = w_ij·x + ρ_ij, each linear in x
    (converters.onnx_svm_votes)."""
    from .onnx_svm_votes import pairwise_decisions

    if not a.get("vectors_per_class"):
        raise Unsupported(f"a {classes}-class SVM without support vectors")
    decided = pairwise_decisions(a, features)
    if decided is None:
        raise ctx.invalid(f"support vectors, coefficients and rho do not fit {classes} classes of {features} features")
    if text(a.get("post_transform", b"NONE")) != "NONE":
        raise Unsupported(f"post_transform {text(a.get('post_transform'))} on pairwise decision values")
    drop_label(ctx, node)
    if len(node.output) < 2 or not node.output[1]:
        raise Unsupported("no score output (Z)")
    add_linear(ctx, node, decided[0], decided[1], "NONE", node.output[1])


@converter("Normalizer")
def convert_normalizer(ctx, node, a):
    """The L1 normalisation skl2onnx puts after a classifier's probabilities changes nothing where they sum
    to 1 already: after a softmax, and after the logistic function of the two opposite scores (−z, z)."""
    if text(a.get("norm", b"MAX")) != "L1":
        raise Unsupported(f"norm {text(a.get('norm', b'MAX'))} (lrptool reads the L1 normalisation of probabilities)")
    source = ctx.resolve(node.input[0])
    producer = next((n for n in reversed(ctx.nodes) if source in n.outputs), None)
    summing = producer is not None and producer.op == "Softmax"
    if producer is not None and producer.op == "Sigmoid":
        dense = next((n for n in reversed(ctx.nodes) if producer.inputs[0] in n.outputs), None)
        if dense is not None and dense.op == "Dense" and dense.params["weight"].shape[0] == 2:
            weight, bias = dense.params["weight"], dense.params.get("bias", np.zeros(2))
            summing = np.allclose(weight[0], -weight[1]) and np.isclose(bias[0], -bias[1])
    if not summing:
        raise Unsupported("an L1 normalisation of values that do not sum to 1 already (not linear, no relevance routing)")
    ctx.set_alias(node.output[0], node.input[0])
