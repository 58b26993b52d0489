"""A MobileNet-style block in which a BatchNorm folded into a depthwise convolution leaves a positive
bias that keeps units active with no positive input — where z⁺ hands relevance to the bias.

Shared by tests/test_absorption.py and benchmarks/measure_absorption.py."""

import numpy as np

from lrptool.graph import Graph, Node

INPUT_SHAPE = (3, 24, 24)

#: the presets and rule maps compared: what the input keeps of the explained score
CANDIDATES = (
    "epsilon-plus", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1", "epsilon", "zero",
    "deep-taylor", "deep-taylor-published-box",
    "conv=zplus-nobias,epsilon-plus", "conv=gamma:0.25,epsilon-plus", "conv=gamma-nobias:0.25,epsilon-plus",
    "conv=epsilon:0.25,epsilon-plus", "conv=epsilon-nobias:1e-6,epsilon-plus",
    "linear=epsilon-nobias:1e-6",
)


def conv(name, x, y, weight, group=1, stride=1):
    pad = weight.shape[-1] // 2
    return Node(name, "Conv", [x], [y], dict(strides=(stride, stride), dilations=(1, 1), pads=(pad,) * 4,
                                             group=group), {"weight": weight})


def batchnorm(name, x, y, scale, shift, mean, var):
    return Node(name, "BatchNorm", [x], [y], {"epsilon": 1e-5},
                {"scale": scale, "bias": shift, "mean": mean, "var": var})


def relu6(name, x, y):
    return Node(name, "Clip", [x], [y], {"min": 0.0, "max": 6.0})


def depthwise_block(seed=0):
    """conv 3→16 + BN + ReLU6, depthwise 3×3 + BN + ReLU6, pointwise 16→32 + BN + ReLU6, global
    average pooling, dense 32→10. The depthwise kernels are mostly negative and their BatchNorm
    shifts positive, as in trained MobileNets whose folded biases keep units on."""
    rng = np.random.default_rng(seed)
    stem = rng.normal(0, np.sqrt(2 / 27), (16, 3, 3, 3))
    depthwise = -np.abs(rng.normal(0, 0.5, (16, 1, 3, 3)))
    flips = rng.uniform(size=depthwise.shape) < 0.15
    depthwise[flips] *= -0.5
    pointwise = rng.normal(0, np.sqrt(2 / 16), (32, 16, 1, 1))
    nodes = [
        conv("stem", "x", "s", stem, stride=2),
        batchnorm("stem_bn", "s", "sb", rng.uniform(0.8, 1.2, 16), rng.normal(0.1, 0.1, 16), rng.normal(0, 0.1, 16),
                  rng.uniform(0.5, 1.5, 16)),
        relu6("stem_relu", "sb", "a"),
        conv("depthwise", "a", "d", depthwise, group=16),
        batchnorm("depthwise_bn", "d", "db", rng.uniform(0.8, 1.2, 16), rng.uniform(0.6, 1.2, 16),
                  rng.normal(-0.3, 0.1, 16), rng.uniform(0.5, 1.5, 16)),
        relu6("depthwise_relu", "db", "b"),
        conv("pointwise", "b", "p", pointwise),
        batchnorm("pointwise_bn", "p", "pb", rng.uniform(0.8, 1.2, 32), rng.normal(0, 0.2, 32), rng.normal(0, 0.2, 32),
                  rng.uniform(0.5, 1.5, 32)),
        relu6("pointwise_relu", "pb", "c"),
        Node("pool", "GlobalAveragePool", ["c"], ["g"]),
        Node("flatten", "Flatten", ["g"], ["f"], {"axis": 1}),
        Node("classifier", "Dense", ["f"], ["y"], {}, {"weight": rng.normal(0, np.sqrt(1 / 32), (10, 32)),
                                                        "bias": rng.normal(0, 0.1, 10)}),
    ]
    return Graph({"x": (None,) + INPUT_SHAPE}, nodes, ["y"])


def inputs(count=4, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (count,) + INPUT_SHAPE)


def kept_share(graph, method, x):
    """Σ R_input / explained score per sample (eager float64 walk, the bounds of x: [-1, 1])."""
    from lrptool.lrp import Explainer

    explanation = Explainer(graph, method, bounds=(-1.0, 1.0), dtype=np.float64, compiled=False,
                            quiet=True).explain(x)
    return explanation.relevance.reshape(len(x), -1).sum(axis=1) / explanation.scores


def inactive_input_share(graph, x):
    """The share of the depthwise BatchNorm's active outputs that have no positive input term."""
    from lrptool.executor import run_graph
    from lrptool.lrp.canonize import canonize

    canonical, _ = canonize(graph)
    values = run_graph(canonical, x, dtype=np.float64, keep_all=True)
    node = next(n for n in canonical.nodes if n.name == "depthwise")
    positive = np.maximum(node.params["weight"], 0)
    a = values[node.inputs[0]]
    from lrptool import kernels
    z_plus = kernels.conv2d(np.maximum(a, 0), positive, None, (1, 1), (1, 1), (1, 1, 1, 1), 16)
    active = values[node.outputs[0]] > 0
    return float(np.sum(active & (z_plus <= 0)) / max(np.sum(active), 1))
