"""`lrptool inspect MODEL --check IMAGE`: the per-node absorption table of one image, checked against
relevance sums written out by hand for a one-layer model, and one-line errors for bad input."""

import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

PIXELS = np.array([[10, 200], [60, 120]], dtype=np.uint8)
WEIGHT = np.array([[0.5, -0.25, 1.0, 0.75], [-0.4, 0.3, 0.2, -0.1]], dtype=np.float32)
BIAS = np.array([30.0, -5.0], dtype=np.float32)
LONG = "a_very_long_node_name_that_an_exporter_made_up_" * 3


def lrptool(*args):
    environment = dict(os.environ, COLUMNS="100")
    return subprocess.run([sys.executable, "-m", "lrptool.cli", *map(str, args)], capture_output=True, text=True,
                          env=environment)


def dense_model(path):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], name=LONG, transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(BIAS, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_absorption_table_matches_the_hand_computed_sums(tmp_path):
    model = dense_model(tmp_path / "dense.onnx")
    picture = tmp_path / "picture.png"
    Image.fromarray(PIXELS, mode="L").save(picture)
    result = lrptool("inspect", model, "--preset", "epsilon", "--check", picture, "--preprocess", "raw",
                     "--channels", "gray")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    x = PIXELS.reshape(-1).astype(np.float64)
    z = WEIGHT.astype(np.float64) @ x + BIAS
    target = int(np.argmax(z))
    # the ε rule hands Σ_i x_i w_ti / (z_t + ε) · z_t to the input; the bias keeps b_t / z_t of it
    kept = (WEIGHT[target] @ x) / (z[target] + 1e-6) * z[target]
    assert f"class {target}" in result.stdout
    assert f"explained score {z[target]:.6g}" in result.stdout
    assert f"the input keeps {kept:.6g}" in result.stdout
    dense_row = next(line for line in lines if " Dense " in line)
    cells = dense_row.split()
    assert "…" in cells[0]  # the long name is elided to fit
    assert cells[1:4] == ["Dense", "epsilon(ε=1e-06)", f"{z[target]:.4g}"]
    assert cells[4] == f"{kept:.4g}"
    assert cells[5] == f"{(z[target] - kept) / z[target]:+.2%}"


def test_bad_image_gets_one_line(tmp_path):
    model = dense_model(tmp_path / "dense.onnx")
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    for image, words in ((text, "not an image"), (tmp_path / "missing.png", "no such file")):
        result = lrptool("inspect", model, "--check", image, "--preprocess", "raw", "--channels", "gray")
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lrptool: error: ") and "Traceback" not in result.stderr
        assert str(image) in lines[0] and words in lines[0], lines[0]


def test_gradient_method_is_refused(tmp_path):
    model = dense_model(tmp_path / "dense.onnx")
    picture = tmp_path / "picture.png"
    Image.fromarray(PIXELS, mode="L").save(picture)
    result = lrptool("inspect", model, "--preset", "gradient", "--check", picture, "--preprocess", "raw")
    assert result.returncode == 2 and "LRP preset" in result.stderr
