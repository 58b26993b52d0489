"""Damaged and hostile Keras files on the command line: one regression test per kind of damage the
fuzz suite (tests/test_fuzz_keras.py) found. Each must end in exit status 2 with one stderr line
that names the file and, where the damage sits in a layer, the layer and its class."""

import json
import os
import shutil
import zipfile

import h5py
import numpy as np
import onnx
import pytest

from fuzz_support import CliWorker
from test_fuzz_keras import (functional_keras2_model, functional_keras3_model, keras3_weights, sequential_model,
                             set_config_attr, write_archive, write_h5)


@pytest.fixture(scope="module")
def worker():
    with CliWorker(timeout=60) as running:
        yield running


@pytest.fixture
def model(tmp_path):
    """A small Sequential model (conv, bn, pool, flat, fc, prob) and its config and weights."""
    config, weights = sequential_model(np.random.default_rng(3))
    return write_h5(tmp_path / "model.h5", config, weights), config, weights


def refused(worker, *argv, layer=None, words=()):
    """Run ``lrptool inspect ARGV`` (or the command given) and check the one-line refusal."""
    argv = [str(a) for a in argv]
    if argv[0] not in ("inspect", "convert"):
        argv = ["inspect", *argv]
    outcome = worker.run(argv)
    lines = outcome.stderr.strip().splitlines()
    assert outcome.code == 2 and outcome.kind == "error", outcome.describe()
    assert len(lines) == 1 and lines[0].startswith("lrptool: error: "), outcome.describe()
    files = [a for a in argv[1:] if a.endswith((".h5", ".keras", ".json"))]
    assert any(f in lines[0] for f in files), lines[0]
    if layer is not None:
        assert layer in lines[0], lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def edit_config(path, edit):
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)
    return path


def layers(config):
    return config["config"]["layers"]


# ---------------------------------------------------------------- HDF5 structure

def test_corrupt_symbol_table_names_the_layer(worker, model, tmp_path):
    path, _, _ = model
    data = bytearray(path.read_bytes())
    # h5py writes the groups in order: the last symbol-table node is the one of the last layer's weights
    at = data.rindex(b"SNOD")
    data[at:at + 4] = b"XXXX"
    path.write_bytes(bytes(data))
    refused(worker, path, layer="layer 'fc' (Dense)", words=["damaged"])


def test_corrupt_global_heap_of_the_config(worker, model):
    path, _, _ = model
    data = bytearray(path.read_bytes())
    at = data.index(b"GCOL")
    data[at:at + 4] = b"XXXX"
    path.write_bytes(bytes(data))
    refused(worker, path, words=["model_config", "damaged"])


def test_dataset_where_a_group_belongs(worker, model):
    path, _, _ = model
    with h5py.File(path, "r+") as f:
        del f["model_weights/bn"]
        f["model_weights/bn"] = np.zeros(3)
    refused(worker, path, layer="layer 'bn' (BatchNormalization)", words=["dataset, expected a group"])


def test_group_where_a_dataset_belongs(worker, model):
    path, _, _ = model
    with h5py.File(path, "r+") as f:
        del f["model_weights/fc/fc/w1:0"]
        f.create_group("model_weights/fc/fc/w1:0")
    refused(worker, path, layer="layer 'fc' (Dense)", words=["group, expected a dataset"])


