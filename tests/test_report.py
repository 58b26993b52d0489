"""The HTML report and the comparison grids of `lrptool explain`: what the page shows in a real
(headless) browser, and what the grid PNGs hold."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from browser_support import browser
from lrptool.grid import GAP, layout_for, line_height
from lrptool.report import PAGE_SIZE, render_page
from test_explain_cli import bias_free_mnist, json_lines, run

PICTURES = 5


def noise_pictures(folder, count, seed, sizes=((28, 28),)):
    """``count`` grey noise pictures d0.png, d1.png, … in ``folder`` (created), sizes (w, h) in turn."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        Image.fromarray((rng.random((height, width)) * 255).astype(np.uint8), "L").save(folder / f"d{index}.png")
    return folder


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """Five pictures explained with two methods, top-2 classes, every picture format and the page."""
    root = tmp_path_factory.mktemp("report")
    model = bias_free_mnist(root / "mnist.onnx")
    images = noise_pictures(root / "images", PICTURES, 5, sizes=((40, 30), (28, 28)))
    labels = root / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    out = root / "out"
    result = run("explain", model, images, "-o", out, "--format", "png,overlay,grid,html", "--labels", labels,
                 "--preset", "zero,gradient", "--target", "top-2")
    assert result.returncode == 0, result.stderr
    return root, out, json_lines(result.stdout)


def test_several_methods_and_classes_give_one_column_each(explained):
    root, out, records = explained
    assert len(records) == PICTURES * 4
    columns = {(r["method"], r["rank"]) for r in records}
    assert columns == {("zero", 1), ("zero", 2), ("gradient", 1), ("gradient", 2)}
    by_path = {}
    for record in records:
        by_path.setdefault(record["path"], {})[(record["method"], record["rank"])] = record
    for path, found in by_path.items():
        # every method explains the same classes: the first method's top two
        assert found["zero", 1]["target"] == found["gradient", 1]["target"]
        assert found["zero", 2]["target"] == found["gradient", 2]["target"]
        assert found["zero", 1]["score"] >= found["zero", 2]["score"]
        assert found["zero", 1]["label"] == f"digit {found['zero', 1]['target']}"


def test_grid_columns_titles_and_size(explained):
    root, out, records = explained
    for index in range(PICTURES):
        grid_path = out / f"d{index}.png.grid.png"
        with Image.open(grid_path) as grid, Image.open(root / "images" / f"d{index}.png") as picture:
            titles = json.loads(grid.text["lrptool-columns"])
            assert len(titles) == 5 and titles[0] == "input"
            mine = {(r["method"], r["rank"]): r for r in records if r["path"].endswith(f"d{index}.png")}
            for title, (method, rank) in zip(titles[1:], [("zero", 1), ("zero", 2), ("gradient", 1), ("gradient", 2)]):
                assert title.split("\n")[0] == method
                assert title.split("\n")[1].startswith(f"#{rank} digit {mine[method, rank]['target']} ")
            # cells have the original's aspect ratio (map-back is on), longer side 224; two title lines
            width, height = picture.size
            cell = (224, round(height * 224 / width)) if width >= height else (round(width * 224 / height), 224)
            expected = (5 * cell[0] + 6 * GAP, GAP + 2 * line_height() + 4 + cell[1] + GAP)
            assert grid.size == expected == layout_for(picture.size, 5, 224, 2).size
            pixels = np.asarray(grid.convert("L"))
            for column in range(5):
                left = GAP + column * (cell[0] + GAP)
                assert pixels[GAP:GAP + 2 * line_height(), left:left + cell[0]].min() < 100   # a title is drawn
                assert (pixels[:, left - GAP:left] == 255).all()                             # white gaps between


def test_report_command_rebuilds_the_page(explained, tmp_path):
    root, out, records = explained
    before = (out / "index.html").read_text()
    assert "run in progress" not in before and f"{PICTURES} image(s)" in before
    os.unlink(out / "index.html")
    result = run("report", out, "--cmap", "bwr", cwd=os.getcwd())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out / "index.html")
    page = (out / "index.html").read_text()
    assert page.count('"name": "d') == PICTURES
    result = run("report", tmp_path)
    assert result.returncode == 2 and "no .lrptool-manifest.jsonl" in result.stderr


def wait_for_images(page):
    return page.wait_for("return Array.from(document.images).every(function (i) { return i.complete; })", 30)


