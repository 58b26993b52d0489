"""Models that read raw text: scikit-learn pipelines (CountVectorizer / TfidfVectorizer → a linear model) trained
here on the bundled corpus and exported with skl2onnx, string input and all. Scores against onnxruntime's run of
the whole model and scikit-learn's decision function; each word's relevance against w · x computed by hand from
scikit-learn's own vectorizer and coefficients; conservation; the CLI's JSON lines and page."""

import json
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime
import pytest

import lrptool
from text_support import corpus_texts, scikit_learn_or_skip

scikit_learn_or_skip("sklearn.feature_extraction.text", "sklearn.linear_model", "sklearn.pipeline", "sklearn.svm")
import skl2onnx  # noqa: E402
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge, SGDClassifier  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402
from skl2onnx.common.data_types import StringTensorType  # noqa: E402

COMMAND = [sys.executable, "-m", "lrptool.cli"]
# words the corpus knows, a repeated word, upper case, punctuation, a word it does not know ("xyzzy")
PROBES = ["Brilliant, brilliant film!", "boring and dull film, waste of time", "The STORY was moving and superb",
          "xyzzy", "great cast great story great film", "loved every minute of the family cinema"]


@pytest.fixture(scope="module")
def corpus():
    return corpus_texts()


def export(pipeline, path, **classifier_options):
    """The pipeline as ONNX with a string input; StringNormalizer's locale C.UTF-8 exists on every Linux (the default,
    en_US.UTF-8, may not, and onnxruntime then refuses the model)."""
    vectorizer, model = pipeline.steps[0][1], pipeline.steps[-1][1]
    options = {id(vectorizer): {"locale": "C.UTF-8"}}
    if classifier_options:
        options[id(model)] = classifier_options
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_model = skl2onnx.convert_sklearn(pipeline, initial_types=[("text", StringTensorType([None, 1]))],
                                              options=options)
    path.write_bytes(onnx_model.SerializeToString())
    return path


def onnxruntime_scores(path, texts):
    session = onnxruntime.InferenceSession(str(path))
    scores = session.run(None, {"text": np.array(texts, dtype=object).reshape(-1, 1)})[-1]
    if isinstance(scores, list):   # ZipMap: one {class: score} per text
        scores = [[row[key] for key in sorted(row)] for row in scores]
    return np.asarray(scores, dtype=np.float64).reshape(len(texts), -1)


def expected_token_relevance(tokens, vectorizer, relevance_per_feature):
    """By hand: a feature's relevance in equal parts to the occurrences of its n-gram, an occurrence's part in
    equal parts to its n words (tokens as the model's tokenizer splits them, lower-cased)."""
    words = [t.lower() for t in tokens]
    low, high = vectorizer.ngram_range
    occurrences = []
    for n in range(low, high + 1):
        for start in range(len(words) - n + 1):
            feature = vectorizer.vocabulary_.get(" ".join(words[start:start + n]))
            if feature is not None:
                occurrences.append((feature, range(start, start + n)))
    counts = {}
    for feature, _ in occurrences:
        counts[feature] = counts.get(feature, 0) + 1
    expected = np.zeros(len(tokens))
    for feature, positions in occurrences:
        for position in positions:
            expected[position] += relevance_per_feature[feature] / counts[feature] / len(positions)
    return expected


CASES = {
    # name: (vectorizer, model, skl2onnx options of the model, labels)
    "tfidf-logistic": (lambda: TfidfVectorizer(), lambda: LogisticRegression(), {"zipmap": False, "raw_scores": True},
                       "two"),
    "tfidf-logistic-3": (lambda: TfidfVectorizer(), lambda: LogisticRegression(),
                         {"zipmap": False, "raw_scores": True}, "three"),
    "count-bigrams-linear-svc": (lambda: CountVectorizer(ngram_range=(1, 2)), lambda: LinearSVC(),
                                 {"raw_scores": True}, "two"),
    "tfidf-l2-ridge": (lambda: TfidfVectorizer(norm="l2"), lambda: Ridge(alpha=0.5), {}, "two"),
    "tfidf-trigrams-binary-sgd": (lambda: TfidfVectorizer(ngram_range=(1, 3), binary=True),
                                  lambda: SGDClassifier(random_state=0), {"zipmap": False, "raw_scores": True}, "three"),
}


