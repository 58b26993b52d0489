"""The fuzz suite's harness: run ``lrptool`` commands on mutated inputs and classify what happened.

A ``CliWorker`` is a long-lived subprocess (tests/fuzz_worker.py) that runs one command at a time
in-process, under an address-space limit and a per-command timeout; a command that hangs or kills
its worker is recorded and the worker restarted. ``Outcome.kind`` is one of

- ``ok``: exit 0, or 1 (some images skipped, each with its one line)
- ``error``: exit 2 with exactly one line on stderr (``lrptool: error: …``), or click's usage error
- ``traceback``, ``internal`` (exit 3: an exception no check foresaw), ``noisy`` (exit 2 with more
  than one line, or a warning on stderr), ``crash`` (the worker died), ``timeout``.

Only ``ok`` and ``error`` are acceptable. ``MUTANTS`` (``LRPTOOL_FUZZ_MUTANTS``, default 200) is
how many mutants each format gets; ``make fuzz`` raises it. Counts per format and outcome are kept
in ``TALLY`` and printed at the end of the pytest run (and written to ``LRPTOOL_FUZZ_REPORT`` as
JSON when that is set).
"""

import base64
import collections
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MUTANTS = int(os.environ.get("LRPTOOL_FUZZ_MUTANTS", "200"))
SEED = int(os.environ.get("LRPTOOL_FUZZ_SEED", "20261130"))
ACCEPTABLE = ("ok", "error")
TALLY = collections.defaultdict(collections.Counter)


@dataclass
class Outcome:
    argv: list
    kind: str
    code: object = None
    stderr: str = ""
    stdout: str = ""
    seconds: float = 0.0
    label: str = ""
    details: dict = field(default_factory=dict)

    def describe(self):
        tail = "\n    ".join(self.stderr.strip().splitlines()[-12:])
        return f"[{self.kind}, exit {self.code}, {self.seconds:.1f}s] {self.label} lrptool {' '.join(self.argv)}\n    {tail}"


def stderr_lines(text):
    return [line for line in text.splitlines() if line.strip()]


def is_usage_error(lines):
    return bool(lines) and lines[0].startswith("Usage:") and lines[-1].startswith("Error:") and len(lines) <= 4


def classify(code, escaped, stderr):
    lines = stderr_lines(stderr)
    if escaped or "Traceback (most recent call last)" in stderr:
        return "traceback"
    if code == 3 or any("internal error" in line for line in lines):
        return "internal"
    if any("Warning:" in line or "RuntimeWarning" in line for line in lines):
        return "noisy"
    if code == 2:
        if is_usage_error(lines):
            return "error"
        # the error line may follow one line per skipped image ("lrptool: skipped …") and the setting
        # evaluate said when it started ("lrptool: evaluate: …"), nothing else
        return "error" if lines and lines[-1].startswith("lrptool: error: ") and all(
            line.startswith(("lrptool: skipped ", "lrptool: evaluate: ")) for line in lines[:-1]) else "noisy"
    if code in (0, 1):
        return "ok"
    if code == 130:
        return "crash"
    return "internal"


class CliWorker:
    """A subprocess that runs ``lrptool.cli.main(argv)`` in-process for one request at a time."""

    def __init__(self, timeout=60.0, memory=None, env=None):
        self.timeout = timeout
        self.memory = memory or int(os.environ.get("LRPTOOL_FUZZ_MEMORY", 6 * 2 ** 30))
        self.env = dict(os.environ, **(env or {}))
        self.env["LRPTOOL_FUZZ_MEMORY"] = str(self.memory)
        self.env.setdefault("PYTHONWARNINGS", "default")
        self.process = None

    def start(self):
        requests_read, self.requests = os.pipe()
        self.answers, answers_write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fuzz_worker.py"), str(requests_read), str(answers_write)],
            pass_fds=(requests_read, answers_write), env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(requests_read)
        os.close(answers_write)
        self.buffer = b""
        line = self.read_line(120.0)
        if line != b"ready":
            self.stop()
            raise RuntimeError("the fuzz worker did not start")

    def stop(self):
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
            for fd in (self.requests, self.answers):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.process = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def read_line(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.answers], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.answers, 1 << 20)
            if not chunk:
                return b""
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def run(self, argv, stdin=b"", label="", cwd=None, timeout=None):
        """Run ``lrptool ARGV`` and classify it; the outcome is tallied under ``label``'s first word."""
        if self.process is None:
            self.start()
        argv = [str(a) for a in argv]
        request = {"argv": argv, "stdin": base64.b64encode(stdin).decode("ascii"), "cwd": cwd}
        started = time.monotonic()
        os.write(self.requests, (json.dumps(request) + "\n").encode("utf-8"))
        line = self.read_line(timeout or self.timeout)
        seconds = time.monotonic() - started
        if not line:
            kind = "timeout" if line is None else "crash"
            status = self.process.poll()
            self.stop()
            outcome = Outcome(argv, kind, code=status, seconds=seconds, label=label)
        else:
            answer = json.loads(line)
            outcome = Outcome(argv, classify(answer["code"], answer["escaped"], answer["stderr"]), answer["code"],
                              (answer["escaped"] or "") + answer["stderr"], answer["stdout"], seconds, label)
        if label:
            TALLY[label.split()[0]][outcome.kind] += 1
        return outcome


