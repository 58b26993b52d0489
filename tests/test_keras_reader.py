"""The Keras HDF5 reader against files written by Keras itself (three Keras versions, Deeplearning4j's
import test files) with Keras' own outputs, plus small files written here with h5py for layers the
third-party files do not cover and for the error paths.

lrptool's Keras graphs take channels-first input: stored NHWC inputs are transposed before running
and channels-first feature-map outputs transposed back before comparing.
"""

import json
import shutil

import h5py
import numpy as np
import onnxruntime
import pytest

from conftest import shared_models
from converters import load_model
from converters.keras_reader import read_keras
from converters.onnx_writer import graph_to_onnx
from lrptool.errors import GraphError, ModelFileError, UnsupportedModelError
from lrptool.executor import run_graph

WRITERS = ("keras2.14_tf2.14", "tf_keras2.21_tf2.21", "keras3.15_tf2.21")
WRITER_MODELS = ("seq_cnn", "func_model", "lrp_cnn")


def to_channels_first(x):
    return x if x.ndim < 3 else np.moveaxis(x, -1, 1)


def to_channels_last(y):
    return y if y.ndim < 3 else np.moveaxis(y, 1, -1)


def assert_close(actual, expected, rtol=1e-4, atol=1e-5):
    """Tolerances relative to the output's magnitude: some references reach 1e5."""
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale)


def run_single(graph, x, dtype=np.float64):
    out = run_graph(graph, to_channels_first(x), dtype=dtype)
    return [to_channels_last(out[name]) for name in graph.outputs]


