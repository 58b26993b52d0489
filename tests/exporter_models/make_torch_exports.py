"""Writes the PyTorch exports of the test architectures (tests/torch_nets.py) that
tests/test_exporters.py reads: each network with seeded random weights, exported by

* the legacy TorchScript exporter (``dynamo=False``, opset 17, BatchNorm kept): ``NET.legacy.onnx``;
* the dynamo exporter at opset 18 without its graph optimisations — its raw patterns (``Reshape`` with
  ``allowzero``, ``ReduceMean`` with the axes as an input, ``CastLike`` + ``Expand`` zero biases, the batch
  size computed by ``Shape``): ``NET.dynamo18.onnx``;
* the dynamo exporter at opset 21 as it exports by default (optimised): ``NET.dynamo21.onnx``;

all with a free batch axis. Run from the repository root with torch 2.13.0 and onnxscript 0.7.2
(``make reference-deps``): ``.venv/bin/python tests/exporter_models/make_torch_exports.py``.
"""

import io
import pathlib
import sys
import warnings

import onnx
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from torch_nets import NETS, randomized  # noqa: E402

EXPORTS = {"legacy": dict(dynamo=False, opset_version=17, do_constant_folding=False),
           "dynamo18": dict(dynamo=True, opset_version=18, optimize=False),
           "dynamo21": dict(dynamo=True, opset_version=21)}


def export(model, shape, options):
    x = torch.zeros((2,) + shape)
    names = dict(input_names=["x"], output_names=["y"])
    if options["dynamo"]:
        program = torch.onnx.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                                    verbose=False, **names, **options)
        return program.model_proto
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, **names, **options)
    return onnx.load_from_string(buffer.getvalue())


def strip_debug_info(proto):
    """Source locations and stack traces the exporters attach: a third of a dynamo file, no use here."""
    for node in proto.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    for value in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        value.doc_string = ""
        del value.metadata_props[:]
    del proto.graph.value_info[:]


def main():
    warnings.filterwarnings("ignore")
    for index, (name, builder) in enumerate(sorted(NETS.items())):
        model, shape = randomized(builder, seed=100 + index, dtype=torch.float32)
        for exporter, options in EXPORTS.items():
            proto = export(model, shape, options)
            strip_debug_info(proto)
            path = HERE / f"{name}.{exporter}.onnx"
            onnx.save(proto, str(path))
            print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
