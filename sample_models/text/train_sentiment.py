"""Train the bundled word CNN on the bundled sentences and write it as ONNX.

    python sample_models/text/train_sentiment.py     # rewrites sentiment.onnx and sentiment.vocab.json

A tiny sentiment classifier for the demo and the tests: word embeddings (dimension 8) → a
convolution over 3 words (12 filters) → ReLU → max over time → dense (2 classes: negative,
positive). Trained with plain NumPy (Adam, cross-entropy, a fixed seed) on corpus.txt, so that the
file needs nothing but NumPy and onnx to rebuild. Exported as PyTorch would export it: Gather on the
embedding table, Transpose, Conv, Relu, ReduceMax over time, Gemm.
"""

import json
import os
import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
LENGTH, DIM, FILTERS, WIDTH = 16, 8, 12, 3
WORD = re.compile(r"\w+|[^\w\s]")


def read_corpus():
    texts, labels = [], []
    with open(os.path.join(HERE, "corpus.txt"), encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                text, _, label = line.rstrip("\n").rpartition("\t")
                texts.append(text)
                labels.append(int(label))
    return texts, np.array(labels)


def encode(texts, vocabulary):
    ids = np.zeros((len(texts), LENGTH), dtype=np.int64)
    for row, text in enumerate(texts):
        words = [vocabulary.get(w.lower(), 1) for w in WORD.findall(text)][:LENGTH]
        ids[row, :len(words)] = words
    return ids


def forward(params, ids):
    e = params["embedding"][ids]                                   # (N, T, D)
    padded = np.pad(e, ((0, 0), (1, 1), (0, 0)))
    windows = np.stack([padded[:, t:t + WIDTH] for t in range(LENGTH)], axis=1)   # (N, T, k, D)
    z = np.einsum("ntkd,fdk->ntf", windows, params["conv"]) + params["conv_bias"]
    r = np.maximum(z, 0)
    winner = np.argmax(r, axis=1)                                  # (N, F)
    pooled = np.take_along_axis(r, winner[:, None], axis=1)[:, 0]
    logits = pooled @ params["dense"].T + params["dense_bias"]
    return logits, (windows, z, winner, pooled)


def gradients(params, ids, labels):
    logits, (windows, z, winner, pooled) = forward(params, ids)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(labels)), labels]))
    dlogits = p
    dlogits[np.arange(len(labels)), labels] -= 1
    dlogits /= len(labels)
    grads = {"dense": dlogits.T @ pooled, "dense_bias": dlogits.sum(axis=0)}
    dpooled = dlogits @ params["dense"]
    dz = np.zeros_like(z)
    np.put_along_axis(dz, winner[:, None], dpooled[:, None], axis=1)
    dz *= z > 0
    grads["conv"] = np.einsum("ntf,ntkd->fdk", dz, windows)
    grads["conv_bias"] = dz.sum(axis=(0, 1))
    dwindows = np.einsum("ntf,fdk->ntkd", dz, params["conv"])
    dpadded = np.zeros((len(ids), LENGTH + 2, DIM))
    for t in range(LENGTH):
        dpadded[:, t:t + WIDTH] += dwindows[:, t]
    grads["embedding"] = np.zeros_like(params["embedding"])
    np.add.at(grads["embedding"], ids, dpadded[:, 1:-1])
    grads["embedding"][0] = 0     # the padding vector stays zero
    return loss, grads


def train(ids, labels, vocabulary_size, steps=200, rate=0.01, decay=1e-2, seed=0):
    rng = np.random.default_rng(seed)
    params = {"embedding": rng.normal(0, 0.5, (vocabulary_size, DIM)), "conv": rng.normal(0, 0.3, (FILTERS, DIM, WIDTH)),
              "conv_bias": np.zeros(FILTERS), "dense": rng.normal(0, 0.3, (2, FILTERS)), "dense_bias": np.zeros(2)}
    params["embedding"][0] = 0
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    for step in range(1, steps + 1):
        loss, grads = gradients(params, ids, labels)
        for key, grad in grads.items():
            grad = grad + decay * params[key]      # weight decay keeps the filters broad and readable
            m, v = moments[key]
            m[:] = 0.9 * m + 0.1 * grad
            v[:] = 0.999 * v + 0.001 * grad ** 2
            params[key] -= rate * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return params, loss


def to_onnx(params):
    f32 = {k: v.astype(np.float32) for k, v in params.items()}
    inits = [numpy_helper.from_array(f32["embedding"], "embedding"),
             numpy_helper.from_array(np.ascontiguousarray(f32["conv"]), "conv.weight"),
             numpy_helper.from_array(f32["conv_bias"], "conv.bias"),
             numpy_helper.from_array(f32["dense"], "dense.weight"),
             numpy_helper.from_array(f32["dense_bias"], "dense.bias")]
    nodes = [helper.make_node("Gather", ["embedding", "ids"], ["embedded"], axis=0, name="embed"),
             helper.make_node("Transpose", ["embedded"], ["channels"], perm=[0, 2, 1], name="to_channels"),
             helper.make_node("Conv", ["channels", "conv.weight", "conv.bias"], ["conv"], kernel_shape=[WIDTH],
                              pads=[1, 1], name="conv"),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
             helper.make_node("ReduceMax", ["relu"], ["pooled"], axes=[2], keepdims=0, name="max_over_time"),
             helper.make_node("Gemm", ["pooled", "dense.weight", "dense.bias"], ["logits"], transB=1, name="dense")]
    graph = helper.make_graph(nodes, "sentiment_word_cnn",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", LENGTH])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="train_sentiment.py")
    onnx.checker.check_model(model)
    return model


def main():
    texts, labels = read_corpus()
    words = sorted({w.lower() for text in texts for w in WORD.findall(text)})
    vocabulary = {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    ids = encode(texts, vocabulary)
    params, loss = train(ids, labels, len(vocabulary))
    accuracy = np.mean(np.argmax(forward(params, ids)[0], axis=1) == labels)
    onnx.save(to_onnx(params), os.path.join(HERE, "sentiment.onnx"))
    with open(os.path.join(HERE, "sentiment.vocab.json"), "w", encoding="utf-8") as handle:
        json.dump(vocabulary, handle, indent=0, ensure_ascii=False)
        handle.write("\n")
    print(f"trained on {len(texts)} sentences: loss {loss:.4f}, training accuracy {accuracy:.0%}, "
          f"{len(vocabulary)} words")


if __name__ == "__main__":
    main()
