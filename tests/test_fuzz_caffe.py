"""Seeded, structure-aware fuzzing of the Caffe reader through the command line.

Every mutant goes through ``lrptool inspect`` (some with ``--preset``), ``convert`` or, for mean
files, ``explain``; a run may succeed or end in one ``lrptool: error:`` line, nothing else
(tests/fuzz_support.py). Mutants come from four directions:

- bytes of a caffemodel (``mutate_bytes``): truncation, flipped bits, huge varints, ...
- lines and numbers of a prototxt: lines dropped or doubled, numbers made 0, -1 or huge, braces
  nested deeply, layer types and blob names changed;
- the parsed ``NetParameter``: one field of one layer set to an extreme value of its type, bottoms
  and tops dropped, doubled or pointed forward, blobs reshaped, emptied, moved to ``double_data``;
- ``.binaryproto`` mean files, bytes and fields.

The seeds are a small network built here (so that the suite runs on a fresh clone) and, where
../shared/models is present, LeNet and MTCNN with their trained caffemodels.
"""

import math
import os
import re

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

from conftest import SHARED_MODELS
from converters import caffe_proto as cp
from fuzz_support import MUTANTS, SEED, CliWorker, assert_clean, is_usage_error, mutate_bytes, stderr_lines
from test_caffe_reader import add_layer

# A small budget keeps a mutant that asks for gigabytes of random weights quick to refuse.
WORKER_ENV = {"LRPTOOL_MEMORY_BUDGET": "256M"}


# ------------------------------------------------------------------------------ seed models

def _blob(lp, array, legacy=False):
    blob = lp.blobs.add()
    array = np.asarray(array, np.float32)
    if legacy:
        blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
    else:
        blob.shape.dim.extend(array.shape)
    blob.data.extend(array.ravel().tolist())


def seed_network(rng):
    """A net that touches most layer converters, with every blob filled: input (1, 3, 8, 8)."""
    net = cp.NetParameter(name="seed")
    data = add_layer(net, "data", "Input", [], ["data"])
    data.input_param.shape.add().dim.extend([1, 3, 8, 8])
    conv = add_layer(net, "conv1", "Convolution", ["data"], ["conv1"],
                  convolution_param=dict(num_output=4, kernel_size=[3], pad=[1]))
    _blob(conv, rng.standard_normal((4, 3, 3, 3)))
    _blob(conv, rng.standard_normal(4))
    bn = add_layer(net, "bn1", "BatchNorm", ["conv1"], ["conv1"])
    for array in (rng.standard_normal(4), rng.uniform(0.5, 2, 4), [1.0]):
        _blob(bn, array)
    scale = add_layer(net, "scale1", "Scale", ["conv1"], ["conv1"], scale_param=dict(bias_term=True))
    _blob(scale, rng.uniform(0.5, 2, 4))
    _blob(scale, rng.standard_normal(4))
    add_layer(net, "relu1", "ReLU", ["conv1"], ["conv1"])
    add_layer(net, "pool1", "Pooling", ["conv1"], ["pool1"], pooling_param=dict(pool=0, kernel_size=2, stride=2))
    conv2 = add_layer(net, "conv2", "Convolution", ["pool1"], ["conv2"],
                   convolution_param=dict(num_output=4, kernel_size=[1], group=2))
    _blob(conv2, rng.standard_normal((4, 2, 1, 1)))
    _blob(conv2, rng.standard_normal(4))
    prelu = add_layer(net, "prelu2", "PReLU", ["conv2"], ["conv2"])
    _blob(prelu, rng.uniform(0, 0.5, 4))
    add_layer(net, "sum", "Eltwise", ["pool1", "conv2"], ["sum"], eltwise_param=dict(operation=1, coeff=[1.0, 0.5]))
    add_layer(net, "split", "Slice", ["sum"], ["a", "b"], slice_param=dict(axis=1, slice_point=[1]))
    add_layer(net, "join", "Concat", ["b", "a"], ["join"], concat_param=dict(axis=1))
    add_layer(net, "norm", "LRN", ["join"], ["norm"], lrn_param=dict(local_size=3, alpha=1e-4, beta=0.75))
    add_layer(net, "drop", "Dropout", ["norm"], ["norm"])
    deconv = add_layer(net, "up", "Deconvolution", ["norm"], ["up"],
                    convolution_param=dict(num_output=2, kernel_size=[2], stride=[2]))
    _blob(deconv, rng.standard_normal((4, 2, 2, 2)))
    _blob(deconv, rng.standard_normal(2))
    add_layer(net, "pool2", "Pooling", ["up"], ["pool2"], pooling_param=dict(pool=1, kernel_size=3, stride=2, pad=1))
    add_layer(net, "flat", "Flatten", ["pool2"], ["flat"])
    ip = add_layer(net, "ip1", "InnerProduct", ["flat"], ["ip1"], inner_product_param=dict(num_output=6))
    _blob(ip, rng.standard_normal((6, 50)))
    _blob(ip, rng.standard_normal(6))
    add_layer(net, "tanh", "TanH", ["ip1"], ["ip1"])
    shape = add_layer(net, "shape", "Reshape", ["ip1"], ["shaped"])
    shape.reshape_param.shape.dim.extend([0, 2, -1])
    add_layer(net, "flat2", "Flatten", ["shaped"], ["flat2"])
    ip2 = add_layer(net, "ip2", "InnerProduct", ["flat2"], ["ip2"], inner_product_param=dict(num_output=3))
    _blob(ip2, rng.standard_normal((3, 6)))
    _blob(ip2, rng.standard_normal(3))
    add_layer(net, "prob", "Softmax", ["ip2"], ["prob"])
    return net


