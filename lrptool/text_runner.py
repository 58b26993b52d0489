"""``lrptool explain-text``: texts in (one per line), per-token relevance out.

Each input line is one text, optionally followed by TAB and the class to explain (an index or a
label name). Lines are read as UTF-8; a line that is not is reported by number and skipped, as is a
line the tokenizer refuses. Outputs in the output folder: ``explanations.jsonl`` (one JSON record per
text and explained class, appended as batches finish) and ``index.html`` (every text as coloured
spans, written whole at the end); ``ansi`` prints coloured lines to stdout. Each finished text is
recorded in the folder's manifest (``lrptool.manifest``) before its JSON line is written, so that
``--resume`` skips exactly the finished texts and rebuilds the JSON lines and the page from the
manifest.
"""

import json
import os
import sys
from dataclasses import dataclass

import numpy as np

from .files import remove_stale_parts, write_atomically
from .lrp import GRADIENT_METHODS, top_k_targets
from .lrp.canonize import model_outputs
from .manifest import Manifest, digest
from .text import TextError, TextExplanation, fit_text, token_input, token_relevance
from .text_outputs import ansi_line, html_page

FORMATS = ("jsonl", "html", "ansi")
JSONL, HTML = "explanations.jsonl", "index.html"


@dataclass
class Line:
    source: str
    number: int          # counted from 1
    text: str
    target: object       # None or a class index
    problem: str = None  # why this line cannot be explained

    @property
    def key(self):
        return f"{self.source}:{self.number}"


def parse_class(text, labels):
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if labels and text in labels:
        return labels.index(text)
    raise TextError(f"after the TAB, {text!r} is not a class index" + (" or label" if labels else ""))


def read_lines(source, data, labels=None):
    """One Line per non-empty line of ``data`` (bytes); bad UTF-8 or a bad class marks the line's problem."""
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            lines.append(Line(source, number, "", None, f"not UTF-8 text (byte {error.start + 1} of the line); "
                                                        "save the input as UTF-8"))
            continue
        target = None
        if "\t" in text:
            text, _, given = text.rpartition("\t")
            try:
                target = parse_class(given, labels)
            except TextError as problem:
                lines.append(Line(source, number, text, None, str(problem)))
                continue
        lines.append(Line(source, number, text, target))
    return lines


def out_of_vocabulary(item):
    """For a bag-of-words model: {"out_of_vocabulary": indices of the tokens that count in no feature}."""
    if item.shares is not None:
        used = set(int(t) for t in item.shares[0])
    elif item.features is not None:
        used = set(int(t) for t in np.flatnonzero(item.features >= 0))
    else:
        return {}
    return {"out_of_vocabulary": [t for t in range(len(item.encoded.tokens)) if t not in used]}


def embedding_rows(graph):
    """The number of token ids every embedding table of ``graph`` knows (no limit without one)."""
    rows = [n.params["weight"].shape[0] for n in graph.nodes if n.op == "Embedding"]
    return min(rows) if rows else np.iinfo(np.int64).max


