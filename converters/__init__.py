"""Model readers and writers: every supported file format in, lrptool's graph IR out (and back to ONNX)."""

import os

from lrptool.errors import ModelFileError


def load_model(path, **options):
    """Read a model file into a ``lrptool.graph.Graph``, choosing the reader by file type."""
    path = str(path)
    extension = os.path.splitext(path)[1].lower()
    if extension == ".onnx" or (extension not in (".prototxt", ".h5", ".hdf5", ".keras") and os.path.isfile(path)):
        from .onnx_reader import read_onnx
        return read_onnx(path, **options)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    raise ModelFileError(f"{path}: this kind of model file is not supported yet (lrptool reads .onnx)")
