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

#: SmoothGrad draws random noise: where the gradient depends on the input (ReLU, max pooling) the two
#: implementations agree in distribution only (see assert_same_in_distribution)
RANDOM = {("SmoothGrad", "Dense_relu"), ("SmoothGrad", "Conv2D_relu"), ("SmoothGrad", "MaxPooling2D")}

#: iNNvestigate's SmoothGrad: 64 samples of Gaussian noise with standard deviation 1 (absolute)
INNVESTIGATE_SAMPLES = 64


def assert_same_in_distribution(graph, x, reference, targets, samples=256):
    """lrptool's SmoothGrad (noise of standard deviation 1, as iNNvestigate's) against the reference:
    where a single noisy gradient does not vary the two must agree exactly; elsewhere their difference
    is the sum of two Monte-Carlo errors, whose size comes from the spread of single noisy gradients."""
    gradient = Explainer(graph, "gradient", dtype=np.float64, quiet=True)
    for n in range(len(x)):
        one = x[n:n + 1]
        spread = float(one.max() - one.min())
        smooth = Explainer(graph, "smoothgrad", samples=samples, noise=1.0 / spread, seed=n, dtype=np.float64,
                           quiet=True).explain(one, target=targets[n:n + 1]).relevance[0]
        rng = np.random.default_rng(100 + n)
        singles = np.stack([gradient.explain(one + rng.standard_normal(one.shape), target=targets[n:n + 1]).relevance[0]
                            for _ in range(64)])
        deviation = singles.std(axis=0)
        varying = deviation > 0
        np.testing.assert_allclose(smooth[~varying], reference[n][~varying], rtol=1e-4, atol=1e-6)
        error = deviation[varying] * np.sqrt(1.0 / INNVESTIGATE_SAMPLES + 1.0 / samples)
        z = (smooth[varying] - reference[n][varying]) / error
        assert np.all(np.abs(z) < 5.0), f"sample {n}: largest z-score {np.abs(z).max():.1f}"


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
    if (analyzer, layer) in RANDOM:
        assert_same_in_distribution(graph, x, reference, explanation.targets)
        return
    scale = np.max(np.abs(reference))
    np.testing.assert_allclose(explanation.relevance, reference, rtol=1e-4, atol=1e-4 * scale)


def test_every_reference_file_is_covered():
    files = glob.glob(str(shared_models() / REFERENCES / "*.hdf5"))
    assert sorted(os.path.basename(f)[:-5] for f in files) == sorted(ANALYZERS)
