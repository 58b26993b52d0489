"""Bag-of-words linear models (ONNX-ML LinearClassifier, LinearRegressor, linear-kernel SVMClassifier)
trained here with scikit-learn on the bundled corpus and exported with skl2onnx: forward parity with
onnxruntime, and word relevance R = w_word · x_word exactly."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest

from converters.onnx_reader import read_onnx
from lrptool.executor import run_graph
from lrptool.lrp import Explainer
from text_support import corpus_texts, scikit_learn_or_skip

scikit_learn_or_skip("sklearn.feature_extraction.text", "sklearn.linear_model", "sklearn.svm")
import skl2onnx  # noqa: E402
from sklearn.feature_extraction.text import CountVectorizer  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.svm import SVC  # noqa: E402
from skl2onnx.common.data_types import FloatTensorType  # noqa: E402

@pytest.fixture(scope="module")
def corpus():
    texts, labels, three = corpus_texts()
    vectorizer = CountVectorizer().fit(texts)
    counts = vectorizer.transform(texts).toarray().astype(np.float32)
    return texts, labels, three, vectorizer, counts


def exported(model, features, **options):
    return skl2onnx.convert_sklearn(model, initial_types=[("x", FloatTensorType([None, features]))],
                                    options={id(model): options} if options else None)


def scores_of(onnx_model, x):
    session = onnxruntime.InferenceSession(onnx_model.SerializeToString())
    return session.run(None, {"x": x})[-1]


CASES = {
    "logistic-raw": (lambda: LogisticRegression(), {"zipmap": False, "raw_scores": True}, "two"),
    "logistic": (lambda: LogisticRegression(), {"zipmap": False}, "two"),
    "logistic-3": (lambda: LogisticRegression(), {"zipmap": False}, "three"),
    "svm-linear": (lambda: SVC(kernel="linear"), {"zipmap": False}, "two"),
    "regression": (lambda: LinearRegression(), {}, "two"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_onnxruntime_and_words_get_w_times_x(corpus, case):
    texts, two, three, vectorizer, counts = corpus
    build, options, labels = CASES[case]
    model = build().fit(counts, two if labels == "two" else three)
    onnx_model = exported(model, counts.shape[1], **options)
    graph = read_onnx(onnx_model)
    assert graph.inputs == {"x": (None, counts.shape[1])} and len(graph.outputs) == 1
    expected = scores_of(onnx_model, counts).reshape(len(counts), -1)
    np.testing.assert_allclose(run_graph(graph, counts)[graph.outputs[0]].reshape(len(counts), -1), expected,
                               rtol=1e-5, atol=1e-5)
    # the decision function, from the file's own attributes (float32, as onnxruntime uses them)
    weight, bias = stored_linear_model(onnx_model, counts.shape[1])
    # and from scikit-learn (float64 before export)
    if case == "regression":
        fitted = model.coef_.reshape(1, -1)
    elif case == "svm-linear":   # onnxruntime's scores: (scikit-learn's decision function, its negative)
        fitted = np.stack([model.coef_[0], -model.coef_[0]])
    elif model.coef_.shape[0] == 1:
        fitted = np.stack([-model.coef_[0], model.coef_[0]])
    else:
        fitted = model.coef_
    np.testing.assert_allclose(weight, fitted, rtol=1e-4, atol=1e-6)
    if case in ("logistic", "logistic-3"):
        return  # the explained output is a probability there; the raw scores are explained in the other cases
    x = counts[:12].astype(np.float64)
    result = Explainer(graph, "zero", dtype=np.float64, quiet=True).explain(x)
    chosen = weight[result.targets]
    np.testing.assert_allclose(result.scores, np.sum(chosen * x, axis=1) + bias[result.targets], rtol=1e-6)
    # R_word = w_word · x_word: the bias keeps its share (score − Σ R)
    np.testing.assert_allclose(result.relevance, chosen * x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.scores - result.relevance.sum(axis=1), bias[result.targets], atol=1e-9)


def stored_linear_model(onnx_model, features):
    """(weights (targets, features), biases) from the model's LinearClassifier/Regressor or SVMClassifier."""
    import onnx

    node = next(n for n in onnx_model.graph.node if n.domain == "ai.onnx.ml" and n.op_type != "Normalizer")
    a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    if node.op_type == "SVMClassifier":
        d = np.asarray(a["coefficients"], np.float32).astype(np.float64) @ \
            np.asarray(a["support_vectors"], np.float32).astype(np.float64).reshape(-1, features)
        rho = float(np.float32(a["rho"][0]))
        return np.stack([-d, d]), np.array([-rho, rho])
    weight = np.asarray(a["coefficients"], np.float32).astype(np.float64).reshape(-1, features)
    return weight, np.asarray(a["intercepts"], np.float32).astype(np.float64)


def test_explain_text_maps_words_to_features_and_splits_repeats(tmp_path, corpus):
    texts, two, _, vectorizer, counts = corpus
    model = LogisticRegression().fit(counts, two)
    path = tmp_path / "bow.onnx"
    path.write_bytes(exported(model, counts.shape[1], zipmap=False, raw_scores=True).SerializeToString())
    vocab = tmp_path / "bow.vocab.json"
    vocab.write_text(json.dumps({word: int(index) for word, index in vectorizer.vocabulary_.items()}))
    inputs = tmp_path / "texts.txt"
    inputs.write_text("a brilliant , brilliant film\nboring and unheardof\n")
    result = subprocess.run([sys.executable, "-m", "lrptool.cli", "explain-text", str(path), str(inputs), "-o",
                             str(tmp_path / "out"), "--tokenizer", "words", "--preset", "zero"], capture_output=True)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "explanations.jsonl").read_text().splitlines()]
    first, second = records
    assert first["tokens"] == ["a", "brilliant", ",", "brilliant", "film"]
    w = np.stack([-model.coef_[0], model.coef_[0]])[first["target"]]
    index = vectorizer.vocabulary_
    # "a" and "," are not in the vocabulary; "brilliant" occurs twice and shares w·2 equally
    np.testing.assert_allclose(first["relevance"], [0.0, w[index["brilliant"]], 0.0, w[index["brilliant"]],
                                                    w[index["film"]]], rtol=1e-5, atol=1e-7)
    bias = np.array([-model.intercept_[0], model.intercept_[0]])[first["target"]]
    assert first["absorbed"] == pytest.approx(bias, rel=1e-4, abs=1e-6)
    assert second["relevance"][2] == 0.0 and second["padding_relevance"] == 0.0
