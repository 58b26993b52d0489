"""Model readers and writers: every supported file format in, lrptool's graph IR out (and back to ONNX)."""

import os

from lrptool.errors import ModelFileError
from lrptool.files import regular_file_problem

from .reading import reading_file


def load_model(path, weights=None, model_config=None, random_weights=False, keras1_backend=None, input_size=None,
               **options):
    """Read a model file into a ``lrptool.graph.Graph``, choosing the reader by file type.

    ``weights``: the ``.caffemodel`` for a Caffe ``.prototxt`` (``random_weights``: explain a
    prototxt without weights, for structure checks). ``model_config``: the architecture JSON for a
    Keras weights-only ``.h5``; ``keras1_backend``: which backend wrote a Keras 1 file.
    ``input_size``: the sizes a fully convolutional ONNX or Keras model leaves free (e.g. (H, W)).
    """
    from lrptool.plugins import load_entry_points

    load_entry_points()
    path = str(path)
    for given, what in ((path, "model"), (weights, "--weights"), (model_config, "--model-config")):
        problem = given and (regular_file_problem(str(given)) or stand_in_problem(str(given)))
        if problem:
            raise ModelFileError(f"{given}: {problem}; give the {what} file")
    with reading_file(path):
        return _read(path, weights, model_config, random_weights, keras1_backend, input_size, **options)


def stand_in_problem(path):
    """What a file saved in place of a model really is — a Git LFS pointer, an HTML page — or None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return None
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        return ("a Git LFS pointer, not the file itself (run `git lfs pull` in its repository, or download the "
                "file rather than the pointer)")
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page (a download that saved an error or login page?), not a model"
    return None


def _read(path, weights, model_config, random_weights, keras1_backend, input_size, **options):
    extension = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    if extension in (".h5", ".hdf5", ".keras"):
        from .keras_reader import read_keras
        return read_keras(path, model_config=model_config, keras1_backend=keras1_backend, input_size=input_size)
    if extension in (".prototxt", ".pbtxt"):
        from .caffe_reader import read_caffe
        if random_weights:
            return read_caffe(path, weights=weights, random_weights=True)
        return read_caffe(path, weights=weights)
    if extension == ".caffemodel":
        raise ModelFileError(f"{path}: a .caffemodel holds the weights; give the .prototxt and --weights {path}")
    if weights or model_config:
        raise ModelFileError(f"{path}: --weights belongs to Caffe prototxt files and --model-config to Keras .h5 files")
    from .onnx_reader import read_onnx
    return read_onnx(path, input_size=input_size, **options)