def seed_v1_network(rng):
    """A legacy V1 net (``layers`` with enum types, ``input_dim``, 4-D legacy blobs): input (1, 2, 6, 6)."""
    net = cp.NetParameter(name="seed_v1")
    net.input.append("data")
    net.input_dim.extend([1, 2, 6, 6])
    types = cp.V1LayerParameter.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_name

    def v1(name, kind, bottoms, tops):
        lp = net.layers.add(name=name, type=types[kind].number)
        lp.bottom.extend(bottoms)
        lp.top.extend(tops)
        return lp

    conv = v1("conv", "CONVOLUTION", ["data"], ["conv"])
    conv.convolution_param.num_output = 3
    conv.convolution_param.kernel_size.append(3)
    _blob(conv, rng.standard_normal((3, 2, 3, 3)), legacy=True)
    _blob(conv, rng.standard_normal(3), legacy=True)
    v1("relu", "RELU", ["conv"], ["conv"])
    pool = v1("pool", "POOLING", ["conv"], ["pool"])
    pool.pooling_param.kernel_size = 2
    pool.pooling_param.stride = 2
    fc = v1("fc", "INNER_PRODUCT", ["pool"], ["fc"])
    fc.inner_product_param.num_output = 4
    _blob(fc, rng.standard_normal((4, 12)), legacy=True)
    _blob(fc, rng.standard_normal(4), legacy=True)
    v1("prob", "SOFTMAX", ["fc"], ["prob"])
    return net


def split_model(net):
    """The prototxt text (no blobs) and the caffemodel bytes (with blobs) of ``net``, as Caffe writes them."""
    text = cp.NetParameter()
    text.CopyFrom(net)
    for lp in list(text.layer) + list(text.layers):
        del lp.blobs[:]
    return text_format.MessageToString(text), net.SerializeToString()


def seed_mean_file():
    blob = cp.BlobProto()
    blob.shape.dim.extend([1, 3, 8, 8])
    blob.data.extend(np.linspace(90, 130, 3 * 64).tolist())
    return blob.SerializeToString()


# ------------------------------------------------------------------------------ mutations

INTERESTING_NUMBERS = ["0", "-1", "1", "2", "3", "7", "-7", "65535", "2147483647", "-2147483648", "4294967295",
                       "4294967296", "99999999999999999999", "1e30", "-1e30", "nan", "inf", "0.5"]
