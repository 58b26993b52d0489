"""`lrptool explain` on a Dask cluster and in shards: the same files as one process, nothing lost
or doubled when a worker is killed, every image covered exactly once.

One LocalCluster of two worker processes serves the whole module (starting one costs seconds);
it allows one worker death per task (Dask's default: three) before Dask gives the task up.
"""

import io
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

distributed = pytest.importorskip("distributed", reason="the cluster tests need lrptool[dask]")
dask = pytest.importorskip("dask")

from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402

import lrptool  # noqa: E402
from lrptool.cli import main  # noqa: E402
from lrptool.files import TEMP_PREFIX  # noqa: E402
from lrptool.manifest import NAME as MANIFEST  # noqa: E402

MODEL = os.path.join(os.path.dirname(__file__), os.pardir, "sample_models", "mnist", "mnist.onnx")
IMAGES = 200


@pytest.fixture(scope="module")
def cluster():
    import lrptool.cluster

    lrptool.cluster.NO_WORKER_PATIENCE = 90     # a cluster whose workers never come back fails, not hangs
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                         silence_logs=50)
    client = distributed.Client(local)
    yield local, client
    client.close()
    local.close()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """200 small grayscale pictures in two folders (the output tree mirrors them)."""
    root = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(3)
    for index in range(IMAGES):
        folder = root / ("even" if index % 2 == 0 else "odd")
        folder.mkdir(exist_ok=True)
        picture = (rng.random((28, 28)) * 255 * (rng.random((28, 28)) < 0.3)).astype(np.uint8)
        Image.fromarray(picture, "L").save(folder / f"digit{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    """The single-process run: its folder and its JSON records by path."""
    out = tmp_path_factory.mktemp("reference")
    result = lrptool.explain_folder(MODEL, digits, out, formats=("npy",), jsonl=out / "run.jsonl")
    assert result.explained == IMAGES and not result.failures
    return out, records_by_path(out / "run.jsonl")


def records_by_path(path):
    records = [json.loads(line) for line in open(path, encoding="utf-8")]
    by_path = {record["path"]: record for record in records}
    assert len(by_path) == len(records), "an image has more than one JSON line"
    return by_path


def npy_files(folder):
    return {os.path.relpath(os.path.join(parent, name), folder): open(os.path.join(parent, name), "rb").read()
            for parent, _, names in os.walk(folder) for name in names if name.endswith(".npy")}


def leftovers(folder):
    return [name for _, _, names in os.walk(folder) for name in names if name.startswith(TEMP_PREFIX)]


def manifest_stems(folder):
    return [json.loads(line)["stem"] for line in open(folder / MANIFEST, encoding="utf-8")]


def run_cli(*args):
    """The command in this process; its exit status. The signal handlers it sets are put back."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        main([str(a) for a in args])
    except SystemExit as end:
        return end.code
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    return None


def assert_close_npy(found, expected):
    """The same relevance files, equal up to float32 rounding."""
    assert set(found) == set(expected)
    for name, data in expected.items():
        reference = np.load(io.BytesIO(data))
        np.testing.assert_allclose(np.load(io.BytesIO(found[name])), reference, rtol=1e-5,
                                   atol=1e-6 * np.abs(reference).max(), err_msg=name)


def assert_same_records(found, reference):
    assert set(found) == set(reference)
    for path, record in found.items():
        expected = dict(reference[path])
        for key in ("files",):
            record.pop(key), expected.pop(key)
        assert record == expected, path


def test_two_workers_write_what_one_process_writes(cluster, digits, reference, tmp_path, capsys):
    local, _ = cluster
    out = tmp_path / "out"
    status = run_cli("explain", MODEL, digits, "-o", out, "--format", "npy", "--scheduler", local.scheduler_address,
                     "--chunk-size", "24", "--batch-size", "8", "--jsonl", out / "run.jsonl")
    assert status == 0
    reference_out, reference_records = reference
    expected = npy_files(reference_out)
    assert len(expected) == IMAGES and npy_files(out) == expected
    found = records_by_path(out / "run.jsonl")
    assert len(found) == IMAGES
    assert_same_records(found, reference_records)
    assert len(manifest_stems(out)) == IMAGES == len(set(manifest_stems(out)))
    errors = capsys.readouterr().err
    assert errors.count("images/s") == 3                           # two workers and the total
    assert f"explained {IMAGES} image(s)" in errors and "0 failed" in errors
    assert not leftovers(out)


def test_several_presets_on_two_workers_write_what_one_process_writes(cluster, digits, tmp_path, capsys):
    """Each worker builds the methods' shared forward pass again from the recipe."""
    local, _ = cluster
    options = ["--format", "npy", "--preset", "zero,gradient", "--batch-size", "8"]
    assert run_cli("explain", MODEL, digits / "even", "-o", tmp_path / "one", *options) == 0
    assert run_cli("explain", MODEL, digits / "even", "-o", tmp_path / "two", *options,
                   "--scheduler", local.scheduler_address, "--chunk-size", "16") == 0
    expected = npy_files(tmp_path / "one")
    assert len(expected) == IMAGES
    # a worker's onnxruntime has one thread, this process's two: sums may round differently
    assert_close_npy(npy_files(tmp_path / "two"), expected)
    capsys.readouterr()


class KillOnce(WorkerPlugin):
    """A worker that takes this plugin SIGKILLs itself in the middle of writing an image's files —
    after ``after`` images, leaving a temporary part behind as a real kill would — once in all (the
    first worker to create ``marker``)."""

    def __init__(self, marker, after):
        self.marker, self.after = marker, after

    def setup(self, worker):
        from lrptool import files
        from lrptool.explain_folder import FolderExplainer

        marker, after, original = self.marker, self.after, FolderExplainer.write_outputs
        count = [0]

        def write_outputs(runner, item, *args):
            count[0] += 1
            if count[0] > after:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:
                    folder = os.path.dirname(os.path.join(runner.outdir, item.stem))
                    os.makedirs(folder, exist_ok=True)
                    part = os.path.join(folder, f"{files.TEMP_PREFIX}{os.getpid()}-{files.HOST}-000000000000")
                    with open(part, "wb") as handle:
                        handle.write(b"half an npy")
                    os.kill(os.getpid(), signal.SIGKILL)
            return original(runner, item, *args)
        self.original = original
        FolderExplainer.write_outputs = write_outputs

    def teardown(self, worker):
        from lrptool.explain_folder import FolderExplainer
        FolderExplainer.write_outputs = self.original


class KillOn(WorkerPlugin):
    """A worker that takes this plugin SIGKILLs itself whenever it decodes an image named ``name``."""

    def __init__(self, name):
        self.name = name

    def setup(self, worker):
        from lrptool.explain_folder import FolderExplainer

        name, original = self.name, FolderExplainer.decode

        def decode(runner, batch):
            if any(os.path.basename(item.path) == name for item in batch):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(runner, batch)
        self.original = original
        FolderExplainer.decode = decode

    def teardown(self, worker):
        from lrptool.explain_folder import FolderExplainer
        FolderExplainer.decode = self.original


def worker_pids(client):
    return set(client.run(os.getpid).values())


def with_plugin(client, plugin, name, run):
    client.register_plugin(plugin, name=name)
    try:
        return run()
    finally:
        client.unregister_worker_plugin(name)   # its teardown takes the hook away


def test_a_worker_killed_mid_run_loses_nothing_and_doubles_nothing(cluster, digits, reference, tmp_path):
    _, client = cluster
    out = tmp_path / "out"
    marker = tmp_path / "killed"
    before = worker_pids(client)
    result = with_plugin(client, KillOnce(str(marker), after=30), "kill-once", lambda: lrptool.explain_folder(
        MODEL, digits, out, formats=("npy",), jsonl=out / "run.jsonl", client=client, chunk_size=16, batch_size=8))
    assert marker.exists(), "no worker was killed: the test proves nothing"
    assert worker_pids(client) != before                          # the killed worker was replaced
    assert result.explained == IMAGES and not result.failures
    stems = manifest_stems(out)
    assert len(stems) == IMAGES == len(set(stems))               # every image recorded exactly once
    found = records_by_path(out / "run.jsonl")
    assert len(found) == IMAGES
    reference_out, reference_records = reference
    assert_same_records(found, reference_records)
    assert npy_files(out) == npy_files(reference_out)             # whole files, as one process writes them
    assert not leftovers(out)                                     # the killed worker's part is gone


def test_an_image_that_kills_every_worker_is_reported_once(cluster, tmp_path, capsys):
    local, client = cluster
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for index in range(12):
        Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8), "L").save(images / f"d{index:02d}.png")
    out = tmp_path / "out"
    # Dask gives a task up at the first death of its worker here (its default allows three)
    allowed, local.scheduler.allowed_failures = local.scheduler.allowed_failures, 0
    try:
        status = with_plugin(client, KillOn("d05.png"), "kill-on", lambda: run_cli(
            "explain", MODEL, images, "-o", out, "--format", "npy", "--scheduler", local.scheduler_address,
            "--chunk-size", "6", "--jsonl", out / "run.jsonl"))
    finally:
        local.scheduler.allowed_failures = allowed
    errors = capsys.readouterr().err
    assert status == 1, errors
    assert errors.count("skipped") == 1 and "d05.png: its worker died every time" in errors
    assert "explained 11 image(s)" in errors and "1 failed" in errors
    found = records_by_path(out / "run.jsonl")
    assert sorted(os.path.basename(p) for p in found) == [f"d{i:02d}.png" for i in range(12) if i != 5]
    assert len(manifest_stems(out)) == 11
    assert not leftovers(out)


