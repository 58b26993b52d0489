"""`lrptool inspect` fits the terminal: long node names are elided in the middle; --wide prints them whole."""

import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

from lrptool.inspect import elide, graph_summary
from converters import load_model

PREFIX = "/model/backbone/stage_3/block_12/depthwise_separable/"
LONG = [PREFIX + "conv_pointwise_expand/Conv", PREFIX + "activation_after_expand/Relu",
        PREFIX + "classifier_head_fully_connected/Gemm"]


def long_named_model(path):
    """Conv → Relu → Flatten → Gemm with node and tensor names of about 90 characters."""
    rng = np.random.default_rng(0)
    weights = [helper.make_tensor(PREFIX + "conv.weight", TensorProto.FLOAT, (4, 3, 3, 3),
                                  rng.normal(size=(4, 3, 3, 3)).ravel().tolist()),
               helper.make_tensor(PREFIX + "fc.weight", TensorProto.FLOAT, (5, 4 * 6 * 6),
                                  rng.normal(size=(5, 144)).ravel().tolist())]
    nodes = [helper.make_node("Conv", ["input_image_tensor", PREFIX + "conv.weight"], [LONG[0] + "_output_0"],
                              name=LONG[0], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [LONG[0] + "_output_0"], [LONG[1] + "_output_0"], name=LONG[1]),
             helper.make_node("Flatten", [LONG[1] + "_output_0"], [PREFIX + "flat"], name=PREFIX + "Flatten"),
             helper.make_node("Gemm", [PREFIX + "flat", PREFIX + "fc.weight"], ["class_scores_" + "x" * 80],
                              name=LONG[2], transB=1)]
    graph = helper.make_graph(nodes, "long_names",
                              [helper.make_tensor_value_info("input_image_tensor", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("class_scores_" + "x" * 80, TensorProto.FLOAT, [1, 5])],
                              weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_elide_keeps_both_ends():
    assert elide("abcdefghij", 10) == "abcdefghij"
    assert elide("abcdefghij", 5) == "ab…ij"
    assert elide("abcdefghij", 6) == "abc…ij"
    assert len(elide("x" * 300, 37)) == 37


def test_summary_fits_the_width_and_keeps_the_ends_of_names(tmp_path):
    graph = load_model(long_named_model(tmp_path / "long.onnx"))
    wide = graph_summary(graph, source=str(tmp_path / "long.onnx"))
    assert max(len(line) for line in wide.splitlines()) > 150
    assert all(name in wide for name in LONG)
    for width in (80, 100, 120):
        text = graph_summary(graph, source="m" * 200, width=width)
        assert max(len(line) for line in text.splitlines()) <= width, text
        # both ends of each name survive: "/model/ba…and/Conv" still says which node it is
        rows = {line.split()[0]: line.split()[1] for line in text.splitlines() if line[:1].isdigit()}
        for index, name in zip(("0", "1", "3"), LONG):
            cell = rows[index]
            assert "…" in cell and len(cell) < len(name) and cell.startswith("/model/") and cell.endswith(name[-5:])
        assert "total: 4 nodes" in text and "Dense 1, Flatten 1" in " ".join(text.split())


def lrptool(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lrptool.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))


def test_inspect_fits_columns_and_wide_prints_everything(tmp_path):
    model = long_named_model(tmp_path / "long.onnx")
    plain = os.environ.copy()
    plain.pop("COLUMNS", None)
    piped = subprocess.run([sys.executable, "-m", "lrptool.cli", "inspect", str(model), "--preset", "epsilon"],
                           capture_output=True, text=True, env=plain)
    assert piped.returncode == 0, piped.stderr
    assert max(len(line) for line in piped.stdout.splitlines()) <= 100     # not a terminal: 100
    # node names give way first: at 100 characters the rules stay whole
    assert "epsilon(ε=1e-06)" in piped.stdout and "…" in piped.stdout
    narrow = lrptool("inspect", model, "--preset", "epsilon", env={"COLUMNS": "72"})
    assert narrow.returncode == 0, narrow.stderr
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 72, narrow.stdout
    assert "…" in narrow.stdout
    wide = lrptool("inspect", model, "--wide", env={"COLUMNS": "72"})
    assert wide.returncode == 0 and all(name in wide.stdout for name in LONG)
    assert "…" not in wide.stdout
