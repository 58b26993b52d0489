"""Damaged and hostile Caffe files through the command line: one regression test per class of failure
the fuzz suite (tests/test_fuzz_caffe.py) found. Each must end in exit status 2 and one line on stderr
naming the file and the layer (or input) at fault."""

import math
import os

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

from converters import caffe_proto as cp
from fuzz_support import CliWorker

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'


@pytest.fixture(scope="module")
def worker():
    with CliWorker(timeout=60.0, env={"LRPTOOL_MEMORY_BUDGET": "1G"}) as running:
        yield running


def one_line_error(outcome, *fragments):
    assert outcome.code == 2, outcome.describe()
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in outcome.stderr, outcome.describe()
    assert lines[0].startswith("lrptool: error: "), lines[0]
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]
    return lines[0]


def write(folder, name, content):
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def inspect(worker, folder, layers, *options, header=INPUT):
    """``lrptool inspect`` on a prototxt made of ``header`` and ``layers``; returns (outcome, path)."""
    prototxt = write(folder, "net.prototxt", 'name: "damaged"\n' + header + layers)
    return worker.run(["inspect", prototxt, *options]), prototxt


def conv(name="conv", bottom="data", top="conv", **settings):
    body = " ".join(f"{key}: {value}" for key, value in {"num_output": 4, "kernel_size": 3, **settings}.items())
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" '
            f'convolution_param {{ {body} }} }}\n')


# ------------------------------------------------------------------------------ prototxt structure

def test_deep_nesting_is_refused_before_parsing(worker, tmp_path):
    outcome, path = inspect(worker, tmp_path, "layer { " * 5000 + "}" * 5000 + "\n")
    one_line_error(outcome, path, "line 3", "nested more than")


def test_layer_without_bottom(worker, tmp_path):
    outcome, path = inspect(worker, tmp_path, 'layer { name: "relu" type: "ReLU" top: "relu" }\n')
    one_line_error(outcome, path, "layer 'relu' (ReLU)", "0 bottom(s)")


def test_layer_without_top(worker, tmp_path):
    outcome, path = inspect(worker, tmp_path, 'layer { name: "relu" type: "ReLU" bottom: "data" }\n')
    one_line_error(outcome, path, "layer 'relu' (ReLU)", "no top")


def test_negative_input_dim(worker, tmp_path):
    header = 'input: "data"\ninput_dim: 1 input_dim: -3 input_dim: 8 input_dim: 8\n'
    outcome, path = inspect(worker, tmp_path, conv(), header=header)
    one_line_error(outcome, path, "input 'data'", "(1, -3, 8, 8)")


def test_input_layer_with_zero_size(worker, tmp_path):
    header = 'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 0 } } }\n'
    outcome, path = inspect(worker, tmp_path, conv(), header=header)
    one_line_error(outcome, path, "layer 'in' (Input)", "at least 1")


@pytest.mark.parametrize("options", [(), ("--random-weights",)])
def test_tiny_prototxt_asking_for_huge_weights(worker, tmp_path, options):
    header = 'input: "data"\ninput_dim: 1 input_dim: 3 input_dim: 224 input_dim: 224\n'
    layers = 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" ' \
             'inner_product_param { num_output: 4000000 } }\n'
    outcome, path = inspect(worker, tmp_path, layers, *options, header=header)
    assert os.path.getsize(path) < 200
    one_line_error(outcome, path, "layer 'fc' (InnerProduct)", "memory budget")


def test_output_too_large_for_one_image(worker, tmp_path):
    outcome, path = inspect(worker, tmp_path, conv(pad=100000, kernel_size=1, num_output=1))
    one_line_error(outcome, path, "layer 'conv' (Convolution)", "memory budget")


