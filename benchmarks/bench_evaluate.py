"""`lrptool evaluate` throughput: perturbation steps scored per second (images × methods × steps),
batched as lrptool does against a naive loop that scores one image, one method, one step at a time,
in the same run, on the same relevance maps. The explanations themselves are computed once and
are not part of either figure.

The model and digits are the ONNX model zoo MNIST CNN and 100 real MNIST test digits from
../shared/models (or $LRPTOOL_SHARED_MODELS).
"""

import os
import pathlib
import time

import h5py
import numpy as np

from converters import load_model
from lrptool.evaluate import (onnxruntime_scorer, per_image_replacements, perturbation_curves, region_ranking,
                              region_slices)
from lrptool.lrp import Explainer

SHARED = pathlib.Path(os.environ.get("LRPTOOL_SHARED_MODELS", pathlib.Path(__file__).resolve().parents[2] / "shared" / "models"))
METHODS = ("epsilon-plus-flat", "epsilon", "gradient", "sensitivity", "random")
PATCH, STEPS = 4, 20


def main():
    digits = SHARED / "keras/dl4j-2018/modelimport/keras/examples/mnist_mlp/mnist_mlp_tf_keras_2_inputs_and_outputs.h5"
    with h5py.File(digits, "r") as data:
        x = data["inputs/dense_1_input"][()].reshape(-1, 1, 28, 28).astype(np.float32)
    graph = load_model(SHARED / "onnx/mnist-zoo-opset8/mnist.onnx")
    explainers = {m: Explainer(graph, m, bounds=(0.0, 1.0), quiet=True) for m in METHODS}
    targets = explainers["epsilon"].explain(x).targets
    relevances = {m: e.explain(x, target=targets).relevance for m, e in explainers.items()}
    score = onnxruntime_scorer(explainers["epsilon"].graph)
    units = len(x) * len(METHODS) * STEPS

    start = time.perf_counter()
    perturbation_curves(score, x, targets, relevances, PATCH, STEPS, ("morf",), "uniform", (0.0, 1.0), seed=0)
    batched = time.perf_counter() - start

    values = per_image_replacements(x, "uniform", (0.0, 1.0), PATCH, seed=0)
    subset = 20  # the naive loop on a fifth of the images, scaled up
    start = time.perf_counter()
    for method in METHODS:
        ranking = region_ranking(relevances[method][:subset], PATCH, "morf")
        for i in range(subset):
            image = x[i:i + 1].copy()
            score(image, targets[i:i + 1])
            for step in range(STEPS):
                rows, cols = region_slices(ranking[i, step], PATCH, x.shape[3])
                image[0][:, rows, cols] = values[i][:, rows, cols]
                score(image, targets[i:i + 1])
    naive = (time.perf_counter() - start) * len(x) / subset

    print(f"{len(x)} MNIST digits x {len(METHODS)} methods x {STEPS} steps (MoRF, patch {PATCH}, uniform noise)")
    print(f"batched (lrptool): {units / batched:9.0f} steps/s   ({batched:.2f} s)")
    print(f"naive loop:        {units / naive:9.0f} steps/s   ({naive:.2f} s, scaled from {subset} images)")
    print(f"speed-up:          {naive / batched:9.1f}x")


if __name__ == "__main__":
    main()