LAYER_TYPES = ["Convolution", "Deconvolution", "InnerProduct", "Pooling", "ReLU", "PReLU", "ELU", "Sigmoid", "TanH",
               "Clip", "LRN", "BatchNorm", "Scale", "Bias", "Eltwise", "Power", "AbsVal", "Concat", "Slice",
               "Flatten", "Reshape", "Softmax", "Dropout", "Split", "Input", "Data", "Python", "SoftmaxWithLoss",
               "Accuracy", "Silence", "ArgMax", "Frobnicate", ""]


def mutate_text(text, rng):
    """One structure-aware damage to a prototxt."""
    lines = text.splitlines()
    kind = int(rng.integers(10))
    if not lines:
        return "layer {" * int(rng.integers(1, 50))
    i = int(rng.integers(len(lines)))
    if kind == 0:                                   # drop a line
        del lines[i]
    elif kind == 1:                                 # double a line
        lines.insert(i, lines[i])
    elif kind in (2, 3):                            # a number made extreme
        numbers = [(n, m) for n, line in enumerate(lines) for m in re.finditer(r"-?\d+(\.\d+)?(e-?\d+)?", line)]
        if numbers:
            n, m = numbers[int(rng.integers(len(numbers)))]
            lines[n] = lines[n][:m.start()] + str(rng.choice(INTERESTING_NUMBERS)) + lines[n][m.end():]
    elif kind == 4:                                 # deep nesting
        depth = int(rng.choice([40, 120, 1000, 20000]))
        field = str(rng.choice(["convolution_param", "input_param", "unknown_thing", "layer"]))
        lines.insert(i, f"{field} {{ " * depth + "}" * depth)
    elif kind == 5:                                 # another layer type
        types = [n for n, line in enumerate(lines) if line.strip().startswith("type:")]
        if types:
            n = types[int(rng.integers(len(types)))]
            lines[n] = f'  type: "{rng.choice(LAYER_TYPES)}"'
    elif kind == 6:                                 # drop every bottom or top of a layer
        which = str(rng.choice(["bottom:", "top:"]))
        hits = [n for n, line in enumerate(lines) if line.strip().startswith(which)]
        if hits:
            del lines[hits[int(rng.integers(len(hits)))]]
    elif kind == 7:                                 # swap two quoted names
        quoted = [(n, m) for n, line in enumerate(lines) for m in re.finditer(r'"[^"]*"', line)]
        if len(quoted) >= 2:
            (n1, m1), (n2, m2) = (quoted[int(k)] for k in rng.choice(len(quoted), 2, replace=False))
            first, second = m1.group(0), m2.group(0)
            lines[n1] = lines[n1].replace(first, second, 1)
            lines[n2] = lines[n2].replace(second, first, 1)
    elif kind == 8:                                 # truncate
        return text[:int(rng.integers(len(text)))]
    else:                                           # a raw byte or odd character
        position = int(rng.integers(len(lines[i]) + 1))
        character = str(rng.choice(["{", "}", ":", '"', "\\", "#", "\x00", "é", "\ufffd", " ", "\n"]))
        lines[i] = lines[i][:position] + character + lines[i][position:]
    return "\n".join(lines) + "\n"