@pytest.mark.parametrize("settings, problem", [
    ({"num_output": 0}, "num_output is 0"),
    ({"kernel_size": 0}, "kernel size is 0"),
    ({"kernel_size": 100000}, "larger than the padded input"),
    ({"stride": 0}, "stride is 0"),
    ({"dilation": 0}, "dilation is 0"),
    ({"group": 2}, "do not split into 2 groups"),
    ({"group": 0}, "group is 0"),
    ({"axis": 7}, "axis 7 is out of range"),
    ({"pad_h": 1}, "pad_h and pad_w must be given together"),
])
def test_convolution_settings(worker, tmp_path, settings, problem):
    outcome, path = inspect(worker, tmp_path, conv(**settings))
    one_line_error(outcome, path, "layer 'conv' (Convolution)", problem)


def test_negative_pad_is_a_syntax_error_with_its_line(worker, tmp_path):
    outcome, path = inspect(worker, tmp_path, conv(pad=-1))
    one_line_error(outcome, path, "line 3", "pad: -1")


@pytest.mark.parametrize("settings, problem", [
    ("pool: MAX kernel_size: 9", "larger than the padded input"),
    ("pool: MAX kernel_size: 2 stride: 0", "stride is 0"),
    ("pool: MAX kernel_size: 2 pad: 2", "pad (2, 2) must be smaller than the kernel"),
    ("pool: AVE", "no kernel given"),
])
def test_pooling_settings(worker, tmp_path, settings, problem):
    layers = f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param {{ {settings} }} }}\n'
    outcome, path = inspect(worker, tmp_path, layers)
    one_line_error(outcome, path, "layer 'pool' (Pooling)", problem)


@pytest.mark.parametrize("dims, problem", [
    ("dim: -1 dim: -1", "more than one -1"),
    ("dim: 0 dim: -2", "only -1 (inferred), 0 (copied)"),
    ("dim: 0 dim: 5 dim: -1", "does not reshape"),
    ("dim: 0 dim: 0 dim: 0 dim: 0 dim: 0", "does not have"),
    ("dim: 0 dim: 7", "cannot reshape"),
])
def test_reshape_dimensions(worker, tmp_path, dims, problem):
    layers = (f'layer {{ name: "shape" type: "Reshape" bottom: "data" top: "shape" '
              f'reshape_param {{ shape {{ {dims} }} }} }}\n')
    outcome, path = inspect(worker, tmp_path, layers)
    one_line_error(outcome, path, "layer 'shape' (Reshape)", problem)


@pytest.mark.parametrize("settings, tops, problem", [
    ("axis: 1 slice_point: 5", ["a", "b"], "must increase strictly"),
    ("axis: 1 slice_point: 2 slice_point: 1", ["a", "b", "c"], "must increase strictly"),
    ("axis: 1 slice_point: 1", ["a", "b", "c"], "1 slice points for 3 tops"),
    ("axis: 4", ["a", "b"], "axis 4 is out of range"),
    ("axis: 2", ["a", "b", "c"], "does not split evenly"),
])
def test_slice_settings(worker, tmp_path, settings, tops, problem):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    layers = f'layer {{ name: "slice" type: "Slice" bottom: "data" {top_text} slice_param {{ {settings} }} }}\n'
    outcome, path = inspect(worker, tmp_path, layers)
    one_line_error(outcome, path, "layer 'slice' (Slice)", problem)


