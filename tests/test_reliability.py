"""What docs/reliability.md promises for `explain` and `evaluate`: bad options and numeric extremes
end in one line, bad images are skipped one by one, nothing non-finite is written, nothing lands
outside -o, and --resume trusts only what the manifest proves."""

import json
import os
import stat
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from fuzz_support import CliWorker, non_finite_outputs, strict_json_lines
from test_explain_cli import COMMAND, bias_free_mnist, digit


@pytest.fixture(scope="module")
def worker():
    with CliWorker(timeout=120) as running:
        yield running


@pytest.fixture()
def model(tmp_path):
    return bias_free_mnist(tmp_path / "mnist.onnx")


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(digit(rng), "L").save(folder / f"d{index}.png")
    return folder


def lines(text):
    return [line for line in text.splitlines() if line.strip()]


def one_line_error(outcome, *fragments):
    assert outcome.kind == "error" and outcome.code == 2, outcome.describe()
    (line,) = lines(outcome.stderr)
    for fragment in fragments:
        assert fragment in line, line
    return line


def scaled_mnist(path, factor):
    """The bias-free MNIST CNN with every weight multiplied by ``factor`` (×1e20 overflows float32)."""
    bias_free_mnist(path)
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(model, str(path))
    return path


def fully_convolutional(path):
    """Conv → ReLU → global average, with free height and width."""
    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "fcn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# -- 3. sizes that ask for more memory than the budget ------------------------------------------

def test_huge_input_size_and_patch_are_refused_with_the_number(worker, tmp_path, images, model):
    fcn = fully_convolutional(tmp_path / "fcn.onnx")
    line = one_line_error(worker.run(["explain", fcn, images, "-o", tmp_path / "out", "--input-size", "100000x100000"]),
                          "memory budget")
    assert "GiB" in line or "TiB" in line
    one_line_error(worker.run(["evaluate", model, images, "-o", tmp_path / "ev", "--patch", "100000"]),
                   "--patch 100000", "28x28")
    assert not (tmp_path / "out").exists()


# -- 4. nothing non-finite is ever written --------------------------------------------------------

@pytest.mark.parametrize("option", [["--std", "0"], ["--mean", "nan"], ["--scale", "inf"], ["--scale", "-1"],
                                    ["--rules", "linear=epsilon:nan"], ["--rules", "linear=gamma:-1"],
                                    ["--std", "1,inf,1"]])
def test_impossible_numbers_are_refused_up_front(worker, tmp_path, images, model, option):
    one_line_error(worker.run(["explain", model, images, "-o", tmp_path / "out", *option]))
    assert not (tmp_path / "out").exists()


def test_a_model_with_nan_weights_is_refused_naming_the_node(worker, tmp_path, images):
    path = tmp_path / "nan.onnx"
    bias_free_mnist(path)
    model = onnx.load(str(path))
    weights = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weights[0, 0, 0, 0] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weights, "w1"))
    onnx.save(model, str(path))
    for command in ("explain", "evaluate"):
        one_line_error(worker.run([command, path, images, "-o", tmp_path / command]), "NaN or infinite", "Conv")


def test_overflowing_images_are_skipped_and_nothing_non_finite_is_written(worker, tmp_path, images):
    huge = scaled_mnist(tmp_path / "huge.onnx", 1e20)
    out = tmp_path / "out"
    outcome = worker.run(["explain", huge, images, "-o", out, "--format", "png,npy,overlay",
                          "--jsonl", out / "run.jsonl"])
    assert outcome.kind == "ok" and outcome.code == 1, outcome.describe()
    skipped = [line for line in lines(outcome.stderr) if "not finite" in line]
    assert len(skipped) == 3 and all("d" in line and ".png" in line for line in skipped)
    assert not list(out.glob("*.npy")) and not non_finite_outputs(out)
    evaluated = worker.run(["evaluate", huge, images, "-o", tmp_path / "ev"])
    assert evaluated.kind == "error" and evaluated.code == 2, evaluated.describe()
    assert "no image gave finite" in lines(evaluated.stderr)[-1]
    assert len([line for line in lines(evaluated.stderr) if "not finite" in line]) == 3
    assert not (tmp_path / "ev").exists()


