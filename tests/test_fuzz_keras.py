"""Fuzzing the Keras reader: damaged and hostile .h5 / .keras / architecture-JSON files through
``lrptool inspect`` (some with ``--preset epsilon-plus-flat``) and ``lrptool convert``.

Every run must end in a result or in one ``lrptool: error:`` line (exit 2); see tests/fuzz_support.py
for the outcome classes. Mutants are seeded (``LRPTOOL_FUZZ_SEED``), their number per run is
``LRPTOOL_FUZZ_MUTANTS``. The seed models are written here, so the suite runs on a fresh clone; the
third-party Keras files in ../shared/models are mutated too where they are present.

Mutations know the format: besides flipped bytes there are edits of the model config (keys deleted,
types changed, nesting deepened, numbers made huge or NaN, names made non-UTF-8) and of the weight
datasets (reshaped, strings, records, variable-length, huge declared shapes behind a fill value,
NaN, groups where datasets belong and back, links to other files), and .keras zips with missing,
inflating or undecodable members.
"""

import io
import json
import os
import shutil
import zipfile

import h5py
import numpy as np
import pytest

from conftest import shared_models
from fuzz_support import ACCEPTABLE, MUTANTS, SEED, CliWorker, assert_clean, mutate_bytes

PRESET = ("--preset", "epsilon-plus-flat")


# ---------------------------------------------------------------- seed models written here

def layer(class_name, name, inbound=None, **config):
    spec = {"class_name": class_name, "name": name, "config": {"name": name, **config}}
    if inbound is not None:
        spec["inbound_nodes"] = inbound
    return spec


def keras2_node(*names):
    return [[[name, 0, 0, {}] for name in names]]


def keras3_node(*names):
    def tensor(name):
        return {"class_name": "__keras_tensor__", "config": {"keras_history": [name, 0, 0]}}
    args = [tensor(names[0])] if len(names) == 1 else [[tensor(n) for n in names]]
    return [{"args": args, "kwargs": {}}]


def sequential_model(rng):
    config = {"class_name": "Sequential", "config": {"name": "seq", "layers": [
        layer("InputLayer", "inp", batch_input_shape=[None, 8, 8, 2]),
        layer("Conv2D", "conv", filters=4, kernel_size=[3, 3], strides=[1, 1], padding="same",
              dilation_rate=[1, 1], activation="relu", use_bias=True, data_format="channels_last"),
        layer("BatchNormalization", "bn", axis=-1, epsilon=1e-3, scale=True, center=True),
        layer("MaxPooling2D", "pool", pool_size=[2, 2], strides=[2, 2], padding="valid"),
        layer("Flatten", "flat"),
        layer("Dense", "fc", units=5, activation="linear", use_bias=True),
        layer("Activation", "prob", activation="softmax")]}}
    weights = {"conv": [rng.normal(size=(3, 3, 2, 4)), rng.normal(size=4)],
               "bn": [rng.uniform(0.5, 1.5, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)],
               "fc": [rng.normal(size=(64, 5)), rng.normal(size=5)]}
    return config, weights


def functional_keras2_model(rng):
    config = {"class_name": "Functional", "config": {
        "name": 7, "input_layers": [["a", 0, 0]], "output_layers": [["fc", 0, 0]], "layers": [
            layer("InputLayer", "a", [], batch_input_shape=[None, 6, 6, 3]),
            layer("Conv2D", "c1", keras2_node("a"), filters=3, kernel_size=[1, 1], padding="valid",
                  activation="linear", use_bias=True),
            layer("Add", "add", keras2_node("a", "c1")),
            layer("Concatenate", "cat", keras2_node("add", "a"), axis=-1),
            layer("ZeroPadding2D", "pad", keras2_node("cat"), padding=[[1, 1], [0, 1]]),
            layer("AveragePooling2D", "avg", keras2_node("pad"), pool_size=[2, 2], padding="same"),
            layer("GlobalAveragePooling2D", "gap", keras2_node("avg")),
            layer("Dense", "fc", keras2_node("gap"), units=4, activation="relu", use_bias=False)]}}
    weights = {"c1": [rng.normal(size=(1, 1, 3, 3)), rng.normal(size=3)], "fc": [rng.normal(size=(6, 4))]}
    return config, weights


