"""When relevance vanishes: on a MobileNet-style block whose folded depthwise BatchNorm keeps units on
with a positive bias, z⁺ hands their relevance to the bias; the note of `lrptool explain` measures
bias-free alternatives on the image and names the one that keeps the most."""

import subprocess
import sys

import numpy as np
from PIL import Image

from absorption_support import depthwise_block, inactive_input_share, inputs, kept_share
from converters.onnx_writer import write_onnx
from lrptool.lrp import Explainer
from lrptool.lrp.advice import best_alternative, without_bias
from lrptool.lrp.presets import parse_rule


def test_the_folded_bias_takes_the_relevance_of_units_without_positive_input():
    graph, x = depthwise_block(), inputs(2)
    assert inactive_input_share(graph, x) > 0.4
    assert np.all(kept_share(graph, "epsilon-plus", x) < 0.1)
    assert np.all(kept_share(graph, "conv=gamma-nobias:0.25,epsilon-plus", x) > 0.5)


def test_the_best_alternative_is_measured_and_the_compiled_explainer_agrees():
    graph, x = depthwise_block(), inputs(1)
    explainer = Explainer(graph, "epsilon-plus", bounds=(-1.0, 1.0), dtype=np.float64, compiled=False, quiet=True)
    explanation = explainer.explain(x)
    kept = explanation.relevance.sum() / explanation.scores[0]
    worst = max(explanation.report.nodes, key=lambda node: abs(node.absorbed))
    assert worst.node == "depthwise"
    spec, share = best_alternative(explainer, x, explanation.targets, worst, kept)
    assert spec == "conv=gamma-nobias:0.25,epsilon-plus" and share > kept
    # the same rule map through the compiled float32 explainer: the share the advice names
    compiled = Explainer(graph, spec, bounds=(-1.0, 1.0), compiled=True, quiet=True)
    result = compiled.explain(x.astype(np.float32), target=explanation.targets)
    assert abs(result.relevance.sum() / result.scores[0] - share) < 1e-4


def test_every_rule_with_a_bias_has_a_bias_free_spelling():
    for text, plain in [("epsilon:0.25", "epsilon-nobias:0.25"), ("zplus", "zplus-nobias"),
                        ("gamma:0.5", "gamma-nobias:0.5"), ("alpha-beta:2:1", "alpha-beta-nobias:2:1"),
                        ("alpha-beta-fullbias:1:0", "alpha-beta-nobias:1:0"), ("wsquare", "wsquare-nobias"),
                        ("zplus-nobias", None), ("flat", None)]:
        assert without_bias(parse_rule(text)) == plain, text
        if plain:
            assert parse_rule(plain).name.endswith("-nobias"), plain


def test_explain_names_what_keeps_more(tmp_path):
    model = tmp_path / "block.onnx"
    write_onnx(depthwise_block(), str(model))
    folder = tmp_path / "pictures"
    folder.mkdir()
    pixels = np.random.default_rng(4).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(folder / "noise.png")
    result = subprocess.run([sys.executable, "-m", "lrptool.cli", "explain", str(model), str(folder), "-o",
                             str(tmp_path / "out"), "--format", "npy", "--preprocess", "tf", "--preset",
                             "epsilon-plus"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "absorbed the most" in line]
    assert len(notes) == 1, result.stderr
    assert "'depthwise' (Conv, zplus)" in notes[0]
    assert "--rules 'conv=gamma-nobias:0.25,epsilon-plus' keeps" in notes[0], notes[0]
