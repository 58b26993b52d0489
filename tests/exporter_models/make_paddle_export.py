"""Writes a PaddlePaddle export that tests/test_exporters.py reads: a small classifier of our own (Conv –
BatchNorm – ReLU – MaxPool – Conv – ReLU – flatten – Linear – ReLU – Linear) with seeded random weights,
exported by ``paddle.onnx.export`` (paddle2onnx, opset 13) with the batch free, which Paddle declares as
``dim_value: -1``: ``paddle_cnn.onnx``, and ``paddle_cnn.input.npy`` / ``paddle_cnn.output.npy`` from
Paddle's own forward pass.

PaddlePaddle is not a test dependency: run this in a separate environment, e.g.
``python3 -m venv /tmp/paddle-venv && /tmp/paddle-venv/bin/pip install paddlepaddle==3.3.1 paddle2onnx==2.1.0``
and ``/tmp/paddle-venv/bin/python tests/exporter_models/make_paddle_export.py``.
"""

import pathlib
import tempfile

import numpy as np
import paddle
from paddle import nn

HERE = pathlib.Path(__file__).resolve().parent


class PaddleCNN(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2D(3, 8, 3, padding=1), nn.BatchNorm2D(8)
        self.pool = nn.MaxPool2D(2)
        self.conv2 = nn.Conv2D(8, 8, 3)
        self.fc1, self.fc2 = nn.Linear(8 * 6 * 6, 16), nn.Linear(16, 5)

    def forward(self, x):
        x = self.pool(paddle.nn.functional.relu(self.bn1(self.conv1(x))))
        x = paddle.nn.functional.relu(self.conv2(x))
        x = paddle.flatten(x, start_axis=1)
        return self.fc2(paddle.nn.functional.relu(self.fc1(x)))


def main():
    paddle.seed(300)
    rng = np.random.default_rng(300)
    model = PaddleCNN()
    with paddle.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1:
                values = rng.uniform(0.5, 1.5, parameter.shape) if name.endswith("bn1.weight") else \
                    rng.normal(0, 0.2, parameter.shape)
            else:
                fan_in = np.prod(parameter.shape[1:]) if parameter.ndim == 4 else parameter.shape[0]
                values = rng.normal(0, np.sqrt(2.0 / fan_in), parameter.shape)
            parameter.set_value(values.astype(np.float32))
        model.bn1._mean.set_value(rng.normal(0, 0.3, 8).astype(np.float32))
        model.bn1._variance.set_value(rng.uniform(0.5, 2.0, 8).astype(np.float32))
    model.eval()
    x = rng.uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32)
    np.save(HERE / "paddle_cnn.input.npy", x)
    np.save(HERE / "paddle_cnn.output.npy", model(paddle.to_tensor(x)).numpy())
    with tempfile.TemporaryDirectory() as folder:
        prefix = str(pathlib.Path(folder) / "paddle_cnn")
        paddle.onnx.export(model, prefix, input_spec=[paddle.static.InputSpec([None, 3, 16, 16], "float32", "x")],
                           opset_version=13)
        (HERE / "paddle_cnn.onnx").write_bytes(pathlib.Path(prefix + ".onnx").read_bytes())
    print(f"paddle_cnn.onnx: {(HERE / 'paddle_cnn.onnx').stat().st_size} bytes")


if __name__ == "__main__":
    main()