# -- 5. bad images, one at a time -----------------------------------------------------------------

def bomb_png(path, width=20000, height=20000):
    """A PNG header declaring width × height pixels, with no pixel data to speak of."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_and_a_fifo_fail_alone(worker, tmp_path, images, model):
    bomb_png(images / "bomb.png")
    bomb_png(images / "large.png", 10000, 10000)          # between Pillow's warning and its error
    os.mkfifo(images / "pipe.png")
    outcome = worker.run(["explain", model, images, "-o", tmp_path / "out", "--format", "npy"], timeout=60)
    assert outcome.kind == "ok" and outcome.code == 1, outcome.describe()
    problems = lines(outcome.stderr)
    assert any("bomb.png" in line and "pixels than the limit" in line for line in problems)
    assert any("pipe.png" in line and "not a regular file" in line for line in problems)
    assert any("large.png" in line and "10000×10000" in line for line in problems)
    assert not [line for line in problems if "Warning" in line]
    assert len(list((tmp_path / "out").glob("*.npy"))) == 3


def test_16_bit_and_float_pictures_are_scaled_not_clipped(tmp_path):
    from lrptool.images import load_picture, preprocessing_for, to_tensor

    pre = preprocessing_for((None, 1, 2, 2), "raw")
    deep = np.array([[0, 257 * 100], [65535, 257 * 7]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(to_tensor(load_picture(tmp_path / "deep.png", pre), pre)[0], [[0, 100], [255, 7]])
    unit = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    Image.fromarray(unit, "F").save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(to_tensor(load_picture(tmp_path / "unit.tif", pre), pre)[0],
                                  np.round(unit * 255))
    Image.fromarray(np.array([[0, 1000.0], [3, 4]], dtype=np.float32), "F").save(tmp_path / "wide.tif")
    from lrptool.images import ImageError
    with pytest.raises(ImageError, match="0–1 or 0–255"):
        load_picture(tmp_path / "wide.tif", pre)


# -- 6. stdin lists -------------------------------------------------------------------------------

def test_stdin_lists_take_any_file_name_and_a_bad_target_fails_one_image(worker, tmp_path, images, model):
    odd = os.path.join(os.fsencode(images), b"caf\xe9.png")
    Image.fromarray(digit(np.random.default_rng(0)), "L").save(odd.decode("utf-8", "surrogateescape"))
    listing = odd + b"\n" + os.fsencode(images / "d0.png") + b"\t99999\n" + os.fsencode(images / "d1.png") + b"\t3\n"
    out = tmp_path / "out"
    outcome = worker.run(["explain", model, "-", "-o", out, "--format", "npy"], stdin=listing)
    assert outcome.kind == "ok" and outcome.code == 1, outcome.describe()
    (problem,) = [line for line in lines(outcome.stderr) if "skipped" in line]
    assert "d0.png" in problem and "99999" in problem and "10 outputs" in problem
    records = strict_json_lines(outcome.stdout)
    assert [r["target"] for r in records][1:] == [3] and len(records) == 2


# -- 7. never outside the output folder -----------------------------------------------------------

def nested_pictures(tmp_path, seed):
    """in/top.png and in/sub/inner.png, and an empty output folder: (input folder, output folder)."""
    rng = np.random.default_rng(seed)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.fromarray(digit(rng), "L").save(tmp_path / "in" / "top.png")
    Image.fromarray(digit(rng), "L").save(tmp_path / "in" / "sub" / "inner.png")
    (tmp_path / "out").mkdir()
    return tmp_path / "in", tmp_path / "out"


def test_a_symlink_in_the_output_tree_does_not_carry_outputs_elsewhere(worker, tmp_path, model):
    inputs, out = nested_pictures(tmp_path, 4)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "sub")
    outcome = worker.run(["explain", model, inputs, "-o", out, "--format", "npy"])
    assert outcome.kind == "ok" and outcome.code == 1, outcome.describe()
    assert any("inner.png" in line and "outside the output folder" in line for line in lines(outcome.stderr))
    assert list(elsewhere.iterdir()) == []
    assert (out / "top.png.npy").is_file()


# -- 8. and 9. what --resume trusts, and the JSON lines it continues -------------------------------

def test_resume_redoes_outputs_that_are_not_provably_whole(worker, tmp_path, images, model):
    out = tmp_path / "out"
    records = tmp_path / "run.jsonl"
    first = worker.run(["explain", model, images, "-o", out, "--format", "png,npy", "--jsonl", records])
    assert first.code == 0, first.describe()
    (out / "d0.png.npy").write_bytes(b"")                                     # emptied
    (out / "d1.png.heatmap.png").write_bytes(b"\x89PNG junk")                 # replaced by junk
    os.unlink(out / "d2.png.npy")
    os.symlink("/etc/passwd", out / "d2.png.npy")                              # a link to something else
    with open(records, "ab") as handle:
        handle.write(b'{"path": "cut sh')                                      # a line cut short by a kill
    again = worker.run(["explain", model, images, "-o", out, "--format", "png,npy", "--resume", "--jsonl", records])
    assert again.code == 0, again.describe()
    assert not os.path.islink(out / "d2.png.npy")
    for index in range(3):
        assert np.load(out / f"d{index}.png.npy").shape == (1, 28, 28)
        with Image.open(out / f"d{index}.png.heatmap.png") as picture:
            picture.load()
    kept = strict_json_lines(records.read_text())
    assert len(kept) == 6 and sorted({r["path"] for r in kept}) == sorted(str(p) for p in images.iterdir())
    third = worker.run(["explain", model, images, "-o", out, "--format", "png,npy", "--resume", "--jsonl", records])
    assert "3 image(s) already explained" in third.stderr and len(strict_json_lines(records.read_text())) == 6


def test_resume_writes_the_records_a_killed_run_had_not_written(worker, tmp_path, images, model):
    out = tmp_path / "out"
    records = tmp_path / "run.jsonl"
    assert worker.run(["explain", model, images, "-o", out, "--format", "npy", "--jsonl", records]).code == 0
    lost = strict_json_lines(records.read_text())
    records.write_text(json.dumps(lost[0]) + "\n")            # the kill came after the first line
    again = worker.run(["explain", model, images, "-o", out, "--format", "npy", "--resume", "--jsonl", records])
    assert again.code == 0 and "3 image(s) already explained" in again.stderr
    assert sorted(r["path"] for r in strict_json_lines(records.read_text())) == sorted(r["path"] for r in lost)


# -- 10. parts of a live run are not touched -------------------------------------------------------

def test_resume_removes_only_parts_of_dead_runs(tmp_path):
    from lrptool.files import TEMP_PREFIX, remove_stale_parts

    live = tmp_path / f"{TEMP_PREFIX}{os.getppid()}-abc"
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead_pid = finished.pid                                   # a process that has ended
    dead = tmp_path / f"{TEMP_PREFIX}{dead_pid}-abc"
    old_style = tmp_path / f"{TEMP_PREFIX}x1y2z3"
    for path in (live, dead, old_style):
        path.write_bytes(b"part")
    assert remove_stale_parts(tmp_path) == 2
    assert live.exists() and not dead.exists() and not old_style.exists()


# -- 12. option values of every kind ---------------------------------------------------------------

def test_odd_option_values_and_files_are_one_line_errors(worker, tmp_path, images, model):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "numbers.json").write_text('{"preset": 5}')
    (tmp_path / "rules.json").write_text('{"rules": {"first": 3}}')
    (tmp_path / "size.json").write_text('{"size": "big"}')
    (tmp_path / "std.json").write_text('{"std": [0]}')
    (tmp_path / "array.json").write_text("[]")
    (tmp_path / "labels.txt").write_bytes(b"cat\n\xff\xfe dog\n")
    out = tmp_path / "out"
    for option in (["--size", "x"], ["--size", "3x4x5"], ["--size", "-2"], ["--rules", tmp_path / "list.json"],
                   ["--rules", tmp_path / "rules.json"], ["--rules", "5"], ["--config", tmp_path / "numbers.json"],
                   ["--config", tmp_path / "size.json"], ["--config", tmp_path / "std.json"],
                   ["--config", tmp_path / "array.json"], ["--labels", tmp_path / "labels.txt"],
                   ["--input-size", "axb"], ["--target", "top-x"], ["--format", ","]):
        one_line_error(worker.run(["explain", model, images, "-o", out, *option]))
    assert not out.exists()


# -- 13. and 14. permissions and a quiet stderr ----------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_respect_the_umask(tmp_path, images, model, umask, mode):
    out = tmp_path / "out"
    result = subprocess.run(COMMAND + ["explain", str(model), str(images), "-o", str(out), "--format", "png,npy",
                                       "--jsonl", str(out / "run.jsonl")],
                            capture_output=True, text=True, preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    assert lines(result.stderr) == [line for line in lines(result.stderr) if line.startswith("lrptool: ")]
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_a_fifo_given_as_model_or_option_file_is_refused_without_waiting(worker, tmp_path, images, model):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for argv in (["inspect", fifo], ["convert", model, "--weights", fifo, "-o", tmp_path / "x.onnx"],
                 ["explain", model, images, "-o", tmp_path / "out", "--labels", fifo],
                 ["explain", model, images, "-o", tmp_path / "out", "--config", fifo],
                 ["evaluate", model, images, "-o", tmp_path / "ev", "--mean-file", fifo]):
        one_line_error(worker.run(argv, timeout=30), "not a regular file")


def test_a_write_error_names_the_image_and_the_run_goes_on(worker, tmp_path, model):
    inputs, out = nested_pictures(tmp_path, 5)
    (out / "sub").write_text("a file where the folder for sub/ would go")
    outcome = worker.run(["explain", model, inputs, "-o", out, "--format", "npy"])
    assert outcome.kind == "ok" and outcome.code == 1, outcome.describe()
    (problem,) = [line for line in lines(outcome.stderr) if "skipped" in line]
    assert "inner.png" in problem and "cannot write" in problem and ".lrptool-part" not in problem
    assert (out / "top.png.npy").is_file()


# -- files that are not what their names say ----------------------------------------------------------

TINY_PROTOTXT = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 3 } }
"""