def functional_keras3_model(rng):
    config = {"class_name": "Functional", "config": {
        "name": "f3", "input_layers": ["x", 0, 0], "output_layers": [["out", 0, 0], ["lr", 0, 0]], "layers": [
            layer("InputLayer", "x", [], batch_shape=[None, 5, 5, 4]),
            layer("DepthwiseConv2D", "dw", keras3_node("x"), kernel_size=[3, 3], strides=[1, 1],
                  padding="same", depth_multiplier=1, activation="relu6", use_bias=True),
            layer("LeakyReLU", "lr", keras3_node("dw"), negative_slope=0.1),
            layer("SeparableConv2D", "sep", keras3_node("lr"), kernel_size=[2, 2], padding="valid",
                  activation={"class_name": "Activation", "config": "tanh"}, use_bias=True),
            layer("Reshape", "rs", keras3_node("sep"), target_shape=[-1, 2]),
            layer("Permute", "perm", keras3_node("rs"), dims=[2, 1]),
            layer("Flatten", "flat", keras3_node("perm")),
            layer("Dense", "out", keras3_node("flat"), units=3, use_bias=True)]}}
    weights = {"dw": [rng.normal(size=(3, 3, 4, 1)), rng.normal(size=4)],
               "sep": [rng.normal(size=(2, 2, 4, 1)), rng.normal(size=(1, 1, 4, 2)), rng.normal(size=2)],
               "out": [rng.normal(size=(32, 3)), rng.normal(size=3)]}
    return config, weights


def nested_model(rng):
    inner = {"class_name": "Sequential", "name": "inner", "config": {"name": "inner", "layers": [
        layer("Dense", "d1", units=3, activation="tanh", use_bias=True,
              batch_input_shape=[None, 4])]}}
    inner["inbound_nodes"] = keras2_node("in")
    config = {"class_name": "Functional", "config": {
        "name": "outer", "input_layers": [["in", 0, 0]], "output_layers": [["d2", 0, 0]], "layers": [
            layer("InputLayer", "in", [], batch_input_shape=[None, 4]),
            inner,
            layer("Dense", "d2", keras2_node("inner"), units=2, use_bias=True)]}}
    weights = {"inner": [("inner/d1/kernel:0", rng.normal(size=(4, 3))), ("inner/d1/bias:0", rng.normal(size=3))],
               "d2": [("d2/kernel:0", rng.normal(size=(3, 2))), ("d2/bias:0", rng.normal(size=2))]}
    return config, weights


def write_h5(path, config, weights, keras_version="2.14.0", with_config=True):
    """A legacy Keras h5 (config JSON + one weight group per layer), or a weights-only file."""
    with h5py.File(path, "w") as f:
        if with_config:
            f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = keras_version
        f.attrs["backend"] = "tensorflow"
        group = f.create_group("model_weights") if with_config else f
        names = [spec["config"]["name"] for spec in config["config"]["layers"]]
        group.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            sub = group.create_group(name)
            arrays = [a if isinstance(a, tuple) else (f"{name}/w{i}:0", a) for i, a in enumerate(weights.get(name, []))]
            sub.attrs["weight_names"] = [n.encode() for n, _ in arrays]
            for weight_name, array in arrays:
                sub.create_dataset(weight_name, data=np.asarray(array, dtype=np.float32))
    return path


