"""The HTML report of an explained folder: ``OUTDIR/index.html``.

One self-contained page (inline CSS and script, no network; pictures by paths relative to the
page): a row per image with the original picture, per method or class a heatmap and overlay, and
the predicted label, score, explained target, relevance sum and conservation error. Rows sort by
any number column, filter by label or name, and come in pages of ``PAGE_SIZE``; thumbnails load
lazily. The page is built from the run's records (the manifest's lines) and written atomically,
so that it can be rebuilt during a run and read at any moment.
"""

import html
import json
import os
import time
from urllib.parse import quote

import numpy as np

from .files import write_atomically

PAGE_SIZE = 200
#: Pictures every browser shows; the originals of other types are left out of the page.
BROWSER_PICTURES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"}


def column_key(entry):
    return [entry.get("method"), entry.get("rank")]


def column_title(method, rank, several_methods):
    parts = []
    if method and several_methods:
        parts.append(method)
    if rank is not None:
        parts.append(f"class #{rank}")
    return " · ".join(parts) or (method or "explanation")


def page_link(relative):
    return quote(relative.replace(os.sep, "/"))


def original_link(path, outdir):
    """The original picture's path relative to the page, when a browser can show it."""
    if not path or os.path.splitext(path)[1].lower() not in BROWSER_PICTURES:
        return None
    return page_link(os.path.relpath(os.path.abspath(path), os.path.abspath(outdir)))


def file_kind(relative):
    for suffix, kind in ((".heatmap.png", "heatmap"), (".overlay.png", "overlay"), (".grid.png", "grid")):
        if relative.endswith(suffix):
            return kind
    return None


def table_rows(entries, outdir):
    """(columns, rows) from manifest-style entries: dicts with stem, rank, method, files (paths
    relative to ``outdir``) and record (the JSON line)."""
    columns, rows, by_stem = [], [], {}
    for entry in entries:
        key = column_key(entry)
        if key not in columns:
            columns.append(key)
        record = entry["record"]
        row = by_stem.get(entry["stem"])
        if row is None:
            row = by_stem[entry["stem"]] = {"name": entry["stem"], "original": original_link(record.get("path"),
                                                                                             outdir), "cells": {}}
            rows.append(row)
        cell = {"label": record.get("label"), "target": record.get("target"), "score": record.get("score")}
        for relative in entry["files"]:
            kind = file_kind(relative)
            if kind == "grid":
                row["grid"] = page_link(relative)
            elif kind:
                cell[kind] = page_link(relative)
        row["cells"][json.dumps(key)] = cell
        if len(row["cells"]) == 1 or key == columns[0]:
            predicted = record.get("predicted", record.get("target"))
            predicted_label = record.get("predicted_label") if "predicted" in record else record.get("label")
            row.update(label=record.get("label"), target=record.get("target"), score=record.get("score"),
                       relevance_sum=record.get("relevance_sum"), conservation=record.get("conservation_error"),
                       prediction=predicted_label if predicted_label is not None else
                       (None if predicted is None else f"class {predicted}"))
    several = len({method for method, _ in columns}) > 1
    titled = [{"key": json.dumps(key), "title": column_title(key[0], key[1], several)} for key in columns]
    return titled, rows


def swatch_css(colormap):
    """A CSS gradient of the colour map from −1 to 1."""
    from .heatmaps import COLORMAPS

    if colormap not in COLORMAPS:
        return "none"
    stops = np.linspace(-1, 1, 17)
    colours = np.round(COLORMAPS[colormap](stops) * 255).astype(int)
    return "linear-gradient(to right, " + ", ".join(
        f"rgb({r},{g},{b}) {100 * i / (len(stops) - 1):.1f}%" for i, (r, g, b) in enumerate(colours)) + ")"


