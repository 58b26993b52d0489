"""The benchmark scripts' own logic: bench_lrp.py's profile breakdown and bench_gpu.py, which runs
the same comparison on the CPU when asked (no GPU here) and says why it cannot run otherwise."""

import importlib.util
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest

from converters.onnx_reader import read_onnx
from lrptool.lrp import Explainer
from test_architectures import build_resnet

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def script(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_profile_breakdown_adds_up_to_each_run_s_kernel_times(tmp_path, monkeypatch):
    # LRPTOOL_ORT_PROFILE makes the compiled explainer's session keep onnxruntime's profile; the
    # benchmark's breakdown of it, per image, adds up to each run's kernel times taken straight
    # from the profile (the runs after the first; two of them, so the medians are means)
    bench = script("bench_lrp")
    monkeypatch.setenv("LRPTOOL_ORT_PROFILE", str(tmp_path / "explainer"))
    explainer = Explainer(read_onnx(build_resnet("N")), "epsilon-plus-flat", quiet=True, compiled=True)
    x = np.random.default_rng(29).uniform(0, 1, size=(2, 3, 32, 32)).astype(np.float32)
    for _ in range(3):
        explainer.explain(x)
    path = explainer.compiled.session.end_profiling()
    assert os.path.basename(path).startswith("explainer") and os.path.dirname(path) == str(tmp_path)
    with open(path) as handle:
        events = json.load(handle)
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    assert len(starts) == 3
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = [sum(e["dur"] for e in kernels if start <= e["ts"] < end)
               for start, end in zip(starts[1:], starts[2:] + [float("inf")])]
    breakdown = bench.profile_breakdown(path, batch=2)
    assert breakdown["kernels"] == pytest.approx(statistics.mean(per_run) / 1e3 / 2, rel=1e-9)
    kinds = {k: v for k, v in breakdown.items() if k not in ("kernels", "run")}
    assert sum(kinds.values()) == pytest.approx(breakdown["kernels"], rel=1e-9)
    assert breakdown["run"] >= breakdown["kernels"] > 0
    rule_ops = {e["args"]["op_name"] for e in kernels if e["name"].startswith("lrp/")}
    assert {"Div", "Mul"} <= rule_ops
    for op in rule_ops - {"Conv", "FusedConv", "MatMul", "Gemm", "ConvTranspose"}:
        assert f"rules: {op}" in kinds
    assert kinds["forward: convolutions"] > 0
    assert kinds.get("rules: convolutions", 0) + kinds.get("rules: matrix products", 0) > 0


def test_placement_counts_kernels_per_provider_and_names_large_cpu_fallbacks(tmp_path):
    # a small shape computation on the CPU is onnxruntime's own choice; an activation-sized output
    # computed there means the provider lacked the operator
    kernel = lambda name, provider, op, size: {"cat": "Node", "name": f"{name}_kernel_time",  # noqa: E731
                                               "args": {"provider": provider, "op_name": op, "output_size": str(size)}}
    events = [kernel("shape", "CPUExecutionProvider", "Shape", 32),
              kernel("unpool", "CPUExecutionProvider", "MaxUnpool", 65537),
              kernel("unpool2", "CPUExecutionProvider", "MaxUnpool", 10 ** 6),
              kernel("cast", "CPUExecutionProvider", "Cast", 65536),
              kernel("conv", "CUDAExecutionProvider", "Conv", 10 ** 6),
              {"cat": "Session", "name": "model_run", "args": {}}]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    providers, on_cpu = script("bench_gpu").placement(str(path))
    assert providers == {"CPUExecutionProvider": 4, "CUDAExecutionProvider": 1}
    assert on_cpu == ["MaxUnpool"]


def run_script(*args):
    return subprocess.run([sys.executable, str(BENCHMARKS / "bench_gpu.py"), *args], capture_output=True,
                          text=True, timeout=900)


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                    reason="this onnxruntime has a CUDA provider: the benchmark would run in full")
def test_without_a_cuda_provider_the_gpu_benchmark_says_so_and_exits_cleanly():
    result = run_script("--models", "resnet50", "--batches", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("bench_gpu: nothing to measure: onnxruntime has no CUDA provider here "
                                     "(pip install onnxruntime-gpu on a machine with a GPU)")


def test_the_gpu_benchmark_rehearsed_on_the_cpu_agrees_with_zennit():
    # the GPU comparison's whole code path, on the CPU: onnxruntime's forward pass, the compiled
    # explainer and Zennit each timed, the two relevances compared, every kernel placed on the CPU.
    # Both are float32: on this ResNet-50, Zennit's is 8e-5 from its own float64 result and the
    # compiled one 4e-5 from lrptool's float64 walk (measured 2026-11-30), so 1e-3 leaves room
    from torch_support import torch_and_zennit_or_skip
    torch_and_zennit_or_skip()
    result = run_script("--device", "cpu", "--models", "resnet50", "--batches", "1", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("resnet50")]
    assert len(rows) == 1, result.stdout
    numbers = re.match(r"resnet50\s+batch\s+1: forward\s+([\d.]+) \| compiled\s+([\d.]+) \(([\d.]+)x forward\) "
                       r"\| zennit\s+([\d.]+) \(compiled ([\d.]+)x zennit\) \| relevance vs zennit: relative L2 "
                       r"([\d.e+-]+) \| kernels: (\d+) on CPU$", rows[0])
    assert numbers, rows[0]
    forward, compiled, ratio, zennit, share, agreement, kernels = map(float, numbers.groups())
    assert min(forward, compiled, zennit) > 0
    assert ratio == pytest.approx(compiled / forward, abs=0.01)
    assert share == pytest.approx(compiled / zennit, abs=0.01)
    assert agreement <= 1e-3
    assert kernels > 100
