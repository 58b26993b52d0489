"""Fuzzing `explain` and `evaluate` with odd option values and damaged or unusual pictures.

Every run must end as ``ok`` (exit 0, or 1 with one line per skipped image) or ``error`` (exit 2,
one line); nothing non-finite may be written and nothing may appear outside the output folder.
Seeded (``LRPTOOL_FUZZ_SEED``); ``LRPTOOL_FUZZ_MUTANTS`` scales the number of runs.
"""

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fuzz_support import MUTANTS, SEED, CliWorker, assert_clean, mutate_bytes, non_finite_outputs, strict_json_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "sample_models", "mnist", "mnist.onnx")
DIGITS = os.path.join(ROOT, "sample_models", "mnist", "images")
FUZZ = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck),
                max_examples=max(20, MUTANTS))

ODD_TEXT = ["", " ", "0", "-1", "1", "3", "nan", "-nan", "inf", "-inf", "1e309", "-1e309", "1e-320",
            "99999999999999999999", "x", "3x", "x3", "0x0", "28x28", "1x1", "28x28x28", "1,2", "1,2,3", ",", ",,",
            "top-", "top-0", "top-3", "top-99", "top--1", "pred", "-5", "é", "\u202e", "[1, 2]", '{"a": 1}',
            "linear=epsilon:1e-9", "first=flat,epsilon", "linear=gamma:nan", "linear=alpha-beta:1", "conv=zbox",
            "name:*=epsilon", "op:Gemm=wsquare", "nope=flat", "epsilon:0:0", "=", "linear="]
OPTIONS = {
    "--size": ODD_TEXT, "--scale": ["0", "-1", "nan", "inf", "1e-45", "1e38", "0.00392", "1"],
    "--mean": ODD_TEXT, "--std": ODD_TEXT, "--target": ODD_TEXT, "--rules": ODD_TEXT, "--preset": ODD_TEXT,
    "--format": ["png", "npy", "overlay", "png,npy,overlay", ",", "gif", ""], "--cmap": ["bwr", "hot", "x", ""],
    "--batch-size": ["1", "0", "-1", "3", "x", "100000"], "--jobs": ["1", "0", "2", "x"],
    "--resize": ["resize", "shorter-crop", "squash"], "--channels": ["rgb", "gray", "bgr", "cmyk"],
    "--preprocess": ["imagenet", "caffe", "mnist", "raw", "x"], "--input-size": ODD_TEXT,
    "--config": ["@json", "@list", "@binary", "@missing", "@folder"], "--labels": ["@binary", "@missing", "@labels"],
    "--mean-file": ["@binary", "@missing"], "--weights": ["@binary"], "--model-config": ["@json"],
}
EVALUATE_OPTIONS = {
    "--patch": ["1", "0", "-3", "28", "29", "100000", "x"], "--steps": ["1", "0", "5", "100000", "x"],
    "--order": ["morf", "lerf", "morf,lerf", "", "x", ","], "--replacement": ["uniform", "zero", "blur", "x"],
    "--methods": ["epsilon", "gradient,random", "x", "", ",", "epsilon-gamma-box,smoothgrad"],
    "--seed": ["0", "-1", "x", "99999999999999999999"], "--target": ODD_TEXT,
    "--std": ODD_TEXT, "--mean": ODD_TEXT, "--scale": ["0", "nan", "inf", "1"],
}


@pytest.fixture(scope="module")
def worker():
    with CliWorker(timeout=120) as running:
        yield running


def odd_files(folder):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"preset": "mnist", "std": [0.5], "size": [28, 28]}')
    (folder / "list.json").write_text("[1, 2, 3]")
    (folder / "binary").write_bytes(bytes(range(256)) * 4)
    (folder / "labels.txt").write_text("\n".join(f"digit {i}" for i in range(10)))
    (folder / "dir").mkdir(exist_ok=True)
    return {"@json": folder / "config.json", "@list": folder / "list.json", "@binary": folder / "binary",
            "@missing": folder / "missing", "@folder": folder / "dir", "@labels": folder / "labels.txt"}


def snapshot(folder, skip):
    return sorted(os.path.relpath(os.path.join(p, f), folder) for p, _, files in os.walk(folder)
                  if not p.startswith(str(skip)) for f in files)


def check_run(outcome, out, json_stdout=True):
    assert_clean([outcome])
    bad = non_finite_outputs(out)
    assert not bad, (outcome.describe(), bad)
    if json_stdout:
        strict_json_lines(outcome.stdout)


