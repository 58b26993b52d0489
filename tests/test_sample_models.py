"""The demo's trained models (sample_models/): the copies are the reference files, they reproduce the
reference runtimes' outputs (OpenCV for the Caffe SqueezeNet, tf.keras for the Keras face model),
and the preprocessing shipped beside them gives the reference predictions on the shipped photos."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, shared_models
from converters import load_model
from lrptool.executor import run_graph

SAMPLES = ROOT / "sample_models"
SQUEEZENET = SAMPLES / "squeezenet" / "SqueezeNet_deploy.prototxt"
SQUEEZENET_WEIGHTS = SAMPLES / "squeezenet" / "squeezenet_dc.caffemodel"
FACES = SAMPLES / "fer" / "emotion_model.hdf5"


def same_bytes(ours, theirs):
    assert ours.read_bytes() == theirs.read_bytes(), f"{ours} differs from {theirs}"


def test_squeezenet_reproduces_opencv():
    reference = shared_models() / "real" / "caffe-squeezenet-dc"
    same_bytes(SQUEEZENET, reference / "SqueezeNet_deploy.prototxt")
    same_bytes(SQUEEZENET_WEIGHTS, reference / "squeezenet_dc.caffemodel")
    x = np.load(reference / "_ref_opencv" / "input_0.npy")
    expected = np.load(reference / "_ref_opencv" / "output_pool_final.npy").reshape(len(x), -1)
    graph = load_model(str(SQUEEZENET), weights=str(SQUEEZENET_WEIGHTS))
    output = run_graph(graph, x, dtype=np.float32)[graph.outputs[0]].reshape(len(x), -1)
    np.testing.assert_allclose(output, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    info = json.loads((reference / "_ref_opencv" / "README.json").read_text())
    labels = (ROOT / "lrptool" / "data" / "imagenet_classes.txt").read_text().splitlines()
    assert [labels[i] for i in output.argmax(axis=1)] == info["top1"]


def test_face_model_reproduces_tf_keras():
    reference = shared_models() / "real" / "keras-fer"
    same_bytes(FACES, reference / "emotion_model.hdf5")
    same_bytes(SAMPLES / "fer" / "labels.txt", reference / "labels.txt")
    x = np.load(reference / "_ref_tfkeras2.15" / "input_0.npy").transpose(0, 3, 1, 2)   # NHWC → NCHW
    expected = np.load(reference / "_ref_tfkeras2.15" / "output_0.npy")
    graph = load_model(str(FACES))
    output = run_graph(graph, x, dtype=np.float32)[graph.outputs[0]].reshape(len(x), -1)
    np.testing.assert_allclose(output, expected, rtol=1e-3, atol=1e-5)


def top1(args):
    result = subprocess.run([sys.executable, "-m", "lrptool.cli", "explain", *map(str, args), "--format", "npy"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return {record["path"].rsplit("/", 1)[-1]: record["label"]
            for record in map(json.loads, result.stdout.splitlines())}


def test_shipped_preprocessing_gives_the_reference_predictions(tmp_path):
    reference = shared_models() / "real"
    info = json.loads((reference / "caffe-squeezenet-dc" / "_ref_opencv" / "README.json").read_text())
    found = top1([SQUEEZENET, "--weights", SQUEEZENET_WEIGHTS, SAMPLES / "photos", "-o", tmp_path / "s",
                  "--labels", "imagenet"])
    for image, label in zip(info["images"], info["top1"]):
        assert found[image] == label
    info = json.loads((reference / "keras-fer" / "_ref_tfkeras2.15" / "README.json").read_text())
    found = top1([FACES, SAMPLES / "faces", "-o", tmp_path / "f", "--labels", SAMPLES / "fer" / "labels.txt"])
    assert [found[image] for image in info["images"]] == info["top1"]


@pytest.mark.parametrize("path", ["squeezenet/LICENSE", "fer/LICENSE", "photos/LICENSES.txt", "faces/LICENSES.txt"])
def test_every_shipped_file_has_its_licence(path):
    assert (SAMPLES / path).is_file()
    notice = (ROOT / "NOTICE").read_text()
    assert f"sample_models/{path.split('/')[0]}/" in notice


def test_demo_report_of_squeezenet_on_the_photos(tmp_path):
    """The demo's page for SqueezeNet: two presets and the gradient on the four photos, seen in Chromium
    (the screenshot is left in the test's folder)."""
    from browser_support import browser

    out = tmp_path / "squeezenet"
    result = subprocess.run([sys.executable, "-m", "lrptool.cli", "explain", str(SQUEEZENET), "--weights",
                             str(SQUEEZENET_WEIGHTS), str(SAMPLES / "photos"), "-o", str(out), "--labels", "imagenet",
                             "--preset", "epsilon-plus-flat,epsilon-gamma-box,gradient", "--format",
                             "png,overlay,grid,html", "--cmap", "black-firered"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    labels = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line)["label"]
              for line in result.stdout.splitlines()}
    assert labels == {"chelsea.jpg": "Egyptian cat", "coffee.jpg": "espresso", "camera.png": "tripod",
                      "coins.png": "rubber eraser, rubber, pencil eraser"}
    with browser() as page:
        page.open(out / "index.html")
        assert page.wait_for("return Array.from(document.images).every(function (i) { return i.complete; })", 30)
        page.screenshot(tmp_path / "demo-report.png")
        assert page.run("return document.querySelectorAll('#rows tbody tr').length") == 4
        widths = page.run("return Array.from(document.images).map(function (i) { return i.naturalWidth; })")
        assert len(widths) == 4 * (1 + 3 * 2) and all(widths)
        headers = page.run("return Array.from(document.querySelectorAll('#rows th')).map(function (th) "
                           "{ return th.textContent; })")
        assert headers[2:5] == ["epsilon-plus-flat", "epsilon-gamma-box", "gradient"]
        assert page.console_errors() == []
