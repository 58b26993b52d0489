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
import os

import numpy as np
import pytest

from converters.onnx_reader import read_onnx
from lrptool.lrp import Explainer


def import_or_skip():
    try:
        import torch
        from torch_support import ensure_torchvision
        ensure_torchvision()
        import zennit
        return torch, zennit
    except ImportError as error:
        if os.environ.get("LRPTOOL_REQUIRE_ZENNIT"):
            pytest.fail(f"the Zennit cross-check needs torch and zennit: {error}")
        pytest.skip(f"torch and zennit are not installed ({error}); see this file's docstring",
                    allow_module_level=True)


torch, zennit = import_or_skip()
from torch_support import fold_batchnorm, residual_class, set_export_mode  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlus,  # noqa: E402
                               EpsilonPlusFlat)

nn = torch.nn
Residual = residual_class()


class BasicBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.relu1, self.relu2, self.add = nn.ReLU(), nn.ReLU(), Residual()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add(y, x))


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu1, self.relu2, self.relu3, self.add = nn.ReLU(), nn.ReLU(), nn.ReLU(), Residual()

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        return self.relu3(self.add(self.bn3(self.conv3(y)), self.shortcut(x)))


def mnist_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10)), (1, 28, 28)


def vgg_bn():
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    layers = block(3, 8) + block(8, 8) + [nn.MaxPool2d(2)] + block(8, 16) + [nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Dropout(),
                         nn.Linear(32, 10)), (3, 32, 32)


def resnet():
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         BasicBlock(8), Bottleneck(8, 4, 16, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10)), (3, 32, 32)


def average_pooling_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AvgPool2d(3, stride=2, padding=1), nn.Flatten(), nn.Linear(8 * 5 * 5, 10)), (3, 20, 20)


MODELS = {"mnist_cnn": mnist_cnn, "vgg_bn": vgg_bn, "resnet": resnet, "avgpool_net": average_pooling_net}


def randomized(builder, seed):
    torch.manual_seed(seed)
    model, shape = builder()
    model = model.double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.normal_(0, 0.1)
    return model, shape


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