_EXTREMES = {
    "TYPE_UINT32": [0, 1, 2, 3, 31, 1000, 2 ** 16, 2 ** 31, 2 ** 32 - 1],
    "TYPE_INT32": [-2 ** 31, -5, -1, 0, 1, 2, 5, 2 ** 31 - 1],
    "TYPE_INT64": [-2 ** 63, -2 ** 31, -1, 0, 1, 3, 2 ** 31, 2 ** 40, 2 ** 63 - 1],
    "TYPE_FLOAT": [0.0, -1.0, 1.0, 1e-30, 3.4e38, -3.4e38, math.nan, math.inf, -math.inf],
    "TYPE_DOUBLE": [0.0, -1.0, 1e300, -1e300, math.nan, math.inf],
    "TYPE_BOOL": [True, False],
}
def _type_name(field):
    from google.protobuf.descriptor import FieldDescriptor
    return {FieldDescriptor.TYPE_UINT32: "TYPE_UINT32", FieldDescriptor.TYPE_INT32: "TYPE_INT32",
            FieldDescriptor.TYPE_INT64: "TYPE_INT64", FieldDescriptor.TYPE_FLOAT: "TYPE_FLOAT",
            FieldDescriptor.TYPE_DOUBLE: "TYPE_DOUBLE", FieldDescriptor.TYPE_BOOL: "TYPE_BOOL",
            FieldDescriptor.TYPE_ENUM: "TYPE_ENUM"}.get(field.type)


def _numeric_fields(message, path=()):
    """(message, field) for every numeric or enum field in ``message``'s schema under the set sub-messages."""
    found = []
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None:
            if field.is_repeated:
                for item in getattr(message, field.name):
                    found += _numeric_fields(item, path + (field.name,))
            elif message.HasField(field.name):
                found += _numeric_fields(getattr(message, field.name), path + (field.name,))
        elif _type_name(field) is not None:
            found.append((message, field))
    return found


def _set_extreme(message, field, rng):
    kind = _type_name(field)
    if kind == "TYPE_ENUM":
        values = [v.number for v in field.enum_type.values]
        value = int(rng.choice(values))
    else:
        choices = _EXTREMES[kind]
        value = choices[int(rng.integers(len(choices)))]
    if field.is_repeated:
        items = getattr(message, field.name)
        action = int(rng.integers(3))
        if action == 0 and len(items):
            items[int(rng.integers(len(items)))] = value
        elif action == 1:
            items.append(value)
        else:
            del items[:]
    else:
        setattr(message, field.name, value)


_PARAMS_BY_TYPE = {
    "Convolution": "convolution_param", "Deconvolution": "convolution_param", "InnerProduct": "inner_product_param",
    "Pooling": "pooling_param", "LRN": "lrn_param", "Eltwise": "eltwise_param", "Concat": "concat_param",
    "Slice": "slice_param", "Reshape": "reshape_param", "Flatten": "flatten_param", "Softmax": "softmax_param",
    "Scale": "scale_param", "Bias": "bias_param", "BatchNorm": "batch_norm_param", "Power": "power_param",
    "PReLU": "prelu_param", "Clip": "clip_param", "ReLU": "relu_param", "Input": "input_param",
}


def _all_layers(net):
    return list(net.layer) or list(net.layers)