def run_onnx(graph, x):
    session = onnxruntime.InferenceSession(graph_to_onnx(graph).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    (name,) = graph.inputs
    return [to_channels_last(y) for y in session.run(None, {name: to_channels_first(x).astype(np.float32)})]


# ---------------------------------------------------------------- the three writers

def writer_file(writer, model):
    folder = shared_models() / "keras" / "writers" / writer
    return folder / f"{model}.h5", np.load(folder / f"{model}.input.npy"), np.load(folder / f"{model}.output.npy")


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("model", WRITER_MODELS)
def test_writer_model_reproduces_keras_predict(writer, model):
    path, x, expected = writer_file(writer, model)
    graph = read_keras(path)
    (actual,) = run_single(graph, x)
    assert actual.shape == expected.shape
    assert_close(actual, expected)
    (exported,) = run_onnx(graph, x)
    assert_close(exported, expected)


@pytest.mark.parametrize("model", WRITER_MODELS)
def test_writers_agree_on_ops_and_outputs(model):
    graphs = {w: read_keras(writer_file(w, model)[0]) for w in WRITERS}
    sequences = {w: [node.op for node in g.nodes] for w, g in graphs.items()}
    assert len({tuple(s) for s in sequences.values()}) == 1, sequences
    x = writer_file(WRITERS[0], model)[1]
    outputs = [run_single(g, x)[0] for g in graphs.values()]
    for other in outputs[1:]:
        assert_close(other, outputs[0])


def test_func_model_layers_map_to_expected_ops():
    graph = read_keras(writer_file("keras3.15_tf2.21", "func_model")[0])
    assert [node.op for node in graph.nodes] == [
        "Pad", "Conv", "BatchNorm", "Relu", "Conv", "Relu", "Add", "Conv", "Conv", "Concat", "AveragePool",
        "GlobalAveragePool", "Flatten", "Dense"]
    depthwise = graph.nodes[4]
    assert depthwise.attrs["group"] == 8 and depthwise.params["weight"].shape == (8, 1, 3, 3)
    assert graph.nodes[9].attrs["axis"] == 1
    assert graph.inputs == {"img": (None, 3, 16, 16)}


def test_flatten_before_dense_permutes_rows_instead_of_transposing():
    graph = read_keras(writer_file("keras2.14_tf2.14", "seq_cnn")[0])
    assert "Transpose" not in [node.op for node in graph.nodes]


def test_load_model_dispatches_h5_to_keras_reader():
    graph = load_model(writer_file("keras2.14_tf2.14", "lrp_cnn")[0])
    assert graph.inputs == {"input_2": (None, 2, 12, 12)}


def test_batch_of_inputs_runs_in_one_call():
    path, x, _ = writer_file("tf_keras2.21_tf2.21", "lrp_cnn")
    graph = read_keras(path)
    batch = np.concatenate([x, x * 0.5, -x])
    together = run_single(graph, batch)[0]
    one_by_one = np.concatenate([run_single(graph, batch[i:i + 1])[0] for i in range(len(batch))])
    assert_close(together, one_by_one)


# ---------------------------------------------------------------- Deeplearning4j's import test files

# (model file, reference stem) relative to keras/, each with _ref_tfkeras2.15/<stem>.input.npy beside it.
DL4J_REFERENCES = [
    "dl4j-2018/modelimport/keras/examples/gans/dcgan_discriminator.h5",
    "dl4j/modelimport/keras/examples/simple_sparse_xent/simple_sparse_xent_mlp_keras_2_model.h5",
    "dl4j/modelimport/keras/fullconfigs/cnn/cnn_batch_norm.h5",
    *[f"dl4j/modelimport/keras/tfkeras/{name}.h5" for name in (
        "act_0", "act_1", "adv_act_0", "adv_act_1", "adv_act_2", "adv_act_3", "adv_act_4", "adv_act_5",
        "cnn2d_64", "cnn2d_65", "cnn2d_66", "cnn2d_67", "cnn2d_68", "cnn2d_69", "cnn2d_70", "cnn2d_71",
        "misc_1", "mlp_0", "some_loss")],
    *[f"dl4j/modelimport/keras/weights/{name}.h5" for name in (
        "batch_to_conv2d_tensorflow_2", "batch_to_conv2d_theano_2", "conv2d_reshape_tensorflow_2",
        "conv2d_reshape_theano_2", "conv2d_tensorflow_2", "conv2d_theano_2", "dense_tensorflow_2",
        "dense_theano_2", "sepconv2d_tensorflow_2")],
    "dl4j/modelimport/keras/weights/flatten_3d.hdf5",
]


def reference_pair(relative):
    path = shared_models() / "keras" / relative
    stem = path.name.rsplit(".", 1)[0]
    folder = path.parent / "_ref_tfkeras2.15"
    outputs = sorted(folder.glob(f"{stem}.output*.npy"))
    return path, np.load(folder / f"{stem}.input.npy"), [np.load(p) for p in outputs]


@pytest.mark.parametrize("relative", DL4J_REFERENCES, ids=lambda r: r.rsplit("/", 1)[-1])
def test_dl4j_file_reproduces_tf_keras(relative):
    path, x, expected = reference_pair(relative)
    graph = read_keras(path)
    actual = run_single(graph, x)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert_close(a, e)


def test_fully_convolutional_model_with_fixed_input_size():
    # 12net leaves H and W free; the IR needs them, so the caller names them (Keras order, no batch).
    path, x, expected = reference_pair("dl4j/modelimport/keras/examples/12net.h5")
    graph = read_keras(path, input_shapes={"input_2": x.shape[1:]})
    assert [node.op for node in graph.nodes].count("PRelu") == 3
    actual = run_single(graph, x)
    assert len(actual) == 2
    for a, e in zip(actual, expected):
        assert_close(a, e)
    with pytest.raises(ModelFileError, match="does not fit"):
        read_keras(path, input_shapes={"input_2": (12, 12, 4)})


@pytest.mark.parametrize("name", ["simpleconv2d.hdf5", "simpleconv2d_model.hdf5"])
def test_channels_first_model_takes_keras_input_as_is(name):
    # The first convolution is channels_first, the rest channels_last on the same tensor.
    path, x, (expected,) = reference_pair(f"dl4j/modelimport/keras/weights/{name}")
    graph = read_keras(path)
    assert graph.inputs[next(iter(graph.inputs))] == (None, 1, 28, 28)
    assert_close(run_graph(graph, x, dtype=np.float64)[graph.outputs[0]], expected)


def test_dl4j_mlp_config_plus_weights_matches_recorded_activations():
    folder = shared_models() / "keras" / "dl4j-2018" / "modelimport" / "keras" / "examples" / "mnist_mlp"
    graph = read_keras(folder / "mnist_mlp_tf_keras_2_weights.h5",
                       model_config=folder / "mnist_mlp_tf_keras_2_config.json")
    with h5py.File(folder / "mnist_mlp_tf_keras_2_inputs_and_outputs.h5", "r") as data:
        x = data["inputs/dense_1_input"][()]
        predictions = data["predictions/dense_3"][()]
        hidden = data["activations/dense_1"][()]
    values = run_graph(graph, x, dtype=np.float64, keep=["dense_1/relu"])
    assert_close(values[graph.outputs[0]], predictions)
    assert_close(values["dense_1/relu"], hidden)


def test_dl4j_sparse_xent_matches_recorded_predictions():
    folder = shared_models() / "keras" / "dl4j" / "modelimport" / "keras" / "examples" / "simple_sparse_xent"
    graph = read_keras(folder / "simple_sparse_xent_mlp_keras_2_model.h5")
    with h5py.File(folder / "simple_sparse_xent_mlp_keras_2_inputs_and_outputs.h5", "r") as data:
        x = data["inputs/dense_1_input"][()]
        expected = data["predictions/activation_1"][()]
    assert graph.inputs == {"dense_1_input": (None, 4)}
    assert_close(run_graph(graph, x, dtype=np.float64)[graph.outputs[0]], expected)


def test_fully_convolutional_model_keeps_its_free_sizes():
    # 12net leaves H and W free, and so does its graph; fixed to the reference's size it gives Keras' outputs
    path, x, expected = reference_pair("dl4j/modelimport/keras/examples/12net.h5")
    graph = read_keras(path)
    assert graph.inputs == {"input_2": (None, 3, None, None)}
    for a, e in zip(run_single(graph, x), expected):
        assert_close(a, e)


# ---------------------------------------------------------------- structure: compiled, nested, weights only

def stored_weights(path, group_name):
    with h5py.File(path, "r") as f:
        group = f["model_weights"][group_name]
        return [group[name][()] for name in group.attrs["weight_names"]]


@pytest.mark.parametrize("name", ["compiled_tfkeras.h5", "compiled_keras3.h5"])
def test_compiled_model_ignores_training_state(name):
    path = shared_models() / "keras" / "writers" / name
    graph = read_keras(path)
    assert [node.op for node in graph.nodes] == ["Dense", "Relu", "Dense"]
    k1, b1 = stored_weights(path, "d1")
    k2, b2 = stored_weights(path, "d2")
    x = np.random.default_rng(0).normal(size=(5, 4))
    expected = np.maximum(x @ k1 + b1, 0) @ k2 + b2
    assert_close(run_graph(graph, x, dtype=np.float64)[graph.outputs[0]], expected)


@pytest.mark.parametrize("name", ["nested_tfkeras.h5", "nested_keras3.h5", "nested2_tfkeras.h5", "nested2_keras3.h5"])
def test_nested_model_is_inlined_with_its_weights(name):
    path = shared_models() / "keras" / "writers" / name
    graph = read_keras(path)
    ops = [(node.name, node.op) for node in graph.nodes]
    assert ops[:2] == [("backbone/c1", "Conv"), ("backbone/bn", "BatchNorm")]
    assert graph.inputs == {"x": (None, 3, 8, 8)}
    with h5py.File(path, "r") as f:
        group = f["model_weights"]["backbone"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        kernel = group[next(n for n in names if "c1/kernel" in n)][()]
        gamma = group[next(n for n in names if "bn/gamma" in n)][()]
    np.testing.assert_array_equal(graph.nodes[0].params["weight"], kernel.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(graph.nodes[1].params["scale"], gamma)
    run_graph(graph, np.zeros((2, 3, 8, 8)))


def dense_config(layers, input_shape):
    return {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "inp", "batch_input_shape": [None, *input_shape]}},
        *layers]}}


