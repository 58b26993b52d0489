"""Runs ``lrptool`` commands in-process, one request at a time, for the fuzz suite (tests/fuzz_support.py).

Requests arrive as JSON lines on the file descriptor given as the first argument, answers leave on
the second. Each command runs with fds 0/1/2 pointed at files of its own, so that whatever it
prints — from Python, from C libraries, from warnings — is seen by the harness. The address space
is limited (``LRPTOOL_FUZZ_MEMORY`` bytes) so that a file asking for huge memory shows up as a
failure instead of swapping the machine.
"""

import base64
import io
import json
import os
import resource
import sys
import tempfile
import traceback


def limit_memory():
    limit = int(os.environ.get("LRPTOOL_FUZZ_MEMORY", 6 * 2 ** 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_one(request, scratch):
    from lrptool import cli
    from lrptool.explain_folder import STOP

    STOP.clear()
    out_path, err_path = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    stdin_bytes = base64.b64decode(request.get("stdin", ""))
    stdin_path = os.path.join(scratch, "stdin")
    with open(stdin_path, "wb") as handle:
        handle.write(stdin_bytes)
    streams = [open(stdin_path, "rb"), open(out_path, "wb"), open(err_path, "wb")]
    for fd, stream in enumerate(streams):
        os.dup2(stream.fileno(), fd)
    sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8", write_through=True)
    # as the real stderr does, a name that is not UTF-8 is printed escaped
    sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  write_through=True)
    escaped = None
    code = None
    cwd = os.getcwd()
    try:
        if request.get("cwd"):
            os.chdir(request["cwd"])
        cli.main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - what escapes main is exactly what the fuzz suite looks for
        escaped = traceback.format_exc()
    finally:
        os.chdir(cwd)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        for fd, copy in enumerate(saved):
            os.dup2(copy, fd)
            os.close(copy)
        for stream in streams:
            stream.close()
        sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__
    with open(out_path, "rb") as handle:
        stdout = handle.read()
    with open(err_path, "rb") as handle:
        stderr = handle.read()
    return {"code": code, "escaped": escaped, "stdout": stdout.decode("utf-8", "replace")[-20000:],
            "stderr": stderr.decode("utf-8", "replace")[-20000:]}


def main():
    requests_fd, answers_fd = int(sys.argv[1]), int(sys.argv[2])
    limit_memory()
    import lrptool.cli  # noqa: F401 - import once, before the first request's clock starts

    requests = os.fdopen(requests_fd, "r", encoding="utf-8")
    answers = os.fdopen(answers_fd, "w", encoding="utf-8")
    answers.write("ready\n")
    answers.flush()
    with tempfile.TemporaryDirectory(prefix="lrptool-fuzz-worker-") as scratch:
        for line in requests:
            answer = run_one(json.loads(line), scratch)
            answers.write(json.dumps(answer) + "\n")
            answers.flush()


if __name__ == "__main__":
    main()