def snapshot(folder):
    return {os.path.join(parent, name): (os.stat(os.path.join(parent, name)).st_ino,
                                         os.stat(os.path.join(parent, name)).st_mtime_ns,
                                         os.stat(os.path.join(parent, name)).st_size)
            for parent, _, names in os.walk(folder) for name in names}


def test_three_shards_cover_every_image_once_and_a_resumed_shard_writes_nothing(digits, reference, tmp_path, capsys):
    out = tmp_path / "out"
    shares = []
    for shard in (1, 2, 3):
        result = lrptool.explain_folder(MODEL, digits, out, formats=("npy",), shard=(shard, 3),
                                        jsonl=out / f"shard{shard}.jsonl")
        assert not result.failures
        shares.append(set(records_by_path(out / f"shard{shard}.jsonl")))
    everything = set(reference[1])
    assert set().union(*shares) == everything and sum(len(share) for share in shares) == IMAGES
    assert sorted(len(share) for share in shares) == [66, 67, 67]
    stems = manifest_stems(out)
    assert len(stems) == IMAGES == len(set(stems))
    assert npy_files(out) == npy_files(reference[0])

    before = snapshot(out)
    capsys.readouterr()
    status = run_cli("explain", MODEL, digits, "-o", out, "--format", "npy", "--shard", "2/3", "--resume",
                     "--jsonl", out / "shard2.jsonl")
    errors = capsys.readouterr().err
    assert status == 0 and "resuming: 67 image(s) already explained" in errors and "explained 0 image(s)" in errors
    assert snapshot(out) == before                                # not a byte written, not a file touched

    # a file of shard 2 lost: its rerun redoes that image alone
    lost = sorted(os.path.join(digits, path) for path in shares[1])[0]
    os.unlink(out / (os.path.relpath(lost, digits) + ".npy"))
    status = run_cli("explain", MODEL, digits, "-o", out, "--format", "npy", "--shard", "2/3", "--resume",
                     "--jsonl", out / "shard2.jsonl")
    assert status == 0 and "explained 1 image(s)" in capsys.readouterr().err
    # explained in a batch of its own: onnxruntime may sum in another order than in the reference's batches
    assert_close_npy(npy_files(out), npy_files(reference[0]))