def keras3_weights(config, weights):
    """``model.weights.h5`` bytes as Keras 3 writes them: layers/<key>/vars/<i>, the name an attribute."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_group("vars").attrs["name"] = config["config"]["name"]
        for index, spec in enumerate(config["config"]["layers"]):
            name = spec["config"]["name"]
            variables = f.create_group(f"layers/{spec['class_name'].lower()}_{index}/vars")
            variables.attrs["name"] = name
            for i, array in enumerate(weights.get(name, [])):
                variables.create_dataset(str(i), data=np.asarray(array, dtype=np.float32))
    return buffer.getvalue()


def write_archive(path, config_bytes, weights_bytes, metadata=b'{"keras_version": "3.15.1"}', extra=()):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        if metadata is not None:
            archive.writestr("metadata.json", metadata)
        if config_bytes is not None:
            archive.writestr("config.json", config_bytes)
        if weights_bytes is not None:
            archive.writestr("model.weights.h5", weights_bytes)
        for name, data in extra:
            archive.writestr(name, data)
    return path


class Seed:
    """One seed model: a file (and for weights-only files its architecture JSON) plus what it is made of."""

    def __init__(self, name, path, config, weights=None, arch=None, kind="h5"):
        self.name, self.path, self.config, self.weights, self.arch, self.kind = name, path, config, weights, arch, kind

    def argv(self, path=None, arch=None):
        argv = [path or self.path]
        if self.arch is not None or arch is not None:
            argv += ["--model-config", arch or self.arch]
        return argv


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras-seeds")
    rng = np.random.default_rng(SEED)
    made = []
    for name, build, version in (("seq", sequential_model, "2.14.0"), ("func2", functional_keras2_model, "2.14.0"),
                                 ("func3", functional_keras3_model, "3.15.1"), ("nested", nested_model, "2.14.0")):
        config, weights = build(rng)
        made.append(Seed(name, write_h5(folder / f"{name}.h5", config, weights, version), config, weights))
    config, weights = sequential_model(rng)
    arch = folder / "arch.json"
    arch.write_text(json.dumps(config))
    made.append(Seed("weights-only", write_h5(folder / "weights_only.h5", config, weights, with_config=False),
                     config, weights, arch=arch))
    config, weights = functional_keras3_model(rng)
    archive = write_archive(folder / "model.keras", json.dumps(config).encode(), keras3_weights(config, weights))
    made.append(Seed("archive", archive, config, weights, kind="keras"))
    return {seed.name: seed for seed in made}


@pytest.fixture(scope="module")
def worker():
    with CliWorker() as running:
        yield running


def commands(index, argv, scratch):
    """Every mutant through inspect; every fourth also with a preset, every fourth (others) converted."""
    runs = [["inspect", *argv]]
    if index % 4 == 1:
        runs.append(["inspect", *argv, *PRESET])
    if index % 4 == 3:
        runs.append(["convert", *argv, "-o", os.path.join(scratch, "out.onnx")])
    return runs


def run_all(worker, index, argv, scratch, label):
    outcomes = [worker.run(command, label=label) for command in commands(index, argv, scratch)]
    # A plain inspect that fails must say which file (the model or its architecture JSON) it could not read.
    first = outcomes[0]
    files = [str(a) for a in argv if os.path.exists(str(a))]
    if first.kind == "error" and not any(name in first.stderr for name in files):
        first.kind = "unnamed"
    if any(o.kind not in ACCEPTABLE for o in outcomes):
        # the next mutant overwrites these files: keep a copy to reproduce the failure with
        kept = os.path.join(str(scratch), "kept", f"{label.split()[-1]}-{index}")
        os.makedirs(kept, exist_ok=True)
        for name in files:
            shutil.copy(name, kept)
        for outcome in outcomes:
            outcome.label += f" (files kept in {kept})"
    return outcomes


def test_seeds_are_read(seeds, worker, tmp_path):
    outcomes = []
    for seed in seeds.values():
        for command in commands(1, seed.argv(), tmp_path) + commands(3, seed.argv(), tmp_path):
            outcomes.append(worker.run(command))
    bad = [o for o in outcomes if o.kind != "ok"]
    assert not bad, "\n".join(o.describe() for o in bad)


# ---------------------------------------------------------------- byte-level damage

def test_byte_mutants(seeds, worker, tmp_path):
    rng = np.random.default_rng([SEED, 1])
    files = [(seed, seed.path) for seed in seeds.values()] + [(seeds["weights-only"], seeds["weights-only"].arch)]
    originals = {path: open(path, "rb").read() for _, path in files}
    outcomes = []
    for index in range(max(1, int(MUTANTS * 0.35))):
        seed, source = files[index % len(files)]
        data = originals[source]
        for _ in range(int(rng.integers(1, 4))):
            data = mutate_bytes(data, rng)
        target = tmp_path / f"mutant{os.path.splitext(str(source))[1]}"
        target.write_bytes(data)
        if source == seed.arch:
            argv = seed.argv(arch=target)
        else:
            argv = seed.argv(path=target)
        outcomes += run_all(worker, index, argv, tmp_path, "keras bytes")
    assert_clean(outcomes)


# ---------------------------------------------------------------- model-config edits

EVIL_VALUES = [None, True, False, 0, -1, 1, 3, 2 ** 31, 2 ** 63, 10 ** 40, -10 ** 40, 1e308, -0.0, 0.5,
               float("nan"), float("inf"), float("-inf"), "", "x", "same", "relu", "channels_first", "\udcff",
               "Conv2D", "InputLayer", "Sequential", [], {}, [None], [0], [1, 2], [[1, 2], [3]], ["a", 0, 0],
               [["a", 0, 0]], {"class_name": "__keras_tensor__", "config": {"keras_history": ["x", 9, 9]}},
               {"class_name": "Sequential", "config": []}, "y" * 300, [-1, -1], [2 ** 31 - 1] * 4]
DEEP = "\"__deep__\""
BAD_NAME = "\"__not_utf8__\""


def paths_in(value, path=()):
    """Every (container, key) position in a JSON value."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append((value, key))
            found += paths_in(item, path + (key,))
    elif isinstance(value, list):
        for key, item in enumerate(value):
            found.append((value, key))
            found += paths_in(item, path + (key,))
    return found


