"""``lrptool explain`` (and ``evaluate``) on a Dask cluster: the client side.

``--cluster local:N`` starts a ``distributed.LocalCluster`` of N worker processes;
``--scheduler tcp://HOST:PORT`` or ``--scheduler-file FILE`` joins a running one (started by hand,
by ``dask-jobqueue`` on SLURM/PBS, on Kubernetes, …). The client sends chunks of image paths
(``--chunk-size``) as tasks, at most a bounded window of them at a time (``as_completed``), so that
neither it nor the scheduler holds more than a window of work; the workers (``lrptool.cluster_worker``)
write the files into ``-o``, which every worker must see at the same path.

The client alone appends to the manifest and writes the JSON lines, chunk by chunk in the order the
chunks finish (in input order within a chunk), so ``--resume`` behaves as in one process. A worker
that dies takes nothing with it: its chunk was not recorded, Dask runs it again elsewhere, and
files are renamed into place whole, so a half-done chunk leaves only temporary parts, which are
removed at the end. A chunk whose workers keep dying is split into single images; an image that
still kills its worker is reported once as failed.
"""

import contextlib
import logging
import os
import secrets
import sys
import time
from collections import deque

import click

from .errors import LrpToolError

DEFAULT_CHUNK_BATCHES = 4
#: Seconds a run waits while the cluster has no worker at all before it stops (--resume continues).
NO_WORKER_PATIENCE = 300


