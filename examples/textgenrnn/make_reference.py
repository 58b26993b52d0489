"""Builds textgenrnn's architecture in TensorFlow, loads the weights file into it, and writes

* model.json — the architecture, for `--model-config` (the weights file holds no architecture);
* reference_input_ids.npy / reference_probs.npy — four texts as char ids (left-padded to 40) and
  TensorFlow's next-character probabilities for them.

Run with TensorFlow 2.14.1 in a separate environment (not lrptool's):
    python examples/textgenrnn/make_reference.py ../shared/models/text/textgenrnn
The architecture (from the textgenrnn 2.0.0 package, MIT): Input(40) → Embedding(465, 100) →
LSTM(128, sequences) → LSTM(128, sequences) → concatenate[embedding, lstm 1, lstm 2] →
AttentionWeightedAverage → Dense(465, softmax). The attention layer is written here from its
formula: a_t = exp(x_t·w − max) / (Σ_s exp(x_s·w − max) + 1e-7), output Σ_t a_t x_t.
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf
from tensorflow import keras

HERE = os.path.dirname(os.path.abspath(__file__))
LENGTH = 40
TEXTS = ["Thank yo", "What is goin", "The quick brown fox jumps over the lazy d", "I love this movi",
         "Good mornin", "Explaining recurrent networks is f"]


class AttentionWeightedAverage(keras.layers.Layer):
    def __init__(self, return_attention=False, **kwargs):
        super().__init__(**kwargs)
        self.return_attention = return_attention

    def build(self, input_shape):
        self.W = self.add_weight(shape=(input_shape[2], 1), name=f"{self.name}_W", initializer="uniform")

    def call(self, x):
        logits = tf.squeeze(tf.tensordot(x, self.W, axes=1), -1)
        weights = tf.exp(logits - tf.reduce_max(logits, axis=1, keepdims=True))
        weights = weights / (tf.reduce_sum(weights, axis=1, keepdims=True) + 1e-7)
        return tf.reduce_sum(x * weights[:, :, None], axis=1)

    def get_config(self):
        return dict(super().get_config(), return_attention=self.return_attention)


def build(classes):
    ids = keras.Input((LENGTH,), name="input")
    embedded = keras.layers.Embedding(classes, 100, input_length=LENGTH, name="embedding")(ids)
    first = keras.layers.LSTM(128, return_sequences=True, recurrent_activation="sigmoid", name="rnn_1")(embedded)
    second = keras.layers.LSTM(128, return_sequences=True, recurrent_activation="sigmoid", name="rnn_2")(first)
    joined = keras.layers.concatenate([embedded, first, second], name="rnn_concat")
    pooled = AttentionWeightedAverage(name="attention")(joined)
    return keras.Model(ids, keras.layers.Dense(classes, activation="softmax", name="output")(pooled))


def encode(text, vocab):
    ids = [vocab[c] for c in text[-LENGTH:]]
    return [0] * (LENGTH - len(ids)) + ids


def main(folder):
    with open(os.path.join(folder, "textgenrnn_vocab.json"), encoding="utf-8") as handle:
        vocab = json.load(handle)
    model = build(len(vocab) + 1)
    model.load_weights(os.path.join(folder, "textgenrnn_weights.hdf5"), by_name=True)
    # the shared reference (TensorFlow 2.15) must come out again: the architecture is the right one
    shared = np.load(os.path.join(folder, "reference", "input_ids.npy"))
    expected = np.load(os.path.join(folder, "reference", "output_probs.npy"))
    print("largest difference to the shared reference:", float(np.abs(model.predict(shared, verbose=0) - expected).max()))
    ids = np.array([encode(text, vocab) for text in TEXTS], dtype=np.int64)
    probs = model.predict(ids, verbose=0)
    with open(os.path.join(HERE, "model.json"), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(json.loads(model.to_json()), indent=1) + "\n")
    np.save(os.path.join(HERE, "reference_input_ids.npy"), ids)
    np.save(os.path.join(HERE, "reference_probs.npy"), probs.astype(np.float32))
    inverse = {v: k for k, v in vocab.items()}
    for text, row in zip(TEXTS, probs):
        print(repr(text), "→", repr(inverse.get(int(np.argmax(row)) , "?")))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "shared", "models", "text",
                                                              "textgenrnn"))
