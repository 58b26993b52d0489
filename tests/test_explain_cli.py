"""`lrptool explain` end to end: the installed command on real folders, pipelines, kills and resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

COMMAND = [sys.executable, "-m", "lrptool.cli"]


def bias_free_mnist(path, seed=0):
    """A small MNIST-shaped CNN without biases: with the LRP-0 rule, Σ R_input = the logit."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 5, 5)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, (10, 4 * 12 * 12)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mnist", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def run(*args, stdin=None, cwd=None):
    return subprocess.run(COMMAND + [str(a) for a in args], input=stdin, capture_output=True, text=True, cwd=cwd)


def digit(rng, size=(28, 28)):
    return (rng.random(size) * 255).astype(np.uint8)


@pytest.fixture()
def tree(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "c" / "deep").mkdir(parents=True)
    Image.fromarray(digit(rng), "L").save(root / "a" / "digit.png")                      # grayscale PNG
    Image.fromarray(digit(rng), "L").save(root / "a" / "digit.jpg", quality=95)          # same stem, other type
    rgba = np.dstack([digit(rng)] * 3 + [np.full((28, 28), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "b" / "digit.png")                         # RGBA, same name
    Image.fromarray(np.dstack([digit(rng, (30, 40))] * 3), "RGB").save(root / "c" / "deep" / "wide.png")
    good = (root / "a" / "digit.jpg").read_bytes()
    (root / "b" / "corrupt.jpg").write_bytes(good[: len(good) // 3])                     # truncated JPEG
    (root / "notes.txt").write_text("not an image")
    return root


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def model_logits(model, picture_path):
    """onnxruntime on the preprocessed picture (grayscale, resized to 28x28, pixels 0–255)."""
    with Image.open(picture_path) as image:
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(white, image).convert("L").resize((28, 28), Image.BILINEAR)
    x = np.asarray(picture, dtype=np.float32)[None, None]
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0][0]


def test_explains_a_nested_folder_and_reports_the_bad_image(tmp_path, tree):
    model = bias_free_mnist(tmp_path / "mnist.onnx")
    out = tmp_path / "out"
    result = run("explain", model, tree, "-o", out, "--format", "png,overlay,npy", "--preset", "zero")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "corrupt.jpg" in result.stderr and "Traceback" not in result.stderr
    assert lines[-1].endswith("1 failed") and "explained 4 image(s)" in lines[-1]
    records = {os.path.relpath(r["path"], tree): r for r in json_lines(result.stdout)}
    assert sorted(records) == ["a/digit.jpg", "a/digit.png", "b/digit.png", "c/deep/wide.png"]
    for relative, record in records.items():
        stem = out / relative
        files = [f"{stem}.heatmap.png", f"{stem}.overlay.png", f"{stem}.npy"]
        assert record["files"] == files
        with Image.open(files[0]) as heatmap, Image.open(files[1]) as overlay, Image.open(tree / relative) as picture:
            assert heatmap.size == (28, 28) and heatmap.mode == "RGB"
            assert overlay.size == picture.size and overlay.mode == "RGB"   # on the original picture
        relevance = np.load(files[2])
        assert relevance.shape == (1, 28, 28) and relevance.dtype == np.float32
        logits = model_logits(model, tree / relative)
        assert record["target"] == int(np.argmax(logits))
        assert record["score"] == pytest.approx(float(logits.max()), rel=1e-4)
        assert float(relevance.sum(dtype=np.float64)) == pytest.approx(float(logits.max()), rel=1e-4)
    leftovers = [f for _, _, files in os.walk(out) for f in files if f.startswith(".lrptool-part-")]
    assert not leftovers


def test_pipeline_from_find_with_json_lines(tmp_path, tree):
    model = bias_free_mnist(tmp_path / "mnist.onnx")
    out = tmp_path / "piped"
    command = f"find {tree} -name '*.png' | {sys.executable} -m lrptool.cli explain {model} - -o {out} --format npy"
    result = subprocess.run(command, shell=True, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    assert sorted(os.path.basename(r["path"]) for r in records) == ["digit.png", "digit.png", "wide.png"]
    for record in records:
        assert np.load(record["files"][0]).shape == (1, 28, 28)


def test_list_lines_carry_targets_and_top_k_writes_each_rank(tmp_path, tree):
    model = bias_free_mnist(tmp_path / "mnist.onnx")
    listing = f"{tree / 'a' / 'digit.png'}\t3\n{tree / 'b' / 'digit.png'}\t7\n"
    result = run("explain", model, "-", "-o", tmp_path / "listed", "--format", "npy", stdin=listing)
    assert result.returncode == 0, result.stderr
    assert [r["target"] for r in json_lines(result.stdout)] == [3, 7]
    ranked = run("explain", model, tree / "a", "-o", tmp_path / "ranked", "--format", "png", "--target", "top-2",
                 "--labels", write_labels(tmp_path))
    assert ranked.returncode == 0, ranked.stderr
    records = json_lines(ranked.stdout)
    assert sorted((os.path.basename(r["path"]), r["rank"]) for r in records) == [
        ("digit.jpg", 1), ("digit.jpg", 2), ("digit.png", 1), ("digit.png", 2)]
    assert all(r["label"] == f"class {r['target']}" for r in records)
    assert all(f".top{r['rank']}.heatmap.png" in r["files"][0] and os.path.isfile(r["files"][0]) for r in records)


def write_labels(folder):
    path = folder / "labels.txt"
    path.write_text("\n".join(f"class {i}" for i in range(10)))
    return path


def test_a_killed_run_leaves_whole_files_and_resume_redoes_nothing(tmp_path):
    model = bias_free_mnist(tmp_path / "mnist.onnx")
    images = tmp_path / "many"
    images.mkdir()
    rng = np.random.default_rng(2)
    for index in range(400):
        Image.fromarray(digit(rng), "L").save(images / f"img{index:03d}.png")
    out = tmp_path / "out"
    records = tmp_path / "run.jsonl"
    process = subprocess.Popen(COMMAND + ["explain", str(model), str(images), "-o", str(out), "--format",
                                          "png,npy", "--batch-size", "4", "--jsonl", str(records)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("*.npy"))) < 20:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    written = sorted(p for p in out.iterdir() if not p.name.startswith(".lrptool-manifest"))
    assert not [p for p in written if p.name.startswith(".lrptool-part-")]
    finished = [p for p in written if p.suffix == ".npy"]
    assert 20 <= len(finished) < 400
    for path in written:
        if path.suffix == ".npy":
            assert np.load(path).shape == (1, 28, 28)
        else:
            with Image.open(path) as image:
                image.load()
    before = json_lines(records.read_text())
    committed = {json.loads(line)["record"]["path"] for line in (out / ".lrptool-manifest.jsonl").read_text().splitlines()}
    assert {r["path"] for r in before} <= committed
    stamps = {p: p.stat().st_mtime_ns for p in written}
    resumed = run("explain", model, images, "-o", out, "--format", "png,npy", "--resume", "--jsonl", records)
    assert resumed.returncode == 0, resumed.stderr
    # the same --jsonl is continued: one record per image in all, none lost, none twice
    after = json_lines(records.read_text())
    assert sorted(r["path"] for r in after) == sorted(str(p) for p in images.iterdir())
    assert after[:len(before)] == before
    # what the manifest proves finished is not touched again; everything else is (re)done
    for path, stamp in stamps.items():
        source = str(images / path.name.removesuffix(".npy").removesuffix(".heatmap.png"))
        if source in committed:
            assert path.stat().st_mtime_ns == stamp, path
    assert len(list(out.glob("*.npy"))) == 400 and len(list(out.glob("*.heatmap.png"))) == 400


def test_bad_options_are_one_line_errors(tmp_path, tree):
    model = bias_free_mnist(tmp_path / "mnist.onnx")
    for args, fragment in ((["--format", "gif"], "--format"), (["--cmap", "rainbow"], "--cmap"),
                           (["--target", "best"], "--target"), (["--preprocess", "nope"], "preprocessing preset"),
                           (["--size", "32x32"], "28x28")):
        result = run("explain", model, tree, "-o", tmp_path / "x", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr
    missing = run("explain", tmp_path / "nope.onnx", tree, "-o", tmp_path / "x")
    assert missing.returncode == 2 and "nope.onnx" in missing.stderr
    absent = run("explain", model, tmp_path / "absent.png", "-o", tmp_path / "y")
    assert absent.returncode == 1 and "absent.png" in absent.stderr


def test_resume_clears_parts_a_hard_kill_left_behind(tmp_path, tree):
    model = bias_free_mnist(tmp_path / "mnist.onnx")
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    stale = out / "a" / ".lrptool-part-abc123"
    stale.write_bytes(b"half a PNG")
    result = run("explain", model, tree / "a", "-o", out, "--format", "npy", "--resume")
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert sorted(p.name for p in out.glob("*.npy")) == ["digit.jpg.npy", "digit.png.npy"]
    assert len(json_lines(result.stdout)) == 2


def test_an_interrupt_inside_compiled_code_stops_the_run(tmp_path, tree):
    """A signal that lands inside a Numba kernel comes back as SystemError; with the stop flag set, the
    run ends as interrupted instead of counting the batch as failed images."""
    from lrptool import explain_folder
    from lrptool.images import preprocessing_for

    class Interrupted:
        def explain(self, x, target=None):
            explain_folder.STOP.set()
            raise SystemError("returned a result with an exception set")

    pre = preprocessing_for((None, 1, 28, 28), "raw")
    runner = explain_folder.FolderExplainer(Interrupted(), pre, str(tmp_path / "out"), ("npy",))
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run([(str(tree / "a" / "digit.png"), None)])
        assert not runner.failures
    finally:
        explain_folder.STOP.clear()


@pytest.mark.parametrize("formats, kept", [(("npy",), 0), (("npy", "html"), 4)])
def test_the_manifest_keeps_records_in_memory_only_for_the_page(tmp_path, formats, kept):
    from lrptool import explain_folder
    from lrptool.images import preprocessing_for
    from lrptool.lrp import Explainer
    from converters import load_model

    model = bias_free_mnist(tmp_path / "mnist.onnx")
    rng = np.random.default_rng(4)
    (tmp_path / "in").mkdir()
    for index in range(4):
        Image.fromarray(digit(rng)).save(tmp_path / "in" / f"d{index}.png")
    graph = load_model(str(model))
    pre = preprocessing_for(graph.inputs["x"])

    def run_once(resume):
        runner = explain_folder.FolderExplainer(Explainer(graph, quiet=True), pre, str(tmp_path / "out"), formats,
                                                resume=resume, jsonl=open(os.devnull, "w"))
        runner.run([(str(p), None) for p in sorted((tmp_path / "in").iterdir())])
        return runner

    first = run_once(False)
    assert first.explained == 4 and len(first.manifest.entries) == kept
    lines = (tmp_path / "out" / ".lrptool-manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4
    again = run_once(True)
    assert again.resumed == 4 and again.explained == 0 and len(again.manifest.entries) == kept
