"""``lrptool explain-signal``: WAV and ``.npy`` files in, per-sample relevance out.

Per input file, in the output folder: ``STEM.relevance.npy`` (one value per input sample, float64),
``STEM.heatmap.png`` (the waveform coloured by relevance over the model output per frame), a line in
``explanations.jsonl``; at the end ``index.html`` lists every file with its picture (the page of
``lrptool report``). Every file is written whole or not at all; a finished input is recorded in the
folder's manifest before its JSON line, so that ``--resume`` skips exactly the finished inputs (same
content, same settings) and rebuilds the JSON lines and the page from the manifest. A file that cannot
be explained is one line on stderr and exit status 1.
"""

import json
import os
import sys

import numpy as np

from .files import remove_stale_parts, write_atomically
from .manifest import Manifest, digest, file_digest
from .signal import SignalError, parse_class, parse_frames, read_signal, signal_files

FORMATS = ("npy", "png", "jsonl", "html")
JSONL, HTML = "explanations.jsonl", "index.html"


def npy_bytes(array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def output_stems(paths):
    """A distinct output name per input: its base name without the extension, with the extension where
    two inputs share that, and -2, -3, … where they still do."""
    bases = [os.path.basename(os.path.normpath(p)) for p in paths]
    stems = [os.path.splitext(b)[0] or b for b in bases]
    stems = [b if stems.count(s) > 1 else s for s, b in zip(stems, bases)]
    seen, out = {}, []
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


class SignalRunner:
    """Explains signal files one by one with a ``SignalModel``; see ``lrptool explain-signal --help``."""

    def __init__(self, model, outdir, formats=FORMATS, target="max", klass=None, sample_rate=None, clip=99.5,
                 colormap="bwr", batch_size=256, resume=False, report=None, channel=None):
        self.model = model
        self.outdir = outdir
        self.formats = tuple(formats)
        self.target = target
        self.klass = klass
        self.channel = channel
        self.any_rate = sample_rate == "any"
        self.clip = clip
        self.colormap = colormap
        self.batch_size = batch_size
        self.resume = resume
        self.report = report or (lambda message: print(f"lrptool: {message}", file=sys.stderr))
        self.manifest = Manifest(outdir)
        self.failures, self.records, self.noted = [], {}, set()
        self.explained = self.resumed = 0
        self.jsonl = None
        self.settings = json.dumps({"model": os.path.abspath(model.path), "output": model.output,
                                    "layout": model.layout, "frame": model.frame, "hop": model.hop, "method": str(model.method),
                                    "options": {k: str(v) for k, v in sorted(model.options.items())},
                                    "bound": {k: digest(np.ascontiguousarray(v).tobytes() + str(v.dtype).encode())
                                              for k, v in sorted(model.bound.items())},
                                    "target": str(target), "class": klass, "formats": sorted(self.formats),
                                    "clip": clip, "colormap": colormap, "channel": channel}, sort_keys=True)

    def expected_files(self, stem):
        return [name for name, kind in ((f"{stem}.relevance.npy", "npy"), (f"{stem}.heatmap.png", "png"))
                if kind in self.formats]

    def finished(self, stem, sha):
        record = self.manifest.finished(stem, None, self.expected_files(stem))
        if record is None or record.get("input_sha256") != sha or record.get("settings") != digest(
                self.settings.encode("utf-8")):
            return None
        return record

    def run(self, paths):
        os.makedirs(self.outdir, exist_ok=True)
        stems = output_stems(paths)
        if self.resume:
            remove_stale_parts(self.outdir)
            self.manifest.load()
        todo = []
        for path, stem in zip(paths, stems):
            sha = self.input_digest(path)
            done = self.finished(stem, sha) if self.resume and sha else None
            if done is None:
                todo.append((path, stem, sha))
            else:
                self.records[stem] = done
                self.resumed += 1
        if self.resumed:
            self.report(f"resuming: {self.resumed} file(s) already explained")
        if "jsonl" in self.formats:
            path = os.path.join(self.outdir, JSONL)
            kept = [self.records[s] for s in stems if s in self.records]
            write_atomically(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept).encode("utf-8"),
                             root=self.outdir)
            self.jsonl = open(path, "a", encoding="utf-8")
        try:
            for path, stem, sha in todo:
                self.explain_file(path, stem, sha)
        finally:
            self.manifest.close()
            if self.jsonl is not None:
                self.jsonl.close()
        if "html" in self.formats:
            from .report import write_page

            entries = [{"stem": s, "rank": None, "method": None, "files": self.expected_files(s),
                        "record": self.records[s]} for s in stems if s in self.records]
            write_page(self.outdir, entries, title="lrptool explain-signal", colormap=self.colormap, item="file",
                       settings={"model": os.path.basename(self.model.path), "output": self.model.output,
                                 "method": self.model.method, "target": self.target})
        return self.failures

    @staticmethod
    def input_digest(path):
        try:
            return file_digest(path)
        except OSError:
            return None

    def explain_file(self, path, stem, sha):
        from .files import regular_file_problem

        problem = regular_file_problem(path)
        if problem:
            return self.fail(path, problem)
        try:
            signal = read_signal(path, self.channel)
            self.check_rate(signal)
            with np.errstate(all="ignore"):
                result = self.model.explain(signal, self.target, self.klass, self.batch_size)
        except SignalError as error:
            return self.fail(path, str(error))
        except Exception as error:  # noqa: BLE001 - one bad file must not end the run
            return self.fail(path, f"explaining failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
        finite = (np.all(np.isfinite(result.relevance)) and np.isfinite(result.padding)
                  and np.all(np.isfinite(result.scores)))
        if not finite:
            return self.fail(path, "the explanation is not finite (NaN or Inf)")
        self.notes(path, signal, result)
        files = {}
        rate = signal.rate or self.model.sample_rate
        if "npy" in self.formats:
            files[f"{stem}.relevance.npy"] = npy_bytes(result.relevance)
        if "png" in self.formats:
            from .signal_outputs import signal_png

            title = (f"{os.path.basename(path)} · {self.model.output}, {result.frames_text()} · score "
                     f"{result.score:.4g} · sum R {result.total:.4g}")
            files[f"{stem}.heatmap.png"] = signal_png(signal.samples, result.relevance, result.scores, result.frames,
                                                      result.frame_length, rate, title, self.model.output, self.clip,
                                                      self.colormap, result.hop)
        record = self.record(path, stem, sha, signal, result, rate)
        for relative, payload in files.items():
            write_atomically(os.path.join(self.outdir, relative), payload, root=self.outdir)
        self.manifest.append(stem, None, {k: (len(v), digest(v)) for k, v in files.items()}, record)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record, allow_nan=False) + "\n")
            self.jsonl.flush()
        self.records[stem] = record
        self.explained += 1

    def check_rate(self, signal):
        expected = self.model.sample_rate
        if self.any_rate or not expected or not signal.rate or signal.rate == expected:
            return
        raise SignalError(f"sampled at {signal.rate} Hz; the model expects {expected} Hz (resample the file, or give "
                          "--sample-rate any to explain it as it is)")

    def notes(self, path, signal, result):
        if signal.channels > 1 and self.channel is None and "channels" not in self.noted:
            self.noted.add("channels")
            self.report(f"note: {path} has {signal.channels} channels: they are averaged to one (--channel N takes one; said "
                        "once)")
        if result.score < 0 and self.model.method not in ("gradient", "gradient-x-input") \
                and "negative" not in self.noted:
            self.noted.add("negative")
            self.report(f"note: {path}: the explained score is negative ({result.score:.4g}); relevance keeps its "
                        "sign, so red and blue swap meaning for that file (said once)")
        if result.padded and "padded" not in self.noted:
            self.noted.add("padded")
            self.report(f"note: {path}: {len(signal.samples)} samples fill {len(result.scores)} frames of "
                        f"{result.frame_length}{f' every {result.hop}' if result.hop != result.frame_length else ''} "
                        f"with {result.padded} zeros at the end; the relevance on them is "
                        "reported as padding_relevance (said once)")

    def record(self, path, stem, sha, signal, result, rate):
        score, total = result.score, result.total
        return {"file": path, "stem": stem, "kind": signal.kind, "samples": len(signal.samples),
                "sample_rate": rate, "channels": signal.channels, "channel": self.channel, "frame_length": result.frame_length,
                "hop": result.hop,
                "frames": len(result.scores), "padded": result.padded, "output": self.model.output,
                "class": result.klass, "explained_frames": [int(f) for f in result.frames],
                "frame": int(result.frames[0]) if len(result.frames) == 1 else None,
                "label": result.frames_text(), "target": result.frames[0] if len(result.frames) == 1 else None,
                "score": score, "scores": [float(s) for s in result.scores], "relevance_sum": total,
                "padding_relevance": result.padding, "absorbed": score - total,
                "conservation_error": abs(total - score) / abs(score) if score else None,
                "method": str(self.model.method), "input_sha256": sha,
                "settings": digest(self.settings.encode("utf-8"))}

    def fail(self, path, problem):
        self.failures.append((path, problem))
        self.report(f"skipped {path}: {problem}")