@pytest.mark.parametrize("layers, where, problem", [
    ('layer { name: "cat" type: "Concat" bottom: "data" bottom: "data" top: "cat" concat_param { axis: -5 } }',
     "layer 'cat' (Concat)", "axis -5 is out of range"),
    ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 axis: 4 } }',
     "layer 'fc' (InnerProduct)", "axis 4 is out of range"),
    ('layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "data" top: "sum" '
     'eltwise_param { operation: SUM coeff: 1 coeff: 2 coeff: 3 } }', "layer 'sum' (Eltwise)", "3 coefficients for 2"),
    ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { kernel_size: 2 stride: 2 } }\n'
     'layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "pool" top: "sum" }',
     "layer 'sum' (Eltwise)", "different shapes"),
    ('layer { name: "sum" type: "Eltwise" bottom: "data" top: "sum" }', "layer 'sum' (Eltwise)", "takes 2 or more"),
    ('layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" flatten_param { axis: 2 end_axis: 1 } }',
     "layer 'flat' (Flatten)", "comes before axis"),
    ('layer { name: "soft" type: "Softmax" bottom: "data" top: "soft" softmax_param { axis: 9 } }',
     "layer 'soft' (Softmax)", "axis 9 is out of range"),
    ('layer { name: "norm" type: "LRN" bottom: "data" top: "norm" lrn_param { local_size: 4 } }',
     "layer 'norm' (LRN)", "even"),
    ('layer { name: "clip" type: "Clip" bottom: "data" top: "clip" clip_param { min: 2 max: 1 } }',
     "layer 'clip' (Clip)", "above max"),
    ('layer { name: "relu" type: "ReLU" bottom: "data" top: "relu" relu_param { negative_slope: nan } }',
     "layer 'relu' (ReLU)", "negative_slope is nan"),
    ('layer { name: "db" type: "Data" }', "layer 'db' (Data)", "no top"),
    ('layer { name: "db" type: "Data" top: "images" }', "layer 'db' (Data)", "Input layer"),
])
def test_layer_settings(worker, tmp_path, layers, where, problem):
    outcome, path = inspect(worker, tmp_path, layers + "\n")
    one_line_error(outcome, path, where, problem)


def test_huge_within_channel_lrn_is_refused_not_built(worker, tmp_path):
    layers = 'layer { name: "norm" type: "LRN" bottom: "data" top: "norm" ' \
             'lrn_param { local_size: 100001 norm_region: WITHIN_CHANNEL } }\n'
    outcome, path = inspect(worker, tmp_path, layers)
    assert outcome.seconds < 20
    one_line_error(outcome, path, "norm (LRN", "local_size 100001")


@pytest.mark.parametrize("layers, where, problem", [
    ('layer { name: "relu" type: "ReLU" bottom: "data" top: "r" top: "r" }', "layer 'relu' (ReLU)", "appears twice"),
    # a top that is neither new nor in place would give one blob two values: a cycle in Caffe's eyes
    (conv() + 'layer { name: "relu" type: "ReLU" bottom: "conv" top: "data" }', "layer 'relu' (ReLU)",
     "does not work in place"),
    ('layer { name: "relu" type: "ReLU" bottom: "later" top: "r" }\n' + conv(bottom="r", top="later"),
     "layer 'relu' (ReLU)", "bottom 'later' is not made by an earlier layer"),
])
def test_tops_and_in_place_names(worker, tmp_path, layers, where, problem):
    outcome, path = inspect(worker, tmp_path, layers + "\n")
    one_line_error(outcome, path, where, problem)


def test_control_characters_stay_on_one_line(worker, tmp_path):
    outcome, path = inspect(worker, tmp_path, 'layer { name: "a\\x0cb\\u2028" type: "Frob\\x1cnicate" bottom: "data" '
                                              'top: "x" }\n')
    line = one_line_error(outcome, path, "unsupported")
    assert "\\x0c" in line and "\\x1c" in line


# ------------------------------------------------------------------------------ caffemodels

def model_with_conv(blob_edit):
    """A prototxt with one convolution (4, 3, 3, 3) and a caffemodel whose weight blob ``blob_edit`` changes."""
    net = cp.NetParameter(name="damaged")
    net.input.append("data")
    net.input_dim.extend([1, 3, 8, 8])
    layer = net.layer.add(name="conv", type="Convolution", bottom=["data"], top=["conv"])
    layer.convolution_param.num_output = 4
    layer.convolution_param.kernel_size.append(3)
    text = text_format.MessageToString(net)
    weight, bias = layer.blobs.add(), layer.blobs.add()
    weight.shape.dim.extend([4, 3, 3, 3])
    weight.data.extend(np.linspace(-1, 1, 108).tolist())
    bias.shape.dim.append(4)
    bias.data.extend([0.0] * 4)
    blob_edit(weight)
    return text, net.SerializeToString()


def run_model(worker, folder, text, weights, *options):
    prototxt = write(folder, "net.prototxt", text)
    caffemodel = write(folder, "net.caffemodel", weights)
    return worker.run(["inspect", prototxt, "--weights", caffemodel, *options]), caffemodel