@pytest.mark.parametrize("name", ["weights_only_tfkeras.h5", "weights_only_keras3.weights.h5"])
def test_weights_only_file_needs_and_uses_a_config(name, tmp_path):
    path = shared_models() / "keras" / "writers" / name
    with pytest.raises(ModelFileError, match="model_config"):
        read_keras(path)
    config = tmp_path / "arch.json"
    config.write_text(json.dumps(dense_config([
        {"class_name": "Dense", "config": {"name": "d1", "units": 3, "activation": "relu"}},
        {"class_name": "Dense", "config": {"name": "d2", "units": 2, "activation": "linear"}}], [4])))
    graph = read_keras(path, model_config=config)
    assert [node.op for node in graph.nodes] == ["Dense", "Relu", "Dense"]
    assert graph.nodes[0].params["weight"].shape == (3, 4)
    assert graph.nodes[2].params["weight"].shape == (2, 3)


# ---------------------------------------------------------------- small files written here

def write_model(path, config, weights, keras_version="2.14.0"):
    """A legacy full-model Keras h5 as Keras 2 lays it out: config JSON + one group per layer."""
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = keras_version
        f.attrs["backend"] = "tensorflow"
        group = f.create_group("model_weights")
        layers = config["config"]["layers"]
        group.attrs["layer_names"] = [l["config"]["name"].encode() for l in layers]
        for layer in layers:
            name = layer["config"]["name"]
            sub = group.create_group(name)
            arrays = weights.get(name, [])
            names = [f"{name}/w{i}:0" for i in range(len(arrays))]
            sub.attrs["weight_names"] = [n.encode() for n in names]
            for n, a in zip(names, arrays):
                sub.create_dataset(n, data=np.asarray(a, dtype=np.float32))
    return path