def render_page(entries, outdir, title="lrptool explanations", colormap=None, settings=None, running=False,
                item="image"):
    """The page's HTML text; ``item``: what a row is (an image, a file)."""
    columns, rows = table_rows(entries, outdir)
    data = {"columns": columns, "rows": rows, "pageSize": PAGE_SIZE, "item": item}
    payload = json.dumps(data, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e")
    settings_text = " · ".join(f"{k}: {v}" for k, v in (settings or {}).items() if v not in (None, ""))
    status = (f"run in progress — {len(rows)} {item}(s) so far; reload for more" if running
              else f"{len(rows)} {item}(s)")
    swatch = ""
    if colormap:
        swatch = (f'<div class="swatch"><span>−</span><div class="bar" title="{html.escape(colormap)}" '
                  f'style="background: {swatch_css(colormap)}"></div><span>+</span>'
                  f'<span class="muted">{html.escape(colormap)}: negative · 0 · positive relevance</span></div>')
    return PAGE.format(title=html.escape(title), settings=html.escape(settings_text), status=html.escape(status),
                       generated=time.strftime("%Y-%m-%d %H:%M:%S"), swatch=swatch, data=payload, script=SCRIPT)


def entries_of(manifest):
    """Manifest entries (``Manifest.entries``) as the list ``render_page`` takes, in file order."""
    return [{"stem": key[0], "rank": key[1], "method": key[2] if len(key) > 2 else None, "files": sorted(files),
             "record": record} for key, (files, record) in manifest.entries.items()]


def run_folders(outdir):
    """The sub-folders of ``outdir`` that hold an explain run (a manifest), sorted by name."""
    from .manifest import NAME

    return sorted(name for name in os.listdir(outdir) if not os.path.islink(os.path.join(outdir, name))
                  and any(os.path.isfile(os.path.join(outdir, name, page)) for page in (NAME, "index.html")))


def render_index(outdir, folders, title):
    """A page linking the reports of several runs, each with its image count and first grid or overlay."""
    from .manifest import Manifest

    items = []
    for name in folders:
        entries = entries_of(Manifest(os.path.join(outdir, name)).load())   # none: a page of another kind
        stems = {entry["stem"] for entry in entries}
        pictures = [f for entry in entries for f in entry["files"] if file_kind(f) in ("grid", "overlay", "heatmap")]
        preview = sorted(pictures, key=lambda f: file_kind(f) != "grid")[:1]
        image = f'<img src="{html.escape(page_link(name + "/" + preview[0]))}" alt="">' if preview else ""
        items.append(f'<li><a href="{html.escape(page_link(name))}/index.html">{html.escape(name)}</a> '
                     + (f'<span class="muted">{len(stems)} image(s)</span>' if stems else "") + f'<br>{image}</li>')
    return INDEX.format(title=html.escape(title), items="\n".join(items), generated=time.strftime("%Y-%m-%d %H:%M:%S"))


def write_index(outdir, folders, title):
    path = os.path.join(outdir, "index.html")
    write_atomically(path, render_index(outdir, folders, title).encode("utf-8"), root=outdir)
    return path


def write_page(outdir, entries, **options):
    path = os.path.join(outdir, "index.html")
    write_atomically(path, render_page(entries, outdir, **options).encode("utf-8"), root=outdir)
    return path


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.4em; margin: 0 0 .2em; }}
.muted {{ color: #666; font-size: .9em; }}
.controls {{ display: flex; gap: 1em; align-items: center; margin: 1em 0; flex-wrap: wrap; }}
.swatch {{ display: flex; gap: .5em; align-items: center; margin: .5em 0; }}
.swatch .bar {{ width: 240px; height: 14px; border: 1px solid #999; }}
table {{ border-collapse: collapse; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: middle; }}
th.sortable {{ cursor: pointer; user-select: none; white-space: nowrap; }}
th.sortable:hover {{ background: #f0f0f0; }}
th[data-order="asc"]::after {{ content: " ▲"; }}
th[data-order="desc"]::after {{ content: " ▼"; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td {{ white-space: nowrap; }}
td img {{ height: 112px; width: auto; display: inline-block; margin-right: 4px; background: #eee; }}
.caption {{ font-size: .85em; color: #444; }}
button {{ padding: 2px 10px; }}
</style></head>
<body>
<h1>{title}</h1>
<div class="muted">{settings}</div>
<div class="muted" id="status">{status} · written {generated}</div>
{swatch}
<div class="controls">
<label>Filter by label or name <input id="filter" type="search" placeholder="e.g. cat"></label>
<span><button id="prev">‹ previous</button> <span id="pageinfo"></span> <button id="next">next ›</button></span>
</div>
<table id="rows"><thead></thead><tbody></tbody></table>
<script id="data" type="application/json">{data}</script>
<script>{script}</script>
</body></html>
"""

INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.4em; }} .muted {{ color: #666; font-size: .9em; }}
ul {{ list-style: none; padding: 0; }} li {{ margin: 0 0 1.5em; }}
li img {{ height: 160px; width: auto; margin-top: .3em; border: 1px solid #ddd; }}
</style></head>
<body><h1>{title}</h1>
<ul>
{items}
</ul>
<p class="muted">written {generated}</p>
</body></html>
"""

SCRIPT = r"""
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const numbers = [["score", "score"], ["relevance_sum", "Σ relevance"], ["conservation", "conservation error"]];
  let shown = data.rows.slice(), page = 0, sortKey = null, sortOrder = "desc";
  const head = document.querySelector("#rows thead"), body = document.querySelector("#rows tbody");

  function cell(tag, text, cls) {
    const element = document.createElement(tag);
    if (text !== undefined && text !== null) element.textContent = text;
    if (cls) element.className = cls;
    return element;
  }
  function picture(src, alt) {
    const image = document.createElement("img");
    image.loading = "lazy"; image.src = src; image.alt = alt; image.title = alt;
    return image;
  }
  function number(value, digits) {
    return (value === null || value === undefined) ? "—" : Number(value).toPrecision(digits);
  }
  function sortBy(key, header) {
    sortOrder = (sortKey === key && sortOrder === "desc") ? "asc" : "desc";
    sortKey = key;
    head.querySelectorAll("th").forEach(function (th) { th.removeAttribute("data-order"); });
    header.setAttribute("data-order", sortOrder);
    const sign = sortOrder === "asc" ? 1 : -1;
    shown.sort(function (a, b) {
      const x = a[key], y = b[key];
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (typeof x === "string" ? x.localeCompare(y) : x - y) * sign;
    });
    page = 0; draw();
  }
  function buildHead() {
    const row = document.createElement("tr");
    const name = cell("th", data.item, "sortable"); name.dataset.key = "name";
    name.addEventListener("click", function () { sortBy("name", name); });
    row.appendChild(name);
    row.appendChild(cell("th", "original"));
    data.columns.forEach(function (column) { row.appendChild(cell("th", column.title)); });
    const label = cell("th", "explained label", "sortable"); label.dataset.key = "label";
    label.addEventListener("click", function () { sortBy("label", label); });
    row.appendChild(label);
    row.appendChild(cell("th", "predicted"));
    row.appendChild(cell("th", "target"));
    numbers.forEach(function (pair) {
      const th = cell("th", pair[1], "sortable"); th.dataset.key = pair[0];
      th.addEventListener("click", function () { sortBy(pair[0], th); });
      row.appendChild(th);
    });
    head.appendChild(row);
  }
  function draw() {
    const pages = Math.max(1, Math.ceil(shown.length / data.pageSize));
    page = Math.min(page, pages - 1);
    body.textContent = "";
    shown.slice(page * data.pageSize, (page + 1) * data.pageSize).forEach(function (row) {
      const tr = document.createElement("tr");
      tr.className = "row";
      tr.appendChild(cell("td", row.name, "name"));
      const original = cell("td");
      if (row.original) original.appendChild(picture(row.original, row.name));
      tr.appendChild(original);
      data.columns.forEach(function (column) {
        const td = cell("td"), found = row.cells[column.key];
        if (found) {
          if (found.heatmap) td.appendChild(picture(found.heatmap, "heatmap"));
          if (found.overlay) td.appendChild(picture(found.overlay, "overlay"));
          const label = found.label !== null && found.label !== undefined ? found.label : "class " + found.target;
          td.appendChild(cell("div", label + " (" + number(found.score, 4) + ")", "caption"));
        }
        tr.appendChild(td);
      });
      tr.appendChild(cell("td", row.label === null || row.label === undefined ? "—" : row.label, "label"));
      tr.appendChild(cell("td", row.prediction === null || row.prediction === undefined ? "—" : row.prediction,
        "prediction"));
      tr.appendChild(cell("td", row.target, "num"));
      tr.appendChild(cell("td", number(row.score, 5), "num score"));
      tr.appendChild(cell("td", number(row.relevance_sum, 5), "num"));
      tr.appendChild(cell("td", row.conservation === null || row.conservation === undefined ? "—"
        : (100 * row.conservation).toFixed(2) + " %", "num"));
      body.appendChild(tr);
    });
    document.getElementById("pageinfo").textContent = "page " + (page + 1) + " of " + pages + " (" + shown.length + " rows)";
    document.getElementById("prev").disabled = page === 0;
    document.getElementById("next").disabled = page >= pages - 1;
  }
  document.getElementById("filter").addEventListener("input", function (event) {
    const wanted = event.target.value.trim().toLowerCase();
    shown = data.rows.filter(function (row) {
      return !wanted || String(row.label || "").toLowerCase().includes(wanted) || row.name.toLowerCase().includes(wanted);
    });
    sortKey = null; page = 0; draw();
  });
  document.getElementById("prev").addEventListener("click", function () { page -= 1; draw(); });
  document.getElementById("next").addEventListener("click", function () { page += 1; draw(); });
  buildHead(); draw();
})();
"""
