"""Keras models through the explainer and the command line: relevance sums, inspect, convert, explain."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from converters import load_model
from lrptool.lrp import Explainer

from conftest import shared_models

WRITERS = ("keras2.14_tf2.14", "tf_keras2.21_tf2.21", "keras3.15_tf2.21")
# ε → 0 with the biases left out of the rules conserves relevance layer by layer; the first layer
# takes the flat rule, whose denominators are never zero
CONSERVING = "first=flat,linear=epsilon-nobias:1e-9"


def lrptool(*args):
    return subprocess.run([sys.executable, "-m", "lrptool.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("writer", WRITERS)
def test_lrp_cnn_relevance_sums_are_the_logits(writer):
    folder = shared_models() / "keras" / "writers" / writer
    graph = load_model(folder / "lrp_cnn.h5")
    x = np.load(folder / "lrp_cnn.input.npy").transpose(0, 3, 1, 2)
    reference = np.load(folder / "lrp_cnn.output.npy")
    explanation = Explainer(graph, CONSERVING, dtype=np.float64, quiet=True).explain(x)
    np.testing.assert_allclose(explanation.outputs, reference, rtol=1e-4, atol=1e-5)
    sums = explanation.relevance.reshape(len(x), -1).sum(axis=1)
    np.testing.assert_allclose(sums, reference.max(axis=1), rtol=1e-6)


def test_dcgan_discriminator_from_the_command_line(tmp_path):
    root = shared_models() / "keras" / "dl4j-2018" / "modelimport" / "keras" / "examples" / "gans"
    model = root / "dcgan_discriminator.h5"
    images = tmp_path / "images"
    images.mkdir()
    x = np.load(root / "_ref_tfkeras2.15" / "dcgan_discriminator.input.npy")
    for index, image in enumerate(x):
        Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8)).save(images / f"{index}.png")
    inspected = lrptool("inspect", model)
    assert inspected.returncode == 0 and "BatchNorm" in inspected.stdout and "total:" in inspected.stdout
    converted = lrptool("convert", model, "-o", tmp_path / "dcgan.onnx")
    assert converted.returncode == 0, converted.stderr
    session = onnxruntime.InferenceSession(str(tmp_path / "dcgan.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    np.testing.assert_allclose(onnx_out, np.load(root / "_ref_tfkeras2.15" / "dcgan_discriminator.output.npy"),
                               rtol=1e-4, atol=1e-5)
    result = lrptool("explain", model, images, "-o", tmp_path / "out", "--format", "npy,png", "--preprocess", "mnist",
                     "--rules", CONSERVING)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(x)
    for record in records:
        relevance = np.load(record["files"][0])
        assert relevance.shape == (1, 28, 28)
        assert float(relevance.sum(dtype=np.float64)) == pytest.approx(record["score"], rel=1e-4)


def test_input_size_fixes_a_fully_convolutional_model(tmp_path):
    root = shared_models() / "keras" / "dl4j" / "modelimport" / "keras" / "examples"
    free = lrptool("inspect", root / "12net.h5")
    assert free.returncode == 0 and "(N, 3, ?, ?)" in free.stdout
    converted = lrptool("convert", root / "12net.h5", "--input-size", "12x12", "-o", tmp_path / "12net.onnx")
    assert converted.returncode == 0, converted.stderr
    x = np.load(root / "_ref_tfkeras2.15" / "12net.input.npy").transpose(0, 3, 1, 2).astype(np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "12net.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    for index, output in enumerate(outputs):
        expected = np.load(root / "_ref_tfkeras2.15" / f"12net.output_{index}.npy").transpose(0, 3, 1, 2)
        np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)


def test_a_fully_convolutional_keras_model_converts_as_dynamic_as_it_is(tmp_path):
    root = shared_models() / "keras" / "dl4j" / "modelimport" / "keras" / "examples"
    converted = lrptool("convert", root / "12net.h5", "-o", tmp_path / "free.onnx")
    assert converted.returncode == 0, converted.stderr
    session = onnxruntime.InferenceSession(str(tmp_path / "free.onnx"), providers=["CPUExecutionProvider"])
    x = np.load(root / "_ref_tfkeras2.15" / "12net.input.npy").transpose(0, 3, 1, 2).astype(np.float32)
    for index, output in enumerate(session.run(None, {session.get_inputs()[0].name: x})):
        expected = np.load(root / "_ref_tfkeras2.15" / f"12net.output_{index}.npy").transpose(0, 3, 1, 2)
        np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)
    # at another size: as the model converted for that size
    assert lrptool("convert", root / "12net.h5", "--input-size", "30x40", "-o", tmp_path / "fixed.onnx").returncode == 0
    fixed = onnxruntime.InferenceSession(str(tmp_path / "fixed.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 30, 40)).astype(np.float32)
    name = session.get_inputs()[0].name
    for free_output, fixed_output in zip(session.run(None, {name: x}), fixed.run(None, {name: x})):
        assert free_output.shape == (2, fixed_output.shape[1], 10, 15)
        np.testing.assert_allclose(free_output, fixed_output, rtol=1e-5, atol=1e-6)
