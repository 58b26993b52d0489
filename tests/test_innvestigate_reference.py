"""lrptool against iNNvestigate 2.x's own regression data: 26 analyzers × 6 single-layer Keras models.

The models are rebuilt in lrptool's IR from the stored weights (Keras NHWC input and HWIO kernels
carried to NCHW/OIHW; the Keras Dense acts on the channel axis and Flatten runs in NHWC order, so
output indices match). Every analyzer whose method lrptool has must match to rtol 1e-4 (iNNvestigate
itself uses 1e-2 and 1e-3). iNNvestigate's settings, as its own test states them: ε = 1e-7 for the
ε/z rules; boxed input rule (-10, 10); BoundedDeepTaylor bounds (-128, 128); 64 integration steps;
Deconvnet and GuidedBackprop start from the selected output's value, the other gradients from 1.
"""

import glob
import os

import h5py
import numpy as np
import pytest

from lrptool.graph import Graph, Node
from lrptool.lrp import Explainer

from conftest import shared_models

REFERENCES = "references/innvestigate-layers/tests/references/layer"
LAYERS = ("Dense", "Dense_relu", "Conv2D", "Conv2D_relu", "AveragePooling2D", "MaxPooling2D")

#: analyzer → (lrptool method, options)
ANALYZERS = {
    "Gradient": ("gradient", {}),
    "InputTimesGradient": ("gradient-x-input", {}),
    "IntegratedGradients": ("integrated-gradients", {"steps": 64}),
    "SmoothGrad": ("smoothgrad", {}),
    "Deconvnet": ("deconvnet", {"start": "value"}),
    "GuidedBackprop": ("guided-backprop", {"start": "value"}),
    "LRPZ": ("linear=epsilon:1e-7", {}),
    "LRPZIgnoreBias": ("linear=epsilon-nobias:1e-7", {}),
    "LRPEpsilon": ("linear=epsilon:1e-7", {}),
    "LRPEpsilonIgnoreBias": ("linear=epsilon-nobias:1e-7", {}),
    "LRPZ_Flat_input_layer_rule": ("first=flat,linear=epsilon:1e-7", {}),
    "LRPZ_boxed_input_layer_rule": ("first=zbox,linear=epsilon:1e-7", {"bounds": (-10, 10)}),
    "LRPZPlus": ("linear=zplus", {}),
    "LRPZPlusFast": ("linear=zplus", {}),
    "LRPAlpha1Beta0": ("linear=alpha-beta:1:0", {}),
    "LRPAlpha1Beta0IgnoreBias": ("linear=alpha-beta-nobias:1:0", {}),
    "LRPAlpha2Beta1": ("linear=alpha-beta:2:1", {}),
    "LRPAlpha2Beta1IgnoreBias": ("linear=alpha-beta-nobias:2:1", {}),
    "LRPFlat": ("linear=flat", {}),
    "LRPWSquare": ("linear=wsquare", {}),
    "LRPSequentialPresetA": ("preset-a", {}),
    "LRPSequentialPresetAFlat": ("preset-a-flat", {}),
    "LRPSequentialPresetB": ("preset-b", {}),
    "LRPSequentialPresetBFlat": ("preset-b-flat", {}),
    "DeepTaylor": ("deep-taylor", {}),
    "BoundedDeepTaylor": ("deep-taylor-bounded", {"bounds": (-128, 128)}),
}

#: where lrptool differs on purpose, and why
DIFFERENT = {
    # SmoothGrad draws random noise; only where the gradient does not depend on the input
    # (models without ReLU or max pooling) can two implementations agree.
    ("SmoothGrad", "Dense_relu"): "random noise", ("SmoothGrad", "Conv2D_relu"): "random noise",
    ("SmoothGrad", "MaxPooling2D"): "random noise",
}


def build_layer_model(layer, group):
    weights = [group["weights"][str(i)][()].astype(np.float64) for i in range(len(group["weights"]))]
    window = dict(kernel_shape=(2, 2), strides=(2, 2), dilations=(1, 1), pads=(0, 0, 0, 0))
    nodes, current = [], "x"
    if layer.startswith("Dense"):
        kernel, bias = weights
        nodes += [Node("to_nhwc", "Transpose", ["x"], ["x_nhwc"], {"perm": (0, 2, 3, 1)}),
                  Node("dense", "Dense", ["x_nhwc"], ["z_nhwc"], {}, {"weight": kernel.T, "bias": bias}),
                  Node("to_nchw", "Transpose", ["z_nhwc"], ["z"], {"perm": (0, 3, 1, 2)})]
    elif layer.startswith("Conv2D"):
        kernel, bias = weights
        nodes.append(Node("conv", "Conv", ["x"], ["z"], dict(strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0)),
                          {"weight": kernel.transpose(3, 2, 0, 1), "bias": bias}))
    else:
        nodes.append(Node("pool", "AveragePool" if layer.startswith("Average") else "MaxPool", ["x"], ["z"], window))
    current = "z"
    if layer.endswith("_relu"):
        nodes.append(Node("relu", "Relu", ["z"], ["r"]))
        current = "r"
    nodes += [Node("flat_order", "Transpose", [current], ["t"], {"perm": (0, 2, 3, 1)}),
              Node("flatten", "Flatten", ["t"], ["y"])]
    return Graph({"x": (None, 3, 10, 10)}, nodes, ["y"])


def cases():
    return [pytest.param(analyzer, layer, id=f"{analyzer}-{layer}") for analyzer in sorted(ANALYZERS)
            for layer in LAYERS]


@pytest.mark.parametrize("analyzer, layer", cases())
def test_matches_innvestigate(analyzer, layer):
    path = shared_models() / REFERENCES / f"{analyzer}.hdf5"
    with h5py.File(path, "r") as data:
        assert data.attrs["analyzer_name"] == analyzer
        x = data["input"][()].transpose(0, 3, 1, 2)
        group = data[layer]
        graph = build_layer_model(layer, group)
        method, options = ANALYZERS[analyzer]
        explainer = Explainer(graph, method, dtype=np.float64, epsilon=1e-7, stabiliser=1e-7, quiet=True,
                              **options)
        explanation = explainer.explain(x)
        np.testing.assert_allclose(explanation.outputs, group["output"][()], rtol=1e-5, atol=1e-6)
        if method not in ("random", "smoothgrad"):
            # the compiled explainer (float32) gives what the eager float64 walk gives
            compiled = Explainer(graph, method, epsilon=1e-7, stabiliser=1e-7, quiet=True, compiled=True,
                                 **options).explain(x.astype(np.float32), target=explanation.targets)
            error = np.linalg.norm(compiled.relevance - explanation.relevance) / \
                max(np.linalg.norm(explanation.relevance), 1e-30)
            assert error <= 1e-5, f"compiled: relative L2 error {error:.2e}"
        reference = group["attribution"][()].transpose(0, 3, 1, 2)
    if (analyzer, layer) in DIFFERENT:
        assert not np.allclose(explanation.relevance, reference, rtol=1e-4, atol=1e-6)
        pytest.skip(f"intentional difference: {DIFFERENT[analyzer, layer]}")
    scale = np.max(np.abs(reference))
    np.testing.assert_allclose(explanation.relevance, reference, rtol=1e-4, atol=1e-4 * scale)


def test_every_reference_file_is_covered():
    files = glob.glob(str(shared_models() / REFERENCES / "*.hdf5"))
    assert sorted(os.path.basename(f)[:-5] for f in files) == sorted(ANALYZERS)
