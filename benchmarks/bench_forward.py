"""Forward-pass speed of lrptool's executor against onnxruntime, measured in the same process.

Prints, for each model, the median time per batch of both and the ratio lrptool / onnxruntime.
Run with ``make bench`` (or ``python benchmarks/bench_forward.py``).
"""

import pathlib
import statistics
import time

import numpy as np
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from converters.onnx_reader import read_onnx
from converters.onnx_writer import graph_to_onnx
from lrptool.executor import run_graph

ROOT = pathlib.Path(__file__).resolve().parent.parent


def vgg_like(size=64, channels=(32, 64, 128), classes=100, seed=0):
    """A VGG-style network with random weights: [conv3x3-BN-ReLU]x2 + maxpool per stage, then 2 dense layers."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current, c_in, spatial = "x", 3, size

    def init(name, array):
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    for stage, c_out in enumerate(channels):
        for layer in range(2):
            name = f"s{stage}l{layer}"
            w = rng.normal(0, np.sqrt(2 / (9 * c_in)), (c_out, c_in, 3, 3))
            nodes.append(helper.make_node("Conv", [current, init(f"{name}.w", w), init(f"{name}.b", rng.normal(0, .1, c_out))],
                                          [f"{name}.conv"], pads=[1, 1, 1, 1]))
            bn = [init(f"{name}.{k}", v) for k, v in (("g", rng.uniform(.5, 1.5, c_out)), ("beta", rng.normal(0, .1, c_out)),
                                                      ("m", rng.normal(0, .1, c_out)), ("v", rng.uniform(.5, 1.5, c_out)))]
            nodes.append(helper.make_node("BatchNormalization", [f"{name}.conv"] + bn, [f"{name}.bn"]))
            nodes.append(helper.make_node("Relu", [f"{name}.bn"], [f"{name}.relu"]))
            current, c_in = f"{name}.relu", c_out
        nodes.append(helper.make_node("MaxPool", [current], [f"s{stage}.pool"], kernel_shape=[2, 2], strides=[2, 2]))
        current, spatial = f"s{stage}.pool", spatial // 2
    nodes.append(helper.make_node("Flatten", [current], ["flat"]))
    features = c_in * spatial * spatial
    nodes.append(helper.make_node("Gemm", ["flat", init("fc1.w", rng.normal(0, np.sqrt(2 / features), (256, features))),
                                           init("fc1.b", np.zeros(256))], ["fc1"], transB=1))
    nodes.append(helper.make_node("Relu", ["fc1"], ["fc1.relu"]))
    nodes.append(helper.make_node("Gemm", ["fc1.relu", init("fc2.w", rng.normal(0, .05, (classes, 256))),
                                           init("fc2.b", np.zeros(classes))], ["y"], transB=1))
    graph = helper.make_graph(nodes, "vgg_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def median_seconds(function, repeats):
    function()  # warm-up (Numba compilation, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(label, model, batch, repeats=7):
    graph = read_onnx(model)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    ours = median_seconds(lambda: run_graph(graph, batch), repeats)
    theirs = median_seconds(lambda: session.run(None, {input_name: batch}), repeats)
    (reference,) = session.run(None, {input_name: batch})
    (result,) = run_graph(graph, batch).values()
    error = float(np.max(np.abs(result - reference)) / (np.max(np.abs(reference)) + 1e-12))
    print(f"{label:<34} lrptool {ours * 1e3:9.2f} ms   onnxruntime {theirs * 1e3:9.2f} ms   "
          f"ratio {ours / theirs:6.2f}x   max rel. diff {error:.1e}")
    return ours / theirs


def main():
    rng = np.random.default_rng(0)
    print("forward pass, median of 7 runs (ratio = lrptool time / onnxruntime time)")
    # the file fixes batch 1; its re-export through lrptool has a free batch for onnxruntime too
    mnist = graph_to_onnx(read_onnx(str(ROOT / "sample_models" / "mnist" / "mnist.onnx")))
    compare("sample MNIST CNN, batch 256", mnist, rng.random((256, 1, 28, 28), dtype=np.float32) * 255)
    compare("VGG-style 64x64, batch 16", vgg_like(), rng.random((16, 3, 64, 64), dtype=np.float32))
    compare("VGG-style 128x128, batch 4", vgg_like(size=128), rng.random((4, 3, 128, 128), dtype=np.float32))


if __name__ == "__main__":
    main()
