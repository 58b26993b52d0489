"""One-vs-one SVMs with three or more classes (scikit-learn's ``SVC``, exported by skl2onnx as an ONNX-ML
``SVMClassifier`` with support vectors).

onnxruntime's ``SVMClassifier`` gives, for k classes, the k(k−1)/2 pairwise decision values
d_ij(x) = Σ_sv c·K(sv, x) + ρ_ij (pairs (0,1), (0,2), …, (k−2,k−1); d_ij > 0 votes for i). With a linear
kernel each is linear in x: d_ij = w_ij·x + ρ_ij with w_ij the coefficient-weighted sum of the support
vectors of classes i and j (``pairwise_decisions``), so the SVMClassifier itself becomes one Dense node.

skl2onnx turns them into scikit-learn's one-vs-rest decision function (its default
``decision_function_shape="ovr"``): votes_c + s_c / (3 (|s_c| + 1)), where s_c = Σ_j ±d_cj is the class's
sum of its pairwise decision values, each signed towards c. The votes are a step function of x and the
fraction a bounded non-linear one, so that output has no relevance that sums to it. ``explain_sums``
finds that post-processing (the nodes from the pairwise values to one tensor, confirmed by running them
in onnxruntime on random pairwise values against the formula) and replaces SVMClassifier and
post-processing by one ``LinearClassifier`` with the scores s_c, which are linear in x: the class that wins
the most votes is explained by its summed pairwise decision values, and said so.
"""

import numpy as np
import onnx
from onnx import helper

from .onnx_patterns import Model, close, with_nodes

VOTING = {"Cast", "Less", "Greater", "Neg", "ArrayFeatureExtractor", "Sum", "Add", "Sub", "Concat", "Abs", "Mul",
          "Div", "Identity", "Where", "Reshape", "Not", "Equal"}


def attributes(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def class_count(a):
    return len(a.get("classlabels_ints") or a.get("classlabels_strings") or [])


def pairwise_decisions(a, features):
    """(w (pairs, features), ρ (pairs,)) of the pairwise decision values d_ij = w_ij·x + ρ_ij of a one-vs-one
    linear SVM from its ONNX attributes, in onnxruntime's order of pairs; None when they do not fit together."""
    classes = class_count(a)
    per_class = [int(v) for v in a.get("vectors_per_class", [])]
    vectors = np.asarray(a.get("support_vectors", []), dtype=np.float32).astype(np.float64)
    coefficients = np.asarray(a.get("coefficients", []), dtype=np.float32).astype(np.float64)
    rho = np.asarray(a.get("rho", []), dtype=np.float32).astype(np.float64)
    count = sum(per_class)
    pairs = classes * (classes - 1) // 2
    if (len(per_class) != classes or not count or not features or vectors.size != count * features
            or coefficients.size != (classes - 1) * count or rho.size < pairs):
        return None
    vectors = vectors.reshape(count, features)
    coefficients = coefficients.reshape(classes - 1, count)
    starts = np.concatenate([[0], np.cumsum(per_class)])
    weights = []
    for i in range(classes - 1):
        for j in range(i + 1, classes):
            own, other = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
            weights.append(coefficients[j - 1, own] @ vectors[own] + coefficients[i, other] @ vectors[other])
    return np.stack(weights), rho[:pairs]


def vector_length(a):
    """The number of features: the length of each support vector."""
    count = sum(int(v) for v in a.get("vectors_per_class", []))
    size = len(a.get("support_vectors", []))
    return size // count if count and size % count == 0 else 0


def signed_sums(classes):
    """A (pairs, classes): s = d @ A, each class's pairwise decision values signed towards it."""
    pairs = [(i, j) for i in range(classes - 1) for j in range(i + 1, classes)]
    matrix = np.zeros((len(pairs), classes))
    for index, (i, j) in enumerate(pairs):
        matrix[index, i], matrix[index, j] = 1.0, -1.0
    return matrix


def one_vs_rest(decisions, classes):
    """scikit-learn's one-vs-rest decision function from the pairwise decision values."""
    matrix = signed_sums(classes)
    wins = (decisions > 0).astype(np.float64)
    votes = wins @ (matrix > 0) + (1 - wins) @ (matrix < 0)
    sums = decisions @ matrix
    return votes + sums / (3 * (np.abs(sums) + 1))


def region_computes_one_vs_rest(model, region, x, y, pairs, classes):
    """Run ``region`` (x → y) in onnxruntime on random pairwise values; True when y is the one-vs-rest formula."""
    import onnxruntime

    used = {t for n in region for t in n.input if t}
    constants = [n for n in model.graph.node if n.op_type == "Constant" and set(n.output) & used]
    graph = helper.make_graph(constants + list(region), "votes",
                              [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [None, pairs])],
                              [helper.make_empty_tensor_value_info(y)],
                              initializer=[t for t in model.graph.initializer if t.name in used])
    probe = helper.make_model(graph, opset_imports=list(model.opset_import))
    probe.ir_version = model.ir_version
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    decisions = np.random.default_rng(0).normal(scale=2.0, size=(64, pairs)).astype(np.float32)
    result = session.run(None, {x: decisions})[0]
    return close(result, one_vs_rest(decisions.astype(np.float64), classes), tolerance=1e-5)


