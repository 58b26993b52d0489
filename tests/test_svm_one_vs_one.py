"""One-vs-one linear SVMs with more than two classes (scikit-learn's SVC(kernel="linear"), exported by skl2onnx),
trained here on the bundled corpus's count vectors: the pairwise decision values are explained exactly, and the
one-vs-rest output (votes + a bounded fraction) as each class's sum of signed pairwise decision values —
against scikit-learn's decision functions and onnxruntime."""

import warnings

import numpy as np
import onnxruntime
import pytest

from converters.onnx_reader import read_onnx
from lrptool.lrp import Explainer
from text_support import corpus_texts, scikit_learn_or_skip

scikit_learn_or_skip("sklearn.feature_extraction.text", "sklearn.svm")
import skl2onnx  # noqa: E402
from sklearn.feature_extraction.text import CountVectorizer  # noqa: E402
from sklearn.svm import SVC  # noqa: E402
from skl2onnx.common.data_types import FloatTensorType  # noqa: E402

@pytest.fixture(scope="module")
def counts():
    texts, _, three = corpus_texts()
    x = CountVectorizer().fit_transform(texts).toarray().astype(np.float32)
    # a fourth class: the other sentences about the story
    four = np.where((three != 2) & np.array(["story" in t for t in texts]), 3, three)
    return x, {3: three, 4: four}


def exported(model, features):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return skl2onnx.convert_sklearn(model, initial_types=[("x", FloatTensorType([None, features]))],
                                        options={id(model): {"zipmap": False}})


def signed_sums(classes):
    """By hand: the (pairs, classes) matrix that sums each class's pairwise decision values, signed towards it."""
    pairs = [(i, j) for i in range(classes) for j in range(i + 1, classes)]
    matrix = np.zeros((len(pairs), classes))
    for index, (i, j) in enumerate(pairs):
        matrix[index, i] = 1.0
        matrix[index, j] = -1.0
    return matrix


@pytest.mark.parametrize("classes", [3, 4])
def test_pairwise_decision_values_are_explained_exactly(counts, classes):
    x, labels = counts
    model = SVC(kernel="linear", decision_function_shape="ovo").fit(x, labels[classes])
    onnx_model = exported(model, x.shape[1])
    graph = read_onnx(onnx_model)
    assert len(graph.notes) == 1 and f"its scores are the {classes * (classes - 1) // 2} pairwise" in graph.notes[0]
    pairs = classes * (classes - 1) // 2
    reference = onnxruntime.InferenceSession(onnx_model.SerializeToString()).run(None, {"x": x})[1]
    decision = model.decision_function(x)          # the pairwise decision values, in the same order
    np.testing.assert_allclose(reference, decision, rtol=1e-4, atol=1e-5)
    dense = next(n for n in graph.nodes if n.op == "Dense")
    np.testing.assert_allclose(dense.params["weight"], model.coef_, rtol=1e-4, atol=1e-6)
    for pair in range(pairs):
        result = Explainer(graph, "zero", dtype=np.float64, quiet=True).explain(
            x.astype(np.float64), target=np.full(len(x), pair))
        np.testing.assert_allclose(result.scores, decision[:, pair], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(result.relevance, model.coef_[pair] * x, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(result.scores - result.relevance.sum(axis=1), model.intercept_[pair],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("classes", [3, 4])
def test_one_vs_rest_output_is_explained_as_summed_pairwise_decisions(counts, classes):
    x, labels = counts
    model = SVC(kernel="linear").fit(x, labels[classes])          # decision_function_shape="ovr", the default
    onnx_model = exported(model, x.shape[1])
    graph = read_onnx(onnx_model)
    assert len(graph.notes) == 1 and "sum of its" in graph.notes[0] and "pairwise decision values" in graph.notes[0]
    session = onnxruntime.InferenceSession(onnx_model.SerializeToString())
    predicted, one_vs_rest = session.run(None, {"x": x})
    np.testing.assert_allclose(one_vs_rest, model.decision_function(x), rtol=1e-4, atol=1e-5)
    # the explained scores: each class's signed sum of scikit-learn's pairwise decision values
    pairwise = model.set_params(decision_function_shape="ovo")    # the same fit, its pairwise decision values
    matrix = signed_sums(classes)
    sums = pairwise.decision_function(x) @ matrix
    result = Explainer(graph, "zero", dtype=np.float64, quiet=True).explain(x.astype(np.float64))
    rows = np.arange(len(x))
    np.testing.assert_allclose(result.scores, sums[rows, result.targets], rtol=1e-4, atol=1e-5)
    # the class with the largest sum is the one onnxruntime predicts (by votes) on this corpus
    np.testing.assert_array_equal(result.targets, predicted)
    weights, biases = (matrix.T @ pairwise.coef_), (matrix.T @ pairwise.intercept_)
    np.testing.assert_allclose(result.relevance, weights[result.targets] * x, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.scores - result.relevance.sum(axis=1), biases[result.targets],
                               rtol=1e-4, atol=1e-5)
