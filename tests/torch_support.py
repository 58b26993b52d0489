"""PyTorch helpers shared by the Zennit cross-check tests and the LRP benchmark (torch needed)."""

import pathlib
import sys

STAND_INS = pathlib.Path(__file__).resolve().parent / "stand_ins"


def torch_and_zennit_or_skip(where="this file's docstring"):
    """(torch, zennit), or a skip with the reason where they are missing (a failure in CI, where
    LRPTOOL_REQUIRE_ZENNIT is set)."""
    import os

    import pytest

    try:
        import torch
        ensure_torchvision()
        import zennit
        return torch, zennit
    except ImportError as error:
        if os.environ.get("LRPTOOL_REQUIRE_ZENNIT"):
            pytest.fail(f"the Zennit cross-check needs torch and zennit: {error}")
        pytest.skip(f"torch and zennit are not installed ({error}); see {where}", allow_module_level=True)


def ensure_torchvision():
    """zennit 0.5.1 imports torchvision; where it cannot be imported, the stand-in serves."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        if str(STAND_INS) not in sys.path:
            sys.path.insert(0, str(STAND_INS))


def fold_batchnorm(model):
    """Fold each BatchNorm2d into the convolution before it and replace it by Identity (in place).

    Zennit 0.5.1's own MergeBatchNorm leaves the emptied BatchNorm computing x/√(1+ε)."""
    import torch
    from torch import nn

    modules = dict(model.named_modules())
    previous = None
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            conv = modules[previous]
            scale = module.weight / torch.sqrt(module.running_var + module.eps)
            with torch.no_grad():
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
                conv.bias = nn.Parameter((bias - module.running_mean) * scale + module.bias)
            parent, _, attribute = name.rpartition(".")
            setattr(modules[parent] if parent else model, attribute, nn.Identity())
        elif isinstance(module, nn.Conv2d):
            previous = name
    return model


def residual_class():
    """a + b, written as Zennit's Sum for Zennit (its composites give it the Norm rule) and as a
    plain addition while exporting to ONNX."""
    import torch
    from torch import nn

    ensure_torchvision()
    from zennit.layer import Sum

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.sum = Sum()
            self.for_export = False

        def forward(self, a, b):
            return a + b if self.for_export else self.sum(torch.stack([a, b], dim=-1))

    return Residual


def set_export_mode(model, residual, on):
    for module in model.modules():
        if isinstance(module, residual):
            module.for_export = on