def explain_sums(model):
    """(model, notes): every one-vs-one linear SVM whose pairwise decision values skl2onnx turns into the one-vs-rest
    decision function, replaced by a LinearClassifier of the summed pairwise decision values."""
    svms = [n for n in model.graph.node if n.op_type == "SVMClassifier" and len(n.output) > 1]
    if not svms:
        return model, []
    replaced, notes = {}, []
    for node in svms:
        a = attributes(node)
        classes = class_count(a)
        kernel = a.get("kernel_type", b"LINEAR")
        if classes < 3 or kernel not in (b"LINEAR", "LINEAR") or a.get("prob_a") or not a.get("vectors_per_class"):
            continue
        decided = pairwise_decisions(a, vector_length(a))
        if decided is None:
            continue
        structure = Model(model)
        pairs = classes * (classes - 1) // 2
        limit = 8 * pairs + 4 * classes + 16   # skl2onnx writes about 6 nodes per pair
        regions = [(y, structure.region(node.output[1], y, VOTING, limit))
                   for y in structure.descendants(node.output[1], VOTING, depth=16)]
        for y, region in sorted((r for r in regions if r[1]), key=lambda r: -len(r[1])):
            try:
                confirmed = region_computes_one_vs_rest(model, region, node.output[1], y, pairs, classes)
            except Exception:  # noqa: BLE001 - nodes onnxruntime cannot run alone are not this post-processing
                confirmed = False
            if confirmed:
                weights, rho = decided
                matrix = signed_sums(classes)
                labels = {k: a[k] for k in ("classlabels_ints", "classlabels_strings") if a.get(k)}
                linear = helper.make_node(
                    "LinearClassifier", [node.input[0]], [node.output[0], y], name=node.name or "svm",
                    domain="ai.onnx.ml", coefficients=(matrix.T @ weights).astype(np.float32).ravel().tolist(),
                    intercepts=(matrix.T @ rho).astype(np.float32).tolist(), post_transform="NONE", **labels)
                replaced[id(node)] = (linear, {id(n) for n in region})
                notes.append(f"the one-vs-one SVM {node.name or node.output[1]!r}: its one-vs-rest output (votes + "
                             f"a bounded fraction, not linear) is explained as each class's sum of its "
                             f"{classes - 1} pairwise decision values (linear); the scores are those sums")
                break
        if id(node) not in replaced:
            notes.append(f"the one-vs-one SVM {node.name or node.output[1]!r}: its scores are the {pairs} pairwise "
                         f"decision values (0 vs 1, 0 vs 2, …; positive: the first class wins), explained exactly")
    if not replaced:
        return model, notes
    dropped = set().union(*(ids for _, ids in replaced.values()))
    nodes = []
    for node in model.graph.node:
        if id(node) in replaced:
            nodes.append(replaced[id(node)][0])
        elif id(node) not in dropped:
            nodes.append(node)
    return with_nodes(model, nodes), notes