def assert_clean(outcomes, limit=10):
    """Fail with the first ``limit`` unacceptable outcomes, each with its command and stderr."""
    bad = [o for o in outcomes if o.kind not in ACCEPTABLE]
    if bad:
        listed = "\n".join(o.describe() for o in bad[:limit])
        raise AssertionError(f"{len(bad)} of {len(outcomes)} runs ended badly (seed {SEED}):\n{listed}")


# -- byte-level mutations -------------------------------------------------------------------------

def mutate_bytes(data, rng):
    """One random damage to ``data``: truncation, flipped bits or bytes, a varint made huge, a
    chunk deleted, duplicated or inserted. ``rng`` is a ``numpy.random.Generator``."""
    data = bytearray(data)
    n = len(data)
    kind = rng.integers(7)
    if n == 0:
        return bytes(rng.integers(0, 256, 16, dtype=np.uint8))
    if kind == 0:                                   # truncate
        return bytes(data[:int(rng.integers(0, n))])
    if kind == 1:                                   # flip a few bits
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(n))
            data[i] ^= 1 << int(rng.integers(8))
        return bytes(data)
    if kind == 2:                                   # overwrite bytes with interesting values
        for _ in range(int(rng.integers(1, 5))):
            i = int(rng.integers(n))
            data[i] = int(rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE]))
        return bytes(data)
    if kind == 3:                                   # make a varint huge (0xFF continuation bytes)
        i = int(rng.integers(n))
        data[i:i + 1] = b"\xff" * int(rng.integers(2, 10)) + b"\x0f"
        return bytes(data)
    if kind == 4:                                   # delete a chunk
        i = int(rng.integers(n))
        return bytes(data[:i] + data[i + int(rng.integers(1, 64)):])
    if kind == 5:                                   # duplicate a chunk
        i = int(rng.integers(n))
        return bytes(data[:i] + data[i:i + int(rng.integers(1, 64))] * 2 + data[i:])
    i = int(rng.integers(n))                        # insert random bytes
    return bytes(data[:i] + bytes(rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8)) + data[i:])


# -- what a run left behind -----------------------------------------------------------------------

def strict_json_lines(text):
    """Parse JSON lines, refusing NaN/Infinity (which are not JSON)."""
    def refuse(constant):
        raise ValueError(f"non-finite number {constant} in a JSON line")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines() if line.strip()]


def non_finite_outputs(folder):
    """Files under ``folder`` holding NaN or Inf: .npy arrays and JSON (lines) files."""
    bad = []
    for parent, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(parent, name)
            if name.endswith(".npy"):
                try:
                    array = np.load(path)
                except Exception:  # noqa: BLE001
                    bad.append((path, "unreadable .npy"))
                    continue
                if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
                    bad.append((path, "NaN or Inf in the array"))
            elif name.endswith((".json", ".jsonl")):
                try:
                    with open(path, encoding="utf-8") as handle:
                        text = handle.read()
                    if name.endswith(".json"):
                        json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
                    else:
                        strict_json_lines(text)
                except ValueError as error:
                    bad.append((path, str(error)))
    return bad


def finite_number(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def tally_report():
    lines = []
    for label in sorted(TALLY):
        counts = TALLY[label]
        total = sum(counts.values())
        listed = ", ".join(f"{kind} {counts[kind]}" for kind in sorted(counts))
        lines.append(f"{label}: {total} runs: {listed}")
    return lines