class TextRunner:
    """Explains Lines in batches with an ``Explainer``; see ``lrptool explain-text --help``."""

    def __init__(self, explainer, tokenizer, outdir, formats=("jsonl", "html"), target="pred", top_k=None,
                 labels=None, pad=0, layout="start", batch_size=64, resume=False, stdout=None, report=None,
                 max_len=None):
        self.explainer = explainer
        self.tokenizer = tokenizer
        self.outdir = outdir
        self.formats = tuple(formats)
        self.target = target
        self.top_k = top_k
        self.labels = labels
        self.pad = pad
        self.layout = layout
        self.batch_size = max(1, batch_size)
        self.resume = resume
        self.stdout = stdout or sys.stdout
        self.report = report or (lambda message: print(f"lrptool: {message}", file=sys.stderr))
        _, self.length, self.bag = token_input(explainer.graph, max_len)
        self.classes = explainer.output_size()
        self.rows = embedding_rows(explainer.graph)
        self.manifest = Manifest(outdir)
        self.failures, self.records = [], {}
        self.explained = self.resumed = 0
        self.noted = set()
        self.jsonl = None
        # positions used for tokens, when --max-len is below the model's length
        self.used = max_len if max_len and max_len < self.length else None

    def ranks(self):
        return [None] if not self.top_k else list(range(1, self.top_k + 1))

    def finished(self, line):
        records = []
        for rank in self.ranks():
            record = self.manifest.finished(line.key, rank, [])
            if record is None or record.get("text") != line.text or record.get("given_class") != line.target:
                return None
            records.append(record)
        return records

    def run(self, lines):
        os.makedirs(self.outdir, exist_ok=True)
        todo = []
        if self.resume:
            remove_stale_parts(self.outdir)
            self.manifest.load()
        for line in lines:
            done = self.finished(line) if self.resume and line.problem is None else None
            if done is None:
                todo.append(line)
            else:
                self.records[line.key] = done
                self.resumed += 1
        if self.resumed:
            self.report(f"resuming: {self.resumed} text(s) already explained")
        if "jsonl" in self.formats:
            path = os.path.join(self.outdir, JSONL)
            kept = [r for line in lines for r in self.records.get(line.key, [])]
            write_atomically(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept).encode("utf-8"),
                             root=self.outdir)
            self.jsonl = open(path, "a", encoding="utf-8")
        try:
            for line in todo:
                if line.problem:
                    self.fail(line, line.problem)
            good = [line for line in todo if line.problem is None]
            for start in range(0, len(good), self.batch_size):
                self.explain_batch(good[start:start + self.batch_size])
        finally:
            self.manifest.close()
            if self.jsonl is not None:
                self.jsonl.close()
        if "html" in self.formats:
            write_page(self.outdir, [r for line in lines for r in self.records.get(line.key, [])])
        return self.failures

    def encode(self, lines):
        placed, kept = [], []
        for line in lines:
            try:
                if line.target is not None and (line.target < 0 or (self.classes and line.target >= self.classes)):
                    raise TextError(f"class {line.target} is out of range: the model has {self.classes} outputs")
                item = fit_text(self.tokenizer, line.text, self.length, self.bag, self.pad, self.layout, self.used)
                largest = int(item.ids.max()) if item.ids.size and not self.bag else 0
                if largest >= self.rows:
                    raise TextError(f"token id {largest} is beyond the model's embedding table "
                                    f"({self.rows} rows); check the tokenizer, vocabulary or --pad")
            except TextError as problem:
                self.fail(line, str(problem))
                continue
            if item.truncated and "truncated" not in self.noted:
                self.noted.add("truncated")
                self.report(f"note: {line.key} has {len(item.encoded.ids)} tokens and the model takes "
                            f"{self.used or self.length}: longer texts are cut to fit, shorter ones padded with id {self.pad} "
                            "(said once)")
            placed.append(item)
            kept.append(line)
        return kept, placed

    def explain_batch(self, lines):
        lines, placed = self.encode(lines)
        if not lines:
            return
        ids = np.stack([p.ids for p in placed])
        wanted = np.asarray([-1 if line.target is None else line.target for line in lines], dtype=np.int64)
        if self.target != "pred" and not self.top_k:
            wanted = np.where(wanted < 0, int(self.target), wanted)
        try:
            with np.errstate(all="ignore"):
                first = self.explainer.explain(ids, target=wanted)
                runs = [(None, first)]
                if self.top_k:
                    ranking = top_k_targets(first.outputs, self.top_k)
                    runs = [(1, first)] + [(rank + 1, self.explainer.explain(ids, target=ranking[rank]))
                                           for rank in range(1, min(self.top_k, ranking.shape[0]))]
        except Exception as error:  # noqa: BLE001 - one bad batch must not end the run
            for line in lines:
                self.fail(line, f"explaining failed: {error}")
            return
        differ = self.differ_from_onnxruntime(lines, first)
        for index, (line, item) in enumerate(zip(lines, placed)):
            if index in differ:
                self.fail(line, f"onnxruntime's output for this text is {differ[index]}: lrptool's reading of the "
                                "model's text front end differs here, so the text is not explained (please report "
                                "the model and the text)")
                continue
            records = [self.record(line, item, explanation, index, rank) for rank, explanation in runs]
            if any(r is None for r in records):
                self.fail(line, "the explanation is not finite (NaN or Inf)")
                continue
            for rank, record in zip(self.ranks(), records):
                self.manifest.append(line.key, rank, {}, record)
                if self.jsonl is not None:
                    self.jsonl.write(json.dumps(record, allow_nan=False) + "\n")
                    self.jsonl.flush()
                if "ansi" in self.formats:
                    self.stdout.write(ansi_line(record) + "\n")
                    self.stdout.flush()
            self.records[line.key] = records
            self.explained += 1

    def differ_from_onnxruntime(self, lines, explained):
        """{index: onnxruntime's output} for the texts whose model output onnxruntime computes otherwise than the
        explainer (a model that reads raw text, whose front end lrptool computes itself)."""
        reference = getattr(self.tokenizer, "reference", None)
        if reference is None:
            return {}
        expected = reference.scores([line.text for line in lines])
        if expected is None:
            if "reference" not in self.noted:
                self.noted.add("reference")
                self.report(f"note: onnxruntime cannot run the model here ({reference.problem}); the explained "
                            "scores are not compared with its own")
            return {}
        actual = np.asarray(explained.outputs, dtype=np.float64).reshape(len(lines), -1)
        actual = model_outputs(self.explainer.canonization, actual)
        if actual.shape != expected.shape:
            return {}
        close = np.all(np.isclose(actual, expected, rtol=1e-4, atol=1e-5), axis=1)
        return {int(i): np.array2string(expected[i], precision=4) for i in np.flatnonzero(~close)}

    def record(self, line, item, explanation, index, rank):
        tokens, padding = token_relevance(item, explanation.relevance[index])
        score = float(explanation.scores[index])
        if not (np.isfinite(score) and np.all(np.isfinite(tokens)) and np.isfinite(padding)):
            return None
        target = int(explanation.targets[index])
        sums = TextExplanation(line.text, item.encoded.tokens, tokens, padding, target, score)
        record = {"source": line.source, "line": line.number, "text": line.text, "given_class": line.target,
                  "tokens": item.encoded.tokens, "ids": [int(i) for i in item.encoded.ids],
                  "offsets": [list(s) for s in item.encoded.spans], "relevance": [float(v) for v in tokens],
                  "target": target,
                  "label": self.labels[target] if self.labels and target < len(self.labels) else None,
                  "score": score, "relevance_sum": sums.total, "padding_relevance": padding,
                  "padding_share": sums.padding_share, "absorbed": score - sums.total,
                  "truncated": bool(item.truncated), "method": str(self.explainer.method),
                  **out_of_vocabulary(item),
                  "text_sha256": digest(line.text.encode("utf-8", "surrogateescape"))}
        if rank is not None:
            record["rank"] = rank
        if self.explainer.method not in GRADIENT_METHODS and score and "negative" not in self.noted and score < 0:
            self.noted.add("negative")
            self.report(f"note: {line.key}: the explained score is negative ({score:.4g}); relevance keeps its sign, "
                        "so red and blue swap meaning for that text")
        return record

    def fail(self, line, problem):
        self.failures.append((line.key, problem))
        self.report(f"skipped {line.key}: {problem}")


