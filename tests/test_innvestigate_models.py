"""lrptool's iNNvestigate-named presets and rules against iNNvestigate 2.1.2 on whole Keras models with
non-zero biases (a CNN with max pooling, an MLP, a CNN with padding and average pooling).

The models, inputs and relevances were made by tests/references/innvestigate/
make_innvestigate_references.py (innvestigate 2.1.2, tensorflow 2.14.1); lrptool reads the .h5 with
its own Keras reader. Every analyzer must match to rtol 1e-4 in the eager float64 walk, and the
compiled float32 explainer must give what the eager walk gives (relative L2 ≤ 1e-5).
"""

import os

import numpy as np
import pytest

from converters import load_model
from lrptool.lrp import Explainer

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "references", "innvestigate")
MODELS = ("cnn", "mlp", "avgpool")

#: iNNvestigate analyzer → (lrptool method, options)
ANALYZERS = {
    "gradient": ("gradient", {}),
    "input_t_gradient": ("gradient-x-input", {}),
    "lrp.z": ("zero", {}),
    "lrp.epsilon": ("epsilon", {"epsilon": 1e-7}),
    "lrp.w_square": ("linear=wsquare-nobias", {}),
    "lrp.flat": ("linear=flat", {}),
    "lrp.alpha_2_beta_1": ("alpha2-beta1", {}),
    "lrp.alpha_2_beta_1_IB": ("linear=alpha-beta-nobias:2:1", {}),
    "lrp.alpha_1_beta_0": ("alpha1-beta0", {}),
    "lrp.alpha_1_beta_0_IB": ("linear=alpha-beta-nobias:1:0", {}),
    "lrp.z_plus": ("linear=zplus-nobias", {}),
    "lrp.sequential_preset_a": ("preset-a", {}),
    "lrp.sequential_preset_b": ("preset-b", {}),
    "lrp.sequential_preset_a_flat": ("preset-a-flat", {}),
    "lrp.sequential_preset_b_flat": ("preset-b-flat", {}),
    "deep_taylor": ("deep-taylor", {}),
    "deep_taylor.bounded": ("deep-taylor-bounded", {"bounds": (-1.0, 1.0)}),
}


def relative_error(actual, expected):
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def channels_first(x):
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def load(name):
    graph = load_model(os.path.join(HERE, f"{name}.h5"))
    x = channels_first(np.load(os.path.join(HERE, f"{name}.input.npy")).astype(np.float64))
    return graph, x


@pytest.fixture(scope="module")
def models():
    return {name: load(name) for name in MODELS}


@pytest.mark.parametrize("model", MODELS)
def test_keras_reader_reproduces_the_logits(models, model):
    graph, x = models[model]
    explanation = Explainer(graph, "gradient", dtype=np.float64, quiet=True).explain(x)
    expected = np.load(os.path.join(HERE, f"{model}.logits.npy"))
    np.testing.assert_allclose(explanation.outputs, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("analyzer", sorted(ANALYZERS))
@pytest.mark.parametrize("model", MODELS)
def test_matches_innvestigate_on_whole_models(models, model, analyzer):
    graph, x = models[model]
    method, options = ANALYZERS[analyzer]
    reference = channels_first(np.load(os.path.join(HERE, f"{model}.{analyzer}.npy")).astype(np.float64))
    exact = Explainer(graph, method, dtype=np.float64, quiet=True, compiled=False, **options).explain(x)
    scale = np.max(np.abs(reference))
    np.testing.assert_allclose(exact.relevance, reference, rtol=1e-4, atol=1e-4 * scale)
    compiled = Explainer(graph, method, dtype=np.float32, quiet=True, compiled=True, **options)
    result = compiled.explain(x.astype(np.float32), target=exact.targets)
    error = relative_error(result.relevance, exact.relevance)
    assert error <= 1e-5, f"compiled float32 against eager float64: relative L2 error {error:.2e}"


@pytest.mark.parametrize("method", ["deep-taylor", "deep-taylor-bounded"])
def test_deep_taylor_explains_a_negative_score_as_zero(models, method):
    """iNNvestigate's Deep Taylor puts a ReLU on the output: a negative logit has nothing to explain."""
    graph, x = models["cnn"]
    logits = np.load(os.path.join(HERE, "cnn.logits.npy"))
    target = np.argmin(logits, axis=1)
    assert np.all(logits[np.arange(len(x)), target] < 0)
    options = {"bounds": (-1.0, 1.0)}
    for compiled, dtype in ((False, np.float64), (True, np.float32)):
        result = Explainer(graph, method, dtype=dtype, compiled=compiled, quiet=True, **options).explain(
            x.astype(dtype), target=target)
        assert np.all(result.relevance == 0)
    published = Explainer(graph, "deep-taylor-published", dtype=np.float64, quiet=True).explain(x, target=target)
    totals = published.relevance.reshape(len(x), -1).sum(axis=1)
    assert np.all(totals <= 0) and np.any(totals < 0)  # the published form explains the score with its sign
