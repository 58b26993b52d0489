"""A text CNN (Embedding → Conv1d → ReLU → max over time → Linear) explained by lrptool from its ONNX
export and by Zennit on the PyTorch model, in float64.

Zennit cannot differentiate by token ids: it explains the network after the embedding, from the
embedding vectors, and a token's relevance is the sum over its vector — what lrptool's Embedding
does. Needs torch and zennit (see tests/test_zennit_crosscheck.py); skipped with the reason where
they are missing, except in CI (LRPTOOL_REQUIRE_ZENNIT=1).
"""

import io

import numpy as np
import pytest
from torch_support import torch_and_zennit_or_skip

from converters.onnx_reader import read_onnx
from lrptool.lrp import Explainer

torch, zennit = torch_and_zennit_or_skip("tests/test_zennit_crosscheck.py")
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import EpsilonPlus, LayerMapComposite  # noqa: E402
from zennit.rules import Epsilon, Pass  # noqa: E402
from zennit.types import Activation, Convolution  # noqa: E402

nn = torch.nn
VOCABULARY, DIMENSION, LENGTH, CHANNELS, CLASSES = 50, 8, 12, 6, 3


class AfterEmbedding(nn.Module):
    """Conv1d over the sequence, ReLU, max over time, Linear: on vectors (N, T, D)."""

    def __init__(self, pooling):
        super().__init__()
        self.pooling = pooling
        self.conv = nn.Conv1d(DIMENSION, CHANNELS, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool1d(1)
        self.out = nn.Linear(CHANNELS, CLASSES)

    def forward(self, vectors):
        features = self.relu(self.conv(vectors.transpose(1, 2)))
        # AdaptiveMaxPool1d exports as GlobalMaxPool (or MaxPool), torch.amax over time as ReduceMax
        pooled = self.pool(features).flatten(1) if self.pooling == "adaptive" else torch.amax(features, dim=2)
        return self.out(pooled)


class TextCNN(nn.Module):
    def __init__(self, pooling):
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, DIMENSION)
        self.rest = AfterEmbedding(pooling)

    def forward(self, ids):
        return self.rest(self.embedding(ids))


def epsilon_composite():
    """Zennit's ε rule on every convolution and dense layer, activations passing relevance."""
    return LayerMapComposite([(Activation, Pass()), (Convolution, Epsilon()), (nn.Linear, Epsilon())])


@pytest.fixture(scope="module", params=["adaptive", "amax"])
def prepared(request):
    torch.manual_seed(0)
    model = TextCNN(request.param).double().eval()
    with torch.no_grad():
        model.rest.conv.bias.normal_(0, 0.1)
        model.rest.out.bias.normal_(0, 0.1)
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.zeros((1, LENGTH), dtype=torch.int64), buffer, dynamo=False, input_names=["ids"],
                      output_names=["y"], dynamic_axes={"ids": {0: "N"}, "y": {0: "N"}}, opset_version=17)
    import onnx
    graph = read_onnx(onnx.load_from_string(buffer.getvalue()))
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, VOCABULARY, size=(5, LENGTH)))
    return model, graph, ids


@pytest.mark.parametrize("method, composite", [("epsilon", epsilon_composite), ("epsilon-plus", EpsilonPlus)])
def test_text_cnn_agrees_with_zennit(prepared, method, composite):
    model, graph, ids = prepared
    assert graph.token_inputs() == {"ids"} and [n.op for n in graph.nodes][0] == "Embedding"
    with torch.no_grad():
        vectors = model.embedding(ids)
        logits = model.rest(vectors)
    targets = logits.argmax(dim=1)
    seed = torch.zeros_like(logits)
    rows = torch.arange(len(targets))
    seed[rows, targets] = logits[rows, targets]
    with Gradient(model=model.rest, composite=composite()) as attributor:
        output, relevance = attributor(vectors.clone().requires_grad_(), seed)
    expected = relevance.detach().numpy().sum(axis=2)            # per token: Σ over its vector
    ours = Explainer(graph, method, dtype=np.float64, quiet=True).explain(ids.numpy(), target=targets.numpy())
    np.testing.assert_allclose(ours.outputs, output.detach().numpy(), rtol=1e-10, atol=1e-12)
    error = np.linalg.norm(ours.relevance - expected) / np.linalg.norm(expected)
    assert error <= 1e-6, f"{method}: relative L2 error {error:.2e}"
    compiled = Explainer(graph, method, quiet=True, compiled=True).explain(ids.numpy(), target=targets.numpy())
    assert np.linalg.norm(compiled.relevance - expected) / np.linalg.norm(expected) <= 1e-4