def cluster_options(function):
    """The options that put a command on a Dask cluster."""
    options = [
        click.option("--cluster", "cluster_spec", metavar="local:N",
                     help="Run on a Dask LocalCluster of N worker processes on this machine "
                          "(pip install 'lrptool[dask]')."),
        click.option("--scheduler", metavar="tcp://HOST:PORT", help="Run on the Dask cluster of this scheduler."),
        click.option("--scheduler-file", type=click.Path(dir_okay=False),
                     help="Run on the Dask cluster described by this scheduler file."),
        click.option("--chunk-size", type=click.IntRange(1),
                     help=f"Images per cluster task (default {DEFAULT_CHUNK_BATCHES} batches)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def require_dask(option):
    try:
        import distributed
    except ImportError:
        raise LrpToolError(f"{option} needs Dask's distributed scheduler, which is not installed: "
                           "pip install 'lrptool[dask]'") from None
    return distributed


def parse_local(text):
    """``local:N`` → N (worker processes, N ≥ 1)."""
    kind, _, count = text.strip().partition(":")
    if kind == "local" and count.isdigit() and int(count) >= 1:
        return int(count)
    raise LrpToolError(f"--cluster {text!r}: give local:N, N worker processes on this machine (e.g. local:4); "
                       "for other machines start a Dask scheduler and give --scheduler or --scheduler-file")


def chosen(cluster_spec=None, scheduler=None, scheduler_file=None):
    """The one cluster option given, or None; two of them are a mistake."""
    given = [name for name, value in (("--cluster", cluster_spec), ("--scheduler", scheduler),
                                      ("--scheduler-file", scheduler_file)) if value]
    if len(given) > 1:
        raise LrpToolError(f"{' and '.join(given)}: give only one of them")
    if cluster_spec:
        parse_local(cluster_spec)
    if given:
        require_dask(given[0])
    return given[0] if given else None


@contextlib.contextmanager
def connected(cluster_spec=None, scheduler=None, scheduler_file=None, wait=60):
    """A ``distributed.Client`` for the cluster options (None when none is given), closed at the end
    together with a LocalCluster it started."""
    option = chosen(cluster_spec, scheduler, scheduler_file)
    if option is None:
        yield None
        return
    distributed = require_dask(option)
    workers = parse_local(cluster_spec) if cluster_spec else None
    # Dask reports worker restarts and lost connections as log lines; the run reports what matters
    logging.getLogger("distributed").setLevel(logging.ERROR)
    local = client = None
    try:
        if workers:
            local = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                             dashboard_address=":0", silence_logs=logging.ERROR)
            client = distributed.Client(local)
        else:
            where = scheduler or scheduler_file
            try:
                client = (distributed.Client(scheduler, timeout=wait) if scheduler
                          else distributed.Client(scheduler_file=scheduler_file, timeout=wait))
            except (OSError, TimeoutError, ValueError) as error:
                raise LrpToolError(f"{option} {where}: cannot reach the Dask scheduler ({error}); "
                                   "is it running, and is the address right?") from None
            try:
                client.wait_for_workers(1, timeout=wait)
            except TimeoutError:
                raise LrpToolError(f"{option} {where}: no worker joined the scheduler within {wait} s") from None
        yield client
    finally:
        if client is not None:
            client.close()
        if local is not None:
            local.close()


@contextlib.contextmanager
def prepared_on_workers(client, kind, build, payload):
    """Register a run's recipe with every worker (also those that join or restart later) for the
    time of the run; yields the name tasks find it by."""
    from .cluster_worker import Prepared

    name = f"lrptool-{kind}-{secrets.token_hex(6)}"
    register = getattr(client, "register_plugin", None) or client.register_worker_plugin
    register(Prepared(name, build, payload), name=name)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(name)


def arrivals(client, finished):
    """(future, result) from ``finished`` (an ``as_completed`` with results) as each task ends. A
    cluster left without any worker for NO_WORKER_PATIENCE seconds (all died and none came back)
    ends the run with one line instead of waiting forever."""
    checked = time.monotonic()
    alone_since = None
    while True:
        if finished.has_ready():
            yield from finished.next_batch(block=False)
            continue
        if finished.is_empty():
            return
        now = time.monotonic()
        if now - checked > 5:
            checked = now
            if client.scheduler_info().get("workers"):
                alone_since = None
            elif alone_since is None:
                alone_since = now
            elif now - alone_since > NO_WORKER_PATIENCE:
                raise LrpToolError(f"no worker has been left in the cluster for {NO_WORKER_PATIENCE} s (all died or "
                                   "left); the run stops here, and --resume continues it")
        time.sleep(0.02)


def in_order(client, function, calls, window, distributed, done=None):
    """``function(*call)`` on the cluster for each call, at most ``window`` at a time, yielding the
    results in the order of ``calls`` (a finished task waits for those before it, so that at most
    ``window`` results are held). ``done(result)`` sees each result as it arrives. A task that
    fails, or whose workers keep dying, ends the run with one line."""
    calls = iter(enumerate(calls))
    waiting, held, next_index = {}, {}, 0
    finished = distributed.as_completed(with_results=True, raise_errors=False, loop=client.loop)

    def fill():
        while len(waiting) + len(held) < window:
            entry = next(calls, None)
            if entry is None:
                return
            index, call = entry
            future = client.submit(function, *call, pure=False)
            waiting[future] = (index, call)
            finished.add(future)

    try:
        fill()
        for future, result in arrivals(client, finished):
            index, call = waiting.pop(future)
            if future.status == "error":
                error = result[1]
                if isinstance(error, LrpToolError):
                    raise error
                if isinstance(error, distributed.KilledWorker):
                    raise LrpToolError(f"the workers died every time they took the chunk starting at "
                                       f"{call[1][0] if len(call) > 1 and call[1] else '?'} (out of memory?)")
                raise LrpToolError(f"a worker failed: {type(error).__name__}: {error}") from None
            if done is not None:
                done(result)
            held[index] = result
            while next_index in held:
                yield held.pop(next_index)
                next_index += 1
            fill()
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(list(waiting))
        raise


def evaluate_on_cluster(client, graph, paths, preprocessing, methods, target, patch, steps, orders, replacement, seed,
                        batch_size, explainer_options, chunk_size=None, snapshots=None, progress=None, say=print,
                        readable=None):
    """``lrptool.evaluate.evaluate_methods`` over image files on the cluster, with the same result:
    the workers first check which pictures decode (the images are numbered among those), then
    score chunks of them; the client merges the per-image curves in input order, ``batch_size``
    images at a time as one process does. Unreadable pictures are reported through ``say``; the
    readable paths are appended to ``readable``. Returns (tally, summary, dropped, unreadable count)."""
    import pickle

    import distributed
    import numpy as np

    from .cluster_worker import build_evaluation, evaluate_chunk, readable_chunk
    from .evaluate import Curves, Tally, without_non_finite

    chunk_size = chunk_size or DEFAULT_CHUNK_BATCHES * batch_size
    window = window_size(client)
    chunks = [paths[i:i + chunk_size] for i in range(0, len(paths), chunk_size)]
    good, unreadable = [] if readable is None else readable, 0
    for chunk, problems in zip(chunks, in_order(client, readable_chunk, [(preprocessing, c) for c in chunks],
                                                window, distributed)):
        for path, problem in zip(chunk, problems):
            if problem is None:
                good.append(path)
            else:
                unreadable += 1
                say(f"lrptool: skipped {path}: {problem}")
                if progress:
                    progress(1)
    settings = dict(methods=list(methods), bounds=preprocessing.bounds(), seed=seed,
                    explainer_options=explainer_options, target=target, patch=patch, steps=steps, orders=orders,
                    replacement=replacement, batch_size=batch_size,
                    snapshots={key: snapshots[key] for key in ("images", "steps")} if snapshots else None)
    payload = pickle.dumps({"graph": graph, "preprocessing": preprocessing, "settings": settings,
                            "workers_per_host": workers_per_host(client)}, protocol=pickle.HIGHEST_PROTOCOL)
    throughput = Throughput()
    tally, dropped, merged = Tally(), [], 0
    held = {"scores": {}, "finite": []}

    def merge(count):
        nonlocal merged
        scores = {run: curve[:, :count] for run, curve in held["scores"].items()}
        finite = held["finite"][:count]
        held["scores"] = {run: curve[:, count:] for run, curve in held["scores"].items()}
        held["finite"] = held["finite"][count:]
        curves, left_out = without_non_finite(Curves(scores), {"all": np.where(finite, 0.0, np.nan)[:, None]})
        tally.add(curves)
        dropped.extend(merged + i for i in left_out)
        merged += count

    def arrived(result):
        throughput.add(result["worker"], result["images"], result["seconds"])
        if progress:
            progress(result["images"])

    with prepared_on_workers(client, "evaluate", build_evaluation, payload) as name:
        calls = [(name, good[i:i + chunk_size], i) for i in range(0, len(good), chunk_size)]
        for result in in_order(client, evaluate_chunk, calls, window, distributed, done=arrived):
            for run, curve in result["scores"].items():
                before = held["scores"].get(run)
                held["scores"][run] = curve if before is None else np.concatenate([before, curve], axis=1)
            held["finite"] = np.concatenate([held["finite"], result["finite"]]).astype(bool)
            if snapshots is not None:
                snapshots.update(result["snapshots"])
            while len(held["finite"]) >= batch_size:
                merge(batch_size)
        if len(held["finite"]):
            merge(len(held["finite"]))
    for line in throughput.lines():
        say(f"lrptool: {line}")
    return tally, tally.summary() if tally.images else {}, dropped, unreadable


def window_size(client):
    """Chunks in flight: enough that no worker waits for its next chunk while a result travels."""
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values())
    return max(8, 4 * max(1, threads))