def mutate_message(net, rng):
    """One damage to a NetParameter (blobs included), in place."""
    layers = _all_layers(net)
    container = net.layer if len(net.layer) else net.layers
    lp = layers[int(rng.integers(len(layers)))]
    kind = int(rng.integers(12))
    if kind in (0, 1, 2):                           # an extreme value in a layer setting
        if isinstance(lp, cp.LayerParameter) and lp.type in _PARAMS_BY_TYPE and rng.random() < 0.5:
            # touch the sub-message so that unset settings get values too
            getattr(lp, _PARAMS_BY_TYPE[lp.type]).SetInParent()
        fields = [(m, f) for m, f in _numeric_fields(lp) if f.name not in ("phase",)]
        if fields:
            message, field = fields[int(rng.integers(len(fields)))]
            _set_extreme(message, field, rng)
    elif kind == 3:                                 # bottoms: none, doubled, or a later top
        action = int(rng.integers(3))
        if action == 0:
            del lp.bottom[:]
        elif action == 1 and len(lp.bottom):
            lp.bottom.append(lp.bottom[0])
        else:
            later = [t for other in layers for t in other.top]
            if later:
                lp.bottom.append(str(rng.choice(later)))
    elif kind == 4:                                 # tops: none, doubled, or a bottom's name
        action = int(rng.integers(3))
        if action == 0:
            del lp.top[:]
        elif action == 1 and len(lp.top):
            lp.top.append(lp.top[0])
        elif len(lp.bottom):
            lp.top.append(lp.bottom[0])
    elif kind == 5:                                 # layer type changed
        if isinstance(lp, cp.LayerParameter):
            lp.type = str(rng.choice(LAYER_TYPES))
        else:
            values = [v.number for v in lp.DESCRIPTOR.fields_by_name["type"].enum_type.values]
            lp.type = int(rng.choice(values))
    elif kind == 6:                                 # layers removed, doubled, swapped
        i, j = int(rng.integers(len(layers))), int(rng.integers(len(layers)))
        action = int(rng.integers(3))
        if action == 0:
            del container[i]
        elif action == 1:
            container.add().CopyFrom(layers[i])
        else:
            a, b = type(lp)(), type(lp)()
            a.CopyFrom(layers[i])
            b.CopyFrom(layers[j])
            container[i].CopyFrom(b)
            container[j].CopyFrom(a)
    elif kind in (7, 8, 9, 10):                     # blobs
        with_blobs = [other for other in layers if len(other.blobs)]
        if with_blobs:
            mutate_blob(with_blobs[int(rng.integers(len(with_blobs)))], rng)
    else:                                           # net-level inputs
        if len(net.input_dim):
            net.input_dim[int(rng.integers(len(net.input_dim)))] = int(rng.choice([-1, 0, 2 ** 31 - 1, 7]))
        else:
            net.input.append("data")
            net.input_dim.extend(int(v) for v in rng.choice([-3, 0, 1, 5, 65536], int(rng.integers(1, 6))))


def mutate_blob(lp, rng):
    blob = lp.blobs[int(rng.integers(len(lp.blobs)))]
    kind = int(rng.integers(9))
    if kind == 0:
        del lp.blobs[int(rng.integers(len(lp.blobs)))]
    elif kind == 1:                                 # shape changed
        blob.shape.dim[:] = [int(v) for v in rng.choice([-1, 0, 1, 2, 3, 4, 2 ** 31, 2 ** 62],
                                                         int(rng.integers(0, 5)))]
    elif kind == 2:                                 # values missing or extra
        if rng.random() < 0.5 and len(blob.data):
            del blob.data[int(rng.integers(len(blob.data))):]
        else:
            blob.data.extend([1.0] * int(rng.integers(1, 5)))
    elif kind == 3:                                 # stored as doubles
        values = list(blob.data)
        del blob.data[:]
        blob.double_data.extend(values)
        if rng.random() < 0.3:
            blob.double_data.append(1e300)
    elif kind == 4:                                 # both float and double values
        blob.double_data.extend(list(blob.data)[: int(rng.integers(len(blob.data) + 1))])
    elif kind == 5:                                 # legacy dims
        blob.ClearField("shape")
        blob.num, blob.channels, blob.height, blob.width = (
            int(v) for v in rng.choice([-1, 0, 1, 2, 3, 4, 2 ** 31 - 1], 4))
    elif kind == 6 and len(blob.data):              # non-finite values
        blob.data[int(rng.integers(len(blob.data)))] = float(rng.choice([math.nan, math.inf, -math.inf, 3e38]))
    elif kind == 7:
        blob.Clear()
    else:
        lp.blobs.add().CopyFrom(blob)


def mutate_mean(data, rng):
    if rng.random() < 0.5:
        return mutate_bytes(data, rng)
    blob = cp.BlobProto()
    blob.ParseFromString(data)
    holder = cp.LayerParameter()
    holder.blobs.add().CopyFrom(blob)
    mutate_blob(holder, rng)
    return holder.blobs[0].SerializeToString() if len(holder.blobs) else b""


# ------------------------------------------------------------------------------ the runs

