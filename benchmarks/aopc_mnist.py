"""AOPC of every method on the ONNX model zoo MNIST CNN over 100 real MNIST test digits
(../shared/models or $LRPTOOL_SHARED_MODELS), MoRF and LeRF, patch 4, 20 steps, for removal to the
background (zero) and for uniform noise. Prints one line per replacement and order."""

import os
import pathlib

import h5py
import numpy as np

from converters import load_model
from lrptool.evaluate import evaluate_methods

SHARED = pathlib.Path(os.environ.get("LRPTOOL_SHARED_MODELS", pathlib.Path(__file__).resolve().parents[2] / "shared" / "models"))
METHODS = ["epsilon-plus-flat", "epsilon-plus", "epsilon", "epsilon-alpha2-beta1", "gradient", "gradient-x-input",
           "sensitivity"]


def main():
    digits = SHARED / "keras/dl4j-2018/modelimport/keras/examples/mnist_mlp/mnist_mlp_tf_keras_2_inputs_and_outputs.h5"
    with h5py.File(digits, "r") as data:
        x = data["inputs/dense_1_input"][()].reshape(-1, 1, 28, 28).astype(np.float32)
    graph = load_model(SHARED / "onnx/mnist-zoo-opset8/mnist.onnx")
    for replacement in ("zero", "uniform"):
        _, table, _ = evaluate_methods(graph, x, METHODS, patch=4, steps=20, orders=("morf", "lerf"),
                                       replacement=replacement, bounds=(0.0, 1.0))
        for order in ("morf", "lerf"):
            print(f"{replacement:7s} {order}: " + "; ".join(f"{r['method']} {r['aopc']:.2f}±{r['sem']:.2f}"
                                                          for r in table[order]))


if __name__ == "__main__":
    main()