def workers_per_host(client):
    """{"tcp://HOST": worker processes there} of the cluster as it is now."""
    counts = {}
    for address in client.scheduler_info().get("workers", {}):
        host = address.rpartition(":")[0]
        counts[host] = counts.get(host, 0) + 1
    return counts


def check_output_shared(client, outdir):
    """Refuse ``outdir`` unless every worker sees it at the same path and can write it."""
    from .cluster_worker import probe_output
    from .files import write_atomically

    absolute = os.path.abspath(outdir)
    marker = os.path.join(absolute, f".lrptool-probe-{secrets.token_hex(6)}")
    write_atomically(marker, b"lrptool", make_folders=False)
    try:
        answers = client.run(probe_output, absolute, marker)
    finally:
        os.unlink(marker)
    problems = {worker: problem for worker, problem in answers.items() if problem}
    if problems:
        worker, problem = sorted(problems.items())[0]
        others = f" (and {len(problems) - 1} more worker(s))" if len(problems) > 1 else ""
        raise LrpToolError(f"-o {outdir}: {absolute} {problem} on worker {worker}{others}; the output folder must "
                           "be one every worker can write at the same path (a shared filesystem)")


def run_folder(runner, items, shard=None, cluster_spec=None, scheduler=None, scheduler_file=None, chunk_size=None,
               say=None):
    """``runner.run(items, shard)`` (a FolderExplainer), in this process or on the cluster the options
    name; with a cluster, ``say`` gets the per-worker throughput at the end."""
    if chosen(cluster_spec, scheduler, scheduler_file) is None:
        return runner.run(items, shard)
    with connected(cluster_spec, scheduler, scheduler_file) as client:
        distributed_run = ClusterExplain(runner, client, chunk_size)
        failures = distributed_run.run(items, shard)
    for line in distributed_run.throughput.lines():
        (say or print)(line)
    return failures


