"""Region perturbation and AOPC: the mechanics on hand-built models, and Samek et al.'s result on MNIST."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from converters import load_model
import lrptool.evaluate
from lrptool.evaluate import (box_blur, default_setting, evaluate_methods, perturbation_curves, region_ranking,
                              replacement_values, summary)
from lrptool.graph import Graph, Node

from conftest import shared_models


def linear_model(weights):
    """f(x) = Σ w·x over a (1, 4, 4) image."""
    return Graph({"x": (None, 1, 4, 4)}, [Node("flat", "Flatten", ["x"], ["f"]),
                                          Node("dense", "Dense", ["f"], ["y"], {}, {"weight": weights.reshape(1, 16)})],
                 ["y"])


def linear_score(weights):
    def score(batch, targets):
        return batch.reshape(len(batch), -1) @ weights.reshape(-1)
    return score


def test_morf_and_lerf_curves_of_a_linear_model_follow_the_contributions():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4))
    x = rng.uniform(0.5, 1.5, size=(3, 1, 4, 4))
    contributions = w * x[:, 0]                         # exact relevance of a linear model
    # 2x2 regions in reading order: rows 0-1/cols 0-1, rows 0-1/cols 2-3, rows 2-3/cols 0-1, rows 2-3/cols 2-3
    region_sums = contributions.reshape(3, 2, 2, 2, 2).sum(axis=(2, 4)).reshape(3, 4)
    curves = perturbation_curves(linear_score(w), x, np.zeros(3, int), {"exact": contributions[:, None]}, patch=2,
                                 steps=4, orders=("morf", "lerf"), replacement="zero")
    f0 = contributions.sum(axis=(1, 2))
    for order, sign in (("morf", -1), ("lerf", 1)):
        ordered = np.sort(sign * region_sums, axis=1) * sign   # largest first for MoRF
        expected = f0[None, :] - np.vstack([np.zeros(3), np.cumsum(ordered, axis=1).T])
        np.testing.assert_allclose(curves.scores["exact", order], expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(curves.aopc("exact", order), np.mean(f0[None] - expected, axis=0))
    table = summary(curves)
    assert table["morf"][0]["aopc"] >= table["lerf"][0]["aopc"]


def test_region_ranking_orders_and_ties():
    relevance = np.zeros((1, 2, 4, 6))
    relevance[0, 0, 0:2, 4:6] = 3.0        # region 2
    relevance[0, 1, 2:4, 0:2] = 1.0        # region 3
    relevance[0, 0, 2:4, 2:4] = -2.0       # region 4
    assert list(region_ranking(relevance, 2, "morf")[0]) == [2, 3, 0, 1, 5, 4]
    assert list(region_ranking(relevance, 2, "lerf")[0]) == [4, 0, 1, 5, 3, 2]


def test_replacements():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 5, 5))
    low, high = np.array([-1.0, 0.0, 2.0]).reshape(3, 1, 1), np.array([1.0, 0.5, 3.0]).reshape(3, 1, 1)
    noise = replacement_values(x, "uniform", (low, high), 2, np.random.default_rng(7))
    assert np.all(noise >= low) and np.all(noise <= high)
    np.testing.assert_array_equal(noise, replacement_values(x, "uniform", (low, high), 2, np.random.default_rng(7)))
    np.testing.assert_allclose(replacement_values(x, "mean", None, 2, rng)[:, :, 0, 0], x.mean(axis=(2, 3)))
    assert not replacement_values(x, "zero", None, 2, rng).any()
    blurred = box_blur(x, 3)
    np.testing.assert_allclose(blurred[0, 0, 2, 2], x[0, 0, 1:4, 1:4].mean())
    np.testing.assert_allclose(blurred[0, 0, 0, 0], x[0, 0, 0:2, 0:2].mean())


def test_batched_curves_equal_a_one_image_at_a_time_loop():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 4))
    x = rng.uniform(0, 1, size=(4, 1, 4, 4))
    relevances = {"a": rng.normal(size=x.shape), "b": rng.normal(size=x.shape)}
    curves = perturbation_curves(linear_score(w), x, np.zeros(4, int), relevances, patch=2, steps=3,
                                 orders=("morf",), replacement="uniform", seed=5, batch_size=3)
    # each image's replacement values come from its own generator, seeded with (seed, image index)
    values = np.concatenate([replacement_values(x[i:i + 1], "uniform", (0.0, 1.0), 2, np.random.default_rng([5, i]))
                             for i in range(4)])
    for method, relevance in relevances.items():
        for i in range(4):
            image = x[i].copy()
            ranking = region_ranking(relevance[i:i + 1], 2, "morf")[0]
            for step in range(1, 4):
                row, col = divmod(ranking[step - 1], 2)
                image[:, row * 2:row * 2 + 2, col * 2:col * 2 + 2] = values[i, :, row * 2:row * 2 + 2, col * 2:col * 2 + 2]
                assert curves.scores[method, "morf"][step, i] == pytest.approx(float((image[0] * w).sum()))


# Two 2x2 one-channel images under f(x) = x11 + x12 + x21 + x22, pixels (patch 1) set to 0, two steps.
# Image A = [[1, 2], [3, 4]], f = 10. MoRF removes 4, then 3: scores 10, 6, 3, AOPC = (0 + 4 + 7)/3 = 11/3.
#   LeRF removes 1, then 2: scores 10, 9, 7, AOPC = (0 + 1 + 3)/3 = 4/3.
# Image B = [[2, 0], [0, 0]], f = 2. MoRF removes 2, then a 0: scores 2, 0, 0, AOPC = 4/3.
#   LeRF removes two 0s: scores 2, 2, 2, AOPC = 0.
HAND_A = np.array([[1.0, 2.0], [3.0, 4.0]])
HAND_B = np.array([[2.0, 0.0], [0.0, 0.0]])


def test_aopc_raw_and_relative_by_hand():
    x = np.stack([HAND_A, HAND_B])[:, None]
    curves = perturbation_curves(linear_score(np.ones(4)), x, np.zeros(2, int), {"exact": x.copy()}, patch=1, steps=2,
                                 orders=("morf", "lerf"), replacement="zero")
    np.testing.assert_allclose(curves.scores["exact", "morf"], [[10, 2], [6, 0], [3, 0]])
    np.testing.assert_allclose(curves.scores["exact", "lerf"], [[10, 2], [9, 2], [7, 2]])
    table = summary(curves)
    morf, lerf = table["morf"][0], table["lerf"][0]
    assert morf["aopc"] == pytest.approx((11 / 3 + 4 / 3) / 2)           # 5/2
    assert morf["sem"] == pytest.approx(7 / 6)                          # |11/3 − 4/3| / √2 / √2
    assert lerf["aopc"] == pytest.approx((4 / 3 + 0) / 2)               # 2/3
    # relative: the mean AOPC over the mean unperturbed score (10 + 2)/2 = 6
    assert morf["relative_aopc"] == pytest.approx(5 / 12)
    assert morf["relative_sem"] == pytest.approx(7 / 36)
    assert lerf["relative_aopc"] == pytest.approx(1 / 9)


def test_relative_aopc_is_left_out_when_the_mean_score_is_not_positive():
    x = -np.stack([HAND_A, HAND_B])[:, None]
    curves = perturbation_curves(linear_score(np.ones(4)), x, np.zeros(2, int), {"exact": x.copy()}, patch=1, steps=2,
                                 replacement="zero")
    row = summary(curves)["morf"][0]
    assert row["relative_aopc"] is None and row["relative_sem"] is None and np.isfinite(row["aopc"])


def hand_model():
    return Graph({"x": (None, 1, 2, 2)}, [Node("flat", "Flatten", ["x"], ["f"]),
                                          Node("dense", "Dense", ["f"], ["y"], {}, {"weight": np.ones((1, 4))})],
                 ["y"])


def test_images_stream_through_in_bounded_batches(monkeypatch):
    """Five images (A, B, A, B, A) taken lazily, two at a time: never more than two images are
    taken ahead of the finished ones, every scored batch holds at most two, and the AOPC is the
    hand-derived one whatever the batch size."""
    scored = []
    make_scorer = lrptool.evaluate.onnxruntime_scorer

    def recording_scorer(graph):
        score = make_scorer(graph)

        def recorded(batch, targets):
            scored.append(len(batch))
            return score(batch, targets)
        recorded.outputs = score.outputs
        return recorded
    monkeypatch.setattr(lrptool.evaluate, "onnxruntime_scorer", recording_scorer)
    images = [HAND_A, HAND_B, HAND_A, HAND_B, HAND_A]
    done, ahead = [0], []

    def stream():
        for taken, image in enumerate(images, start=1):
            ahead.append(taken - done[0])
            yield image[None].astype(np.float32)

    def progress(count):
        done[0] += count
    tally, table, dropped = evaluate_methods(hand_model(), stream(), ["epsilon"], patch=1, steps=2,
                                             orders=("morf", "lerf"), replacement="zero", batch_size=2,
                                             progress=progress)
    assert max(ahead) == 2 and done[0] == 5 and dropped == []
    assert scored and max(scored) <= 2
    rows = {(order, row["method"]): row for order in table for row in table[order]}
    assert tally.images == 5
    assert rows["morf", "epsilon"]["aopc"] == pytest.approx((3 * 11 / 3 + 2 * 4 / 3) / 5)
    assert rows["lerf", "epsilon"]["aopc"] == pytest.approx((3 * 4 / 3 + 0) / 5)
    assert rows["morf", "epsilon"]["relative_aopc"] == pytest.approx((41 / 15) / (34 / 5))
    whole, whole_table, _ = evaluate_methods(hand_model(), np.stack(images)[:, None].astype(np.float32), ["epsilon"],
                                             patch=1, steps=2, orders=("morf", "lerf"), replacement="uniform",
                                             batch_size=5)
    split, split_table, _ = evaluate_methods(hand_model(), np.stack(images)[:, None].astype(np.float32), ["epsilon"],
                                             patch=1, steps=2, orders=("morf", "lerf"), replacement="uniform",
                                             batch_size=2)
    for order in ("morf", "lerf"):
        np.testing.assert_allclose(whole.curves["epsilon", order].mean, split.curves["epsilon", order].mean,
                                   rtol=1e-6)
        np.testing.assert_allclose(whole.curves["epsilon", order].std(), split.curves["epsilon", order].std(),
                                   rtol=1e-5, atol=1e-6)
        assert whole.aopc["epsilon", order].sem() == pytest.approx(split.aopc["epsilon", order].sem(), rel=1e-6)


def test_default_setting_scales_the_published_one():
    assert default_setting(224, 224) == (9, 100)          # Samek et al. 2017: 9x9 regions, 100 steps
    assert default_setting(28, 28) == (1, 127)            # 127 of 784 pixels: 16.2 %, as 8100 of 50176
    assert default_setting(227, 227) == (9, 103)
    patch, steps = default_setting(299, 299)
    assert patch == 12 and abs(steps * patch ** 2 / 299 ** 2 - 8100 / 224 ** 2) < 0.002
    assert default_setting(3, 3) == (1, 1)


def mnist_digits():
    path = shared_models() / "keras/dl4j-2018/modelimport/keras/examples/mnist_mlp/mnist_mlp_tf_keras_2_inputs_and_outputs.h5"
    with h5py.File(path, "r") as data:
        return data["inputs/dense_1_input"][()].reshape(-1, 1, 28, 28).astype(np.float32)


def test_lrp_beats_sensitivity_and_random_on_real_mnist_digits():
    """Samek et al. (2017): under MoRF, LRP's AOPC exceeds sensitivity's and random's. On MNIST the
    removed regions are set to the background value 0: uniform noise would add ink where the digit
    has none, which no input-proportional explanation can rank."""
    graph = load_model(shared_models() / "onnx/mnist-zoo-opset8/mnist.onnx")
    x = mnist_digits()
    assert len(x) == 100
    presets = ["epsilon-plus-flat", "epsilon-plus", "epsilon", "epsilon-alpha2-beta1"]
    _, table, _ = evaluate_methods(graph, x, presets + ["sensitivity"], patch=4, steps=20, orders=("morf",),
                                   replacement="zero", bounds=(0.0, 1.0), batch_size=64)
    rows = {row["method"]: row for row in table["morf"]}
    for preset in presets:
        for baseline in ("sensitivity", "random"):
            gap = rows[preset]["aopc"] - rows[baseline]["aopc"]
            error = np.hypot(rows[preset]["sem"], rows[baseline]["sem"])
            assert gap > 3 * error, (preset, baseline, gap, error)
    assert rows["sensitivity"]["aopc"] > rows["random"]["aopc"]


def test_evaluate_command_writes_the_report(tmp_path):
    digits = tmp_path / "digits"
    digits.mkdir()
    for index, image in enumerate(mnist_digits()[:12]):
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(digits / f"{index:02d}.png")
    (digits / "broken.png").write_bytes(b"not a png")
    model = shared_models() / "onnx/mnist-zoo-opset8/mnist.onnx"
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "lrptool.cli", "evaluate", str(model), str(digits), "-o", str(out),
                             "--methods", "epsilon,gradient", "--preprocess", "mnist", "--steps", "5",
                             "--replacement", "zero"], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr          # the broken picture
    assert "broken.png" in result.stderr
    report = json.loads((out / "summary.json").read_text())
    assert report["settings"]["images"] == 12
    for order in ("morf", "lerf"):
        rows = report["aopc"][order]
        assert {r["method"] for r in rows} == {"epsilon", "gradient", "random"}
        assert [r["rank"] for r in rows] == [1, 2, 3]
        # MoRF: the largest AOPC is best; LeRF: the smallest (the score holds when little is removed)
        aopcs = [r["aopc"] for r in rows]
        assert aopcs == sorted(aopcs, reverse=order == "morf")
    lines = (out / "curves.csv").read_text().splitlines()
    assert lines[0] == "method,order,step,mean_score,std,sem" and len(lines) == 1 + 3 * 2 * 6
    with Image.open(out / "curves.png") as plot:
        assert plot.size[0] > 600


def test_evaluate_defaults_to_the_published_setting_and_reports_relative_aopc(tmp_path):
    digits = tmp_path / "digits"
    digits.mkdir()
    for index, image in enumerate(mnist_digits()[:3]):
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(digits / f"{index:02d}.png")
    model = shared_models() / "onnx/mnist-zoo-opset8/mnist.onnx"
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "lrptool.cli", "evaluate", str(model), str(digits), "-o", str(out),
                             "--methods", "gradient", "--preprocess", "mnist", "--order", "morf"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "regions" in line]
    assert len(said) == 1 and "1x1 regions, 127 steps (16.2% of the 28x28 input)" in said[0], result.stderr
    assert "Samek" in said[0]
    assert "1x1 regions, 127 steps" in result.stdout.splitlines()[0]
    report = json.loads((out / "summary.json").read_text())
    settings = report["settings"]
    assert (settings["patch"], settings["steps"], settings["published_setting"]) == (1, 127, True)
    lines = (out / "curves.csv").read_text().splitlines()
    first_steps = [line.split(",") for line in lines[1:] if line.split(",")[2] == "0"]
    # step 0 is the unperturbed image: its mean score is the mean unperturbed score
    assert float(first_steps[0][3]) == pytest.approx(settings["mean_unperturbed_score"], rel=1e-6)
    for row in report["aopc"]["morf"]:
        assert row["relative_aopc"] == pytest.approx(row["aopc"] / settings["mean_unperturbed_score"])
    explicit = subprocess.run([sys.executable, "-m", "lrptool.cli", "evaluate", str(model), str(digits), "-o",
                               str(out), "--methods", "gradient", "--preprocess", "mnist", "--order", "morf",
                               "--patch", "4", "--steps", "3"], capture_output=True, text=True)
    assert explicit.returncode == 0, explicit.stderr
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert (settings["patch"], settings["steps"], settings["published_setting"]) == (4, 3, False)
