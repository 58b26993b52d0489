"""Explaining whole folders: images in, heatmaps, overlays and raw relevance out, one JSON line
per explained image.

Decoding and writing run in a thread pool beside the engine. Every file is written under a
temporary name and renamed when whole, so an interrupted run leaves no half-written output, and
``resume`` skips images whose outputs all exist. Unreadable images are reported and skipped.
"""

import io
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .files import remove_stale_parts, write_atomically
from .heatmaps import heatmap_image, overlay_image
from .images import ImageError, load_picture, to_tensor
from .lrp import top_k_targets

#: Set when the run is asked to stop (Ctrl-C, SIGTERM): an interrupt that lands inside compiled
#: code reaches Python as some other exception, and this tells the two apart.
STOP = threading.Event()
FORMATS = ("png", "overlay", "npy")


@dataclass
class Item:
    path: str
    target: object      # None, or a class index given in a list file
    stem: str           # output path without suffix, relative to the output folder


def mirrored_items(items):
    """Give each input a distinct output stem: its path relative to the inputs' common folder,
    original extension kept (``a.png`` and ``a.jpg`` side by side do not collide)."""
    if not items:
        return []
    folders = [os.path.dirname(os.path.abspath(path)) for path, _ in items]
    root = os.path.commonpath(folders)
    return [Item(path, target, os.path.relpath(os.path.abspath(path), root)) for path, target in items]


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return buffer.getvalue()


class FolderExplainer:
    """Runs an ``Explainer`` over image files; see ``lrptool explain --help`` for the options."""

    def __init__(self, explainer, preprocessing, outdir, formats=("png",), colormap="bwr", target="pred",
                 top_k=None, labels=None, batch_size=16, jobs=2, resume=False, jsonl=None, progress=False,
                 report=None):
        self.explainer = explainer
        self.preprocessing = preprocessing
        self.outdir = outdir
        self.formats = tuple(formats)
        self.colormap = colormap
        self.target = target
        self.top_k = top_k
        self.labels = labels
        self.batch_size = max(1, batch_size)
        self.jobs = max(1, jobs)
        self.resume = resume
        self.jsonl = jsonl or sys.stdout
        self.progress = progress
        self.report = report or (lambda message: print(f"lrptool: {message}", file=sys.stderr))
        self.failures = []
        self.explained = 0
        self.written = 0

    # -- naming ------------------------------------------------------------------------------
    def suffix(self, rank):
        return "" if rank is None else f".top{rank}"

    def output_paths(self, item, rank=None):
        base = os.path.join(self.outdir, item.stem) + self.suffix(rank)
        names = {"png": base + ".heatmap.png", "overlay": base + ".overlay.png", "npy": base + ".npy"}
        return {fmt: names[fmt] for fmt in self.formats}

    def all_outputs(self, item):
        ranks = [None] if not self.top_k else range(1, self.top_k + 1)
        return [p for rank in ranks for p in self.output_paths(item, rank).values()]

    def done(self, item):
        return all(os.path.isfile(p) for p in self.all_outputs(item))

    # -- the run -----------------------------------------------------------------------------
    def run(self, items):
        items = mirrored_items(items)
        if self.resume:
            remove_stale_parts(self.outdir)
            before = len(items)
            items = [item for item in items if not self.done(item)]
            if before != len(items):
                self.report(f"resuming: {before - len(items)} image(s) already explained")
        os.makedirs(self.outdir, exist_ok=True)
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=len(items), unit="img", file=sys.stderr, dynamic_ncols=True)
        batches = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        with ThreadPoolExecutor(self.jobs) as pool:
            pending_writes = []
            decoded = pool.submit(self.decode, batches[0]) if batches else None
            for index in range(len(batches)):
                if STOP.is_set():
                    raise KeyboardInterrupt
                batch = decoded.result()
                decoded = pool.submit(self.decode, batches[index + 1]) if index + 1 < len(batches) else None
                pending_writes += self.explain_batch(batch, pool)
                pending_writes = self.flush(pending_writes, keep=2 * self.jobs)
                if bar is not None:
                    bar.update(len(batches[index]))
            self.flush(pending_writes, keep=0)
        if bar is not None:
            bar.close()
        return self.failures

    def decode(self, batch):
        decoded = []
        for item in batch:
            try:
                picture = load_picture(item.path, self.preprocessing)
                decoded.append((item, picture, to_tensor(picture, self.preprocessing)))
            except ImageError as problem:
                decoded.append((item, None, str(problem)))
        return decoded

    def targets_for(self, items):
        wanted = []
        for item in items:
            if item.target is not None:
                wanted.append(item.target)
            elif self.target == "pred" or self.top_k:
                wanted.append(-1)
            else:
                wanted.append(int(self.target))
        return np.asarray(wanted, dtype=np.int64)

    def explain_batch(self, batch, pool):
        good = [(item, picture, tensor) for item, picture, tensor in batch if picture is not None]
        for item, picture, problem in batch:
            if picture is None:
                self.fail(item, problem)
        if not good:
            return []
        x = np.stack([tensor for _, _, tensor in good])
        items = [item for item, _, _ in good]
        try:
            first = self.explainer.explain(x, target=self.targets_for(items))
        except Exception as error:  # noqa: BLE001 - one bad batch must not end the run
            if STOP.is_set():
                raise KeyboardInterrupt from None
            for item in items:
                self.fail(item, f"explaining failed: {error}")
            return []
        runs = [(None, first)]
        if self.top_k:
            ranking = top_k_targets(first.outputs, self.top_k)
            runs = [(1, first)] + [(rank + 1, self.explainer.explain(x, target=ranking[rank]))
                                   for rank in range(1, min(self.top_k, ranking.shape[0]))]
        futures = []
        for rank, explanation in runs:
            for index, (item, picture, _) in enumerate(good):
                futures.append(pool.submit(self.write_outputs, item, picture, explanation, index, rank))
        return futures

    def write_outputs(self, item, picture, explanation, index, rank):
        relevance = explanation.relevance[index]
        paths = self.output_paths(item, rank)
        for fmt, path in paths.items():
            if fmt == "png":
                payload = png_bytes(heatmap_image(relevance, self.colormap))
            elif fmt == "overlay":
                payload = png_bytes(overlay_image(picture, relevance, self.colormap))
            else:
                payload = npy_bytes(relevance)
            write_atomically(path, payload)
        target = int(explanation.targets[index])
        score = float(explanation.scores[index])
        total = float(np.sum(relevance, dtype=np.float64))
        record = {"path": item.path, "target": target,
                  "label": self.labels[target] if self.labels and target < len(self.labels) else None,
                  "score": score, "relevance_sum": total,
                  "conservation_error": abs(total - score) / abs(score) if score else None,
                  "files": list(paths.values())}
        if rank is not None:
            record["rank"] = rank
        return item, record

    def flush(self, futures, keep):
        """Emit the JSON lines of finished writes, in order, keeping at most ``keep`` in flight."""
        while futures and (len(futures) > keep or futures[0].done()):
            future = futures.pop(0)
            try:
                item, record = future.result()
            except OSError as error:
                # the write of one image's outputs failed; report it with that image
                self.failures.append(("?", str(error)))
                self.report(f"cannot write: {error.strerror or error}: {getattr(error, 'filename', '')}")
                continue
            self.written += len(record["files"])
            if record.get("rank") in (None, 1):
                self.explained += 1
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        return futures

    def fail(self, item, problem):
        self.failures.append((item.path, problem))
        self.report(f"skipped {item.path}: {problem}")
