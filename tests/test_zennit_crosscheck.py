"""lrptool against Zennit on PyTorch models with random weights, in float64.

Each model is written in PyTorch, exported to ONNX (BatchNorm kept) and explained by lrptool from
that file; Zennit explains the PyTorch model itself. Zennit 0.5.1's MergeBatchNorm leaves the
emptied BatchNorm computing x/√(1+ε), so the BatchNorm layers are folded by hand for Zennit here
(and lrptool folds them itself). Residual additions use Zennit's ``Sum`` module so that its
composites apply the ``Norm`` rule to them, as lrptool does.

Needs torch (the CPU wheel, ``pip install torch==2.13.0``) and zennit (``pip install --no-deps
zennit==0.5.1``); skipped with the reason where they are missing, except in CI
(LRPTOOL_REQUIRE_ZENNIT=1), where a missing package fails the run.
"""

import io

import numpy as np
import pytest

from converters.onnx_reader import read_onnx
from lrptool.lrp import Explainer
from torch_support import torch_and_zennit_or_skip


torch, zennit = torch_and_zennit_or_skip()
from torch_nets import ZENNIT_NETS  # noqa: E402
from torch_nets import randomized as randomized_net  # noqa: E402
from torch_support import fold_batchnorm, residual_class, set_export_mode  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlus,  # noqa: E402
                               EpsilonPlusFlat)

Residual = residual_class()
MODELS = ZENNIT_NETS


def randomized(builder, seed):
    return randomized_net(builder, seed, residual=Residual)


def export_onnx(model, shape):
    set_export_mode(model, Residual, True)
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.zeros((1,) + shape, dtype=torch.float64), buffer, dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
                      do_constant_folding=False, opset_version=17)
    set_export_mode(model, Residual, False)
    import onnx
    return onnx.load_from_string(buffer.getvalue())


BOUNDS = (-2.0, 2.5)
COMPOSITES = {
    "epsilon-plus": lambda: EpsilonPlus(),
    "epsilon-plus-flat": lambda: EpsilonPlusFlat(),
    "epsilon-alpha2-beta1": lambda: EpsilonAlpha2Beta1(),
    "epsilon-alpha2-beta1-flat": lambda: EpsilonAlpha2Beta1Flat(),
    "epsilon-gamma-box": lambda: EpsilonGammaBox(low=BOUNDS[0], high=BOUNDS[1]),
    "gradient": lambda: None,
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def prepared(request):
    model, shape = randomized(MODELS[request.param], seed=sorted(MODELS).index(request.param))
    graph = read_onnx(export_onnx(model, shape))
    zennit_model = fold_batchnorm(model)
    x = torch.from_numpy(np.random.default_rng(3).uniform(*BOUNDS, size=(3,) + shape))
    return request.param, zennit_model, graph, x


@pytest.mark.parametrize("method", sorted(COMPOSITES))
def test_lrptool_agrees_with_zennit(prepared, method):
    name, model, graph, x = prepared
    with torch.no_grad():
        logits = model(x)
    targets = logits.argmax(dim=1)
    seed = torch.zeros_like(logits)
    rows = torch.arange(len(targets))
    seed[rows, targets] = 1.0 if method == "gradient" else logits[rows, targets]
    composite = COMPOSITES[method]()
    with Gradient(model=model, composite=composite) as attributor:
        output, relevance = attributor(x.clone().requires_grad_(), seed)
    expected = relevance.detach().numpy()
    explainer = Explainer(graph, method, dtype=np.float64, bounds=BOUNDS if method == "epsilon-gamma-box" else None,
                          quiet=True)
    ours = explainer.explain(x.numpy(), target=targets.numpy())
    np.testing.assert_allclose(ours.outputs, output.detach().numpy(), rtol=1e-10, atol=1e-12)
    error = np.linalg.norm(ours.relevance - expected) / np.linalg.norm(expected)
    assert error <= 1e-6, f"{name}/{method}: relative L2 error {error:.2e}"
    # the compiled explainer, in float32, against Zennit too
    compiled = Explainer(graph, method, bounds=BOUNDS if method == "epsilon-gamma-box" else None, quiet=True,
                         compiled=True).explain(x.numpy().astype(np.float32), target=targets.numpy())
    error = np.linalg.norm(compiled.relevance - expected) / np.linalg.norm(expected)
    assert error <= 1e-4, f"{name}/{method} compiled: relative L2 error {error:.2e}"