def decision_weights(model, target):
    """(w, b) of the explained score from scikit-learn's fitted model: onnxruntime's binary scores are (−d, d)."""
    coef, intercept = np.atleast_2d(model.coef_), np.atleast_1d(model.intercept_)
    if coef.shape[0] == 1:
        sign = 1.0 if target == 1 or not hasattr(model, "classes_") else -1.0
        return sign * coef[0], sign * intercept[0]
    return coef[target], intercept[target]


@pytest.mark.parametrize("case", sorted(CASES))
def test_words_get_w_times_x_of_their_features(tmp_path, corpus, case):
    texts, two, three = corpus
    make_vectorizer, make_model, options, labels = CASES[case]
    pipeline = Pipeline([("vectorizer", make_vectorizer()), ("model", make_model())])
    pipeline.fit(texts, two if labels == "two" else three)
    path = export(pipeline, tmp_path / "model.onnx", **options)
    vectorizer, model = pipeline.steps[0][1], pipeline.steps[-1][1]
    results = lrptool.explain_text(str(path), PROBES, method="zero", dtype=np.float64)
    reference = onnxruntime_scores(path, PROBES)
    decision = model.decision_function(vectorizer.transform(PROBES)) if hasattr(model, "decision_function") \
        else model.predict(vectorizer.transform(PROBES))
    for index, (text, result) in enumerate(zip(PROBES, results)):
        target = result.target
        # the score: onnxruntime's output of the whole model, and scikit-learn's decision function
        assert result.score == pytest.approx(float(reference[index, target]), rel=1e-5, abs=1e-6)
        expected_score = decision[index] if np.ndim(decision) == 1 else decision[index, target]
        if np.ndim(decision) == 1 and target == 0 and hasattr(model, "classes_"):
            expected_score = -expected_score
        assert result.score == pytest.approx(float(expected_score), rel=1e-5, abs=1e-6)
        # each word: w_f · x_f of its features, x from scikit-learn's vectorizer, w from its coefficients
        weight, bias = decision_weights(model, target)
        features = vectorizer.transform([text]).toarray()[0]
        expected = expected_token_relevance(result.tokens, vectorizer, weight * features)
        np.testing.assert_allclose(result.relevance, expected, rtol=1e-5, atol=1e-6)
        # conservation: the words and the bias make the score
        assert float(np.sum(result.relevance)) + bias == pytest.approx(result.score, rel=1e-5, abs=1e-6)
        assert result.score - result.total == pytest.approx(bias, rel=1e-5, abs=1e-6)
        # the text's own words, as the model's tokenizer splits them
        assert all(text[s:e] == token for token, (s, e) in zip(result.tokens, result.spans))
    assert results[3].tokens == ["xyzzy"] and results[3].relevance.tolist() == [0.0]
    assert results[0].tokens == ["Brilliant", "brilliant", "film"]
    assert results[0].relevance[0] == results[0].relevance[1]   # one feature, two occurrences, equal parts