def _set(**fields):
    def edit(blob):
        for key, value in fields.items():
            if key == "dims":
                blob.shape.dim[:] = value
            elif key in ("data", "double_data"):
                getattr(blob, key)[:] = value
            else:
                setattr(blob, key, value)
    return edit


def _legacy(num, channels, height, width):
    def edit(blob):
        blob.ClearField("shape")
        blob.num, blob.channels, blob.height, blob.width = num, channels, height, width
    return edit


@pytest.mark.parametrize("edit, problem", [
    (_set(data=[0.5] * 100), "holds 100 values but its shape (4, 3, 3, 3) needs 108"),
    (_set(dims=[4, 3, -3, -3]), "negative size"),
    (_set(dims=[2 ** 62, 2 ** 62, 4]), "holds 108 values"),
    (_legacy(-4, -3, 3, 3), "negative size"),
    (_legacy(2 ** 31 - 1, 2 ** 31 - 1, 3, 3), "holds 108 values"),
    (_set(data=[math.nan] + [0.0] * 107), "NaN or infinite"),
    (_set(data=[], double_data=[1e300] * 108), "beyond the float32 range"),
    (_set(dims=[4, 3, 3, 2], data=[0.0] * 72), "blob 0 has shape (4, 3, 3, 2), the network needs (4, 3, 3, 3)"),
])
def test_blob_problems_name_the_caffemodel_and_the_layer(worker, tmp_path, edit, problem):
    text, weights = model_with_conv(edit)
    outcome, caffemodel = run_model(worker, tmp_path, text, weights)
    one_line_error(outcome, caffemodel, "layer 'conv' (Convolution)", problem)


def test_double_data_is_read_as_caffe_reads_it(worker, tmp_path):
    # Caffe's Blob::FromProto takes double_data when a blob has it
    text, weights = model_with_conv(_set(data=[], double_data=np.linspace(-1, 1, 108).tolist()))
    outcome, _ = run_model(worker, tmp_path, text, weights)
    assert outcome.code == 0, outcome.describe()


@pytest.mark.parametrize("content, problem", [
    (b'name: "LeNet"\nlayer {\n  name: "conv"\n}\n', "a text file, not a binary caffemodel"),
    (b"", "holds no layers"),
    (b"\x0a\xff\xff\xff\xff\x0f", "not a readable caffemodel"),
])
def test_not_a_caffemodel(worker, tmp_path, content, problem):
    text, _ = model_with_conv(_set())
    outcome, caffemodel = run_model(worker, tmp_path, text, content)
    one_line_error(outcome, caffemodel, problem)


def test_batchnorm_with_negative_variance(worker, tmp_path):
    net = cp.NetParameter(name="bn")
    net.input.append("data")
    net.input_dim.extend([1, 2, 4, 4])
    bn = net.layer.add(name="bn", type="BatchNorm", bottom=["data"], top=["bn"])
    text = text_format.MessageToString(net)
    for values in ([0.0, 0.0], [1.0, -1.0], [1.0]):
        blob = bn.blobs.add()
        blob.shape.dim.append(len(values))
        blob.data.extend(values)
    outcome, caffemodel = run_model(worker, tmp_path, text, net.SerializeToString(), "--preset", "epsilon-plus-flat")
    one_line_error(outcome, caffemodel, "layer 'bn' (BatchNorm)", "variance")


# ------------------------------------------------------------------------------ mean files

def mean_blob(dims, values, legacy=False):
    blob = cp.BlobProto()
    if legacy:
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(dims)
    blob.data.extend(values)
    return blob.SerializeToString()


