"""Raw-text models: a scikit-learn TF-IDF (1–2-gram) logistic regression trained on the bundled corpus and
exported by skl2onnx (needs the test extra), explained from 640 random lines with lrptool.explain_text
(the text front end computed by lrptool, batch 64), against onnxruntime's own run of the whole model on
the same texts in the same run.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_text_frontend.py
"""

import pathlib
import sys
import tempfile
import time
import warnings

import numpy as np
import onnxruntime

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import lrptool  # noqa: E402
from text_support import corpus_texts  # noqa: E402


def main():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType

    texts, labels, _ = corpus_texts()
    vectorizer, model = TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression()
    pipeline = Pipeline([("v", vectorizer), ("m", model)]).fit(texts, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_model = convert_sklearn(pipeline, initial_types=[("text", StringTensorType([None, 1]))],
                                     options={id(vectorizer): {"locale": "C.UTF-8"},
                                              id(model): {"zipmap": False, "raw_scores": True}})
    words = " ".join(texts).split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=12)) for _ in range(640)]
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "tfidf.onnx"
        path.write_bytes(onnx_model.SerializeToString())
        lrptool.explain_text(str(path), lines[:64], method="zero")      # warm-up: imports, reading, compiling
        start = time.perf_counter()
        lrptool.explain_text(str(path), lines, method="zero", batch_size=64)
        explained = time.perf_counter() - start
        session = onnxruntime.InferenceSession(str(path))
        start = time.perf_counter()
        for first in range(0, len(lines), 64):
            session.run(None, {"text": np.array(lines[first:first + 64], dtype=object).reshape(-1, 1)})
        forward = time.perf_counter() - start
    print(f"explained {len(lines) / explained:,.0f} texts/s (reading the model included); onnxruntime's forward "
          f"{len(lines) / forward:,.0f} texts/s; ratio {explained / forward:.1f}×")


if __name__ == "__main__":
    main()