def test_page_renders_sorts_and_loads_every_picture(explained):
    root, out, records = explained
    with browser() as page:
        page.open(out / "index.html")
        shot = page.screenshot(root / "report.png")
        assert Image.open(shot).size[0] > 0
        assert wait_for_images(page)
        assert page.run("return document.querySelectorAll('#rows tbody tr').length") == PICTURES
        images = page.run("return Array.from(document.images).map(function (i) { "
                          "return [i.getAttribute('src'), i.naturalWidth, i.loading]; })")
        # per row: the original, and a heatmap and overlay for each of the four columns
        assert len(images) == PICTURES * 9
        assert all(width > 0 for _, width, _ in images), [src for src, width, _ in images if not width]
        assert {loading for _, _, loading in images} == {"lazy"}
        scores = page.run("return Array.from(document.querySelectorAll('#rows tbody td.score'))"
                          ".map(function (td) { return parseFloat(td.textContent); })")
        page.run("document.querySelector('th[data-key=score]').click()")
        descending = page.run("return Array.from(document.querySelectorAll('#rows tbody td.score'))"
                              ".map(function (td) { return parseFloat(td.textContent); })")
        assert descending == sorted(scores, reverse=True)
        page.run("document.querySelector('th[data-key=score]').click()")
        ascending = page.run("return Array.from(document.querySelectorAll('#rows tbody td.score'))"
                             ".map(function (td) { return parseFloat(td.textContent); })")
        assert ascending == sorted(scores) and ascending != descending
        first_label = page.run("return document.querySelector('#rows tbody td.label').textContent")
        page.run("var f = document.getElementById('filter'); f.value = arguments[0];"
                 "f.dispatchEvent(new Event('input'));", first_label)
        labels = page.run("return Array.from(document.querySelectorAll('#rows tbody td.label'))"
                          ".map(function (td) { return td.textContent; })")
        assert labels and all(first_label in label for label in labels)
        assert page.console_errors() == []


def test_long_tables_come_in_pages(tmp_path):
    entries = [{"stem": f"img{i:04d}.png", "rank": None, "method": None, "files": [],
                "record": {"path": None, "label": f"class {i % 7}", "target": i % 7, "score": float(i),
                           "relevance_sum": float(i), "conservation_error": 0.0}} for i in range(PAGE_SIZE * 2 + 50)]
    (tmp_path / "index.html").write_text(render_page(entries, str(tmp_path)))
    with browser() as page:
        page.open(tmp_path / "index.html")
        count = "return document.querySelectorAll('#rows tbody tr').length"
        assert page.run(count) == PAGE_SIZE
        assert page.run("return document.getElementById('pageinfo').textContent") == f"page 1 of 3 ({len(entries)} rows)"
        page.run("document.getElementById('next').click(); document.getElementById('next').click()")
        assert page.run(count) == 50
        assert page.run("return document.getElementById('next').disabled") is True
        assert page.console_errors() == []


def test_evaluate_report_renders_with_its_sequences(tmp_path):
    model = bias_free_mnist(tmp_path / "mnist.onnx")
    images = noise_pictures(tmp_path / "images", 4, 2)
    out = tmp_path / "evaluation"
    result = run("evaluate", model, images, "-o", out, "--methods", "zero,gradient", "--steps", "8", "--patch", "7")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    # 28/7 = 4 × 4 regions, 8 steps: thumbnails at steps 0, 2, 4, 6, 8 for 3 images, 3 methods, 2 orders
    thumbnails = sorted(os.listdir(out / "sequences"))
    assert len(thumbnails) == 3 * 3 * 2 * 5
    # step 0 is the unperturbed picture, as the model saw it
    with Image.open(out / "sequences" / "0-zero-morf-0.png") as first, Image.open(images / "d0.png") as picture:
        np.testing.assert_array_equal(np.asarray(first), np.asarray(picture))
    with Image.open(out / "sequences" / "0-zero-morf-8.png") as last, Image.open(images / "d0.png") as picture:
        changed = np.asarray(last) != np.asarray(picture)
        assert 0.3 < changed.mean() <= 0.5 + 1e-9   # 8 of 16 regions replaced (uniform noise may repeat a pixel)
    with browser() as page:
        page.open(out / "report.html")
        page.screenshot(tmp_path / "evaluate.png")
        assert wait_for_images(page)
        sizes = page.run("return Array.from(document.images).map(function (i) { return i.naturalWidth; })")
        assert len(sizes) == 1 + len(thumbnails) and all(width > 0 for width in sizes)
        ranked = page.run("return Array.from(document.querySelectorAll('table')[0].querySelectorAll('tbody tr'))"
                          ".map(function (tr) { return tr.children[1].textContent; })")
        assert ranked == [row["method"] for row in summary["aopc"]["morf"]]
        assert page.console_errors() == []