def test_a_character_analyzer_gives_each_character_its_share(tmp_path, corpus):
    texts, two, _ = corpus
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3))
    pipeline = Pipeline([("v", vectorizer), ("m", LogisticRegression())]).fit(texts, two)
    path = export(pipeline, tmp_path / "characters.onnx", zipmap=False, raw_scores=True)
    results = lrptool.explain_text(str(path), PROBES, method="zero", dtype=np.float64)
    reference = onnxruntime_scores(path, PROBES)
    decision = pipeline.decision_function(PROBES)
    for index, (text, result) in enumerate(zip(PROBES, results)):
        assert result.tokens == list(text)
        assert result.score == pytest.approx(float(reference[index, result.target]), rel=1e-5, abs=1e-6)
        assert result.score == pytest.approx((1 if result.target == 1 else -1) * float(decision[index]), rel=1e-5)
        weight, bias = decision_weights(pipeline.steps[-1][1], result.target)
        share = weight * vectorizer.transform([text]).toarray()[0]
        lowered, expected = text.lower(), np.zeros(len(text))
        grams = [(lowered[i:i + n], i, n) for n in (1, 2, 3) for i in range(len(text) - n + 1)
                 if lowered[i:i + n] in vectorizer.vocabulary_]
        for gram, start, n in grams:
            occurrences = sum(1 for other, _, _ in grams if other == gram)
            expected[start:start + n] += share[vectorizer.vocabulary_[gram]] / occurrences / n
        np.testing.assert_allclose(result.relevance, expected, rtol=1e-5, atol=1e-7)
        assert float(np.sum(result.relevance)) + bias == pytest.approx(result.score, rel=1e-5, abs=1e-6)


def test_conservation_is_exact_in_float64(tmp_path, corpus):
    texts, two, _ = corpus
    pipeline = Pipeline([("v", CountVectorizer(ngram_range=(1, 2))), ("m", LogisticRegression())]).fit(texts, two)
    path = export(pipeline, tmp_path / "model.onnx", zipmap=False, raw_scores=True)
    for result in lrptool.explain_text(str(path), PROBES, method="zero", dtype=np.float64):
        bias = (1 if result.target == 1 else -1) * np.float32(pipeline.steps[-1][1].intercept_[0])
        assert abs(result.total + float(bias) - result.score) < 1e-9 * max(1.0, abs(result.score))


def run(*args):
    return subprocess.run(COMMAND + [str(a) for a in args], capture_output=True)


