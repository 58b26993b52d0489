"""The test architectures written in PyTorch (torch needed): the networks of the Zennit cross-check and
PyTorch forms of tests/test_architectures.py (MobileNet-style with squeeze-excitation, a 1-D conv net).
``residual`` is the module that adds a residual branch (Zennit's ``Sum`` for Zennit, ``Add`` elsewhere)."""

import torch
from torch import nn


class Add(nn.Module):
    def forward(self, a, b):
        return a + b


class BasicBlock(nn.Module):
    def __init__(self, channels, residual=Add):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.relu1, self.relu2, self.add = nn.ReLU(), nn.ReLU(), residual()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add(y, x))


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, cout, stride, residual=Add):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu1, self.relu2, self.relu3, self.add = nn.ReLU(), nn.ReLU(), nn.ReLU(), residual()

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        return self.relu3(self.add(self.bn3(self.conv3(y)), self.shortcut(x)))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, squeezed):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, squeezed, 1), nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        gate = torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))
        return x * nn.functional.hardsigmoid(self.expand(gate))


class MobileNetStyle(nn.Module):
    """Hard-swish stem, depthwise separable block, squeeze-excitation, inverted residual, global average."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.separable = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16),
                                       nn.ReLU6(), nn.Conv2d(16, 24, 1))
        self.excite = SqueezeExcitation(24, 8)
        self.inverted = nn.Sequential(nn.Conv2d(24, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
                                      nn.Conv2d(48, 48, 3, 1, 1, groups=48, bias=False), nn.BatchNorm2d(48),
                                      nn.ReLU6(), nn.Conv2d(48, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.excite(self.separable(self.stem(x)))
        x = x + self.inverted(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def mnist_cnn(residual=Add):
    return nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10)), (1, 28, 28)


def vgg_bn(residual=Add):
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    layers = block(3, 8) + block(8, 8) + [nn.MaxPool2d(2)] + block(8, 16) + [nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Dropout(),
                         nn.Linear(32, 10)), (3, 32, 32)


def resnet(residual=Add):
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         BasicBlock(8, residual), Bottleneck(8, 4, 16, 2, residual), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 10)), (3, 32, 32)


def average_pooling_net(residual=Add):
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AvgPool2d(3, stride=2, padding=1), nn.Flatten(), nn.Linear(8 * 5 * 5, 10)), (3, 20, 20)


def mobilenet(residual=Add):
    return MobileNetStyle(), (3, 32, 32)


def conv1d(residual=Add):
    return nn.Sequential(nn.Conv1d(4, 6, 3, padding=2, groups=2, dilation=2), nn.ReLU(), nn.MaxPool1d(2),
                         nn.AvgPool1d(3, stride=2, padding=1), nn.Flatten(), nn.Linear(6 * 13, 5)), (4, 50)


#: The Zennit cross-check's networks.
ZENNIT_NETS = {"mnist_cnn": mnist_cnn, "vgg_bn": vgg_bn, "resnet": resnet, "avgpool_net": average_pooling_net}
#: Every test architecture.
NETS = dict(ZENNIT_NETS, mobilenet=mobilenet, conv1d=conv1d)


def randomized(builder, seed, residual=Add, dtype=torch.float64):
    """The network with seeded weights, BatchNorm statistics far from (0, 1) and non-zero biases, in eval mode."""
    torch.manual_seed(seed)
    model, shape = builder(residual)
    model = model.to(dtype).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.normal_(0, 0.1)
    return model, shape
