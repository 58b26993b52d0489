"""The output folder's record of finished work: ``OUT/.lrptool-manifest.jsonl``.

An image counts as explained when its line is here *and* every file the line lists is still a
regular file (not a symbolic link) with the recorded size and SHA-256. ``--resume`` trusts nothing
else: a 0-byte ``.npy``, a junk PNG or a link to some other file is redone. Each line also holds the
image's JSON record, so that records a killed run had not yet written out can be recovered.

Lines are appended with one ``write`` on a descriptor opened with ``O_APPEND``, so that two runs
sharing a folder never interleave inside a line; a line cut short by a kill is ignored.
"""

import hashlib
import json
import os

NAME = ".lrptool-manifest.jsonl"


def digest(payload):
    return hashlib.sha256(payload).hexdigest()


def file_digest(path):
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def whole(path, size, sha256):
    """Whether ``path`` is a regular file (not a link) with this size and content."""
    try:
        status = os.lstat(path)
    except OSError:
        return False
    if not os.path.isfile(path) or os.path.islink(path) or status.st_size != size:
        return False
    try:
        return file_digest(path) == sha256
    except OSError:
        return False


class Manifest:
    """``entries``: what ``load`` read, and with ``keep`` what ``append`` wrote since (a report page
    needs them all; a run without one keeps none of its own, however many images it explains)."""

    def __init__(self, outdir, keep=True):
        self.outdir = outdir
        self.path = os.path.join(outdir, NAME)
        self.entries = {}
        self.keep = keep
        self.descriptor = None

    def load(self):
        """Read the finished entries: the last complete line per (stem, rank, method) wins."""
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return self
        for line in data.split(b"\n"):
            try:
                entry = json.loads(line.decode("utf-8"))
                key = (entry["stem"], entry.get("rank"), entry.get("method"))
                files = {str(k): (int(v[0]), str(v[1])) for k, v in entry["files"].items()}
                record = dict(entry["record"])
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                continue  # a line cut short by a kill, or not ours
            self.entries[key] = (files, record)
        return self

    def finished(self, stem, rank, expected, method=None):
        """The recorded JSON record when the entry lists exactly ``expected`` (paths relative to the
        output folder) and every one of them is whole; None otherwise."""
        found = self.entries.get((stem, rank, method))
        if found is None:
            return None
        files, record = found
        if set(files) != set(expected):
            return None
        for relative, (size, sha256) in files.items():
            if not whole(os.path.join(self.outdir, relative), size, sha256):
                return None
        return record

    def append(self, stem, rank, files, record, method=None):
        """Record an image as finished; ``files`` maps paths relative to the output folder to
        (size, sha256). ``method``: which of several methods in one run (None when there is one)."""
        entry = {"stem": stem, "rank": rank, "files": {k: list(v) for k, v in files.items()}, "record": record}
        if method is not None:
            entry["method"] = method
        line = json.dumps(entry, allow_nan=False) + "\n"
        if self.descriptor is None:
            self.descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0),
                                      0o666)
        os.write(self.descriptor, line.encode("utf-8"))
        self.entries.pop((stem, rank, method), None)  # a redone image moves to the end, as in the file
        if self.keep:
            self.entries[(stem, rank, method)] = (dict(files), record)

    def close(self):
        if self.descriptor is not None:
            os.close(self.descriptor)
            self.descriptor = None