def test_cli_explains_raw_text_with_the_models_tokenizer(tmp_path, corpus):
    texts, two, _ = corpus
    pipeline = Pipeline([("v", TfidfVectorizer(ngram_range=(1, 2))), ("m", LogisticRegression())]).fit(texts, two)
    path = export(pipeline, tmp_path / "sentiment.onnx", raw_scores=True)   # default ZipMap output
    inputs = tmp_path / "texts.txt"
    inputs.write_text("A brilliant, brilliant film!\nboring and dull xyzzy\t1\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run("explain-text", path, inputs, "-o", out, "--preset", "zero", "--tokenizer", "words")
    assert result.returncode == 0, result.stderr
    errors = result.stderr.decode()
    assert "the model reads raw text with its own tokenizer; --tokenizer words is not used" in errors
    records = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    first, second = records
    assert first["tokens"] == ["A", "brilliant", "brilliant", "film"]
    assert first["offsets"] == [[0, 1], [2, 11], [13, 22], [23, 27]]
    assert first["out_of_vocabulary"] == [0] and first["relevance"][0] == 0.0
    assert second["target"] == 1 and second["out_of_vocabulary"] == [3]
    vectorizer, model = pipeline.steps[0][1], pipeline.steps[-1][1]
    reference = onnxruntime_scores(path, [r["text"] for r in records])
    for index, record in enumerate(records):
        weight, bias = decision_weights(model, record["target"])
        features = vectorizer.transform([record["text"]]).toarray()[0]
        expected = expected_token_relevance(record["tokens"], vectorizer, weight * features)
        np.testing.assert_allclose(record["relevance"], expected, rtol=1e-5, atol=1e-6)
        assert record["score"] == pytest.approx(float(reference[index, record["target"]]), rel=1e-5, abs=1e-6)
        assert record["absorbed"] == pytest.approx(bias, rel=1e-5, abs=1e-6)
        assert record["relevance_sum"] + record["absorbed"] == pytest.approx(record["score"], abs=1e-9)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('class="t"') + page.count('class="t oov"') == sum(len(r["tokens"]) for r in records)
    assert "brilliant" in page and "xyzzy" in page
    # words outside the vocabulary are marked as such (dotted underline, said on hover)
    unknown = sum(len(r["out_of_vocabulary"]) for r in records)
    assert unknown > 0 and page.count('class="t oov"') == unknown
    assert '>xyzzy</span>' in page and "xyzzy: R = 0 (not in the model's vocabulary)" in page


def test_a_tokenizer_lrptool_cannot_reproduce_is_refused_in_one_line(tmp_path, corpus):
    texts, two, _ = corpus
    vectorizer = CountVectorizer(token_pattern=r"[a-z]+|[0-9]+")
    pipeline = Pipeline([("v", vectorizer), ("m", LogisticRegression())]).fit(texts, two)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_model = skl2onnx.convert_sklearn(pipeline, initial_types=[("text", StringTensorType([None, 1]))],
                                              options={id(vectorizer): {"tokenexp": ""}})
    path = tmp_path / "alternation.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    inputs = tmp_path / "texts.txt"
    inputs.write_text("a fine film\n")
    result = run("explain-text", path, inputs, "-o", tmp_path / "out")
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "'[a-z]+|[0-9]+'" in lines[0] and "export the vectorizer" in lines[0], lines
    assert not (tmp_path / "out" / "explanations.jsonl").exists()


def test_cli_explains_a_one_vs_one_svm_on_raw_text_and_says_what_its_score_is(tmp_path, corpus):
    from sklearn.svm import SVC

    texts, _, three = corpus
    pipeline = Pipeline([("v", TfidfVectorizer()), ("m", SVC(kernel="linear"))]).fit(texts, three)
    path = export(pipeline, tmp_path / "svm.onnx", zipmap=False)
    inputs = tmp_path / "texts.txt"
    inputs.write_text("\n".join(PROBES) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run("explain-text", path, inputs, "-o", out, "--preset", "zero")
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().count("explained as each class's sum of its 2 pairwise decision values") == 1
    records = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    vectorizer, model = pipeline.steps[0][1], pipeline.steps[-1][1]
    x = vectorizer.transform(PROBES).toarray()
    pairwise = model.set_params(decision_function_shape="ovo")    # the same fit, its pairwise decision values
    signs = np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0], [0.0, 1.0, -1.0]])   # pairs (0,1), (0,2), (1,2)
    sums = pairwise.decision_function(x) @ signs
    weights, biases = signs.T @ pairwise.coef_.toarray(), signs.T @ pairwise.intercept_
    for index, record in enumerate(records):
        target = record["target"]
        assert target == int(np.argmax(sums[index]))
        assert record["score"] == pytest.approx(float(sums[index, target]), rel=1e-5, abs=1e-6)
        expected = expected_token_relevance(record["tokens"], vectorizer, weights[target] * x[index])
        np.testing.assert_allclose(record["relevance"], expected, rtol=1e-5, atol=1e-6)
        assert record["absorbed"] == pytest.approx(float(biases[target]), rel=1e-5, abs=1e-6)


# -- front ends written by hand: every setting lrptool reproduces, against onnxruntime ----------------------------

UNIGRAMS = ["film", "great", "story", "dull", "a", "fun", "ok", "istanbul", "straße"]
BIGRAMS = [("great", "film"), ("dull", "story"), ("a", "great")]
TRIGRAMS = [("a", "great", "film")]
FORM_TEXTS = ["A great film, a GREAT film!", "dull story... dull", "great, great film", "fun", "a.ok", "...",
              "a great film a great film great", "Dull, dull STORY ok", "İSTANBUL, Straße: a great film"]