def assert_errors_name_a_file(outcomes, allowed=()):
    """Every one-line error names the file at fault: one of the files on its command line (the
    ONNX file ``convert`` writes included, for names the writer cannot keep)."""
    unnamed = []
    for outcome in outcomes:
        lines = stderr_lines(outcome.stderr)
        if outcome.kind != "error" or is_usage_error(lines):
            continue
        files = [a for a in outcome.argv if os.path.isabs(a)]
        if not any(f"{path}: " in lines[0] for path in files) and not any(a in lines[0] for a in allowed):
            unnamed.append(outcome)
    assert not unnamed, "errors that name no file:\n" + "\n".join(o.describe() for o in unnamed[:10])


def assert_acceptable(outcomes, allowed=()):
    assert_clean(outcomes)
    assert_errors_name_a_file(outcomes, allowed)


class Seeds:
    def __init__(self, folder):
        self.folder = folder
        rng = np.random.default_rng(SEED)
        self.models = {}
        for name, net in (("seed", seed_network(rng)), ("seed_v1", seed_v1_network(rng))):
            self.models[name] = split_model(net)
        self.real = {}
        caffe = SHARED_MODELS / "caffe"
        for name, prototxt, weights in (("lenet", "lenet/lenet.prototxt", "lenet/lenet_iter_10000.caffemodel"),
                                        ("det1", "mtcnn/det1.prototxt", "mtcnn/det1.caffemodel"),
                                        ("det2", "mtcnn/det2.prototxt", "mtcnn/det2.caffemodel")):
            if (caffe / prototxt).is_file() and (caffe / weights).is_file():
                self.real[name] = ((caffe / prototxt).read_text(), (caffe / weights).read_bytes())
        self.count = 0

    def write(self, name, suffix, content):
        self.count += 1
        path = os.path.join(self.folder, f"m{self.count % 50}_{name}{suffix}")
        with open(path, "wb" if isinstance(content, bytes) else "w", **({} if isinstance(content, bytes) else
                                                                          {"encoding": "utf-8"})) as handle:
            handle.write(content)
        return path


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return Seeds(str(tmp_path_factory.mktemp("caffe-fuzz")))


@pytest.fixture(scope="module")
def worker():
    with CliWorker(timeout=60.0, env=WORKER_ENV) as running:
        yield running


def command(prototxt, weights, index, folder):
    """The command a mutant goes through: mostly ``inspect``, every fourth with a preset, every fifth ``convert``;
    with the caffemodel, or random weights where there is none."""
    model = [prototxt] + (["--weights", weights] if weights else ["--random-weights"])
    if index % 5 == 4:
        return ["convert", *model, "-o", os.path.join(folder, "out.onnx")]
    if index % 4 == 3:
        return ["inspect", *model, "--preset", "epsilon-plus-flat"]
    return ["inspect", *model]


def test_seeds_are_read_cleanly(seeds, worker):
    """The unmutated seeds load, or the mutants would only exercise the first failure."""
    for name, (text, weights) in {**seeds.models, **seeds.real}.items():
        prototxt = seeds.write(name, ".prototxt", text)
        caffemodel = seeds.write(name, ".caffemodel", weights)
        for argv in (["inspect", prototxt, "--weights", caffemodel],
                     ["inspect", prototxt, "--weights", caffemodel, "--preset", "epsilon-plus-flat"],
                     ["convert", prototxt, "--weights", caffemodel, "-o", os.path.join(seeds.folder, "seed.onnx")]):
            outcome = worker.run(argv, label="caffe seed")
            assert outcome.kind == "ok" and outcome.code == 0, outcome.describe()


def merged_network(text, weights):
    """The prototxt's network with the caffemodel's blobs put into its layers."""
    net = cp.NetParameter()
    text_format.Parse(text, net, allow_unknown_field=True)
    stored = cp.NetParameter()
    stored.ParseFromString(weights)
    blobs = {lp.name: lp.blobs for lp in _all_layers(stored) if len(lp.blobs)}
    for lp in _all_layers(net):
        if lp.name in blobs and not len(lp.blobs):
            lp.blobs.extend(blobs[lp.name])
    return net


def _share(part):
    return max(1, math.ceil(MUTANTS * part))


