"""The JSON-lines stream of ``lrptool explain``: a fresh file, or on ``--resume`` the same file
continued, with a line cut short by a kill removed first."""

import json
import os


def open_records(path, resume):
    """(stream, recorded): the stream to write JSON lines to (None: stdout) and, when resuming into
    an existing file, the (path, rank, method) triples it already holds."""
    if not path:
        return None, set()
    recorded = set()
    if resume and os.path.isfile(path):
        with open(path, "rb") as handle:
            data = handle.read()
        whole = data[:data.rfind(b"\n") + 1]
        for line in whole.split(b"\n"):
            try:
                record = json.loads(line.decode("utf-8"))
                recorded.add((record["path"], record.get("rank"), record.get("method")))
            except (ValueError, KeyError, TypeError):
                continue
        if len(whole) != len(data):
            with open(path, "r+b") as handle:
                handle.truncate(len(whole))
        return open(path, "a", encoding="utf-8"), recorded
    return open(path, "w", encoding="utf-8"), recorded