def conv2d_nhwc(x, k, pads=((0, 0), (0, 0))):
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
    kh, kw = k.shape[:2]
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((x.shape[0], h, w, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i:i + h, j:j + w, :] @ k[i, j]
    return out


def test_flatten_feeding_a_non_dense_layer_keeps_keras_order(tmp_path):
    rng = np.random.default_rng(1)
    k = rng.normal(size=(2, 2, 3, 4))
    config = dense_config([
        {"class_name": "Conv2D", "config": {"name": "c", "filters": 4, "kernel_size": [2, 2], "padding": "valid",
                                            "activation": "linear", "use_bias": False}},
        {"class_name": "Flatten", "config": {"name": "f"}},
        {"class_name": "Activation", "config": {"name": "a", "activation": "relu"}}], [4, 5, 3])
    graph = read_keras(write_model(tmp_path / "m.h5", config, {"c": [k]}))
    x = rng.normal(size=(2, 4, 5, 3))
    expected = np.maximum(conv2d_nhwc(x, k).reshape(2, -1), 0)
    assert_close(run_single(graph, x)[0], expected)


def test_reshape_permute_average_prelu_and_padding(tmp_path):
    rng = np.random.default_rng(2)
    slope = rng.uniform(0.1, 0.5, size=(1, 1, 3))
    config = {"class_name": "Functional", "config": {
        "name": "f", "input_layers": [["inp", 0, 0]], "output_layers": [["out", 0, 0]], "layers": [
            {"class_name": "InputLayer", "name": "inp", "config": {"name": "inp", "batch_input_shape": [None, 4, 6, 3]},
             "inbound_nodes": []},
            {"class_name": "ZeroPadding2D", "name": "pad", "config": {"name": "pad", "padding": [[1, 0], [0, 2]]},
             "inbound_nodes": [[["inp", 0, 0, {}]]]},
            {"class_name": "Cropping2D", "name": "crop", "config": {"name": "crop", "cropping": [[1, 0], [0, 2]]},
             "inbound_nodes": [[["pad", 0, 0, {}]]]},
            {"class_name": "PReLU", "name": "prelu", "config": {"name": "prelu", "shared_axes": [1, 2]},
             "inbound_nodes": [[["crop", 0, 0, {}]]]},
            {"class_name": "Average", "name": "avg", "config": {"name": "avg"},
             "inbound_nodes": [[["prelu", 0, 0, {}], ["inp", 0, 0, {}]]]},
            {"class_name": "Permute", "name": "perm", "config": {"name": "perm", "dims": [2, 1, 3]},
             "inbound_nodes": [[["avg", 0, 0, {}]]]},
            {"class_name": "Reshape", "name": "out", "config": {"name": "out", "target_shape": [12, -1]},
             "inbound_nodes": [[["perm", 0, 0, {}]]]}]}}
    graph = read_keras(write_model(tmp_path / "m.h5", config, {"prelu": [slope]}))
    x = rng.normal(size=(2, 4, 6, 3))
    prelu = np.where(x >= 0, x, x * slope)
    expected = ((prelu + x) / 2).transpose(0, 2, 1, 3).reshape(2, 12, -1)
    assert_close(run_single(graph, x)[0], expected)


def test_conv_same_padding_strided_and_hard_sigmoid_versions(tmp_path):
    rng = np.random.default_rng(3)
    k = rng.normal(size=(3, 3, 2, 2))
    x = rng.normal(size=(1, 6, 6, 2))

    def build(version):
        config = dense_config([
            {"class_name": "Conv2D", "config": {"name": "c", "filters": 2, "kernel_size": [3, 3], "strides": [2, 2],
                                                "padding": "same", "activation": "hard_sigmoid", "use_bias": False}}],
            [6, 6, 2])
        return read_keras(write_model(tmp_path / f"m{version}.h5", config, {"c": [k]}, keras_version=version))

    # TensorFlow pads 'same' with the odd pixel at the end: 6 → 3 with stride 2 pads (0, 1).
    z = conv2d_nhwc(x, k, pads=((0, 1), (0, 1)))[:, ::2, ::2, :]
    assert_close(run_single(build("2.14.0"), x)[0], np.clip(0.2 * z + 0.5, 0, 1))
    assert_close(run_single(build("3.15.1"), x)[0], np.clip(z / 6 + 0.5, 0, 1))


def test_dense_on_a_feature_map_acts_on_channels(tmp_path):
    rng = np.random.default_rng(4)
    k, b = rng.normal(size=(3, 5)), rng.normal(size=5)
    config = dense_config([{"class_name": "Dense", "config": {"name": "d", "units": 5, "activation": "softmax"}}],
                          [2, 4, 3])
    graph = read_keras(write_model(tmp_path / "m.h5", config, {"d": [k, b]}))
    x = rng.normal(size=(2, 2, 4, 3))
    z = x @ k + b
    expected = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    assert_close(run_single(graph, x)[0], expected)


# ---------------------------------------------------------------- errors

def copy_with_config(source, target, edit):
    shutil.copy(source, target)
    with h5py.File(target, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)
    return target


def test_missing_file_and_non_hdf5_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        read_keras(tmp_path / "absent.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ModelFileError, match="junk.h5"):
        read_keras(junk)


def test_hdf5_file_that_is_not_keras(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ModelFileError, match="not a Keras model file"):
        read_keras(path)


def test_unreadable_model_config_json(tmp_path):
    path = shared_models() / "keras" / "writers" / "weights_only_tfkeras.h5"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelFileError, match="bad.json"):
        read_keras(path, model_config=bad)


def test_every_unsupported_layer_is_listed_at_once(tmp_path):
    source = writer_file("keras2.14_tf2.14", "seq_cnn")[0]

    def edit(config):
        layers = config["config"]["layers"]
        layers[3]["class_name"] = "MysteryLayer"
        layers[5]["config"]["activation"] = "swish"
        layers[9]["config"]["activation"] = "softplus"

    path = copy_with_config(source, tmp_path / "edited.h5", edit)
    with pytest.raises(UnsupportedModelError) as caught:
        read_keras(path)
    listed = {(name, op) for name, op, _ in caught.value.nodes}
    assert listed == {("act1", "MysteryLayer"), ("conv2", "Conv2D"), ("fc1", "Dense")}
    assert "edited.h5" in str(caught.value) and "swish" in str(caught.value)


def test_weight_count_mismatch_names_the_layer(tmp_path):
    path = tmp_path / "short.h5"
    shutil.copy(writer_file("keras2.14_tf2.14", "lrp_cnn")[0], path)
    with h5py.File(path, "r+") as f:
        group = f["model_weights"]["conv2"]
        group.attrs["weight_names"] = group.attrs["weight_names"][:1]
    with pytest.raises(GraphError, match="conv2") as caught:
        read_keras(path)
    assert "short.h5" in str(caught.value)


def test_weight_shape_mismatch_names_the_layer(tmp_path):
    rng = np.random.default_rng(5)
    config = dense_config([{"class_name": "Dense", "config": {"name": "d", "units": 5}}], [3])
    path = write_model(tmp_path / "m.h5", config, {"d": [rng.normal(size=(4, 5)), np.zeros(5)]})
    with pytest.raises(GraphError, match="'d'"):
        read_keras(path)


# ---------------------------------------------------------------- Keras 3 archives, Keras 1 configs, more layers

def test_keras3_archive_matches_its_h5_twin():
    folder = shared_models() / "keras" / "writers" / "keras3.15_tf2.21"
    archive = read_keras(folder / "func_model.keras")
    legacy = read_keras(folder / "func_model.h5")
    assert [n.op for n in archive.nodes] == [n.op for n in legacy.nodes]
    x, expected = np.load(folder / "func_model.input.npy"), np.load(folder / "func_model.output.npy")
    assert_close(run_single(archive, x)[0], expected)


def test_keras1_mnist_cnn_config_matches_a_numpy_forward_pass():
    folder = shared_models() / "keras" / "dl4j-2018" / "modelimport" / "keras" / "examples" / "mnist_cnn"
    weights_path = folder / "mnist_cnn_tf_keras_1_weights.h5"
    config = folder / "mnist_cnn_tf_keras_1_config.json"
    # Keras 1 does not record its backend: convolutions are refused until it is named
    with pytest.raises(UnsupportedModelError, match="keras1-backend"):
        read_keras(weights_path, model_config=config)
    graph = read_keras(weights_path, model_config=config, keras1_backend="tensorflow")
    theano = read_keras(weights_path, model_config=config, keras1_backend="theano")
    flipped = [n.params["weight"] for n in theano.nodes if n.op == "Conv"]
    for plain, other in zip([n.params["weight"] for n in graph.nodes if n.op == "Conv"], flipped):
        np.testing.assert_array_equal(plain[:, :, ::-1, ::-1], other)
    with h5py.File(weights_path, "r") as f:
        def w(layer, i):
            group = f[layer]
            return group[group.attrs["weight_names"][i]][()].astype(np.float64)
        x = np.random.default_rng(6).uniform(size=(2, 28, 28, 1))
        h = np.maximum(conv2d_nhwc(x, w("convolution2d_1", 0)) + w("convolution2d_1", 1), 0)
        h = np.maximum(conv2d_nhwc(h, w("convolution2d_2", 0)) + w("convolution2d_2", 1), 0)
        h = h.reshape(2, 12, 2, 12, 2, 32).max(axis=(2, 4)).reshape(2, -1)
        h = np.maximum(h @ w("dense_1", 0) + w("dense_1", 1), 0)
        z = h @ w("dense_2", 0) + w("dense_2", 1)
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert_close(run_single(graph, x)[0], expected)


def test_keras1_theano_ordering_is_refused(tmp_path):
    config = {"class_name": "Sequential", "config": [
        {"class_name": "Convolution2D", "config": {"name": "c", "nb_filter": 2, "nb_row": 1, "nb_col": 1,
                                                   "border_mode": "valid", "dim_ordering": "th",
                                                   "batch_input_shape": [None, 3, 4, 4]}}]}
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["layer_names"] = [b"c"]
        f.create_group("c").attrs["weight_names"] = []
    with pytest.raises(UnsupportedModelError, match="dim_ordering 'th'"):
        read_keras(path)


def conv_transpose_nhwc(x, k, stride):
    """Keras kernel (kh, kw, out, in): every input pixel scatters a kernel-sized patch."""
    n, h, w, _ = x.shape
    kh, kw = k.shape[:2]
    out = np.zeros((n, (h - 1) * stride + kh, (w - 1) * stride + kw, k.shape[2]))
    for i in range(h):
        for j in range(w):
            out[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :] += np.einsum(
                "nc,abkc->nabk", x[:, i, j, :], k)
    return out


@pytest.mark.parametrize("padding, kernel, stride", [("valid", 3, 2), ("same", 3, 2), ("same", 4, 2),
                                                     ("same", 1, 2)])
def test_conv2d_transpose(tmp_path, padding, kernel, stride):
    rng = np.random.default_rng(7)
    k = rng.normal(size=(kernel, kernel, 2, 3))
    config = dense_config([{"class_name": "Conv2DTranspose", "config": {
        "name": "t", "filters": 2, "kernel_size": [kernel, kernel], "strides": [stride, stride],
        "padding": padding, "activation": "linear", "use_bias": False}}], [3, 4, 3])
    graph = read_keras(write_model(tmp_path / "m.h5", config, {"t": [k]}))
    x = rng.normal(size=(2, 3, 4, 3))
    full = conv_transpose_nhwc(x, k, stride)
    if padding == "same":
        # The transpose of a 'same' convolution from (3·s, 4·s): TensorFlow crops total // 2 first.
        begin = max(kernel - stride, 0) // 2
        target = np.zeros((2, 3 * stride, 4 * stride, 2))
        crop = full[:, begin:begin + 3 * stride, begin:begin + 4 * stride, :]
        target[:, :crop.shape[1], :crop.shape[2], :] = crop
        full = target
    assert_close(run_single(graph, x)[0], full)


def test_pooling_same_never_counts_padding(tmp_path):
    config = dense_config([
        {"class_name": "AveragePooling2D", "config": {"name": "avg", "pool_size": [2, 2], "strides": [2, 2],
                                                      "padding": "same"}},
        {"class_name": "MaxPooling2D", "config": {"name": "max", "pool_size": [2, 2], "strides": [1, 1],
                                                  "padding": "same"}}], [3, 3, 1])
    graph = read_keras(write_model(tmp_path / "m.h5", config, {}))
    x = -np.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    # 'same' pads the odd pixel at the end: averages divide by the taps inside the input, and the
    # max pool's end padding never wins over negative values.
    avg = np.array([[(-1 - 2 - 4 - 5) / 4, (-3 - 6) / 2], [(-7 - 8) / 2, -9]])
    expected = np.array([[avg.max(), max(avg[0, 1], avg[1, 1])], [max(avg[1, 0], avg[1, 1]), avg[1, 1]]])
    assert_close(run_single(graph, x)[0][0, :, :, 0], expected)


def test_conv1d_causal_upsampling_and_global_max(tmp_path):
    rng = np.random.default_rng(8)
    k, b = rng.normal(size=(3, 2, 4)), rng.normal(size=4)
    config = dense_config([
        {"class_name": "Conv1D", "config": {"name": "c", "filters": 4, "kernel_size": [3], "padding": "causal",
                                            "dilation_rate": [2], "activation": "tanh"}},
        {"class_name": "UpSampling1D", "config": {"name": "up", "size": 2}},
        {"class_name": "GlobalMaxPooling1D", "config": {"name": "g"}}], [7, 2])
    graph = read_keras(write_model(tmp_path / "m.h5", config, {"c": [k, b]}))
    x = rng.normal(size=(2, 7, 2))
    padded = np.pad(x, ((0, 0), (4, 0), (0, 0)))
    z = sum(padded[:, 2 * i:2 * i + 7, :] @ k[i] for i in range(3)) + b
    expected = np.repeat(np.tanh(z), 2, axis=1).max(axis=1)
    assert_close(run_single(graph, x)[0], expected)


def test_activation_layers_and_settings(tmp_path):
    config = dense_config([
        {"class_name": "ReLU", "config": {"name": "r6", "max_value": 6.0, "negative_slope": 0.0, "threshold": 0.0}},
        {"class_name": "LeakyReLU", "config": {"name": "lk", "alpha": 0.1}},
        {"class_name": "ELU", "config": {"name": "elu", "alpha": 0.5}},
        {"class_name": "ReLU", "config": {"name": "lr", "negative_slope": 0.2}},
        {"class_name": "Softmax", "config": {"name": "sm", "axis": -1}}], [2, 3])
    graph = read_keras(write_model(tmp_path / "m.h5", config, {}))
    assert [n.op for n in graph.nodes] == ["Clip", "LeakyRelu", "Elu", "LeakyRelu", "Softmax"]
    assert graph.nodes[-1].attrs["axes"] == (1,)
    x = np.random.default_rng(9).normal(size=(2, 2, 3)) * 4
    z = np.minimum(np.maximum(x, 0), 6)
    z = np.exp(z - z.max(-1, keepdims=True))
    assert_close(run_single(graph, x)[0], z / z.sum(-1, keepdims=True))


def test_merge_layers_in_keras3_functional_form(tmp_path):
    def tensor(name):
        return {"class_name": "__keras_tensor__", "config": {"keras_history": [name, 0, 0]}}

    def node(*names):
        args = [tensor(names[0])] if len(names) == 1 else [[tensor(n) for n in names]]
        return [{"args": args, "kwargs": {}}]

    config = {"class_name": "Functional", "config": {
        "name": "f", "input_layers": ["a", 0, 0], "output_layers": [["cat", 0, 0], ["sub", 0, 0]], "layers": [
            {"class_name": "InputLayer", "name": "a", "config": {"name": "a", "batch_shape": [None, 3, 3, 2]},
             "inbound_nodes": []},
            {"class_name": "Multiply", "name": "mul", "config": {"name": "mul"}, "inbound_nodes": node("a", "a", "a")},
            {"class_name": "Subtract", "name": "sub", "config": {"name": "sub"}, "inbound_nodes": node("mul", "a")},
            {"class_name": "Concatenate", "name": "cat", "config": {"name": "cat", "axis": -1},
             "inbound_nodes": node("sub", "a")}]}}
    graph = read_keras(write_model(tmp_path / "m.h5", config, {}, keras_version="3.15.1"))
    x = np.random.default_rng(10).normal(size=(2, 3, 3, 2))
    cat, sub = run_single(graph, x)
    assert_close(sub, x ** 3 - x)
    assert_close(cat, np.concatenate([x ** 3 - x, x], axis=-1))


def test_known_but_unsupported_layers_give_reasons(tmp_path):
    config = {"class_name": "Functional", "config": {
        "name": "f", "input_layers": [["a", 0, 0]], "output_layers": [["m", 0, 0]], "layers": [
            {"class_name": "InputLayer", "name": "a", "config": {"name": "a", "batch_input_shape": [None, 4]},
             "inbound_nodes": []},
            {"class_name": "Lambda", "name": "l", "config": {"name": "l"}, "inbound_nodes": [[["a", 0, 0, {}]]]},
            {"class_name": "Maximum", "name": "m", "config": {"name": "m"},
             "inbound_nodes": [[["l", 0, 0, {}], ["a", 0, 0, {}]]]}]}}
    with pytest.raises(UnsupportedModelError) as caught:
        read_keras(write_model(tmp_path / "m.h5", config, {}))
    reasons = {name: reason for name, _, reason in caught.value.nodes}
    assert set(reasons) == {"l", "m"} and "maximum" in reasons["m"]


def test_listed_but_missing_weight_dataset(tmp_path):
    path = tmp_path / "gone.h5"
    shutil.copy(writer_file("keras3.15_tf2.21", "lrp_cnn")[0], path)
    with h5py.File(path, "r+") as f:
        group = f["model_weights"]["fc1"]
        del group[group.attrs["weight_names"][1]]
    with pytest.raises(GraphError, match="fc1"):
        read_keras(path)


@pytest.mark.parametrize("relative", [
    "dl4j-2018/modelimport/keras/examples/gans/dcgan_discriminator.h5",
    "dl4j/modelimport/keras/weights/sepconv2d_tensorflow_2.h5",
    "dl4j/modelimport/keras/weights/batch_to_conv2d_tensorflow_2.h5",
    "dl4j/modelimport/keras/tfkeras/cnn2d_70.h5",
], ids=lambda r: r.rsplit("/", 1)[-1])
def test_dl4j_file_exports_to_onnx(relative):
    path, x, expected = reference_pair(relative)
    (actual,) = run_onnx(read_keras(path), x)
    assert_close(actual, expected[0])


@pytest.mark.parametrize("model", WRITER_MODELS)
def test_keras_graph_is_explainable(model):
    from lrptool.lrp import Explainer

    path, x, expected = writer_file("keras3.15_tf2.21", model)
    graph = read_keras(path)
    explanation = Explainer(graph, "linear=epsilon-nobias:1e-7", dtype=np.float64, quiet=True).explain(
        to_channels_first(x))
    # The explainer scores the logits (a final softmax is left out), so only the ranking must agree.
    np.testing.assert_array_equal(np.argmax(explanation.outputs, 1), np.argmax(expected, 1))
    assert explanation.relevance.shape == to_channels_first(x).shape
    assert np.all(np.isfinite(explanation.relevance))


def test_keras1_weights_file_with_config_taken_from_its_full_model(tmp_path):
    folder = shared_models() / "keras" / "dl4j" / "keras" / "simple"
    with h5py.File(folder / "cnn_tf_model.h5", "r") as f:
        config = f.attrs["model_config"]
    (tmp_path / "arch.json").write_text(config.decode() if isinstance(config, bytes) else config)
    full = read_keras(folder / "cnn_tf_model.h5", keras1_backend="tensorflow")
    split = read_keras(folder / "cnn_tf_weights.h5", model_config=tmp_path / "arch.json", keras1_backend="tensorflow")
    assert [n.op for n in full.nodes] == [n.op for n in split.nodes]
    x = np.random.default_rng(11).normal(size=(3, 8, 8, 3))
    assert run_single(full, x)[0].shape == (3, full.shapes[full.outputs[0]][1])
    assert_close(run_single(split, x)[0], run_single(full, x)[0])
