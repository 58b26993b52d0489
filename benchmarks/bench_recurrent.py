"""Recurrent layers: how exactly the relevance pass (Arras et al. 2017) conserves and agrees with the
modified-gradient formulation over every LSTM/GRU/RNN form the tests build, and how fast textgenrnn
(../shared/models or $LRPTOOL_SHARED_MODELS) is explained with explain_text, batch 64, by the compiled
explainer and by the eager walk (the one-time preparation said apart).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_recurrent.py
"""

import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from converters.onnx_reader import read_onnx  # noqa: E402
from lrptool.lrp.engine import ReverseWalk  # noqa: E402
from recurrent_support import recurrent_model  # noqa: E402
from test_recurrent import CASES, DIRECTIONS, modified_backward, time_major_input  # noqa: E402

SHARED = pathlib.Path(os.environ.get("LRPTOOL_SHARED_MODELS", pathlib.Path(__file__).resolve().parents[2] / "shared" / "models"))


def conservation():
    worst = 0.0
    for op, options in CASES:
        if "clip" in options:
            continue
        for direction in DIRECTIONS:
            graph = read_onnx(recurrent_model(op, direction, **options))
            walk = ReverseWalk(graph, mode="lrp", dtype=np.float64, recurrent_bias="spread", keep_layers=True)
            values = walk.forward(time_major_input().astype(np.float64))
            rng = np.random.default_rng(3)
            layers, _ = walk.run(values, {o: values[o] * rng.normal(size=values[o].shape) for o in graph.outputs})
            node = next(n for n in graph.nodes if n.op == op)
            incoming = sum(float(np.sum(layers[t])) for t in node.outputs)
            passed = sum(float(np.sum(layers[t])) for t in node.inputs if t in layers and "lengths" not in t)
            worst = max(worst, abs(incoming - passed) / max(1.0, abs(incoming)))
    return worst


def agreement():
    from onnx import numpy_helper

    worst = 0.0
    for op, reset in (("LSTM", 0), ("GRU", 0), ("GRU", 1)):
        for direction in DIRECTIONS:
            model = recurrent_model(op, direction, linear_before_reset=reset, scale=0.8, seed=5)
            graph = read_onnx(model)
            walk = ReverseWalk(graph, mode="lrp", dtype=np.float64)
            x_time = time_major_input(7).astype(np.float64)
            values = walk.forward(x_time)
            rng = np.random.default_rng(8)
            grads = {o: rng.normal(size=values[o].shape) for o in graph.outputs[:2]}
            result, _ = walk.run(values, {o: values[o] * g for o, g in grads.items()})
            params = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
            x = np.transpose(x_time, (1, 0, 2))
            seed_y = np.transpose(grads["Y"], (1, 2, 0, 3))
            expected = np.zeros_like(x)
            for d in range(2 if direction == "bidirectional" else 1):
                expected += modified_backward(op, (params["W"][d], params["R"][d], params["B"][d]), x, seed_y[d],
                                              grads["Y_h"][d], 1e-3, reverse=direction == "reverse" or d == 1,
                                              linear_before_reset=reset)
            worst = max(worst, float(np.abs(np.transpose(result["X"], (1, 0, 2)) - expected).max()))
    return worst


def textgenrnn_speed():
    import lrptool
    from converters.keras_reader import read_keras
    from lrptool.plugins import load_custom_layers

    folder = SHARED / "text" / "textgenrnn"
    if not folder.is_dir():
        return None
    load_custom_layers("lrptool.plugins.attention_weighted_average")
    graph = read_keras(folder / "textgenrnn_weights.hdf5",
                       model_config=pathlib.Path(__file__).resolve().parents[1] / "examples" / "textgenrnn" / "model.json")
    from lrptool.lrp import Explainer

    texts = ["What is goin", "I love this movi", "The quick brown fox jumps over the lazy d", "Thank yo"] * 16
    vocabulary = str(folder / "textgenrnn_vocab.json")
    speeds = {}
    for compiled in (True, False):
        start = time.perf_counter()
        explainer = Explainer(graph, "epsilon", compiled=compiled, quiet=True)
        prepared = time.perf_counter() - start
        lrptool.explain_text(graph, texts[:2], tokenizer=vocabulary, layout="end", explainer=explainer)  # warm up
        start = time.perf_counter()
        lrptool.explain_text(graph, texts, tokenizer=vocabulary, layout="end", explainer=explainer, batch_size=64)
        speeds["compiled" if compiled else "eager"] = (len(texts) / (time.perf_counter() - start), prepared)
    return speeds


def main():
    print(f"exact mode, largest |Σ R_out − Σ R_in| / max(1, |Σ R_out|) over {len(CASES)} forms × 3 directions: "
          f"{conservation():.2e}")
    print(f"largest |R − x ⊙ modified gradient| (LSTM, GRU both forms × 3 directions, ε = 1e-3): {agreement():.2e}")
    speeds = textgenrnn_speed()
    if speeds is None:
        print("textgenrnn: no shared models")
    for path, (speed, prepared) in (speeds or {}).items():
        print(f"textgenrnn explain_text, batch 64, {path}: {speed:.1f} texts/s (explainer prepared in {prepared:.1f} s)")


if __name__ == "__main__":
    main()