FORMS = {
    # name: (StringNormalizer attributes, Tokenizer attributes, TfIdfVectorizer settings, scalings after it)
    "expression-lower": ({"case_change_action": "LOWER"}, {"tokenexp": "[a-z]+"}, {}, []),
    "expression-upper-min-2": ({"case_change_action": "UPPER"}, {"tokenexp": "[A-Z]+", "mincharnum": 2}, {}, []),
    "separators": ({"case_change_action": "LOWER"}, {"separators": [" ", "[.,!]"]}, {}, [("Normalizer", "L1")]),
    "separators-min-3-marked": ({"case_change_action": "LOWER"}, {"separators": [" ", ",", "[.]+"], "mincharnum": 3,
                                                                 "mark": 1}, {}, [("Normalizer", "MAX")]),
    "skip-grams": ({"case_change_action": "LOWER"}, {"tokenexp": "[a-z]+"}, {"max_skip_count": 1},
                   [("Normalizer", "L2")]),
    "bigrams-only": ({"case_change_action": "LOWER"}, {"tokenexp": "[a-z]+"}, {"min_gram_length": 2}, []),
    "idf": ({"case_change_action": "LOWER"}, {"tokenexp": "[a-z]+"}, {"mode": "IDF"}, [("Div", 2.0)]),
    "tfidf": ({"case_change_action": "LOWER"}, {"tokenexp": "[a-z]+"}, {"mode": "TFIDF"}, [("Normalizer", "L2")]),
    "case-kept": ({"case_change_action": "NONE"}, {"tokenexp": "\\w+"}, {}, []),
    "characters": ({"case_change_action": "LOWER"}, {"separators": [""]}, {"characters": True}, []),
}