def test_a_prototxt_alone_is_inspected_but_not_explained_on_zero_weights(worker, tmp_path, images):
    prototxt = tmp_path / "tiny.prototxt"
    prototxt.write_text(TINY_PROTOTXT)
    inspected = worker.run(["inspect", prototxt])
    assert inspected.code == 0 and "(N, 3)" in inspected.stdout, inspected.describe()
    for argv in (["explain", prototxt, images, "-o", tmp_path / "out"], ["evaluate", prototxt, images, "-o",
                 tmp_path / "ev"], ["convert", prototxt, "-o", tmp_path / "tiny.onnx"],
                 ["compile", prototxt, "-o", tmp_path / "explainer.onnx"]):
        one_line_error(worker.run(argv), "tiny.prototxt", "--weights", "--random-weights")
    assert not (tmp_path / "out").exists() and not (tmp_path / "tiny.onnx").exists()
    randomised = worker.run(["convert", prototxt, "--random-weights", "-o", tmp_path / "tiny.onnx"])
    assert randomised.code == 0, randomised.describe()


def test_git_lfs_pointers_and_html_pages_are_named_for_what_they_are(worker, tmp_path, model):
    pointer = tmp_path / "resnet.onnx"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 102502400\n")
    one_line_error(worker.run(["inspect", pointer]), "resnet.onnx", "Git LFS pointer", "git lfs pull")
    page = tmp_path / "model.h5"
    page.write_text("\n  <!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>…</body></html>")
    one_line_error(worker.run(["inspect", page]), "model.h5", "HTML page")
    weights = tmp_path / "net.caffemodel"
    weights.write_text("<html><body>404 Not Found</body></html>")
    prototxt = tmp_path / "tiny.prototxt"
    prototxt.write_text(TINY_PROTOTXT)
    one_line_error(worker.run(["inspect", prototxt, "--weights", weights]), "net.caffemodel", "HTML page",
                   "--weights")