class Throughput:
    """Images and busy seconds per worker."""

    def __init__(self):
        self.workers = {}
        self.started = time.perf_counter()

    def add(self, worker, images, seconds):
        count, busy = self.workers.get(worker, (0, 0.0))
        self.workers[worker] = (count + images, busy + seconds)

    def lines(self, limit=8):
        """One line per worker (or min/median/max beyond ``limit`` workers), and the total rate."""
        wall = time.perf_counter() - self.started
        rates = {w: (n, s, n / s if s > 0 else 0.0) for w, (n, s) in self.workers.items()}
        total = sum(n for n, _, _ in rates.values())
        if len(rates) <= limit:
            lines = [f"worker {w}: {n} image(s) in {s:.1f} s busy, {r:.1f} images/s"
                     for w, (n, s, r) in sorted(rates.items())]
        else:
            ordered = sorted(rates.items(), key=lambda entry: entry[1][2])
            middle = ordered[len(ordered) // 2][1][2]
            slowest, fastest = ordered[0], ordered[-1]
            lines = [f"{len(rates)} workers: images/s per worker min {slowest[1][2]:.1f} ({slowest[0]}), "
                     f"median {middle:.1f}, max {fastest[1][2]:.1f}"]
        lines.append(f"{total} image(s) in {wall:.1f} s: {total / wall if wall > 0 else 0.0:.1f} images/s "
                     f"on {len(rates)} worker(s)")
        return lines


class ClusterExplain:
    """Runs a FolderExplainer's work on a Dask cluster: the same outputs, manifest and JSON lines as
    ``FolderExplainer.run``, written by the workers and recorded by the client."""

    def __init__(self, runner, client, chunk_size=None, window=None):
        self.runner = runner
        self.client = client
        self.chunk_size = chunk_size or DEFAULT_CHUNK_BATCHES * runner.batch_size
        self.window = window
        self.throughput = Throughput()
        self.notes_said = set()

    def run(self, items, shard=None):
        import distributed

        from .cluster_worker import build_explainer, recipe

        runner = self.runner
        items = runner.pending(items, shard)
        bar = None
        try:
            if not items:
                return runner.failures
            check_output_shared(self.client, runner.outdir)
            if runner.progress:
                from tqdm import tqdm
                bar = tqdm(total=len(items), unit="img", file=sys.stderr, dynamic_ncols=True)
            try:
                with prepared_on_workers(self.client, "explain", build_explainer,
                                         recipe(runner, os.path.abspath(runner.outdir),
                                                workers_per_host(self.client))) as name:
                    self.stream(items, name, bar, distributed)
                runner.write_page(final=True)
            finally:
                self.clean_up(items)
        finally:
            runner.manifest.close()
            if bar is not None:
                bar.close()
        return runner.failures

    def stream(self, items, name, bar, distributed):
        """Submit chunks, at most ``window`` at a time, and record each as it finishes. The images
        of a chunk whose workers kept dying become suspects, run one at a time with nothing else in
        flight: a suspect that still kills its worker is the culprit, and only it fails."""
        from .cluster_worker import explain_chunk

        runner = self.runner
        window = self.window or window_size(self.client)
        waiting = deque(items[i:i + self.chunk_size] for i in range(0, len(items), self.chunk_size))
        suspects = deque()
        running = {}
        finished = distributed.as_completed(with_results=True, raise_errors=False, loop=self.client.loop)

        def submit(chunk, alone=False):
            shipped = [type(item)(os.path.abspath(item.path), item.target, item.stem) for item in chunk]
            future = self.client.submit(explain_chunk, name, shipped, pure=False)
            running[future] = (chunk, alone)
            finished.add(future)

        def fill():
            if suspects:
                if not running:
                    submit([suspects.popleft()], alone=True)
                return
            while waiting and len(running) < window:
                submit(waiting.popleft())

        try:
            fill()
            for future, result in arrivals(self.client, finished):
                chunk, alone = running.pop(future)
                if future.status == "error":
                    result = result[1]      # (type, exception, traceback)
                if isinstance(result, distributed.KilledWorker):
                    if alone:
                        runner.fail(chunk[0], "its worker died every time it was explained (out of memory? a crash "
                                              "in a decoder?); the other images go on")
                        if bar is not None:
                            bar.update(1)
                    else:
                        suspects.extend(chunk)
                elif isinstance(result, LrpToolError):
                    raise result
                elif isinstance(result, BaseException):
                    raise LrpToolError(f"a worker failed on the chunk starting at {chunk[0].path}: "
                                       f"{type(result).__name__}: {result}") from None
                else:
                    self.record(chunk, result)
                    if bar is not None:
                        bar.update(len(chunk))
                fill()
        except BaseException:
            # Ctrl-C or an error: no new work; what is not recorded is redone by --resume
            with contextlib.suppress(Exception):
                self.client.cancel(list(running))
            raise

    def record(self, chunk, result):
        """Commit a finished chunk on the client: manifest lines, JSON lines, failures, notes."""
        runner = self.runner
        for index, done in result["done"]:
            item = chunk[index]
            for (method, rank), _, record in done:
                # the worker saw absolute paths; the records name them as the user gave them
                record["path"] = item.path
                record["files"] = list(runner.output_paths(item, rank, method).values())
            runner.commit(item, done)
        for index, problem in result["failed"]:
            runner.fail(chunk[index], problem)
        for kind, message in result["notes"]:
            if kind not in self.notes_said:
                self.notes_said.add(kind)
                runner.report(message)
        self.throughput.add(result["worker"], result["images"], result["seconds"])

    def clean_up(self, items):
        """Remove the temporary parts that killed workers left in the folders this run wrote to."""
        from .cluster_worker import clean_parts
        from .files import remove_stale_parts

        outdir = os.path.abspath(self.runner.outdir)
        folders = sorted({os.path.dirname(os.path.join(outdir, item.stem)) for item in items})
        for folder in folders:
            remove_stale_parts(folder, recursive=False)
        with contextlib.suppress(Exception):
            self.client.run(clean_parts, folders)