def hand_built_model(normalizer, tokenizer, counting, scalings, seed=0):
    """text (N,) → StringNormalizer → Tokenizer → TfIdfVectorizer → scalings → LinearRegressor, the pool in a
    random order of output columns."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    counting = dict(counting)
    if counting.pop("characters", False):
        grams = [["a"], ["e"], ["t"], [" "], ["l"]], [["a", " "], ["l", "m"], ["r", "e"]], []
    else:
        grams = [[w] for w in UNIGRAMS], [list(b) for b in BIGRAMS], [list(t) for t in TRIGRAMS]
    pool, starts = [], []
    for n_grams in grams:
        starts.append(len(pool))
        pool += [w for gram in n_grams for w in gram]
    count = sum(len(g) for g in grams)
    size = count
    indexes = rng.permutation(size)
    settings = {"min_gram_length": 1, "max_gram_length": 3, "max_skip_count": 0, "mode": "TF", **counting}
    nodes = [helper.make_node("StringNormalizer", ["text"], ["normal"], locale="C.UTF-8", **normalizer),
             helper.make_node("Tokenizer", ["normal"], ["tokens"], domain="com.microsoft", pad_value="#",
                              **{"mark": 0, "mincharnum": 1, **tokenizer}),
             helper.make_node("TfIdfVectorizer", ["tokens"], ["x0"], pool_strings=pool, ngram_counts=starts,
                              ngram_indexes=indexes.tolist(), weights=rng.uniform(0.5, 2.0, size).tolist(),
                              **settings)]
    initializers = []
    for index, (op, value) in enumerate(scalings):
        if op == "Normalizer":
            nodes.append(helper.make_node("Normalizer", [f"x{index}"], [f"x{index + 1}"], domain="ai.onnx.ml",
                                          norm=value))
        else:
            initializers.append(helper.make_tensor(f"c{index}", TensorProto.FLOAT, [], [value]))
            nodes.append(helper.make_node(op, [f"x{index}", f"c{index}"], [f"x{index + 1}"]))
    weight = rng.normal(size=size)
    nodes.append(helper.make_node("LinearRegressor", [f"x{len(scalings)}"], ["y"], domain="ai.onnx.ml",
                                  coefficients=weight.tolist(), intercepts=[0.25]))
    graph = helper.make_graph(nodes, "text", [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
                              initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3),
                                                   helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("form", sorted(FORMS))
def test_hand_built_front_ends_give_onnxruntimes_scores(tmp_path, form):
    path = tmp_path / "model.onnx"
    path.write_bytes(hand_built_model(*FORMS[form]).SerializeToString())
    session = onnxruntime.InferenceSession(str(path))
    results = lrptool.explain_text(str(path), FORM_TEXTS, method="zero", dtype=np.float64)
    for text, result in zip(FORM_TEXTS, results):
        expected = session.run(None, {"text": np.array([text], dtype=object)})[0]
        assert result.score == pytest.approx(float(expected.reshape(-1)[0]), rel=1e-5, abs=1e-6), text
        assert result.total + 0.25 == pytest.approx(result.score, rel=1e-9, abs=1e-9)
        assert all(text[s:e].lower() == token.lower() for token, (s, e) in zip(result.tokens, result.spans))
    # the whole batch at once: onnxruntime pads the tokens of the shorter texts; the scores do not change
    batch = session.run(None, {"text": np.array(FORM_TEXTS, dtype=object)})[0].reshape(-1)
    np.testing.assert_allclose([r.score for r in results], batch, rtol=1e-5, atol=1e-6)


def test_a_text_onnxruntime_reads_otherwise_is_reported_not_explained(tmp_path):
    """RE2's \\s is [\\t\\n\\f\\r ], Python's also takes the vertical tab: "a\\vb" is one token for onnxruntime, two
    for Python. The CLI compares each text's output with onnxruntime's run of the whole model."""
    model = hand_built_model({"case_change_action": "LOWER"}, {"tokenexp": "[^\\s]+"}, {}, [])
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    inputs = tmp_path / "texts.txt"
    inputs.write_bytes(b"a great film\na\x0bgreat film\n")
    result = run("explain-text", path, inputs, "-o", tmp_path / "out", "--preset", "zero")
    assert result.returncode == 1
    errors = result.stderr.decode()
    assert f"skipped {inputs}:2: onnxruntime's output for this text is [" in errors
    assert "lrptool's reading of the model's text front end differs here" in errors
    records = [json.loads(line) for line in (tmp_path / "out" / "explanations.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == [1]


@pytest.mark.parametrize("labels", ["two", "three"])
def test_a_probability_export_explains_the_logits_before_its_sigmoid_or_softmax(tmp_path, corpus, labels):
    """skl2onnx's default export of a logistic regression ends in probabilities (a logistic function for two
    classes, a softmax for more). The explained score is the decision value before it, and the words share it
    as w · x; the model's probabilities come back from the explained logits."""
    from lrptool.lrp.canonize import model_outputs

    texts, two, three = corpus
    pipeline = Pipeline([("vectorizer", TfidfVectorizer()), ("model", LogisticRegression())])
    pipeline.fit(texts, two if labels == "two" else three)
    path = export(pipeline, tmp_path / "probabilities.onnx", zipmap=False)
    vectorizer, model = pipeline.steps[0][1], pipeline.steps[-1][1]
    results = lrptool.explain_text(str(path), PROBES, method="zero", dtype=np.float64)
    probabilities = onnxruntime_scores(path, PROBES)
    np.testing.assert_allclose(probabilities, model.predict_proba(vectorizer.transform(PROBES)), rtol=1e-4,
                               atol=1e-6)
    decision = model.decision_function(vectorizer.transform(PROBES))
    logits = np.stack([-decision, decision], axis=1) if decision.ndim == 1 else decision
    normaliser = {"output_operators": ["Sigmoid" if decision.ndim == 1 else "Softmax"]}
    np.testing.assert_allclose(model_outputs(normaliser, logits), probabilities, rtol=1e-5, atol=1e-6)
    for index, (text, result) in enumerate(zip(PROBES, results)):
        target = result.target
        assert target == int(np.argmax(probabilities[index]))
        expected_score = decision[index, target] if decision.ndim == 2 else (1 if target == 1 else -1) * decision[index]
        assert result.score == pytest.approx(float(expected_score), rel=1e-5, abs=1e-6)
        weight, bias = decision_weights(model, target)
        expected = expected_token_relevance(result.tokens, vectorizer, weight * vectorizer.transform([text]).toarray()[0])
        np.testing.assert_allclose(result.relevance, expected, rtol=1e-5, atol=1e-6)
        assert float(np.sum(result.relevance)) + bias == pytest.approx(result.score, rel=1e-5, abs=1e-6)