@pytest.mark.parametrize("option, message", [
    (("--shard", "4/3"), "--shard '4/3': give K/N with 1 ≤ K ≤ N"),
    (("--shard", "0/3"), "--shard '0/3': give K/N"),
    (("--cluster", "remote:3"), "--cluster 'remote:3': give local:N"),
    (("--cluster", "local:2", "--scheduler", "tcp://localhost:1"), "--cluster and --scheduler: give only one"),
])
def test_bad_cluster_options_are_one_line(option, message, tmp_path, capsys):
    status = run_cli("explain", MODEL, tmp_path, "-o", tmp_path / "out", *option)
    errors = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(errors) == 1 and message in errors[0], errors


def test_without_dask_the_cluster_options_name_the_extra(tmp_path):
    code = ("import sys; sys.modules['distributed'] = None\n"
            "from lrptool.cli import main\n"
            f"main(['explain', {MODEL!r}, {str(tmp_path)!r}, '-o', {str(tmp_path / 'out')!r}, '--cluster', 'local:2'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == ("lrptool: error: --cluster needs Dask's distributed scheduler, which is not "
                                   "installed: pip install 'lrptool[dask]'")


def test_the_output_folder_must_be_the_clients_on_every_worker(tmp_path):
    from lrptool.cluster_worker import probe_output

    assert "not the client's folder" in probe_output(str(tmp_path), str(tmp_path / ".lrptool-probe-000000000000"))
    (tmp_path / ".lrptool-probe-000000000000").write_bytes(b"lrptool")
    assert probe_output(str(tmp_path), str(tmp_path / ".lrptool-probe-000000000000")) is None
    assert os.listdir(tmp_path) == [".lrptool-probe-000000000000"]   # the worker's probe is gone again