def test_labels_must_match_the_outputs_and_a_stem_json_is_found_and_named(worker, tmp_path, images, model):
    (tmp_path / "nine.txt").write_text("\n".join(f"class {i}" for i in range(9)))
    one_line_error(worker.run(["explain", model, images, "-o", tmp_path / "out", "--labels", tmp_path / "nine.txt"]),
                   "nine.txt", "9 class names", "10 outputs")
    # <stem>.json beside mnist.onnx is the model's preprocessing file, and the run says it used it
    (tmp_path / "mnist.json").write_text('{"std": [0]}')
    refused = worker.run(["explain", model, images, "-o", tmp_path / "out"])
    assert refused.code == 2 and "mnist.json" in refused.stderr, refused.describe()
    (tmp_path / "mnist.json").write_text('{"preset": "mnist"}')
    used = worker.run(["explain", model, images, "-o", tmp_path / "out", "--format", "npy"])
    assert used.code == 0 and "preprocessing settings from" in used.stderr and "mnist.json" in used.stderr


def test_tf_and_imagenet_bgr_presets_by_hand():
    from lrptool.images import preprocessing_for, to_tensor

    picture = Image.fromarray(np.array([[[0, 127, 255]]], dtype=np.uint8), "RGB")
    tf = preprocessing_for((None, 3, 1, 1), "tf")
    np.testing.assert_allclose(to_tensor(picture, tf)[:, 0, 0], [-1.0, 127 / 127.5 - 1, 1.0], rtol=1e-6)
    bgr = preprocessing_for((None, 3, 1, 1), "imagenet-bgr", size=(1, 1))
    expected = [(255 / 255 - 0.406) / 0.225, (127 / 255 - 0.456) / 0.224, (0 - 0.485) / 0.229]   # B, G, R
    np.testing.assert_allclose(to_tensor(picture, bgr)[:, 0, 0], expected, rtol=1e-6)


