"""Class names from an ONNX model's metadata_props: the forms exporters write, and `explain` using them."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from converters import load_model
from lrptool.model_labels import labels_from_metadata


@pytest.mark.parametrize("metadata, expected, key", [
    ({"names": "{0: 'person', 1: 'bicycle', 2: 'car'}"}, ["person", "bicycle", "car"], "names"),      # Ultralytics
    ({"class_names": '{"0": "background", "1": "field"}'}, ["background", "field"], "class_names"),   # json.dumps
    ({"class_names": '[{"0": "background", "1": "road"}]'}, ["background", "road"], "class_names"),   # per output
    ({"labels": '["cat", "dog"]'}, ["cat", "dog"], "labels"),
    ({"classes": "cat, dog,bird"}, ["cat", "dog", "bird"], "classes"),
    ({"Class-Labels": "cat\ndog\r\nbird\n"}, ["cat", "dog", "bird"], "Class-Labels"),
    ({"class_labels": "1:dog\n0:cat"}, ["cat", "dog"], "class_labels"),
    ({"id2label": '{"1": "POSITIVE", "0": "NEGATIVE"}'}, ["NEGATIVE", "POSITIVE"], "id2label"),
    ({"author": "me", "classLabels": "['a', 'b']"}, ["a", "b"], "classLabels"),
])
def test_label_forms(metadata, expected, key):
    names, found, problem = labels_from_metadata(metadata)
    assert (names, found, problem) == (expected, key, None)


@pytest.mark.parametrize("value, why", [
    ("{0: 'a', 2: 'c'}", "indices are not 0…1"),
    ('{"x": "a"}', "not class indices"),
    ("a,,b", "empty name"),
    ("[[1, 2]]", "neither a list nor a dict"),
])
def test_unreadable_labels_are_reported_not_used(value, why):
    names, key, problem = labels_from_metadata({"names": value})
    assert names is None and key is None and why in problem and "'names'" in problem


def test_no_label_keys():
    assert labels_from_metadata({"author": "me", "imgsz": "[640, 640]"}) == (None, None, None)


def classifier(path, metadata):
    """A 1×4×4 grey-image classifier with 3 outputs: y = W · flatten(x), W fixed so that a picture
    whose top-left pixel is bright is class 2."""
    weight = np.zeros((3, 16), dtype=np.float32)
    weight[0, 15] = weight[1, 5] = weight[2, 0] = 1.0
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [onnx.numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return path


def lrptool(*args):
    return subprocess.run([sys.executable, "-m", "lrptool.cli", *map(str, args)], capture_output=True, text=True)


def test_reader_keeps_the_metadata(tmp_path):
    graph = load_model(classifier(tmp_path / "m.onnx", {"names": "{0: 'a', 1: 'b', 2: 'c'}", "stride": "32"}))
    assert graph.metadata == {"names": "{0: 'a', 1: 'b', 2: 'c'}", "stride": "32"}


def test_explain_names_classes_from_the_metadata_and_labels_override(tmp_path):
    picture = np.zeros((4, 4), dtype=np.uint8)
    picture[0, 0] = 255
    Image.fromarray(picture).save(tmp_path / "bright.png")
    model = classifier(tmp_path / "m.onnx", {"names": "{0: 'cat', 1: 'dog', 2: 'bird'}"})
    result = lrptool("explain", model, tmp_path / "bright.png", "-o", tmp_path / "out", "--preprocess", "mnist",
                     "--size", "4", "--format", "npy")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.splitlines()[0])
    assert record["target"] == 2 and record["label"] == "bird"
    said = [line for line in result.stderr.splitlines() if "metadata" in line]
    assert len(said) == 1 and "'names'" in said[0] and "3 names" in said[0]

    (tmp_path / "mine.txt").write_text("one\ntwo\nthree\n")
    result = lrptool("explain", model, tmp_path / "bright.png", "-o", tmp_path / "out2", "--preprocess", "mnist",
                     "--size", "4", "--format", "npy", "--labels", tmp_path / "mine.txt")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["label"] == "three"
    assert "metadata" not in result.stderr


def test_a_wrong_count_in_the_metadata_is_one_line(tmp_path):
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "dark.png")
    model = classifier(tmp_path / "m.onnx", {"labels": '["cat", "dog"]'})
    result = lrptool("explain", model, tmp_path / "dark.png", "-o", tmp_path / "out", "--preprocess", "mnist",
                     "--size", "4")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrptool: error: ") and "m.onnx" in lines[0]
    assert "2 classes for a model with 3 outputs" in lines[0] and "--labels" in lines[0]
    assert not (tmp_path / "out").exists()
    (tmp_path / "mine.txt").write_text("one\ntwo\nthree\n")
    fixed = lrptool("explain", model, tmp_path / "dark.png", "-o", tmp_path / "out", "--preprocess", "mnist",
                    "--size", "4", "--labels", tmp_path / "mine.txt")
    assert fixed.returncode == 0, fixed.stderr
