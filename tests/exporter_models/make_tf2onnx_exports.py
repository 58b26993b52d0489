"""Writes the tf2onnx exports of small Keras models that tests/test_exporters.py reads: each model with
seeded random weights (BatchNormalization statistics far from (0, 1), non-zero biases) saved as a Keras
``.h5`` and converted by tf2onnx (opset 13, NHWC input as Keras takes it)

* as tf2onnx writes it by default (its optimiser pushes most layout Transposes away): ``NAME.tf2onnx.onnx``;
* with tf2onnx's optimisers off, which leaves a Transpose pair around every convolution and pooling:
  ``NAME.tf2onnx-raw.onnx``;

and ``NAME.input.npy`` / ``NAME.output.npy``: a batch and Keras' own ``predict`` on it; and
``keras_fcn_strided.h5`` (free sizes, a strided 'same' convolution) for the Keras reader alone.

TensorFlow is not a test dependency: run this in a separate environment, e.g.
``python3 -m venv /tmp/tf-venv && /tmp/tf-venv/bin/pip install tensorflow==2.14.1 tf2onnx==1.17.0`` and
``/tmp/tf-venv/bin/python tests/exporter_models/make_tf2onnx_exports.py``.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
layers = tf.keras.layers


def keras_cnn():
    inputs = tf.keras.Input((16, 16, 3), name="x")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(12, 3, name="conv2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(16, activation="relu", name="fc1")(x)
    outputs = layers.Dense(5, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name="keras_cnn")


def keras_residual():
    inputs = tf.keras.Input((16, 16, 3), name="x")
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu6")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    y = layers.ReLU(name="depthwise_relu")(y)
    y = layers.Conv2D(8, 1, name="pointwise")(y)
    x = layers.Add(name="residual")([x, y])
    x = layers.AveragePooling2D(2, name="average")(x)
    x = layers.GlobalAveragePooling2D(name="global_average")(x)
    outputs = layers.Dense(4, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name="keras_residual")


def keras_fcn():
    """Fully convolutional: height and width are free in Keras and in the ONNX file."""
    inputs = tf.keras.Input((None, None, 3), name="x")
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.Conv2D(4, 1, name="head")(x)
    outputs = layers.GlobalAveragePooling2D(name="global_average")(x)
    return tf.keras.Model(inputs, outputs, name="keras_fcn")


def keras_fcn_strided():
    """Free sizes and a strided 'same' convolution, whose padding depends on the size: lrptool needs one."""
    inputs = tf.keras.Input((None, None, 3), name="x")
    x = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="strided")(inputs)
    outputs = layers.GlobalAveragePooling2D(name="global_average")(x)
    return tf.keras.Model(inputs, outputs, name="keras_fcn_strided")


MODELS = {"keras_cnn": keras_cnn, "keras_residual": keras_residual, "keras_fcn": keras_fcn}
#: Saved as .h5 only (for the Keras reader's tests).
KERAS_ONLY = {"keras_fcn_strided": keras_fcn_strided}


def randomize(model, rng):
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = weights
            weights = [rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                       rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 2.0, var.shape)]
        else:
            weights = [rng.normal(0, 0.1, w.shape) if w.ndim == 1 else
                       rng.normal(0, np.sqrt(2.0 / max(np.prod(w.shape[:-1]), 1)), w.shape) for w in weights]
        layer.set_weights([w.astype(np.float32) for w in weights])


def main():
    for index, (name, build) in enumerate(KERAS_ONLY.items()):
        model = build()
        randomize(model, np.random.default_rng(300 + index))
        model.save(HERE / f"{name}.h5", save_format="h5")
    for index, (name, build) in enumerate(MODELS.items()):
        rng = np.random.default_rng(200 + index)
        model = build()
        randomize(model, rng)
        model.save(HERE / f"{name}.h5", save_format="h5")
        size = (16, 16) if name != "keras_fcn" else (12, 20)
        x = rng.uniform(-1, 1, (3,) + size + (3,)).astype(np.float32)
        np.save(HERE / f"{name}.input.npy", x)
        np.save(HERE / f"{name}.output.npy", model.predict(x, verbose=0))
        spec = (tf.TensorSpec((None,) + model.input_shape[1:], tf.float32, name="x"),)
        for variant, options in (("tf2onnx", {}), ("tf2onnx-raw", {"optimizers": {}})):
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, **options)
            path = HERE / f"{name}.{variant}.onnx"
            path.write_bytes(proto.SerializeToString())
            kinds = sorted({node.op_type for node in proto.graph.node})
            transposes = sum(node.op_type == "Transpose" for node in proto.graph.node)
            print(f"{path.name}: {path.stat().st_size} bytes, {transposes} Transpose, {kinds}")


if __name__ == "__main__":
    main()