def test_the_slurm_example_makes_a_cluster_without_submitting(tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue", reason="the SLURM example needs dask-jobqueue")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "slurm_cluster", os.path.join(os.path.dirname(__file__), os.pardir, "examples", "slurm_cluster.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.chdir(tmp_path)
    cluster = example.slurm_cluster(partition="cpu", account="lab", cores=8, processes=4, memory="16GB",
                                    walltime="02:00:00", environment=["source /shared/venv/bin/activate"])
    try:
        from dask_jobqueue import SLURMCluster
        assert isinstance(cluster, SLURMCluster)
        script = cluster.job_script()
        for line in ("#SBATCH -p cpu", "#SBATCH -A lab", "#SBATCH -n 1", "#SBATCH --cpus-per-task=8",
                     "#SBATCH -t 02:00:00", "source /shared/venv/bin/activate", "--nworkers 4", "--nthreads 2"):
            assert line in script, (line, script)
        assert sys.executable in script and cluster.scheduler_address.startswith("tcp://")
        assert not cluster.workers and not cluster.worker_spec     # nothing submitted
    finally:
        cluster.close()


def test_evaluate_on_the_cluster_reports_what_one_process_reports(cluster, digits, tmp_path, capsys):
    """Same seed, same summary to the last bit: every picture's replacement values and random
    relevance are seeded by its place among the readable pictures, and the client merges the
    per-image curves in input order, batch by batch, as one process does."""
    local, _ = cluster
    images = tmp_path / "images"
    images.mkdir()
    for index, source in enumerate(sorted((digits / "even").iterdir())[:21]):
        (images / f"{index:02d}.png").write_bytes(source.read_bytes())
    (images / "07.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")      # unreadable: later pictures move up
    options = ["evaluate", MODEL, images, "--methods", "epsilon,gradient", "--patch", "4", "--steps", "6",
               "--batch-size", "4", "--seed", "3"]
    assert run_cli(*options, "-o", tmp_path / "local") == 1
    local_out = capsys.readouterr().out
    assert run_cli(*options, "-o", tmp_path / "cluster", "--scheduler", local.scheduler_address,
                   "--chunk-size", "3") == 1
    captured = capsys.readouterr()
    assert captured.out == local_out and "AOPC" in local_out
    assert "skipped" in captured.err and "07.png" in captured.err and "images/s" in captured.err
    for name in ("summary.json", "curves.csv"):
        assert (tmp_path / "cluster" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert json.loads((tmp_path / "local" / "summary.json").read_text())["settings"]["images"] == 20


class Slow(WorkerPlugin):
    """Each image takes ``seconds`` longer to write on a worker with this plugin."""

    def __init__(self, seconds):
        self.seconds = seconds

    def setup(self, worker):
        import time

        from lrptool.explain_folder import FolderExplainer

        seconds, original = self.seconds, FolderExplainer.write_outputs

        def write_outputs(runner, *args):
            time.sleep(seconds)
            return original(runner, *args)
        self.original = original
        FolderExplainer.write_outputs = write_outputs

    def teardown(self, worker):
        from lrptool.explain_folder import FolderExplainer
        FolderExplainer.write_outputs = self.original


def test_ctrl_c_on_the_client_stops_cleanly_and_resume_finishes_the_run(cluster, digits, reference, tmp_path):
    import time

    local, client = cluster
    images = tmp_path / "images"
    images.mkdir()
    for source in sorted((digits / "odd").iterdir())[:60]:
        (images / source.name).write_bytes(source.read_bytes())
    out = tmp_path / "out"
    jsonl = out / "run.jsonl"
    command = [sys.executable, "-m", "lrptool.cli", "explain", MODEL, str(images), "-o", str(out), "--format", "npy",
               "--scheduler", local.scheduler_address, "--chunk-size", "2", "--jsonl", str(jsonl)]

    def interrupted_run():
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if jsonl.exists() and jsonl.read_text().count("\n") >= 10:
                process.send_signal(signal.SIGINT)
                break
            time.sleep(0.05)
        return process.returncode if process.poll() is not None else None, process.communicate(timeout=120)

    early, (_, errors) = with_plugin(client, Slow(0.1), "slow", interrupted_run)
    assert early is None, "the run ended before it could be interrupted"
    assert errors.strip().splitlines()[-1] == "lrptool: interrupted" and "Traceback" not in errors
    recorded = len(records_by_path(jsonl))
    assert 10 <= recorded < 60 and len(manifest_stems(out)) == recorded

    assert run_cli("explain", MODEL, images, "-o", out, "--format", "npy", "--scheduler", local.scheduler_address,
                   "--resume", "--jsonl", jsonl) == 0
    stems = manifest_stems(out)
    assert len(stems) == 60 == len(set(stems))
    found = records_by_path(jsonl)
    assert sorted(os.path.basename(path) for path in found) == sorted(p.name for p in images.iterdir())
    expected = {name: data for name, data in npy_files(reference[0]).items() if name.startswith("odd")}
    assert {"odd/" + name: data for name, data in npy_files(out).items()} == \
        {name: data for name, data in expected.items() if os.path.basename(name)[:-4] in stems}
    assert not leftovers(out)