def run_explain_signal(model, inputs, outdir, model_settings, binds, model_output, frame, layout, sample_rate, method,
                       recurrent_bias, target, klass, formats, clip, colormap, batch_size, resume, hop=None,
                       channel=None):
    """The ``explain-signal`` command after option parsing; returns the failures."""
    import click

    from .cli_options import say_notes
    from .errors import LrpToolError
    from .heatmaps import check_colormap
    from .signal import SignalModel, parse_binds
    from .text_runner import run_and_report

    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    if not wanted or any(f not in FORMATS for f in wanted):
        raise LrpToolError(f"--format {formats!r}: choose from {', '.join(FORMATS)}")
    check_colormap(colormap)
    frames = parse_frames(target)
    chosen_class = parse_class(klass)
    rate = parse_rate(sample_rate)
    paths = signal_files(inputs, outdir)
    size = str(model_settings.get("input_size") or "").strip()
    if size.isdigit() and frame is None:
        frame = int(size)       # --input-size N: the free frame length, as --frame N
    signal_model = SignalModel(model, bind=parse_binds(binds), output=model_output, frame=frame, layout=layout,
                               method=method, sample_rate=rate if isinstance(rate, int) else None,
                               model_options=model_settings, recurrent_bias=recurrent_bias, hop=hop)
    click.echo(f"lrptool: {signal_model.describe()}; explained with {method}", err=True)
    say_notes()
    runner = SignalRunner(signal_model, outdir, wanted, frames, chosen_class, rate, clip, colormap, batch_size, resume,
                          channel=channel)
    return run_and_report(runner, paths, outdir, "file(s)")


def parse_rate(text):
    from .errors import LrpToolError

    if text is None:
        return None
    text = str(text).strip().lower()
    if text == "any":
        return "any"
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise LrpToolError(f"--sample-rate {text!r}: give the rate in Hz (e.g. 16000) or any")