PLAUSIBLE_TEXT = ["same", "valid", "causal", "relu", "softmax", "linear", "tanh", "swish", "hard_sigmoid",
                  "channels_first", "channels_last", "nearest", "bilinear", "Dense", "Conv1D", "Flatten", "Add",
                  "ReLU", "Softmax", "Cropping2D", "UpSampling2D", "Conv2DTranspose", "Multiply", "Average",
                  "GlobalMaxPooling2D", "PReLU", "Lambda"]


def plausible(value, rng):
    """A value of the same kind that a real model could hold: these mutants reach the converters,
    the operators' shape checks, the preset and the ONNX writer instead of the config checks."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return int(rng.integers(-1, 6))
    if isinstance(value, float):
        return float(rng.choice([0.0, 1e-3, 0.5, 1.0, 6.0, -2.0]))
    if isinstance(value, str):
        return str(rng.choice(PLAUSIBLE_TEXT))
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        size = max(0, len(value) + int(rng.integers(-1, 2)))
        return [int(v) for v in rng.integers(0, 5, size)]
    return value


def edit_config(config, rng, mild=False):
    """One to three random edits of a (copied) model config: structural ones, or with ``mild`` only
    plausible values."""
    config = json.loads(json.dumps(config))
    for _ in range(int(rng.integers(1, 4))):
        positions = paths_in(config)
        if not positions:
            break
        container, key = positions[int(rng.integers(len(positions)))]
        if mild:
            container[key] = plausible(container[key], rng)
            continue
        action = int(rng.integers(9))
        if action == 0:                                   # delete the key / item
            del container[key]
        elif action in (1, 2, 3):                         # a value of another type or range
            container[key] = EVIL_VALUES[int(rng.integers(len(EVIL_VALUES)))]
        elif action == 4:                                 # wrap in a list / an object
            container[key] = [container[key]] if rng.integers(2) else {"config": container[key]}
        elif action == 5:                                 # deep nesting where a value was
            container[key] = "__deep__"
        elif action == 6:                                 # a name that is not UTF-8
            container[key] = "__not_utf8__"
        elif action == 7 and isinstance(container, list) and container:
            container.insert(int(rng.integers(len(container) + 1)), container[int(rng.integers(len(container)))])
        elif action == 8 and isinstance(container[key], (int, float)) and not isinstance(container[key], bool):
            container[key] = container[key] * int(rng.choice([-1, 0, 2 ** 40]))
        else:
            container[key] = str(container[key])[:20]
    return config


def config_bytes(config, rng):
    text = json.dumps(config, allow_nan=True)
    # deeper than Python's JSON parser goes, yet within an HDF5 attribute's 64 KiB
    depth = int(rng.choice([40, 2000, 20000]))
    text = text.replace(DEEP, "[" * depth + "]" * depth)
    data = text.encode("utf-8")
    return data.replace(BAD_NAME.encode(), b"\"conv\xff\xfe\xc3\"")


def store_config(seed, data, target, scratch):
    """Put config JSON ``data`` (bytes) where the seed keeps its config; returns the argv for lrptool."""
    if seed.arch is not None:
        arch = scratch / "arch.json"
        arch.write_bytes(data)
        return seed.argv(arch=arch)
    if seed.kind == "keras":
        with zipfile.ZipFile(seed.path) as archive:
            weights = archive.read("model.weights.h5")
        write_archive(target.with_suffix(".keras"), data, weights)
        return seed.argv(path=target.with_suffix(".keras"))
    shutil.copy(seed.path, target)
    with h5py.File(target, "r+") as f:
        set_config_attr(f, data)
    return seed.argv(path=target)


def set_config_attr(handle, data):
    """UTF-8 JSON as Keras stores it (a string); other bytes as a fixed-length byte string."""
    try:
        handle.attrs["model_config"] = data.decode("utf-8")
    except UnicodeDecodeError:
        # a variable-length byte string: held in the global heap, so not limited to an attribute's 64 KiB
        handle.attrs.create("model_config", data, dtype=h5py.string_dtype("ascii"))


def test_config_edits(seeds, worker, tmp_path):
    rng = np.random.default_rng([SEED, 2])
    chosen = list(seeds.values())
    outcomes = []
    for index in range(max(1, int(MUTANTS * 0.3))):
        seed = chosen[index % len(chosen)]
        data = config_bytes(edit_config(seed.config, rng, mild=index % 2 == 1), rng)
        argv = store_config(seed, data, tmp_path / "edited.h5", tmp_path)
        outcomes += run_all(worker, index, argv, tmp_path, "keras config")
    assert_clean(outcomes)


# ---------------------------------------------------------------- weight and attribute edits

def datasets_of(handle):
    found = []
    handle.visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Dataset) else None)
    return found


def groups_of(handle):
    found = []
    handle.visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Group) else None)
    return found


def replace(handle, name, **create):
    del handle[name]
    handle.create_dataset(name, **create)


def edit_weights(handle, rng, scratch):
    """One random damage to a weight dataset or a Keras attribute, written with h5py."""
    names = datasets_of(handle)
    name = names[int(rng.integers(len(names)))] if names else None
    original = np.asarray(handle[name][()]) if name else np.zeros(3, np.float32)
    action = int(rng.integers(22))
    if name is None or action == 0:                               # a listed weight that is gone
        if name:
            del handle[name]
    elif action == 1:                                             # reshaped
        replace(handle, name, data=original.reshape(-1))
    elif action == 2:                                             # one element more or less
        flat = original.reshape(-1)
        replace(handle, name, data=np.concatenate([flat, flat[:1]]) if rng.integers(2) else flat[:-1])
    elif action == 3:                                             # transposed / a new axis
        replace(handle, name, data=original.T[None] if original.ndim else original[None])
    elif action == 4:                                             # strings
        replace(handle, name, data=np.array([b"weight"] * max(1, original.size)))
    elif action == 5:                                             # variable-length strings (objects)
        replace(handle, name, data=["w"] * max(1, original.size), dtype=h5py.string_dtype())
    elif action == 6:                                             # variable-length float sequences
        vlen = handle.create_dataset("__tmp__", (2,), dtype=h5py.vlen_dtype(np.float32))
        vlen[0], vlen[1] = np.arange(3, dtype=np.float32), np.arange(1, dtype=np.float32)
        del handle[name]
        handle.move("__tmp__", name)
    elif action == 7:                                             # records
        records = np.zeros(max(1, original.size), dtype=[("a", "<f4"), ("b", "<i4")])
        replace(handle, name, data=records)
    elif action == 8:                                             # a huge shape behind a fill value, compressed
        replace(handle, name, shape=(2 ** 20, 2 ** 17, 3), dtype=np.float32, chunks=(1, 1024, 3),
                compression="gzip", fillvalue=1.0)
    elif action == 9:                                             # a huge contiguous shape, never written
        replace(handle, name, shape=(2 ** 18, 2 ** 18), dtype=np.float64, fillvalue=0.5)
    elif action == 10:                                            # moderate, chunked, unwritten
        replace(handle, name, shape=(4096, 8192), dtype=np.float32, chunks=(64, 64), fillvalue=2.0)
    elif action == 11:                                            # NaN / Inf
        bad = original.astype(np.float32).copy()
        bad.reshape(-1)[int(rng.integers(max(1, bad.size)))] = rng.choice([np.nan, np.inf, -np.inf])
        replace(handle, name, data=bad)
    elif action == 12:                                            # other numeric types
        dtype = rng.choice(["int32", "uint8", "bool", "complex64", "float16", ">f8"])
        replace(handle, name, data=original.astype(str(dtype)))
    elif action == 13:                                            # a group where a dataset belongs
        del handle[name]
        handle.create_group(name).create_dataset("inside", data=original)
    elif action == 14:                                            # a dataset where a group belongs
        groups = [g for g in groups_of(handle) if g.count("/") <= 2]
        if groups:
            target = groups[int(rng.integers(len(groups)))]
            del handle[target]
            handle.create_dataset(target, data=np.zeros(2))
    elif action == 15:                                            # a link to another file
        del handle[name]
        handle[name] = h5py.ExternalLink(str(scratch / "elsewhere.h5"), "/x")
    elif action == 16:                                            # a scalar / an empty dataspace
        replace(handle, name, data=h5py.Empty("f4") if rng.integers(2) else np.float32(1.0))
    else:                                                         # attributes of the wrong type
        holders = [handle] + [handle[g] for g in groups_of(handle)]
        holder = holders[int(rng.integers(len(holders)))]
        keys = list(holder.attrs) or ["layer_names"]
        key = keys[int(rng.integers(len(keys)))]
        values = [np.arange(3), np.array([1.5]), b"\xff\xfe", np.array([b"ok", b"\xc3\x28"]), 7,
                  np.array([[b"a", b"b"]]), np.bytes_(b"x" * 5), np.array(["d\u00e9"], dtype=h5py.string_dtype())]
        holder.attrs[key] = values[int(rng.integers(len(values)))]


def test_weight_edits(seeds, worker, tmp_path):
    rng = np.random.default_rng([SEED, 3])
    chosen = [seed for seed in seeds.values() if seed.kind == "h5"]
    outcomes = []
    for index in range(max(1, int(MUTANTS * 0.25))):
        seed = chosen[index % len(chosen)]
        target = tmp_path / "edited.h5"
        shutil.copy(seed.path, target)
        with h5py.File(target, "r+") as handle:
            edit_weights(handle, rng, tmp_path)
        outcomes += run_all(worker, index, seed.argv(path=target), tmp_path, "keras weights")
    assert_clean(outcomes)


# ---------------------------------------------------------------- .keras archives

@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_archive_edits(seeds, worker, tmp_path):
    rng = np.random.default_rng([SEED, 4])
    seed = seeds["archive"]
    with zipfile.ZipFile(seed.path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    bomb = b"\0" * (65 * 2 ** 20)   # inflates past the largest config lrptool reads, from ~64 KiB
    outcomes = []
    for index in range(max(1, int(MUTANTS * 0.1))):
        parts = dict(members)
        extra = ()
        action = index % 9
        if action == 0:
            del parts[str(rng.choice(sorted(parts)))]
        elif action == 1:
            parts["config.json"] = bomb
        elif action == 2:
            parts["metadata.json"] = rng.choice([b"[1, 2]", b"{\"keras_version\": [3]}", b"\xff", b"nan", b"{"])
        elif action == 3:
            parts["model.weights.h5"] = mutate_bytes(parts["model.weights.h5"], rng)
        elif action == 4:
            parts["config.json"] = config_bytes(edit_config(seed.config, rng), rng)
        elif action == 5:
            parts["config.json"] = b"\xef\xbb\xbf" + parts["config.json"] if rng.integers(2) else b"\xc3\x28"
        elif action == 6:
            extra = (("config.json", b"{}"),)   # a second member of the same name
        elif action == 7:
            parts["model.weights.h5"] = rng.choice([b"", b"PK\x03\x04", parts["config.json"]])
        target = tmp_path / "edited.keras"
        write_archive(target, parts.get("config.json"), parts.get("model.weights.h5"), parts.get("metadata.json"),
                      extra)
        if action == 8:
            data = target.read_bytes()
            for _ in range(int(rng.integers(1, 4))):
                data = mutate_bytes(data, rng)
            target.write_bytes(data)
        outcomes += run_all(worker, index, seed.argv(path=target), tmp_path, "keras archive")
    assert_clean(outcomes)


# ---------------------------------------------------------------- third-party files

def shared_keras_files():
    folder = shared_models() / "keras"
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".h5", ".hdf5", ".keras")
                   and "inputs_and_outputs" not in p.name and p.stat().st_size < 2 ** 20)
    return files


def test_shared_files_mutated(worker, tmp_path):
    files = shared_keras_files()
    rng = np.random.default_rng([SEED, 5])
    outcomes = []
    for index in range(max(1, MUTANTS // 4)):
        source = files[int(rng.integers(len(files)))]
        target = tmp_path / f"mutant{source.suffix}"
        if index % 3 == 0 or source.suffix == ".keras":
            data = source.read_bytes()
            for _ in range(int(rng.integers(1, 4))):
                data = mutate_bytes(data, rng)
            target.write_bytes(data)
            label = "keras shared-bytes"
        else:
            shutil.copy(source, target)
            os.chmod(target, 0o644)
            with h5py.File(target, "r+") as handle:
                if index % 3 == 1 and "model_config" in handle.attrs:
                    text = handle.attrs["model_config"]
                    config = json.loads(text.decode() if isinstance(text, bytes) else text)
                    set_config_attr(handle, config_bytes(edit_config(config, rng, mild=index % 2 == 1), rng))
                else:
                    edit_weights(handle, rng, tmp_path)
            label = "keras shared-edits"
        outcomes += run_all(worker, index, [target, "--keras1-backend", "tensorflow"], tmp_path, label)
    assert_clean(outcomes)