def run_explain_text(model, input_file, outdir, model_settings, tokenizer, max_len, pad, layout, method, target,
                     labels, formats, batch_size, resume, low_memory, providers, stdin):
    """The ``explain-text`` command after option parsing; returns the failures."""
    import click

    from .cli_options import (NOTES, check_labels, check_target_range, open_model, parse_target, read_labels,
                              say_notes)
    from .errors import LrpToolError
    from .files import regular_file_problem
    from .lrp import Explainer
    from .text import make_tokenizer

    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    if not wanted or any(f not in FORMATS for f in wanted):
        raise LrpToolError(f"--format {formats!r}: choose from {', '.join(FORMATS)}")
    fixed_target, top_k = parse_target(target)
    label_names = read_labels(labels) if labels else None
    if input_file != "-":
        problem = regular_file_problem(input_file)
        if problem:
            raise LrpToolError(f"{input_file}: {problem}; give a text file with one text per line, or - for stdin")
    settings = dict(model_settings)
    if max_len and not settings.get("input_size"):
        settings["input_size"] = str(max_len)
    from .text_frontend import read_text_model

    text_model = read_text_model(model)
    if text_model is not None:
        graph, chosen = text_model
        NOTES.extend(graph.notes)
        if tokenizer != "bytes":
            click.echo(f"lrptool: note: the model reads raw text with its own tokenizer; --tokenizer {tokenizer} is "
                       "not used", err=True)
    else:
        try:
            graph = open_model(model, **settings)
        except LrpToolError as error:
            if "--input-size" in str(error) and not max_len:
                raise LrpToolError(f"{error}; for a text model give --max-len") from None
            raise
    name, length, bag = token_input(graph, max_len)
    if text_model is None:
        chosen = make_tokenizer(tokenizer, model, unknown=-1 if bag else None)
    if bag and chosen.kind == "bytes":
        raise LrpToolError(f"{model}: the input {name!r} takes {length} features, not token ids: a bag-of-words model "
                           "needs the vocabulary that maps words to features (--tokenizer vocab.json)")
    if bag and chosen.largest_id() >= length:
        raise LrpToolError(f"{chosen.source}: the vocabulary maps a word to feature {chosen.largest_id()}; the model "
                           f"has {length} features")
    if not bag and pad >= embedding_rows(graph):
        raise LrpToolError(f"--pad {pad}: beyond the model's embedding table; give an id the model knows")
    explainer = Explainer(graph, method, primitives="numpy" if low_memory else "onnxruntime",
                          forward_backend="lrptool" if low_memory else "auto", providers=providers)
    check_target_range(fixed_target, top_k, explainer.output_size())
    check_labels(labels, label_names, explainer.output_size())
    if input_file == "-":
        data = stdin.read()
        data = data.encode("utf-8") if isinstance(data, str) else data
    else:
        try:
            with open(input_file, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise LrpToolError(f"{input_file}: cannot read ({error.strerror or error})") from None
    lines = read_lines("stdin" if input_file == "-" else input_file, data, label_names)
    if not lines:
        raise LrpToolError(f"{'stdin' if input_file == '-' else input_file}: no text (every line is empty)")
    if max_len and max_len < length:
        length_note = f"the first {max_len} of the model's {length} positions"
    else:
        length_note = f"{length} positions"
    if text_model is not None:
        click.echo(f"lrptool: tokenizer: {chosen.describe()}; explained with {method}", err=True)
    else:
        click.echo(f"lrptool: tokenizer: {chosen.describe()}; {length_note}, layout {layout}, padding id {pad}; "
                   f"explained with {method}", err=True)
    say_notes()
    runner = TextRunner(explainer, chosen, outdir, wanted, fixed_target, top_k, label_names, pad, layout, batch_size,
                        resume, max_len=max_len)
    return run_and_report(runner, lines, outdir, "text(s)")


def write_page(outdir, records, title="lrptool explain-text"):
    """OUTDIR/index.html with ``records`` as coloured word spans, written whole or not at all; its path."""
    path = os.path.join(outdir, HTML)
    write_atomically(path, html_page(records, title).encode("utf-8"), root=outdir)
    return path


def run_and_report(runner, items, outdir, unit):
    """Run ``runner`` (a TextRunner or a SignalRunner) over ``items`` and say what it did on stderr; the
    failures. A folder that cannot be written to ends the run in one line."""
    import click

    from .errors import LrpToolError

    try:
        failures = runner.run(items)
    except OSError as error:
        raise LrpToolError(f"{error.filename or outdir}: cannot write ({error.strerror or error})") from None
    click.echo(f"lrptool: explained {runner.explained} {unit} into {outdir}"
               f"{f' ({runner.resumed} resumed)' if runner.resumed else ''}; {len(failures)} failed", err=True)
    return failures

