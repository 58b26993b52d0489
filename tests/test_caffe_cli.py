"""Caffe models through the command line: explain LeNet from prototxt + caffemodel, mean files, and
one-line errors for broken files."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import shared_models


def lrptool(*args):
    return subprocess.run([sys.executable, "-m", "lrptool.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture()
def lenet():
    root = shared_models() / "caffe" / "lenet"
    return root / "lenet.prototxt", root / "lenet_iter_10000.caffemodel", root / "_ref_opencv" / "lenet_iter_10000"


def test_explain_lenet_relevance_sums_are_the_logits(tmp_path, lenet):
    prototxt, weights, reference = lenet
    digits = np.load(reference / "input_0.npy")           # (10, 1, 28, 28), pixels / 255
    logits = np.load(reference / "output_ip2.npy")
    folder = tmp_path / "digits"
    folder.mkdir()
    for index, digit in enumerate(digits):
        Image.fromarray(np.round(digit[0] * 255).astype(np.uint8)).save(folder / f"{index}.png")
    # ε → 0 with the biases left out of the rules conserves relevance layer by layer, so Σ R = the
    # logit; the first layer gets the flat rule, since an ε denominator without bias is exactly zero
    # over the digits' blank background, where max pooling still routes relevance
    result = lrptool("explain", prototxt, "--weights", weights, folder, "-o", tmp_path / "out", "--format", "npy,png",
                     "--preprocess", "mnist", "--rules", "first=flat,linear=epsilon-nobias:1e-9")
    assert result.returncode == 0, result.stderr
    records = {int(r["path"].rsplit("/", 1)[1].split(".")[0]): r for r in map(json.loads, result.stdout.splitlines())}
    assert len(records) == 10
    for index, record in records.items():
        assert record["target"] == int(np.argmax(logits[index]))
        assert record["score"] == pytest.approx(float(logits[index].max()), rel=1e-4)
        relevance = np.load(record["files"][0])
        assert float(relevance.sum(dtype=np.float64)) == pytest.approx(float(logits[index].max()), rel=1e-4)


def test_mean_file_gives_per_channel_means(tmp_path):
    from converters.caffe_proto import BlobProto
    from converters.caffe_reader import read_mean_file

    blob = BlobProto()
    values = np.stack([np.full((4, 5), 104.0), np.full((4, 5), 117.0), np.arange(20.0).reshape(4, 5)])
    blob.shape.dim.extend([1, 3, 4, 5])
    blob.data.extend(values.reshape(-1).tolist())
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    assert read_mean_file(path) == pytest.approx([104.0, 117.0, 9.5])
    (tmp_path / "bad.binaryproto").write_bytes(b"\xff\xff\xff")
    with pytest.raises(Exception, match="bad.binaryproto"):
        read_mean_file(tmp_path / "bad.binaryproto")


def one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_broken_caffe_files_are_one_line_errors(tmp_path, lenet):
    prototxt, weights, _ = lenet
    text = prototxt.read_text()
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(weights.read_bytes()[:5000])
    one_line_error(lrptool("inspect", prototxt, "--weights", truncated), "truncated.caffemodel")
    broken = tmp_path / "broken.prototxt"
    broken.write_text(text.replace("num_output: 20", "num_output 20 }"))
    one_line_error(lrptool("inspect", broken), "broken.prototxt", "line")
    unknown = tmp_path / "unknown.prototxt"
    unknown.write_text(text.replace('type: "ReLU"', 'type: "Frobnicate"'))
    one_line_error(lrptool("inspect", unknown), "Frobnicate")
    mismatch = tmp_path / "mismatch.prototxt"
    mismatch.write_text(text.replace("num_output: 500", "num_output: 400"))
    one_line_error(lrptool("inspect", mismatch, "--weights", weights), "ip1")


def test_prototxt_without_weights_is_inspected_and_explained_with_random_weights(tmp_path):
    prototxt = shared_models() / "caffe" / "bvlc-prototxt" / "examples" / "cifar10" / "cifar10_quick.prototxt"
    inspected = lrptool("inspect", prototxt)
    assert inspected.returncode == 0, inspected.stderr
    assert "(N, 3, 32, 32)" in inspected.stdout and "(N, 10)" in inspected.stdout
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for index in range(3):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(images / f"{index}.png")
    mean_file = tmp_path / "mean.binaryproto"
    from converters.caffe_proto import BlobProto
    blob = BlobProto()
    blob.shape.dim.extend([1, 3, 36, 36])        # a mean image a little larger than the 32x32 input, as Caffe's
    blob.data.extend([100.0] * 1296 + [110.0] * 1296 + [120.0] * 1296)
    mean_file.write_bytes(blob.SerializeToString())
    result = lrptool("explain", prototxt, "--random-weights", images, "-o", tmp_path / "out", "--format", "npy",
                     "--preprocess", "caffe", "--mean-file", mean_file, "--rules", "first=flat,linear=epsilon-nobias:1e-9")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3
    for record in records:
        relevance = np.load(record["files"][0])
        assert relevance.shape == (3, 32, 32) and np.isfinite(relevance).all()
        assert float(relevance.sum(dtype=np.float64)) == pytest.approx(record["score"], rel=1e-4)