def test_report_links_the_runs_of_a_folder(explained):
    root, out, records = explained
    result = run("report", root, "--title", "all runs")
    assert result.returncode == 0, result.stderr
    page = (root / "index.html").read_text()
    assert result.stdout.strip() == str(root / "index.html")
    assert '<a href="out/index.html">out</a>' in page and f"{PICTURES} image(s)" in page
    assert 'src="out/d0.png.grid.png"' in page


def test_the_page_is_rewritten_whole_as_the_run_goes(tmp_path, monkeypatch):
    import io

    import lrptool.explain_folder as explain_folder
    import lrptool.report as report
    from converters import load_model
    from lrptool.images import preprocessing_for
    from lrptool.lrp import Explainer

    model = bias_free_mnist(tmp_path / "m.onnx")
    images = noise_pictures(tmp_path / "images", 5, 9)
    pages = []
    written = report.write_page

    def spy(outdir, entries, **options):
        path = written(outdir, entries, **options)
        with open(path, encoding="utf-8") as handle:
            pages.append((len({entry["stem"] for entry in entries}), options["running"], handle.read()))
        return path
    monkeypatch.setattr(report, "write_page", spy)
    monkeypatch.setattr(explain_folder, "PAGE_INTERVAL", 0.0)
    graph = load_model(str(model))
    runner = explain_folder.FolderExplainer(Explainer(graph, "zero"), preprocessing_for((1, 1, 28, 28), "mnist"),
                                            str(tmp_path / "out"), ("png", "html"), batch_size=2, jsonl=io.StringIO())
    runner.run([(str(path), None) for path in sorted(images.iterdir())])
    counts = [count for count, running, _ in pages]
    assert counts == sorted(counts) and counts[-1] == 5 and len(pages) >= 3
    assert all(running for _, running, _ in pages[:-1]) and not pages[-1][1]
    assert "run in progress — 1 image(s) so far" in pages[0][2]
    assert pages[-1][2] == (tmp_path / "out" / "index.html").read_text()
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".lrptool-part-")]


def test_several_presets_are_checked_before_anything_runs(tmp_path):
    model = bias_free_mnist(tmp_path / "m.onnx")
    for preset, words in (("epsilon,foo", "unknown 'foo'"), ("zero,zero", "named twice")):
        result = run("explain", model, tmp_path, "-o", tmp_path / "out", "--preset", preset)
        assert result.returncode == 2 and words in result.stderr and len(result.stderr.splitlines()) == 1
    result = run("explain", model, tmp_path, "-o", tmp_path / "out", "--preset", "zero,gradient", "--rules", "zero")
    assert result.returncode == 2 and "--rules applies to one method" in result.stderr


def test_resume_with_several_methods_redoes_nothing_and_keeps_the_page_whole(tmp_path):
    model = bias_free_mnist(tmp_path / "m.onnx")
    images = noise_pictures(tmp_path / "images", 3, 4)
    options = ["-o", tmp_path / "out", "--preset", "zero,gradient", "--target", "top-2", "--format", "png,grid,html",
               "--jsonl", tmp_path / "out.jsonl", "--resume"]
    first = run("explain", model, images, *options)
    assert first.returncode == 0, first.stderr
    again = run("explain", model, images, *options)
    assert again.returncode == 0, again.stderr
    assert "resuming: 3 image(s) already explained" in again.stderr and "explained 0 image(s)" in again.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * 4                                     # nothing recorded twice
    assert (tmp_path / "out" / "index.html").read_text().count('"name": "d') == 3


def test_a_fixed_target_keeps_the_prediction_in_the_record_and_the_page(tmp_path):
    from test_explain_cli import model_logits

    model = bias_free_mnist(tmp_path / "m.onnx")
    images = noise_pictures(tmp_path / "images", 3, 6)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    result = run("explain", model, images, "-o", tmp_path / "out", "--target", "3", "--labels", labels,
                 "--format", "html,grid")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "out" / "index.html").read_text()
    for record in json_lines(result.stdout):
        predicted = int(np.argmax(model_logits(model, record["path"])))
        assert record["target"] == 3 and record["label"] == "digit 3"
        if predicted == 3:
            assert "predicted" not in record
        else:
            assert record["predicted"] == predicted and record["predicted_label"] == f"digit {predicted}"
        assert f'"prediction": "digit {predicted}"' in page
        # one method: the explained class titles the input, the method its column
        with Image.open(record["files"][0]) as grid:
            assert json.loads(grid.text["lrptool-columns"]) == [f"input\ndigit 3 ({record['score']:.3g})",
                                                               "epsilon-plus-flat"]
