"""`lrptool explain` on a Dask LocalCluster: images per second for one process and for clusters of 1
and 2 worker processes on this machine, their ratios, and what the cluster costs per chunk.

Every configuration explains the same generated pictures into a fresh folder (raw relevance, .npy)
after a warm-up run, so that worker start-up is not counted; each run includes preparing the
explainer once per worker, as a real run does. The scheduler's cost per chunk is measured twice:
as the round trip of empty tasks through the same bounded window the runs use, and as the time a
run loses when every image is its own chunk.

Usage: ``python benchmarks/bench_cluster.py [--images 1000] [--model mnist|vgg]``; ``vgg`` is the
64x64 VGG-style model of bench_cli.py (heavier per image than the 28x28 MNIST sample).
"""

import argparse
import contextlib
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
MNIST = HERE.parent / "sample_models" / "mnist" / "mnist.onnx"


def pictures(folder, count, size, channels, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for index in range(count):
        shape = (size, size) if channels == 1 else (size, size, 3)
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(folder / f"{index:05d}.png")
    return folder


def run_once(model, images, out, client=None, chunk_size=None):
    import lrptool

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = lrptool.explain_folder(model, images, out, formats=("npy",), client=client, chunk_size=chunk_size)
    seconds = time.perf_counter() - started
    assert result.explained == len(os.listdir(images)) and not result.failures, result
    return seconds


def noop(index):
    return index


def task_round_trip(client, tasks):
    """Milliseconds per empty task through the bounded, ordered window of a cluster run."""
    import distributed

    from lrptool.cluster import in_order, window_size

    window = window_size(client)
    started = time.perf_counter()
    results = list(in_order(client, noop, [(i,) for i in range(tasks)], window, distributed))
    assert results == list(range(tasks))
    return 1000 * (time.perf_counter() - started) / tasks


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--model", choices=["mnist", "vgg"], default="mnist")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration, interleaved; the best counts")
    options = parser.parse_args()
    import distributed

    with tempfile.TemporaryDirectory() as temporary, contextlib.ExitStack() as stack:
        root = pathlib.Path(temporary)
        if options.model == "vgg":
            sys.path.insert(0, str(HERE))
            from bench_cli import model as vgg_model
            model = root / "vgg.onnx"
            vgg_model(model)
            size, channels = 64, 3
        else:
            model, size, channels = MNIST, 28, 1
        images = pictures(root / "images", options.images, size, channels)
        warm = pictures(root / "warm", 64, size, channels, seed=1)
        sample = pictures(root / "sample", 256, size, channels, seed=2)
        clients = {"1 process": None}
        for workers in (1, 2):
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50))
            clients[f"LocalCluster, {workers} worker(s)"] = stack.enter_context(distributed.Client(cluster))
        for client in clients.values():
            run_once(model, warm, root / "out", client)
        # interleaved, so that a burst of load elsewhere on the machine hits every configuration alike
        seconds = {name: [] for name in clients}
        single, chunked, round_trip = [], [], []
        one_worker = clients["LocalCluster, 1 worker(s)"]
        for _ in range(options.repeats):
            for name, client in clients.items():
                seconds[name].append(run_once(model, images, root / "out", client))
            round_trip.append(task_round_trip(one_worker, 500))
            single.append(run_once(model, sample, root / "out", one_worker, chunk_size=1))
            chunked.append(run_once(model, sample, root / "out", one_worker, chunk_size=64))
        rates = {name: options.images / min(times) for name, times in seconds.items()}
        print(f"lrptool explain on a Dask LocalCluster: {options.images} pictures {size}x{size}, "
              f"model {options.model}, --format npy, {os.cpu_count()} CPU(s), best of {options.repeats}")
        base = rates["1 process"]
        for name, rate in rates.items():
            print(f"  {name:<28} {rate:8.1f} images/s   ×{rate / base:.2f} of one process   "
                  f"{1000 / rate:6.2f} ms/image")
        two, one = rates["LocalCluster, 2 worker(s)"], rates["LocalCluster, 1 worker(s)"]
        print(f"  2 workers / 1 worker: ×{two / one:.2f}")
        print(f"  scheduler cost per chunk (empty task round trip): {min(round_trip):.2f} ms")
        extra = 1000 * (min(single) - min(chunked)) / (256 - 256 / 64)
        print(f"  scheduler cost per chunk (one image per chunk instead of 64, extra time per chunk): {extra:.2f} ms")


if __name__ == "__main__":
    main()
