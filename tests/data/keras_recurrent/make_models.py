"""Makes the small Keras recurrent models and their TensorFlow outputs used by tests/test_keras_recurrent.py.

Run with TensorFlow 2.14.1 in a separate environment (not lrptool's):
    python tests/data/keras_recurrent/make_models.py
Writes NAME.h5, NAME_input.npy and NAME_output.npy beside this script for every model below. The
models are made again each time, so all of them change together.
"""

import os
import sys

import numpy as np
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "examples", "textgenrnn"))
from make_reference import AttentionWeightedAverage  # noqa: E402  (textgenrnn's attention pooling)
STEPS, FEATURES = 6, 4


def models():
    def sequential(*stack):
        return keras.Sequential([keras.Input((STEPS, FEATURES))] + list(stack))

    yield "lstm_stack", sequential(layers.LSTM(5, return_sequences=True), layers.LSTM(3), layers.Dense(2))
    yield "gru_reset_after", sequential(layers.GRU(5, reset_after=True), layers.Dense(2))
    yield "gru_reset_before_backwards", sequential(layers.GRU(5, reset_after=False, go_backwards=True), layers.Dense(2))
    yield "lstm_backwards_sequence", sequential(layers.LSTM(4, go_backwards=True, return_sequences=True),
                                                layers.Flatten(), layers.Dense(2))
    yield "bidirectional_concat_ave", sequential(
        layers.Bidirectional(layers.LSTM(4, return_sequences=True), merge_mode="concat"),
        layers.Bidirectional(layers.GRU(3), merge_mode="ave"), layers.Dense(2))
    yield "bidirectional_sum_rnn", sequential(
        layers.Bidirectional(layers.SimpleRNN(4, return_sequences=True), merge_mode="sum"),
        layers.SimpleRNN(3, activation="relu", go_backwards=True, return_sequences=True),
        layers.Flatten(), layers.Dense(2))
    yield "bidirectional_lstm_state_concat", sequential(
        layers.Bidirectional(layers.LSTM(3), merge_mode="concat"), layers.Dense(2))
    yield "bidirectional_gru_sequence_mul", sequential(
        layers.Bidirectional(layers.GRU(3, return_sequences=True, reset_after=False), merge_mode="mul"),
        layers.Flatten(), layers.Dense(2))
    # a custom layer, read with the plug-in lrptool.plugins.attention_weighted_average
    yield "custom_lstm_attention", sequential(layers.LSTM(5, return_sequences=True),
                                              AttentionWeightedAverage(name="attention"), layers.Dense(2))


def main():
    rng = np.random.default_rng(0)
    for name, model in models():
        model.set_weights([rng.normal(size=w.shape).astype(np.float32) * 0.5 for w in model.get_weights()])
        x = rng.normal(size=(3, STEPS, FEATURES)).astype(np.float32)
        y = model.predict(x, verbose=0)
        model.save(os.path.join(HERE, f"{name}.h5"), save_format="h5")
        np.save(os.path.join(HERE, f"{name}_input.npy"), x)
        np.save(os.path.join(HERE, f"{name}_output.npy"), y)
        print(name, y.shape)


if __name__ == "__main__":
    tf.random.set_seed(0)
    main()