def _seed_models(seeds):
    return list(seeds.models.items()) + list(seeds.real.items())


def test_caffemodel_byte_mutants(seeds, worker):
    rng = np.random.default_rng([SEED, 1])
    models = _seed_models(seeds)
    outcomes = []
    for index in range(_share(0.25)):
        name, (text, weights) = models[index % len(models)]
        prototxt = seeds.write(name, ".prototxt", text)
        caffemodel = seeds.write(name, ".caffemodel", mutate_bytes(weights, rng))
        outcomes.append(worker.run(command(prototxt, caffemodel, index, seeds.folder), label="caffe caffemodel-bytes"))
    assert_acceptable(outcomes)


def test_prototxt_text_mutants(seeds, worker):
    rng = np.random.default_rng([SEED, 2])
    models = _seed_models(seeds)
    outcomes = []
    for index in range(_share(0.3)):
        name, (text, weights) = models[index % len(models)]
        for _ in range(int(rng.integers(1, 4))):
            text = mutate_text(text, rng)
        prototxt = seeds.write(name, ".prototxt", text)
        caffemodel = seeds.write(name, ".caffemodel", weights) if index % 3 == 0 else None
        outcomes.append(worker.run(command(prototxt, caffemodel, index, seeds.folder), label="caffe prototxt-text"))
    assert_acceptable(outcomes)


def test_network_message_mutants(seeds, worker):
    rng = np.random.default_rng([SEED, 3])
    models = _seed_models(seeds)
    outcomes = []
    for index in range(_share(0.35)):
        name, (text, weights) = models[index % len(models)]
        net = merged_network(text, weights)
        for _ in range(int(rng.integers(1, 3))):
            mutate_message(net, rng)
        mutated_text, mutated_weights = split_model(net)
        prototxt = seeds.write(name, ".prototxt", mutated_text)
        # without a caffemodel the blobs come from the prototxt itself (write them into it sometimes)
        if index % 4 == 1:
            prototxt = seeds.write(name, ".prototxt", text_format.MessageToString(net))
            caffemodel = None
        else:
            caffemodel = seeds.write(name, ".caffemodel", mutated_weights)
        outcomes.append(worker.run(command(prototxt, caffemodel, index, seeds.folder), label="caffe message"))
    assert_acceptable(outcomes)


def test_odd_files_in_place_of_a_caffemodel(seeds, worker):
    """A text prototxt, an empty file, a mean file and random bytes given as the caffemodel."""
    text, weights = seeds.models["seed"]
    prototxt = seeds.write("seed", ".prototxt", text)
    rng = np.random.default_rng([SEED, 4])
    outcomes = []
    for content in (text.encode(), b"", seed_mean_file(), bytes(rng.integers(0, 256, 4096, dtype=np.uint8)),
                    b"\n" * 100, weights[:1]):
        caffemodel = seeds.write("odd", ".caffemodel", content)
        outcomes.append(worker.run(["inspect", prototxt, "--weights", caffemodel], label="caffe odd"))
    assert_acceptable(outcomes)


def test_mean_file_mutants(seeds, worker):
    rng = np.random.default_rng([SEED, 5])
    text, weights = seeds.models["seed"]
    prototxt = seeds.write("seed", ".prototxt", text)
    caffemodel = seeds.write("seed", ".caffemodel", weights)
    images = os.path.join(seeds.folder, "images")
    os.makedirs(images, exist_ok=True)
    Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(os.path.join(images, "0.png"))
    mean = seed_mean_file()
    outcomes = []
    for index in range(_share(0.1)):
        path = seeds.write("mean", ".binaryproto", mutate_mean(mean, rng))
        outcomes.append(worker.run(["explain", prototxt, "--weights", caffemodel, images, "-o",
                                    os.path.join(seeds.folder, "explained"), "--format", "npy",
                                    "--preprocess", "caffe", "--mean-file", path], label="caffe mean-file"))
    assert_acceptable(outcomes)
