"""Deep Taylor decomposition as published (Montavon et al. 2017, Pattern Recognition 65) on tiny networks,
against relevances written out by hand in NumPy from the paper's rules — independently of lrptool's
rule recipes:

    z⁺ (ReLU inputs):  R_i = Σ_j x_i w_ij⁺ / Σ_i' x_i' w_i'j⁺ · R_j          (no bias)
    w² (x ∈ ℝᵈ):       R_i = Σ_j w_ij² / Σ_i' w_i'j² · R_j
    zᴮ (l ≤ x ≤ h):    R_i = Σ_j (x_i w_ij − l w_ij⁺ − h w_ij⁻) / Σ_i' (…) · R_j
    max pooling:       all of a window's relevance to its largest input
    average pooling:   z⁺ over the window, i.e. in proportion to the (non-negative) inputs
"""

import numpy as np
import pytest

from lrptool.graph import Graph, Node
from lrptool.lrp import Explainer

W1 = np.array([[0.5, -1.0, 0.25, 0.8], [-0.3, 0.6, 0.9, -0.2], [1.1, 0.4, -0.7, 0.3]])
B1 = np.array([0.2, -0.1, 0.3])
W2 = np.array([[0.7, -0.4, 0.9], [-0.6, 0.8, 0.5]])
B2 = np.array([-0.2, 0.1])
X = np.array([[0.9, -0.4, 0.3, 0.6], [-0.2, 0.8, 0.5, -0.7]])


def mlp():
    return Graph({"x": (None, 4)}, [
        Node("dense1", "Dense", ["x"], ["z1"], {}, {"weight": W1, "bias": B1}),
        Node("relu", "Relu", ["z1"], ["a"]),
        Node("dense2", "Dense", ["a"], ["y"], {}, {"weight": W2, "bias": B2})], ["y"])


def by_hand_top(x):
    """Forward pass, explained class, and the hidden layer's relevance by z⁺ without bias."""
    a = np.maximum(W1 @ x + B1, 0)
    y = W2 @ a + B2
    t = int(np.argmax(y))
    w = np.maximum(W2[t], 0)
    relevance_a = a * w / np.sum(a * w) * y[t]
    return a, y, t, relevance_a


def test_unbounded_input_takes_the_w_square_rule():
    result = Explainer(mlp(), "deep-taylor-published", dtype=np.float64, quiet=True).explain(X)
    for n, x in enumerate(X):
        a, y, t, relevance_a = by_hand_top(x)
        squares = W1 ** 2
        expected = (squares / squares.sum(axis=1, keepdims=True) * relevance_a[:, None]).sum(axis=0)
        assert result.targets[n] == t
        np.testing.assert_allclose(result.relevance[n], expected, rtol=1e-5, atol=1e-9)
        # no bias anywhere: the explained score is conserved exactly
        assert np.isclose(result.relevance[n].sum(), y[t], rtol=1e-5)


def test_bounded_input_takes_the_z_box_rule():
    low, high = -1.0, 1.0
    result = Explainer(mlp(), "deep-taylor-published-box", bounds=(low, high), dtype=np.float64,
                       quiet=True).explain(X)
    for n, x in enumerate(X):
        a, y, t, relevance_a = by_hand_top(x)
        terms = x[None, :] * W1 - low * np.maximum(W1, 0) - high * np.minimum(W1, 0)
        expected = (terms / terms.sum(axis=1, keepdims=True) * relevance_a[:, None]).sum(axis=0)
        np.testing.assert_allclose(result.relevance[n], expected, rtol=1e-5, atol=1e-9)


def test_box_preset_needs_bounds():
    with pytest.raises(Exception, match="bounds"):
        Explainer(mlp(), "deep-taylor-published-box", dtype=np.float64, quiet=True)


KERNEL = np.array([1.5, -0.8]).reshape(2, 1, 1, 1)    # a 1×1 convolution: one weight per channel
CONV_BIAS = np.array([0.1, 0.4])
WINDOW = dict(kernel_shape=(2, 2), strides=(2, 2), dilations=(1, 1), pads=(0, 0, 0, 0))
DENSE = np.array([[0.6, -0.5, 0.4, 0.9], [0.3, 0.2, -0.8, 0.5]])   # (2 classes, 2 channels × 2 windows)


def pooled_net(pool):
    return Graph({"x": (None, 1, 2, 4)}, [
        Node("conv", "Conv", ["x"], ["c"], dict(strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0)),
             {"weight": KERNEL, "bias": CONV_BIAS}),
        Node("relu", "Relu", ["c"], ["r"]),
        Node("pool", pool, ["r"], ["p"], dict(WINDOW, count_include_pad=False) if pool == "AveragePool" else WINDOW),
        Node("flat", "Flatten", ["p"], ["f"]),
        Node("dense", "Dense", ["f"], ["y"], {}, {"weight": DENSE, "bias": np.array([0.05, -0.05])})], ["y"])


@pytest.mark.parametrize("pool", ["MaxPool", "AveragePool"])
def test_pooling_and_a_bounded_first_convolution(pool):
    x = np.array([[[[0.3, -0.6, 0.9, 0.2], [0.7, 0.1, -0.4, 0.8]]]])
    result = Explainer(pooled_net(pool), "deep-taylor-published-box", bounds=(-1.0, 1.0), dtype=np.float64,
                       quiet=True).explain(x)
    # forward by hand: r[c, i, j] = relu(k_c x[i, j] + b_c); two 2×2 windows per channel
    r = np.maximum(KERNEL[:, 0, 0, 0, None, None] * x[0, 0][None] + CONV_BIAS[:, None, None], 0)
    windows = [r[:, :, 0:2], r[:, :, 2:4]]
    pooled = np.stack([w.max(axis=(1, 2)) if pool == "MaxPool" else w.mean(axis=(1, 2)) for w in windows], axis=1)
    y = DENSE @ pooled.reshape(-1) + np.array([0.05, -0.05])
    t = int(np.argmax(y))
    assert result.targets[0] == t
    f = pooled.reshape(-1)
    w = np.maximum(DENSE[t], 0)
    relevance_pooled = (f * w / np.sum(f * w) * y[t]).reshape(2, 2)
    relevance_r = np.zeros_like(r)
    for k, window in enumerate(windows):
        for c in range(2):
            share = np.zeros((2, 2))
            if pool == "MaxPool":
                share[np.unravel_index(np.argmax(window[c]), (2, 2))] = 1.0
            else:
                share = window[c] / window[c].sum() if window[c].sum() > 0 else share
            relevance_r[c, :, 2 * k:2 * k + 2] = share * relevance_pooled[c, k]
    # the first layer (a 1×1 convolution) by zᴮ with l = −1, h = 1: one input per output
    k = KERNEL[:, 0, 0, 0]
    terms = x[0, 0][None] * k[:, None, None] + np.maximum(k, 0)[:, None, None] - np.minimum(k, 0)[:, None, None]
    expected = (terms / terms * relevance_r).sum(axis=0)
    np.testing.assert_allclose(result.relevance[0, 0], expected, rtol=1e-5, atol=1e-9)
