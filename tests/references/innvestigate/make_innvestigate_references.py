"""Whole-model reference explanations from iNNvestigate, for tests/test_innvestigate_models.py.

Made with innvestigate 2.1.2 and tensorflow 2.14.1 (Keras 2.14, numpy 1.26) on Python 3.11, in a
virtual environment of its own outside the repository:

    python3 -m venv /tmp/innv && /tmp/innv/bin/pip install innvestigate==2.1.2 tensorflow==2.14.1 "numpy<2"
    /tmp/innv/bin/python tests/references/innvestigate/make_innvestigate_references.py

It builds small Keras models with non-zero biases and seeded random weights, writes each as
MODEL.h5, and for a few fixed inputs writes MODEL.input.npy (N, H, W, C or N, features),
MODEL.logits.npy and MODEL.ANALYZER.npy (the relevance of each input, float32, Keras layout) for
every analyzer below; iNNvestigate explains the largest output of each input (``max_activation``).
The inputs are chosen so that the explained logit is positive (deep_taylor puts a ReLU on the
output, so it explains max(logit, 0)).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

tf.compat.v1.disable_eager_execution()

import innvestigate  # noqa: E402  (needs eager execution disabled first)

HERE = os.path.dirname(os.path.abspath(__file__))
layers = tf.keras.layers

#: analyzer name → keyword arguments
ANALYZERS = {
    "gradient": {},
    "input_t_gradient": {},
    "lrp.z": {},
    "lrp.epsilon": {},
    "lrp.w_square": {},
    "lrp.flat": {},
    "lrp.alpha_2_beta_1": {},
    "lrp.alpha_2_beta_1_IB": {},
    "lrp.alpha_1_beta_0": {},
    "lrp.alpha_1_beta_0_IB": {},
    "lrp.z_plus": {},
    "lrp.sequential_preset_a": {},
    "lrp.sequential_preset_b": {},
    "lrp.sequential_preset_a_flat": {},
    "lrp.sequential_preset_b_flat": {},
    "deep_taylor": {},
    "deep_taylor.bounded": {"low": -1.0, "high": 1.0},
}


def randomize(model, seed):
    """Seeded weights; biases drawn with both signs and a size comparable to the pre-activations."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kernel, bias = weights
        fan_in = int(np.prod(kernel.shape[:-1]))
        kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), kernel.shape)
        bias = rng.normal(0.05, 0.3, bias.shape)
        layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def cnn():
    """Conv-ReLU-MaxPool-Conv-ReLU-Dense-ReLU-Dense."""
    return tf.keras.Sequential([
        layers.InputLayer(input_shape=(12, 12, 3)),
        layers.Conv2D(6, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(8, 3, activation="relu"),
        layers.Flatten(),
        layers.Dense(16, activation="relu"),
        layers.Dense(5),
    ])


def mlp():
    """Dense layers with separate ReLU activation layers."""
    return tf.keras.Sequential([
        layers.InputLayer(input_shape=(10,)),
        layers.Dense(16),
        layers.Activation("relu"),
        layers.Dense(12),
        layers.Activation("relu"),
        layers.Dense(4),
    ])


def avgpool():
    """A padded convolution, average pooling, another convolution, Flatten and the classifier."""
    return tf.keras.Sequential([
        layers.InputLayer(input_shape=(10, 10, 2)),
        layers.Conv2D(5, 3, padding="same", activation="relu"),
        layers.AveragePooling2D(2),
        layers.Conv2D(6, 2, activation="relu"),
        layers.Flatten(),
        layers.Dense(3),
    ])


MODELS = {"cnn": (cnn, 1), "mlp": (mlp, 2), "avgpool": (avgpool, 3)}


def inputs_for(model, seed, count=3):
    """``count`` inputs in [-1, 1] whose largest logit is positive."""
    rng = np.random.default_rng(100 + seed)
    chosen = []
    while len(chosen) < count:
        x = rng.uniform(-1.0, 1.0, (1,) + model.input_shape[1:]).astype(np.float32)
        if model.predict(x, verbose=0).max() > 0.05:
            chosen.append(x[0])
    return np.stack(chosen)


def main():
    for name, (build, seed) in MODELS.items():
        model = randomize(build(), seed)
        model.save(os.path.join(HERE, f"{name}.h5"), save_format="h5")
        x = inputs_for(model, seed)
        np.save(os.path.join(HERE, f"{name}.input.npy"), x)
        np.save(os.path.join(HERE, f"{name}.logits.npy"), model.predict(x, verbose=0))
        for analyzer, options in ANALYZERS.items():
            # a fresh graph per analyzer: in graph mode each analyzer adds to the one graph otherwise
            tf.keras.backend.clear_session()
            model = tf.keras.models.load_model(os.path.join(HERE, f"{name}.h5"), compile=False)
            relevance = innvestigate.create_analyzer(analyzer, model, **options).analyze(x)
            np.save(os.path.join(HERE, f"{name}.{analyzer}.npy"), relevance.astype(np.float32))
            print(f"{name:8s} {analyzer:30s} sum {relevance.sum():+.5f}")


if __name__ == "__main__":
    main()