@FUZZ
@given(st.data())
def test_explain_with_odd_options(worker, tmp_path_factory, data):
    base = tmp_path_factory.mktemp("options")
    files = odd_files(base / "files")
    out = base / "out"
    chosen = data.draw(st.lists(st.sampled_from(sorted(OPTIONS)), min_size=1, max_size=4, unique=True))
    argv = ["explain", MODEL, DIGITS, "-o", out]
    for option in chosen:
        value = data.draw(st.sampled_from(OPTIONS[option]))
        argv += [option, str(files.get(value, value))]
    before = snapshot(base, out)
    outcome = worker.run(argv, label="options explain", cwd=str(base))
    check_run(outcome, out)
    assert snapshot(base, out) == before, "files appeared outside the output folder"


@settings(FUZZ, max_examples=max(10, MUTANTS // 4))
@given(st.data())
def test_evaluate_with_odd_options(worker, tmp_path_factory, data):
    base = tmp_path_factory.mktemp("evaluate")
    out = base / "out"
    chosen = data.draw(st.lists(st.sampled_from(sorted(EVALUATE_OPTIONS)), min_size=1, max_size=3, unique=True))
    argv = ["evaluate", MODEL, DIGITS, "-o", out, "--steps", "3"]
    for option in chosen:
        argv += [option, data.draw(st.sampled_from(EVALUATE_OPTIONS[option]))]
    outcome = worker.run(argv, label="options evaluate", cwd=str(base))
    check_run(outcome, out, json_stdout=False)


# -- pictures ------------------------------------------------------------------------------------

def picture_bytes(kind, rng):
    """An unusual but well-formed picture of the given kind."""
    size = (int(rng.integers(1, 64)), int(rng.integers(1, 64)))
    buffer = io.BytesIO()
    if kind == "16-bit":
        Image.fromarray(rng.integers(0, 65536, size[::-1], dtype=np.uint16)).save(buffer, "PNG")
    elif kind == "float":
        Image.fromarray(rng.random(size[::-1]).astype(np.float32) * float(rng.choice([1, 255, 1e6])), "F") \
            .save(buffer, "TIFF")
    elif kind == "int32":
        Image.fromarray(rng.integers(-5, 70000, size[::-1], dtype=np.int32), "I").save(buffer, "TIFF")
    elif kind == "cmyk":
        Image.new("CMYK", size, (10, 200, 30, 4)).save(buffer, "JPEG")
    elif kind == "palette":
        Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8), "L").convert("P").save(buffer, "GIF")
    elif kind == "animated":
        frames = [Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3))) for _ in range(3)]
        frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    elif kind == "la":
        Image.new("LA", size, (100, 20)).save(buffer, "PNG")
    elif kind == "bilevel":
        Image.new("1", size, 1).save(buffer, "BMP")
    else:
        Image.fromarray(rng.integers(0, 255, size[::-1] + (3,), dtype=np.uint8), "RGB").save(buffer, "WEBP")
    return buffer.getvalue()


KINDS = ["16-bit", "float", "int32", "cmyk", "palette", "animated", "la", "bilevel", "webp"]
EXTENSIONS = [".png", ".jpg", ".tif", ".gif", ".bmp", ".webp"]


@settings(FUZZ, max_examples=max(10, MUTANTS // 2))
@given(st.data())
def test_explain_on_damaged_and_unusual_pictures(worker, tmp_path_factory, data):
    base = tmp_path_factory.mktemp("pictures")
    folder = base / "in"
    folder.mkdir()
    rng = np.random.default_rng([SEED, data.draw(st.integers(0, 2 ** 32 - 1))])
    originals = [os.path.join(DIGITS, name) for name in sorted(os.listdir(DIGITS))]
    count = 4
    for index in range(count):
        if data.draw(st.booleans()):
            payload = picture_bytes(data.draw(st.sampled_from(KINDS)), rng)
        else:
            with open(originals[index % len(originals)], "rb") as handle:
                payload = handle.read()
        for _ in range(data.draw(st.integers(0, 3))):
            payload = mutate_bytes(payload, rng)
        (folder / f"p{index}{data.draw(st.sampled_from(EXTENSIONS))}").write_bytes(payload)
    out = base / "out"
    formats = data.draw(st.sampled_from(["png,npy,overlay", "npy"]))
    outcome = worker.run(["explain", MODEL, folder, "-o", out, "--format", formats, "--jsonl", out / "run.jsonl"],
                         label="images explain")
    check_run(outcome, out)
    records = strict_json_lines((out / "run.jsonl").read_text()) if (out / "run.jsonl").exists() else []
    skipped = [line for line in outcome.stderr.splitlines() if line.startswith("lrptool: skipped ")]
    assert len(records) + len(skipped) == count, outcome.describe()
