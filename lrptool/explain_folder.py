"""Explaining whole folders: images in, heatmaps, overlays and raw relevance out, one JSON line
per explained image.

Decoding and writing run in a thread pool beside the engine. Every file is written under a
temporary name and renamed when whole, only inside the output folder; an image is then recorded
as finished in the folder's manifest (``lrptool.manifest``) and its JSON line written, in that
order. ``resume`` skips exactly the images the manifest proves finished. Unreadable images, and
images whose explanation is not finite, are reported and skipped.
"""

import io
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .files import OutsideOutputError, remove_stale_parts, write_atomically
from .heatmaps import DEFAULT_CLIP, heatmap_image, overlay_image
from .images import ImageError, geometry_for, load_original, resize, to_tensor
from .lrp import GRADIENT_METHODS
from .manifest import Manifest, digest

#: Set when the run is asked to stop (Ctrl-C, SIGTERM): an interrupt that lands inside compiled
#: code reaches Python as some other exception, and this tells the two apart.
STOP = threading.Event()
FORMATS = ("png", "overlay", "npy", "grid", "html")
#: Seconds between rewrites of index.html during a run.
PAGE_INTERVAL = 2.0


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


def finite_or_none(value):
    value = float(value)
    return value if np.isfinite(value) else None


class FolderExplainer:
    """Runs an ``Explainer`` over image files; see ``lrptool explain --help`` for the options.

    ``jsonl``: the stream for the JSON lines (stdout by default). ``recorded``: with ``resume``, the
    (path, rank) pairs that stream already holds; records of finished images missing from it are
    written from the manifest (a run killed between the two steps loses no record)."""

    def __init__(self, explainer, preprocessing, outdir, formats=("png",), colormap="bwr", target="pred",
                 top_k=None, labels=None, batch_size=16, jobs=2, resume=False, jsonl=None, progress=False,
                 report=None, recorded=None, clip=DEFAULT_CLIP, channels="sum", map_back=None, methods=None,
                 page=None):
        # several methods in one run: [(name, Explainer), …], one output column each
        self.methods = list(methods) if methods else [(getattr(explainer, "method", None), explainer)]
        self.shared = None      # the methods' shared forward pass, made on first use (also on a cluster worker)
        explainer = self.methods[0][1]
        self.explainer = explainer
        self.preprocessing = preprocessing
        self.outdir = outdir
        self.formats = tuple(formats)
        self.colormap = colormap
        self.clip = clip
        self.channels = channels
        # None: overlays on the original picture, heatmaps at the input's size; True/False: both/neither
        self.map_back = map_back
        self.target = target
        self.top_k = top_k
        self.labels = labels
        self.batch_size = max(1, batch_size)
        self.jobs = max(1, jobs)
        self.resume = resume
        self.jsonl = jsonl or sys.stdout
        self.recorded = recorded
        self.progress = progress
        self.report = report or (lambda message: print(f"lrptool: {message}", file=sys.stderr))
        self.failures = []
        self.explained = 0
        self.written = 0
        self.resumed = 0
        self.classes = explainer.output_size() if hasattr(explainer, "output_size") else None
        self.manifest = Manifest(outdir, keep="html" in self.formats)
        self.noted = set()
        self.preprocessing_settings = preprocessing.describe()
        self.page = dict(page or {}, colormap=colormap)
        self.page_written = 0.0

    # -- naming ------------------------------------------------------------------------------
    @property
    def several_methods(self):
        return len(self.methods) > 1

    def suffix(self, rank, method=None):
        return (f".{method}" if self.several_methods else "") + ("" if rank is None else f".top{rank}")

    def output_paths(self, item, rank=None, method=None):
        base = os.path.join(self.outdir, item.stem) + self.suffix(rank, method)
        names = {"png": base + ".heatmap.png", "overlay": base + ".overlay.png", "npy": base + ".npy"}
        paths = {fmt: names[fmt] for fmt in self.formats if fmt in names}
        if "grid" in self.formats and (method, rank) == self.columns()[0]:
            paths["grid"] = os.path.join(self.outdir, item.stem) + ".grid.png"   # one per image, with the first column
        return paths

    def ranks(self):
        return [None] if not self.top_k else list(range(1, self.top_k + 1))

    def columns(self):
        """(method, rank) of every explanation of one image; method None when the run has one."""
        methods = [name for name, _ in self.methods] if self.several_methods else [None]
        return [(method, rank) for method in methods for rank in self.ranks()]

    def finished_records(self, item):
        """The recorded JSON records of ``item`` (one per column) when all its outputs are provably
        whole, else None."""
        records = []
        for method, rank in self.columns():
            expected = [os.path.relpath(p, self.outdir) for p in self.output_paths(item, rank, method).values()]
            record = self.manifest.finished(item.stem, rank, expected, method)
            if record is None:
                return None
            records.append(record)
        return records

    # -- the run -----------------------------------------------------------------------------
    def run(self, items, shard=None):
        """Explain ``items`` ((path, target) pairs); ``shard=(K, N)``: only the K-th of N shares of
        the sorted list (``lrptool.shards``). Returns the failures."""
        items = self.pending(items, shard)
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=len(items), unit="img", file=sys.stderr, dynamic_ncols=True)
        try:
            self.process(items, bar)
            self.write_page(final=True)
        finally:
            self.manifest.close()
            if bar is not None:
                bar.close()
        return self.failures

    def pending(self, items, shard=None):
        """The Items still to explain: mirrored, this shard's share, and with ``resume`` not yet
        finished (the records of finished ones are written out where the stream lacks them)."""
        items = mirrored_items(items)
        if shard is not None:
            from .shards import shard_share
            items = shard_share(items, *shard)
        os.makedirs(self.outdir, exist_ok=True)
        if self.resume:
            remove_stale_parts(self.outdir)
            self.manifest.load()
            remaining = []
            for item in items:
                records = self.finished_records(item)
                if records is None:
                    remaining.append(item)
                    continue
                self.resumed += 1
                for record in records:
                    if self.recorded is not None and \
                            (record.get("path"), record.get("rank"), record.get("method")) not in self.recorded:
                        self.emit(record)
            if self.resumed:
                self.report(f"resuming: {self.resumed} image(s) already explained")
            if not self.manifest.keep:
                self.manifest.entries.clear()   # what resuming needed; no page will ask for them
            items = remaining
        return items

    def process(self, items, bar=None):
        """Decode, explain and write ``items`` in batches, committing each finished image."""
        batches = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        pool = ThreadPoolExecutor(self.jobs)
        pending_writes = []
        try:
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
        except BaseException:
            # finish (or drop) what is being written so that nothing is half-left, then stop
            for future in pending_writes:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)

    def decode(self, batch):
        decoded = []
        for item in batch:
            try:
                problem = self.target_problem(item.target)
                if problem:
                    raise ImageError(problem)
                original = load_original(item.path, self.preprocessing)
                picture = resize(original, self.preprocessing)
                # the original is kept only while something is drawn onto its geometry
                kept = original if any(self.onto_original(fmt) for fmt in self.formats) else None
                decoded.append((item, (kept, picture), to_tensor(picture, self.preprocessing)))
            except ImageError as problem:
                decoded.append((item, None, str(problem)))
            except Exception as error:  # noqa: BLE001 - a decoder's surprise is that image's problem
                decoded.append((item, None, f"cannot decode ({type(error).__name__}: {error})"))
        return decoded

    def target_problem(self, target):
        """Why a class index from a list file cannot be explained, or None."""
        if target is None:
            return None
        if isinstance(target, str):
            return target
        if target < 0 or (self.classes is not None and target >= self.classes):
            return (f"target {target} is out of range: the model has {self.classes} outputs (0–{self.classes - 1})"
                    if self.classes else f"target {target} is out of range")
        return None

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
        # pictures at their own sizes (--native-size) are explained in groups of equal size; their records
        # are still written in the order of the input
        sizes = {}
        for entry in good:
            sizes.setdefault(entry[2].shape, []).append(entry)
        futures = [future for group in sizes.values() for future in self.explain_group(group, pool)]
        order = {id(item): index for index, (item, _, _) in enumerate(good)}
        return sorted(futures, key=lambda future: order[id(future.item)])

    def explain_group(self, good, pool):
        if not good:
            return []
        x = np.stack([tensor for _, _, tensor in good])
        items = [item for item, _, _ in good]
        try:
            # overflow and 0/0 show up as non-finite values, which are checked per image below
            with np.errstate(all="ignore"):
                runs = self.explain_columns(x, items)
                first = runs[0][1]
        except Exception as error:  # noqa: BLE001 - one bad batch must not end the run
            if STOP.is_set():
                raise KeyboardInterrupt from None
            for item in items:
                self.fail(item, f"explaining failed: {error}")
            return []
        futures = []
        for index, (item, picture, _) in enumerate(good):
            if not all(self.finite(explanation, index) for _, explanation in runs):
                self.fail(item, "the explanation is not finite (NaN or Inf): the model's values overflow "
                                "float32 for this image, or its weights are not finite")
                continue
            self.check_conservation(item, x[index:index + 1], first, index)
            future = pool.submit(self.write_outputs, item, picture, runs, index)
            future.item = item
            futures.append(future)
        return futures

    def explain_columns(self, x, items):
        """[((method, rank), Explanation)] for every column. The first method picks the classes; every
        other method explains the same ones, so that a row compares like with like. Several methods
        and class ranks share one forward pass (``lrp.several.SharedForward``)."""
        if self.shared is None:
            from .lrp.several import SharedForward

            self.shared = SharedForward(self.methods, ranks=self.top_k or 1)
        rows = self.shared.explain_ranks(x, self.targets_for(items), self.top_k or 1)
        runs = []
        for method, rank in self.columns():
            row = rank - 1 if rank else 0
            if row < len(rows):
                runs.append(((method, rank), rows[row][self.methods[0][0] if method is None else method]))
        return runs

    def check_conservation(self, item, x, explanation, index):
        """Say once per run when the input keeps less than a tenth (or more than ten times) of the
        explained score, naming the node that absorbed the most; and once when a score is negative."""
        if self.explainer.method in GRADIENT_METHODS:
            return
        score = float(explanation.scores[index])
        total = float(np.sum(explanation.relevance[index], dtype=np.float64))
        if score < 0 and "negative" not in self.noted:
            self.noted.add("negative")
            self.report(f"note: {item.path}: the explained score is negative ({score:.4g}); LRP redistributes it "
                        "with its sign, so red and blue swap meaning in that heatmap")
        if score == 0 or "conservation" in self.noted or 0.1 <= total / score <= 10:
            return
        self.noted.add("conservation")
        try:
            with np.errstate(all="ignore"):
                report = self.explainer.conservation(x, [int(explanation.targets[index])])
            worst = max(report.nodes, key=lambda node: abs(node.absorbed))
        except Exception:  # noqa: BLE001 - the note is a courtesy; the explanation stands
            return
        where = f"{worst.node!r} ({worst.op}{', ' + worst.rule if worst.rule else ''})"
        from .lrp.advice import best_alternative

        target = [int(explanation.targets[index])]
        try:
            better = best_alternative(self.explainer, x, target, worst, total / score)
        except Exception:  # noqa: BLE001 - as above
            better = None
        advice = (f"on this image --rules '{better[0]}' keeps {better[1]:.2%}" if better else
                  f"try a rule without bias there (--rules 'name:{worst.node}=epsilon-nobias') or the γ rule "
                  "without bias on such layers")
        self.report(f"note: {item.path}: the input keeps {total / score:.2%} of the explained score {score:.4g}; "
                    f"node {where} absorbed the most ({worst.absorbed:.4g}). Biases and stabilisers absorb "
                    f"relevance: {advice}")

    @staticmethod
    def finite(explanation, index):
        return bool(np.isfinite(explanation.scores[index]) and np.all(np.isfinite(explanation.relevance[index])))

    def write_outputs(self, item, picture, runs, index):
        """Write every output of one image (all columns); returns (item, [(column, files, record)])."""
        done = []
        for (method, rank), explanation in runs:
            relevance = explanation.relevance[index]
            paths = self.output_paths(item, rank, method)
            files = {}
            for fmt, path in paths.items():
                if fmt in ("png", "overlay"):
                    payload = png_bytes(self.render(fmt, picture, relevance))
                elif fmt == "grid":
                    payload = self.grid(picture, runs, index)
                else:
                    payload = npy_bytes(relevance)
                write_atomically(path, payload, root=self.outdir)
                files[os.path.relpath(path, self.outdir)] = (len(payload), digest(payload))
            target = int(explanation.targets[index])
            score = float(explanation.scores[index])
            total = float(np.sum(relevance, dtype=np.float64))
            record = {"path": item.path, "target": target,
                      "label": self.labels[target] if self.labels and target < len(self.labels) else None,
                      "score": score, "relevance_sum": total,
                      "conservation_error": finite_or_none(abs(total - score) / abs(score)) if score else None,
                      "files": list(paths.values()), "preprocessing": self.preprocessing_settings}
            predicted = int(np.argmax(explanation.outputs[index].reshape(-1)))
            if predicted != target:   # the prediction, when another class is explained
                record["predicted"] = predicted
                record["predicted_label"] = self.labels[predicted] \
                    if self.labels and predicted < len(self.labels) else None
            if rank is not None:
                record["rank"] = rank
            if method is not None:
                record["method"] = method
            done.append(((method, rank), files, record))
        return item, done

    def column_title(self, method, rank, explanation, index):
        target = int(explanation.targets[index])
        label = self.labels[target] if self.labels and target < len(self.labels) else f"class {target}"
        parts = [method] if method else []
        if rank is not None or not method:
            parts.append((f"#{rank} " if rank is not None else "") + f"{label.split(',')[0]} "
                         f"({float(explanation.scores[index]):.3g})")
        return "\n".join(parts)

    def grid(self, picture, runs, index):
        """The comparison grid of one image: the picture, then each column's heatmap."""
        from .grid import montage_png

        original, seen = picture
        onto_original = self.map_back is not False and original is not None
        shown = original if onto_original else seen
        geometry = geometry_for(original.size, self.preprocessing) if onto_original else None
        first = runs[0][1]
        # one class for every column: the input's title names it
        pictures = [shown]
        titles = ["input" if self.top_k else "input\n" + self.column_title(None, None, first, index)]
        for (method, rank), explanation in runs:
            pictures.append(heatmap_image(explanation.relevance[index], self.colormap, self.clip, self.channels,
                                          geometry))
            titles.append(self.column_title(method or self.methods[0][0], rank, explanation, index))
        return montage_png(pictures, titles)

    def onto_original(self, fmt):
        if fmt == "grid":
            return self.map_back is not False
        if fmt not in ("png", "overlay"):
            return False
        return self.map_back if self.map_back is not None else fmt == "overlay"

    def render(self, fmt, picture, relevance):
        """The heatmap ("png") or overlay picture of one explanation; ``picture`` is (original, as the
        model saw it)."""
        original, seen = picture
        onto_original = self.onto_original(fmt)
        geometry = geometry_for(original.size, self.preprocessing) if onto_original else None
        options = dict(colormap=self.colormap, clip=self.clip, channels=self.channels, geometry=geometry)
        if fmt == "png":
            return heatmap_image(relevance, **options)
        return overlay_image(original if onto_original else seen, relevance, **options)

    def flush(self, futures, keep):
        """Commit finished writes in order — the manifest line, then the JSON line — keeping at most
        ``keep`` writes in flight."""
        while futures and (len(futures) > keep or futures[0].done()):
            future = futures.pop(0)
            try:
                item, done = future.result()
            except OutsideOutputError as error:
                self.fail(future.item, f"not written: {error.filename} {error.strerror}")
                continue
            except (OSError, ValueError) as error:
                reason = getattr(error, "strerror", None) or str(error)
                self.fail(future.item, f"cannot write its outputs: {reason}")
                continue
            self.commit(item, done)
        return futures

    def commit(self, item, done):
        """Record one image whose files are written: its manifest lines, then its JSON lines."""
        for (method, rank), files, record in done:
            self.manifest.append(item.stem, rank, files, record, method)
            self.written += len(files)
            self.emit(record)
        self.explained += 1
        self.write_page()

    def write_page(self, final=False):
        """Rewrite index.html (with the html format): at most every PAGE_INTERVAL seconds during the
        run, and once at its end."""
        if "html" not in self.formats or (not final and time.monotonic() - self.page_written < PAGE_INTERVAL):
            return
        from .report import entries_of, write_page

        try:
            write_page(self.outdir, entries_of(self.manifest), running=not final, **self.page)
        except OSError as error:
            self.report(f"cannot write {os.path.join(self.outdir, 'index.html')}: {error.strerror or error}")
        self.page_written = time.monotonic()

    def emit(self, record):
        self.jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self.jsonl.flush()

    def fail(self, item, problem):
        self.failures.append((item.path, problem))
        self.report(f"skipped {item.path}: {problem}")


class CallableModule(type(sys)):
    """``lrptool.explain_folder(model, inputs, outdir, …)`` is the Python form of ``lrptool explain``
    (see ``lrptool.api.explain_folder``), while ``lrptool.explain_folder`` stays this module."""

    def __call__(self, *args, **kwargs):
        from .api import explain_folder
        return explain_folder(*args, **kwargs)


sys.modules[__name__].__class__ = CallableModule