@pytest.mark.parametrize("content, problem", [
    (mean_blob([1, 3, 4, 4], [100.0] * 40), "holds 40 values but its shape (1, 3, 4, 4) needs 48"),
    (mean_blob([1, -3, 4, 4], [100.0] * 48), "negative size"),
    (mean_blob((1, 3, 2 ** 31 - 1, 2), [100.0] * 12, legacy=True), "holds 12 values"),
    (mean_blob([3], [100.0, math.inf, 1.0]), "NaN or infinite"),
    (mean_blob([0], []), "holds no values"),
    (b"\xff\xff\xff", "not a Caffe mean file"),
])
def test_damaged_mean_files(worker, tmp_path, content, problem):
    text, weights = model_with_conv(_set())
    prototxt = write(tmp_path, "net.prototxt", text)
    caffemodel = write(tmp_path, "net.caffemodel", weights)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(images / "0.png")
    mean = write(tmp_path, "mean.binaryproto", content)
    outcome = worker.run(["explain", prototxt, "--weights", caffemodel, str(images), "-o", str(tmp_path / "out"),
                          "--preprocess", "caffe", "--mean-file", mean])
    one_line_error(outcome, mean, problem)


def test_lrn_window_wider_than_the_channels_is_computed_narrow(tmp_path):
    """A huge local_size must not make the forward pass allocate size padded channels per pixel;
    every window covers all channels then, so the result is Caffe's with the full sum."""
    from converters.caffe_reader import read_caffe
    from lrptool.executor import run_graph

    size = 2 ** 31 - 1
    prototxt = write(tmp_path, "lrn.prototxt", 'name: "lrn"\n' + INPUT +
                     f'layer {{ name: "norm" type: "LRN" bottom: "data" top: "norm" '
                     f'lrn_param {{ local_size: {size} alpha: 3 beta: 0.75 k: 2 }} }}\n')
    graph = read_caffe(prototxt)
    x = np.random.default_rng(2).normal(size=(2, 3, 8, 8))
    expected = x / (2 + 3 / size * np.square(x).sum(axis=1, keepdims=True)) ** 0.75
    np.testing.assert_allclose(run_graph(graph, x, dtype=np.float64)["norm"], expected, rtol=1e-10)


def test_weights_that_overflow_when_batchnorm_is_folded(worker, tmp_path):
    """Finite float32 weights whose product with the BatchNorm factor is not: refused where the
    explainer folds them (after reading, so the message names the layers, not the file)."""
    net = cp.NetParameter(name="fold")
    net.input.append("data")
    net.input_dim.extend([1, 2, 4, 4])
    layer = net.layer.add(name="conv", type="Convolution", bottom=["data"], top=["conv"])
    layer.convolution_param.num_output = 2
    layer.convolution_param.kernel_size.append(1)
    bn = net.layer.add(name="bn", type="BatchNorm", bottom=["conv"], top=["conv"])
    text = text_format.MessageToString(net)
    # a weight near float32's largest value, and a variance of 0.01 that multiplies it by 10
    for target, blob_values, dims in ((layer, [3e38] * 4, [2, 2, 1, 1]), (layer, [0.0, 0.0], [2]),
                                      (bn, [0.0, 0.0], [2]), (bn, [0.01, 0.01], [2]), (bn, [1.0], [1])):
        blob = target.blobs.add()
        blob.shape.dim.extend(dims)
        blob.data.extend(blob_values)
    outcome, _ = run_model(worker, tmp_path, text, net.SerializeToString(), "--preset", "epsilon-plus-flat")
    one_line_error(outcome, "'bn' (BatchNorm)", "'conv' (Conv)", "beyond the float32 range")


def test_many_parameters_that_each_fit_but_not_together(worker, tmp_path):
    layers = "".join(f'layer {{ name: "fc{i}" type: "InnerProduct" bottom: "{"data" if i == 0 else f"fc{i - 1}"}" '
                     f'top: "fc{i}" inner_product_param {{ num_output: 4096 }} }}\n' for i in range(80))
    header = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4096 } } }\n'
    outcome, path = inspect(worker, tmp_path, layers, header=header)
    # 64 MiB per layer against a budget of 1 GiB: the 16th layer tips it over
    one_line_error(outcome, path, "layer 'fc15' (InnerProduct)", "the total of all parameters", "memory budget")


def test_thousands_of_layers_of_one_name_read_in_linear_time(worker, tmp_path):
    layers = 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n' * 20000
    outcome, _ = inspect(worker, tmp_path, layers)
    assert outcome.code == 0, outcome.describe()
    assert outcome.seconds < 20, outcome.seconds
