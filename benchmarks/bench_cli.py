"""`lrptool explain` overhead: images per second through the command line against the engine alone
on the same tensors, measured in one run.

Writes a few hundred random pictures and a VGG-style model with random weights to a temporary
folder, runs the CLI on them (PNG heatmaps and raw relevance), then runs the engine on the same
preprocessed tensors in this process. The CLI figure is counted from its first to its last JSON
line (steady state, without interpreter start-up and model loading), and also as wall time.
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from converters import load_model
from lrptool.images import load_picture, preprocessing_for, to_tensor
from lrptool.lrp import Explainer

COUNT, SIZE, BATCH = 320, 64, 16


def model(path, seed=0):
    rng = np.random.default_rng(seed)
    nodes, inits, current, channels = [], [], "x", 3
    for index, out in enumerate((32, 32, 64, 64)):
        w = rng.normal(0, np.sqrt(2 / (9 * channels)), (out, channels, 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{index}"),
                  numpy_helper.from_array(rng.normal(0, 0.05, out).astype(np.float32), f"b{index}")]
        nodes += [helper.make_node("Conv", [current, f"w{index}", f"b{index}"], [f"c{index}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{index}"], [f"r{index}"])]
        current, channels = f"r{index}", out
        if index % 2:
            nodes.append(helper.make_node("MaxPool", [current], [f"p{index}"], kernel_shape=[2, 2], strides=[2, 2]))
            current = f"p{index}"
    features = channels * (SIZE // 4) ** 2
    inits.append(numpy_helper.from_array(rng.normal(0, np.sqrt(1 / features), (10, features)).astype(np.float32), "fc"))
    nodes += [helper.make_node("Flatten", [current], ["f"]), helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "vgg", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def main():
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        images = folder / "images"
        images.mkdir()
        rng = np.random.default_rng(1)
        for index in range(COUNT):
            Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)).save(images / f"{index:04d}.png")
        model(folder / "model.onnx")
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "lrptool.cli", "explain", str(folder / "model.onnx"), str(images),
                                 "-o", str(folder / "out"), "--format", "png,npy", "--batch-size", str(BATCH),
                                 "--preprocess", "imagenet", "--size", f"{SIZE}x{SIZE}", "--resize", "resize"],
                                capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode:
            raise SystemExit(result.stderr)
        # steady state: the CLI run again with timestamps taken from the JSON stream
        process = subprocess.Popen([sys.executable, "-m", "lrptool.cli", "explain", str(folder / "model.onnx"),
                                    str(images), "-o", str(folder / "out2"), "--format", "png,npy", "--batch-size",
                                    str(BATCH), "--preprocess", "imagenet", "--size", f"{SIZE}x{SIZE}", "--resize",
                                    "resize"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        stamps = []
        for line in process.stdout:
            json.loads(line)
            stamps.append(time.perf_counter())
        process.wait()
        steady = (stamps[-1] - stamps[BATCH - 1]) / (len(stamps) - BATCH)

        graph = load_model(folder / "model.onnx")
        pre = preprocessing_for(next(iter(graph.inputs.values())), "imagenet", size=(SIZE, SIZE), resize="resize")
        tensors = np.stack([to_tensor(load_picture(p, pre), pre) for p in sorted(images.iterdir())])
        explainer = Explainer(graph, "epsilon-plus-flat", bounds=pre.bounds(), quiet=True)
        explainer.explain(tensors[:BATCH])
        start = time.perf_counter()
        for index in range(0, COUNT, BATCH):
            explainer.explain(tensors[index:index + BATCH])
        engine = (time.perf_counter() - start) / COUNT
    print(f"{COUNT} images {SIZE}x{SIZE}, VGG-style, epsilon-plus-flat, batch {BATCH}, PNG + npy outputs")
    print(f"engine alone:       {1 / engine:7.1f} images/s")
    print(f"CLI, steady state:  {1 / steady:7.1f} images/s   overhead {steady / engine - 1:+6.1%}")
    print(f"CLI, wall time:     {COUNT / wall:7.1f} images/s   overhead {wall / COUNT / engine - 1:+6.1%} "
          f"(start-up and model loading included)")


if __name__ == "__main__":
    main()
