"""The worker side of ``lrptool explain`` and ``evaluate`` on a Dask cluster (``lrptool.cluster`` is
the client side).

A worker plugin carries the run's recipe (the model graph, the explainers' settings and the
folder explainer's settings) to every worker — also to workers that join or restart later. Each
worker process builds the explainer (the compiled one where it exists) on its first chunk and keeps
it for every chunk after. A chunk's images are decoded, explained and written into the output
folder exactly as in a single process; the worker hands back what the client records (manifest
lines and JSON lines), so that only the client ever appends to the manifest and the JSON lines.
"""

import copy
import os
import pickle
import threading
import time

import distributed
import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from .errors import LrpToolError
from .explain_folder import FolderExplainer
from .files import remove_stale_parts, write_atomically
from .images import ImageError, load_picture, to_tensor
from .lrp import Explainer

#: FolderExplainer attributes that stay with the client: its streams, records and counters.
CLIENT_ONLY = {"explainer", "methods", "shared", "jsonl", "manifest", "report", "recorded", "failures", "explained", "written",
               "resumed", "progress"}


def cores():
    """The cores this process may use (a batch system's limit included, where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def explainer_threads(settings, workers_per_host):
    """The explainer's settings on this worker: unless they fix the threads, the host's cores are
    shared among its worker processes (each onnxruntime session would take them all)."""
    if settings.get("threads") is not None or not workers_per_host:
        return dict(settings, quiet=True)
    sharing = workers_per_host.get(distributed.get_worker().address.rpartition(":")[0], max(workers_per_host.values()))
    return dict(settings, quiet=True, threads=max(1, cores() // sharing))


def recipe(runner, outdir, workers_per_host=None):
    """What a worker needs to build ``runner`` (a FolderExplainer) again, as bytes; outputs go to
    ``outdir`` (absolute: a worker's working folder is not the client's). ``workers_per_host``
    ({"tcp://HOST": worker processes}) lets each worker take its share of its host's cores."""
    state = {}
    for name, value in vars(runner).items():
        if name in CLIENT_ONLY:
            continue
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001 - what cannot travel (a lock, a stream) is the client's business
            continue
        state[name] = value
    state["outdir"] = outdir
    methods = [(name, explainer.original, explainer.settings) for name, explainer in runner.methods]
    return pickle.dumps({"methods": methods, "state": state, "workers_per_host": workers_per_host},
                        protocol=pickle.HIGHEST_PROTOCOL)


class ChunkExplainer(FolderExplainer):
    """A FolderExplainer on a worker: writes each image's files, and collects for the client the
    records to commit, the failures and the notes instead of committing or printing them."""

    @classmethod
    def from_recipe(cls, payload):
        recipe = pickle.loads(payload)
        runner = cls.__new__(cls)
        vars(runner).update(recipe["state"])
        hosts = recipe.get("workers_per_host")
        runner.methods = [(name, Explainer(graph, **explainer_threads(settings, hosts)))
                          for name, graph, settings in recipe["methods"]]
        runner.explainer = runner.methods[0][1]
        runner.shared = None
        runner.noted = set(runner.noted)
        return runner

    def chunk(self, items):
        """Explain one chunk; returns {"done": [(index, done)], "failed": [(index, problem)], "notes"}."""
        worker = copy.copy(self)   # per-chunk lists; the explainer and the notes said are shared
        worker.positions = {id(item): index for index, item in enumerate(items)}
        worker.done, worker.failed, worker.notes = [], [], []
        worker.failures = []
        said = set(self.noted)

        def note(message):
            kinds = self.noted - said
            said.update(kinds)
            worker.notes.append((min(kinds) if kinds else message, message))
        worker.report = note
        worker.process(items)
        return {"done": worker.done, "failed": worker.failed, "notes": worker.notes}

    def commit(self, item, done):
        self.done.append((self.positions[id(item)], done))

    def fail(self, item, problem):
        self.failed.append((self.positions[id(item)], problem))


def build_explainer(payload):
    return ChunkExplainer.from_recipe(payload)