def test_link_to_another_file(worker, model, tmp_path):
    path, _, _ = model
    with h5py.File(path, "r+") as f:
        del f["model_weights/conv/conv/w0:0"]
        f["model_weights/conv/conv/w0:0"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/w")
    refused(worker, path, layer="layer 'conv' (Conv2D)", words=["another file"])


# ---------------------------------------------------------------- attributes

def test_non_utf8_layer_name_in_the_config(worker, model):
    path, config, _ = model
    layers(config)[5]["config"]["name"] = "__bad__"
    data = json.dumps(config).encode().replace(b"__bad__", b"fc\xff\xfe")
    with h5py.File(path, "r+") as f:
        set_config_attr(f, data)
    refused(worker, path, layer="layer 'fc\\udcff\\udcfe' (Dense)", words=["not UTF-8"])


def test_non_utf8_layer_name_in_the_weights(worker, model):
    path, _, _ = model
    with h5py.File(path, "r+") as f:
        names = list(f["model_weights"].attrs["layer_names"])
        f["model_weights"].attrs["layer_names"] = np.array(names[:-1] + [b"prob\xc3\x28"], dtype="S")
    refused(worker, path, words=["layer_names", "prob\\xc3(", "UTF-8"])


def test_array_where_the_config_text_belongs(worker, model):
    path, _, _ = model
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = np.arange(4)
    refused(worker, path, words=["model_config", "expected JSON text"])


def test_numbers_where_weight_names_belong(worker, model):
    path, _, _ = model
    with h5py.File(path, "r+") as f:
        f["model_weights/conv"].attrs["weight_names"] = np.arange(2)
    refused(worker, path, layer="layer 'conv' (Conv2D)", words=["weight_names", "expected a list of names"])


# ---------------------------------------------------------------- the model config's structure

def test_config_without_layers(worker, model):
    path, _, _ = model
    edit_config(path, lambda config: config["config"].pop("layers"))
    refused(worker, path, words=["layers are null, expected a list"])


def test_layer_config_of_the_wrong_type(worker, model):
    path, _, _ = model
    edit_config(path, lambda config: layers(config)[2].update(config=[1, 2]))
    refused(worker, path, layer="layer 'bn' (BatchNormalization)", words=["expected an object"])


def test_class_name_that_is_not_text(worker, model):
    path, _, _ = model
    edit_config(path, lambda config: layers(config)[3].update(class_name=["MaxPooling2D"]))
    refused(worker, path, layer="layer 'pool'", words=["class name"])


def test_duplicate_layer_names(worker, model):
    path, _, _ = model
    edit_config(path, lambda config: layers(config)[4]["config"].update(name="pool"))
    refused(worker, path, layer="layer 'pool' (Flatten)", words=["second layer of this name"])


def test_input_shape_with_a_string_size(worker, model):
    path, _, _ = model
    edit_config(path, lambda config: layers(config)[0]["config"].update(batch_input_shape=[None, "8", 8, 2]))
    refused(worker, path, layer="layer 'inp' (InputLayer)", words=["batch_input_shape"])


def test_input_larger_than_the_memory_budget(worker, model):
    path, _, _ = model
    edit_config(path, lambda config: layers(config)[0]["config"].update(
        batch_input_shape=[None, 2 ** 31 - 1, 2 ** 31 - 1, 2]))
    refused(worker, path, words=["input 'inp'", "memory budget"])


@pytest.mark.parametrize("node", [[["inp", 0]], [[0, 0, 0]], "inp", [["inp", -1, 0, {}]]])
def test_keras2_inbound_node_of_the_wrong_shape(worker, tmp_path, node):
    config, weights = functional_keras2_model(np.random.default_rng(1))
    layers(config)[1]["inbound_nodes"] = [node]
    refused(worker, write_h5(tmp_path / "f.h5", config, weights), layer="layer 'c1' (Conv2D)",
            words=["inbound_nodes"])


def test_keras3_inbound_node_of_the_wrong_shape(worker, tmp_path):
    config, weights = functional_keras3_model(np.random.default_rng(1))
    layers(config)[2]["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = ["dw", "0", 0]
    refused(worker, write_h5(tmp_path / "f.h5", config, weights, "3.15.1"), layer="layer 'lr' (LeakyReLU)",
            words=["tensor reference"])


def test_output_index_beyond_what_a_layer_makes(worker, tmp_path):
    config, weights = functional_keras2_model(np.random.default_rng(1))
    layers(config)[2]["inbound_nodes"] = [[["a", 0, 0, {}], ["c1", 0, 3, {}]]]
    refused(worker, write_h5(tmp_path / "f.h5", config, weights), layer="layer 'c1' (Conv2D)",
            words=["output 3"])


def test_layers_in_a_cycle(worker, tmp_path):
    config, weights = functional_keras2_model(np.random.default_rng(1))
    layers(config)[1]["inbound_nodes"] = [[["cat", 0, 0, {}]]]
    refused(worker, write_h5(tmp_path / "f.h5", config, weights), words=["'c1'", "a cycle"])


def test_single_input_layer_called_on_two_tensors(worker, tmp_path):
    config, weights = functional_keras2_model(np.random.default_rng(1))
    layers(config)[6]["inbound_nodes"] = [[["avg", 0, 0, {}], ["avg", 0, 0, {}]]]
    refused(worker, write_h5(tmp_path / "f.h5", config, weights), layer="layer 'gap' (GlobalAveragePooling2D)",
            words=["called on 2 tensors"])


def test_models_nested_too_deeply(worker, tmp_path):
    config, weights = sequential_model(np.random.default_rng(1))
    nested = config
    for depth in range(40):
        nested = {"class_name": "Sequential", "config": {"name": f"m{depth}", "layers": [nested]}}
    path = write_h5(tmp_path / "m.h5", config, weights)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = json.dumps(nested)
    refused(worker, path, words=["nested more than"])


@pytest.mark.parametrize("where", ["config", "arch"])
def test_json_nested_too_deeply(worker, model, tmp_path, where):
    path, _, _ = model
    deep = "[" * 5000 + "]" * 5000
    if where == "config":
        with h5py.File(path, "r+") as f:
            f.attrs["model_config"] = deep
        refused(worker, path, words=["nested too deeply"])
    else:
        arch = tmp_path / "arch.json"
        arch.write_text(deep)
        refused(worker, path, "--model-config", arch, words=["arch.json", "nested too deeply"])


def test_nan_in_a_setting(worker, model):
    path, _, _ = model
    edit_config(path, lambda config: layers(config)[2]["config"].update(epsilon=float("nan")))
    refused(worker, path, layer="layer 'bn' (BatchNormalization)", words=["'epsilon' is nan"])


@pytest.mark.parametrize("key, value", [("kernel_size", [3, 0]), ("strides", "2"), ("padding", {"a": 1}),
                                        ("use_bias", "yes"), ("activation", 5), ("dilation_rate", [1, 1, 1])])
def test_setting_of_the_wrong_type_or_range(worker, model, key, value):
    path, _, _ = model
    edit_config(path, lambda config: layers(config)[1]["config"].update({key: value}))
    refused(worker, path, layer="layer 'conv' (Conv2D)", words=[key])


def test_keras1_convolution_without_nb_col(worker, model):
    path, _, _ = model

    def keras1(config):
        cfg = layers(config)[1]["config"]
        for key in ("kernel_size", "strides", "padding", "dilation_rate", "data_format"):
            cfg.pop(key)
        cfg.update(nb_filter=4, nb_row=3, border_mode="same", subsample=[1, 1], dim_ordering="tf")
    edit_config(path, keras1)
    refused(worker, path, layer="layer 'conv' (Conv2D)", words=["kernel_size"])


def test_int_model_name_converts_with_a_text_graph_name(worker, tmp_path):
    config, weights = functional_keras2_model(np.random.default_rng(1))
    assert config["config"]["name"] == 7
    out = tmp_path / "f.onnx"
    outcome = worker.run(["convert", str(write_h5(tmp_path / "f.h5", config, weights)), "-o", str(out)])
    assert outcome.code == 0, outcome.describe()
    assert onnx.load(str(out)).graph.name == "7"


# ---------------------------------------------------------------- weights

def test_weight_size_that_disagrees_with_the_layer(worker, model):
    path, _, _ = model
    with h5py.File(path, "r+") as f:
        bias = f["model_weights/fc/fc/w1:0"][()]
        del f["model_weights/fc/fc/w1:0"]
        f["model_weights/fc/fc/w1:0"] = bias[:-1]
    refused(worker, path, layer="layer 'fc' (Dense)", words=["bias has shape [4], expected [5]"])


def test_kernel_that_disagrees_with_kernel_size(worker, model):
    path, _, _ = model
    with h5py.File(path, "r+") as f:
        kernel = f["model_weights/conv/conv/w0:0"][()]
        del f["model_weights/conv/conv/w0:0"]
        f["model_weights/conv/conv/w0:0"] = kernel[:2]
    refused(worker, path, layer="layer 'conv' (Conv2D)", words=["kernel_size [3, 3]"])


@pytest.mark.parametrize("make", [
    lambda g, n: g.create_dataset(n, data=np.array([b"0.5", b"1.5", b"2", b"3", b"4"])),
    lambda g, n: g.create_dataset(n, data=["0.5"] * 5, dtype=h5py.string_dtype()),
    lambda g, n: g.create_dataset(n, data=np.zeros(5, dtype=[("a", "<f4"), ("b", "<i4")])),
    lambda g, n: g.create_dataset(n, (5,), dtype=h5py.vlen_dtype(np.float32)),
    lambda g, n: g.create_dataset(n, data=np.arange(5)),
], ids=["bytes", "strings", "records", "variable-length", "ints"])
def test_weight_that_is_not_floating_point(worker, model, make):
    path, _, _ = model
    with h5py.File(path, "r+") as f:
        group = f["model_weights/fc/fc"]
        del group["w1:0"]
        make(group, "w1:0")
    refused(worker, path, layer="layer 'fc' (Dense)", words=["not floating-point numbers"])


def test_weight_with_nan(worker, model):
    path, _, _ = model
    with h5py.File(path, "r+") as f:
        f["model_weights/bn/bn/w3:0"][1] = np.nan
    refused(worker, path, layer="layer 'bn' (BatchNormalization)", words=["NaN"])


def test_huge_contiguous_weight_in_a_small_file(worker, model):
    path, _, _ = model
    with h5py.File(path, "r+") as f:
        del f["model_weights/fc/fc/w0:0"]
        f["model_weights/fc/fc"].create_dataset("w0:0", shape=(2 ** 18, 2 ** 18), dtype=np.float64, fillvalue=0.5)
    assert path.stat().st_size < 64 * 1024
    refused(worker, path, layer="layer 'fc' (Dense)", words=["512.0 GiB", "more than the whole file"])


def test_huge_compressed_weight_behind_a_fill_value(worker, model):
    path, _, _ = model
    with h5py.File(path, "r+") as f:
        del f["model_weights/fc/fc/w0:0"]
        f["model_weights/fc/fc"].create_dataset("w0:0", shape=(2 ** 20, 2 ** 17, 3), dtype=np.float32,
                                                chunks=(1, 1024, 3), compression="gzip", fillvalue=1.0)
    assert path.stat().st_size < 64 * 1024
    refused(worker, path, layer="layer 'fc' (Dense)", words=["1.5 TiB", "stores 0 bytes"])


def test_weight_larger_than_the_memory_budget(tmp_path):
    config, weights = sequential_model(np.random.default_rng(1))
    path = write_h5(tmp_path / "m.h5", config, weights)
    with CliWorker(env={"LRPTOOL_MEMORY_BUDGET": "1K"}) as small:
        refused(small, path, layer="layer 'fc' (Dense)", words=["memory budget"])


# ---------------------------------------------------------------- .keras archives

@pytest.fixture
def archive_parts():
    config, weights = functional_keras3_model(np.random.default_rng(2))
    return json.dumps(config).encode(), keras3_weights(config, weights)


@pytest.mark.parametrize("missing", ["config.json", "model.weights.h5"])
def test_archive_without_a_member(worker, tmp_path, archive_parts, missing):
    config, weights = archive_parts
    path = write_archive(tmp_path / "m.keras", None if missing == "config.json" else config,
                         None if missing == "model.weights.h5" else weights)
    refused(worker, path, words=[f"no {missing}"])


def test_archive_member_that_inflates_beyond_a_config(worker, tmp_path, archive_parts):
    _, weights = archive_parts
    path = write_archive(tmp_path / "m.keras", b" " * (65 * 2 ** 20), weights)
    assert path.stat().st_size < 2 ** 20
    refused(worker, path, words=["config.json", "inflates to 65.0 MiB"])


def test_archive_member_with_a_bad_checksum(worker, tmp_path, archive_parts):
    config, weights = archive_parts
    path = write_archive(tmp_path / "m.keras", config, weights)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("config.json")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 10] ^= 0x55
    path.write_bytes(bytes(data))
    refused(worker, path, words=["config.json"])


def test_archive_metadata_that_is_not_an_object(worker, tmp_path, archive_parts):
    config, weights = archive_parts
    path = write_archive(tmp_path / "m.keras", config, weights, metadata=b"[3]")
    refused(worker, path, words=["metadata.json", "expected an object"])


def test_archive_weights_that_are_not_hdf5(worker, tmp_path, archive_parts):
    config, _ = archive_parts
    path = write_archive(tmp_path / "m.keras", config, b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    refused(worker, path, words=["model.weights.h5", "not an HDF5 file"])


def test_weights_only_file_with_an_architecture_json_that_is_not_utf8(worker, tmp_path):
    config, weights = sequential_model(np.random.default_rng(1))
    path = write_h5(tmp_path / "w.h5", config, weights, with_config=False)
    arch = tmp_path / "arch.json"
    layers(config)[1]["config"]["name"] = "__bad__"
    arch.write_bytes(json.dumps(config).encode().replace(b"__bad__", b"conv\xff"))
    refused(worker, path, "--model-config", arch, layer="layer 'conv\\udcff' (Conv2D)", words=["arch.json"])


def test_copy_of_a_good_model_is_read(worker, model, tmp_path):
    # the damage in each test above is what makes it fail: the same model undamaged is read
    path, _, _ = model
    shutil.copy(path, tmp_path / "copy.h5")
    assert worker.run(["inspect", str(tmp_path / "copy.h5")]).kind == "ok"


def test_global_heap_that_libhdf5_would_loop_on(worker, model):
    path, _, _ = model
    data = bytearray(path.read_bytes())
    at = data.index(b"GCOL")
    end, place = at + int.from_bytes(data[at + 8:at + 16], "little"), at + 16
    while place + 16 <= end:
        index, size = int.from_bytes(data[place:place + 2], "little"), int.from_bytes(data[place + 8:place + 16], "little")
        if index == 0:
            # a free-space object of size 0: libhdf5 steps by 0 bytes and never leaves the collection
            data[place + 8:place + 16] = bytes(8)
            break
        place += 16 + (size + 7) // 8 * 8
    else:
        pytest.fail("the collection has no free space to break")
    path.write_bytes(bytes(data))
    refused(worker, path, words=["global heap", "broken"])


def test_model_config_that_is_not_a_regular_file(worker, model, tmp_path):
    path, _, _ = model
    fifo = tmp_path / "arch.json"
    os.mkfifo(fifo)
    refused(worker, path, "--model-config", fifo, words=["not a regular file"])


def test_hdf5_model_that_ends_like_a_zip_archive_is_read(worker, tmp_path):
    config, weights = sequential_model(np.random.default_rng(4))
    # the last weight written is the last bytes of the file: make them a zip's end-of-archive record
    weights["fc"][1] = np.frombuffer(b"\0" * 10 + b"PK\x05\x06" + b"\0" * 6, dtype=np.float32)
    path = write_h5(tmp_path / "m.h5", config, weights)
    assert zipfile.is_zipfile(path)
    outcome = worker.run(["inspect", str(path)])
    assert outcome.kind == "ok", outcome.describe()


def test_attribute_of_a_damaged_variable_length_type(worker, model):
    path, _, _ = model
    data = bytearray(path.read_bytes())
    # layer_names is a list of variable-length strings (type class 9, string bit 1); a damaged bit
    # field makes it a sequence of bytes, whose conversion crashed h5py
    at = data.index(b"layer_names\0\0\0\0\0\x19\x01") + 17
    data[at] = 0xFE
    path.write_bytes(bytes(data))
    refused(worker, path, words=["layer_names", "variable-length sequences"])