def test_a_keras_architecture_named_like_the_model_is_not_taken_for_preprocessing(worker, tmp_path, images, model):
    (tmp_path / "mnist.json").write_text('{"class_name": "Sequential", "config": {"layers": []}}')
    outcome = worker.run(["explain", model, images, "-o", tmp_path / "out", "--format", "npy"])
    assert outcome.code == 0 and "ignored" in outcome.stderr and "mnist.json" in outcome.stderr, outcome.describe()


def test_a_note_names_the_node_that_absorbed_the_relevance(worker, tmp_path, images):
    path = tmp_path / "biased.onnx"
    bias_free_mnist(path)
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.full(10, 1e5, np.float32), "b2"))
    gemm = model.graph.node[-1]
    gemm.input.append("b2")
    onnx.save(model, str(path))
    outcome = worker.run(["explain", path, images, "-o", tmp_path / "out", "--format", "npy"])
    assert outcome.code == 0, outcome.describe()
    notes = [line for line in lines(outcome.stderr) if "absorbed the most" in line]
    assert len(notes) == 1 and "(Dense, epsilon" in notes[0] and "epsilon-nobias" in notes[0], outcome.stderr
    quiet = worker.run(["explain", path, images, "-o", tmp_path / "out2", "--format", "npy", "--method", "gradient"])
    assert quiet.code == 0 and "absorbed" not in quiet.stderr


def test_the_preprocessing_in_effect_is_said_once_and_recorded_in_every_json_line(worker, tmp_path, images, model):
    outcome = worker.run(["explain", model, images, "-o", tmp_path / "out", "--format", "npy", "--preprocess", "mnist"])
    assert outcome.code == 0, outcome.describe()
    said = [line for line in lines(outcome.stderr) if line.startswith("lrptool: preprocessing:")]
    assert said == ["lrptool: preprocessing: resized to 28x28, gray, x = (pixel · 0.00392157 − [0.0]) / [1.0]"]
    for record in strict_json_lines(outcome.stdout):
        assert record["preprocessing"] == {"size": [28, 28], "resize": "resize", "shorter": None, "channels": "gray",
                                           "scale": 1 / 255, "mean": [0.0], "std": [1.0]}