def build_evaluation(payload):
    """What scoring chunks of images needs: the explainers of every method and the scorer."""
    from .evaluate import prepared_methods

    recipe = pickle.loads(payload)
    settings = recipe["settings"]
    options = explainer_threads(settings["explainer_options"] or {}, recipe.get("workers_per_host"))
    recipe["explainers"], recipe["score"] = prepared_methods(recipe["graph"], settings["methods"], settings["bounds"],
                                                             settings["seed"], options)
    return recipe


class Prepared(WorkerPlugin):
    """Holds a run's recipe on a worker and what ``build(payload)`` makes of it, made on first use
    and kept for every task of the run (once per worker process)."""

    idempotent = True

    def __init__(self, name, build, payload):
        self.name, self.build, self.payload = name, build, payload
        self.value = None
        self.lock = threading.Lock()

    def __getstate__(self):
        return {"name": self.name, "build": self.build, "payload": self.payload}

    def __setstate__(self, state):
        self.__init__(state["name"], state["build"], state["payload"])

    def prepared(self):
        with self.lock:
            if self.value is None:
                self.value = self.build(self.payload)
            return self.value


def explain_chunk(name, items):
    """The task: explain ``items`` (Items with absolute paths) with the run ``name``'s explainer."""
    worker = distributed.get_worker()
    runner = worker.plugins[name].prepared()
    started = time.perf_counter()
    result = runner.chunk(items)
    result.update(worker=worker.address, seconds=time.perf_counter() - started, images=len(items))
    return result


def readable_chunk(preprocessing, paths):
    """For each path: None when the picture decodes, else why not."""
    problems = []
    for path in paths:
        try:
            to_tensor(load_picture(path, preprocessing), preprocessing)
            problems.append(None)
        except ImageError as problem:
            problems.append(str(problem))
    return problems


def evaluate_chunk(name, paths, first_index):
    """The task of ``evaluate``: the perturbation curves of ``paths`` (readable pictures, the first
    being picture ``first_index`` of the run), per image, with whether its relevance is finite."""
    from .evaluate import batch_curves

    worker = distributed.get_worker()
    recipe = worker.plugins[name].prepared()
    settings, preprocessing = recipe["settings"], recipe["preprocessing"]
    started = time.perf_counter()
    tensors = []
    for path in paths:
        try:
            tensors.append(to_tensor(load_picture(path, preprocessing), preprocessing))
        except ImageError as problem:
            raise LrpToolError(f"{path}: {problem} (it could be read when the run began)") from None
    snapshots = dict(settings["snapshots"]) if settings["snapshots"] else None
    scores, finite = {}, []
    batch_size = settings["batch_size"]
    for start in range(0, len(tensors), batch_size):
        x = np.stack(tensors[start:start + batch_size])
        with np.errstate(all="ignore"):
            curves, relevances = batch_curves(recipe["explainers"], recipe["score"], x, settings["target"],
                                              settings["patch"], settings["steps"], settings["orders"],
                                              settings["replacement"], settings["bounds"], settings["seed"],
                                              batch_size, first_index + start, snapshots)
        ok = np.ones(len(x), dtype=bool)
        for relevance in relevances.values():
            ok &= np.all(np.isfinite(relevance.reshape(len(relevance), -1)), axis=1)
        finite.append(ok)
        for run, curve in curves.scores.items():
            scores.setdefault(run, []).append(curve)
    return {"scores": {run: np.concatenate(parts, axis=1) for run, parts in scores.items()},
            "finite": np.concatenate(finite), "worker": worker.address, "images": len(paths),
            "snapshots": {key: value for key, value in (snapshots or {}).items() if isinstance(key, tuple)},
            "seconds": time.perf_counter() - started}


def probe_output(outdir, marker):
    """On a worker: None when ``outdir`` is the client's folder (``marker`` is visible) and writable."""
    if not os.path.isfile(marker):
        return "is not the client's folder there (no shared filesystem at that path?)"
    probe = os.path.join(outdir, f".lrptool-probe-{os.getpid()}-{os.path.basename(marker)[-12:]}")
    try:
        write_atomically(probe, b"lrptool", make_folders=False)
        os.unlink(probe)
    except OSError as error:
        return f"cannot be written there ({error.strerror or error})"
    return None


def clean_parts(folders):
    """On a worker: remove the temporary files that dead processes of its host left in ``folders``."""
    return sum(remove_stale_parts(folder, recursive=False) for folder in folders)
