"""LRP speed and memory: lrptool against onnxruntime's forward pass and against Zennit.

VGG-16 and ResNet-50 with random weights (built here in PyTorch, exported to ONNX), the
EpsilonPlusFlat composite, batch 1 and 16, two threads. Every measurement runs in a fresh process,
so that its peak memory (peak resident set size minus the resident size before the first
explanation) is its own. Prints the median time per image of each tool, the ratios to
onnxruntime's forward pass and to Zennit, the peak memory, and the one-time costs (first call;
setup = building the explainer, for the compiled one its ONNX graph and session). lrptool runs as
the compiled explainer (the default), as the eager walk, and with ``--low-memory``.

``--profile`` adds, for onnxruntime's forward pass and the compiled explainer, where their time goes:
onnxruntime's per-node kernel times (``enable_profiling``) summed by kind — the forward pass's
convolutions, the rules' convolutions, matrix products and transposed convolutions, each element-wise
operator of the rules, the blocked-layout changes — per image, as the median over the runs after the
first, and as a multiple of the forward pass's own kernel time (profiling makes every run a little
slower; the times printed then include it).

Needs torch and zennit (``make reference-deps``). Usage: ``python benchmarks/bench_lrp.py
[--models vgg16,resnet50] [--batches 1,16] [--repeats 3] [--tools onnxruntime,lrptool-compiled,…]
[--rounds K] [--profile]``.
"""

import argparse
import collections
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from torch_support import ensure_torchvision, fold_batchnorm, residual_class, set_export_mode  # noqa: E402


def rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak():
    """Start the high-water mark afresh (ru_maxrss would carry the parent's size over the exec)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_bytes():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- the two networks, written out so that no torchvision is needed ------------------------------

_MODULES = []


def torch_modules():
    """The network builders and the Residual class (made once, so isinstance checks hold)."""
    if not _MODULES:
        _MODULES.append(define_torch_modules())
    return _MODULES[0]


def define_torch_modules():
    from torch import nn
    Residual = residual_class()

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = mid * 4
            self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
            self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
            self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            self.relu1, self.relu2, self.relu3, self.add = nn.ReLU(), nn.ReLU(), nn.ReLU(), Residual()

        def forward(self, x):
            y = self.relu1(self.bn1(self.conv1(x)))
            y = self.relu2(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu3(self.add(y, x if self.down is None else self.down(x)))

    def vgg16():
        layers, cin = [], 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
                             nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000))

    def resnet50():
        layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for index in range(blocks):
                layers.append(Bottleneck(cin, mid, stride if index == 0 else 1))
                cin = mid * 4
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))

    return {"vgg16": vgg16, "resnet50": resnet50}, Residual


def build(name, seed=0):
    import torch
    from torch import nn
    builders, _ = torch_modules()
    torch.manual_seed(seed)
    model = builders[name]().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def export(name, path):
    import torch
    _, Residual = torch_modules()
    model = build(name)
    set_export_mode(model, Residual, True)
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17,
                      do_constant_folding=False)


# -- one measurement per process -------------------------------------------------------------------

def worker(tool, name, batch, repeats, onnx_path, profile=False):
    import numpy as np
    x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)
    # onnxruntime's profile of the forward pass or of the compiled explainer, in a folder of its own
    profiles = tempfile.mkdtemp(prefix="bench-profile-") if profile and tool in PROFILED else None
    profiled = None     # the session whose profile is read
    if tool == "onnxruntime":
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 2
        if profiles:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(profiles, "forward")
        session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        profiled = session
        run = lambda: session.run(None, {"x": x})  # noqa: E731
    elif tool == "zennit":
        import torch
        torch.set_num_threads(2)
        ensure_torchvision()
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat
        model = fold_batchnorm(build(name))
        tensor = torch.from_numpy(x)

        def run():
            with Gradient(model=model, composite=EpsilonPlusFlat()) as attributor:
                with torch.no_grad():
                    logits = model(tensor)
                seed = torch.zeros_like(logits)
                rows = torch.arange(batch)
                targets = logits.argmax(1)
                seed[rows, targets] = logits[rows, targets]
                return attributor(tensor, seed)
    else:
        from converters import load_model
        from lrptool.lrp import Explainer
        graph = load_model(onnx_path)
        low = tool == "lrptool-low-memory"
        if profiles:
            os.environ["LRPTOOL_ORT_PROFILE"] = os.path.join(profiles, "explainer")
        setup = time.perf_counter()
        explainer = Explainer(graph, "epsilon-plus-flat", quiet=True, primitives="numpy" if low else "onnxruntime",
                              forward_backend="lrptool" if low else "auto", compiled=tool == "lrptool-compiled")
        if tool == "lrptool-compiled":
            assert explainer.compiled is not None
            profiled = explainer.compiled.session
        setup = time.perf_counter() - setup
        run = lambda: explainer.explain(x)  # noqa: E731
    setup = locals().get("setup", 0.0)
    before = rss_bytes()
    reset_peak()
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    peak = peak_bytes() - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    result = {"seconds": statistics.median(times), "first": first, "peak": peak, "setup": setup}
    if profiles:
        result["profile"] = profile_breakdown(profiled.end_profiling(), batch)
        shutil.rmtree(profiles)
    print(json.dumps(result))


def profile_category(event):
    """The kind of work one kernel of onnxruntime's profile did. The compiled explainer names the
    nodes of its reverse walk ``lrp/…``; onnxruntime names a node it rewrites after its output."""
    op = event["args"]["op_name"]
    node = event["name"][:-len("_kernel_time")]
    if op.startswith("Reorder"):
        return "layout changes"
    if not node.startswith("lrp/"):
        return "forward: convolutions" if op in ("Conv", "FusedConv") else "forward: other"
    kinds = {"Conv": "convolutions", "FusedConv": "convolutions", "MatMul": "matrix products",
             "Gemm": "matrix products", "ConvTranspose": "transposed convolutions"}
    return "rules: " + kinds.get(op, op)


def profile_kernels(events):
    """The per-node kernel events of an onnxruntime profile (its JSON list of events)."""
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def profile_breakdown(path, batch):
    """onnxruntime's profile → {kind: milliseconds per image}: each run's kernel times summed by
    kind, the median over the runs after the first; "kernels" is their sum, "run" the whole call."""
    with open(path) as handle:
        events = json.load(handle)
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    kernels = profile_kernels(events)
    per_run = []
    for run in runs[1:] or runs:
        totals = collections.Counter()
        for event in kernels:
            if run["ts"] <= event["ts"] <= run["ts"] + run["dur"]:
                totals[profile_category(event)] += event["dur"]
        totals["kernels"] = sum(totals.values())
        totals["run"] = run["dur"]
        per_run.append(totals)
    kinds = set().union(*per_run)
    return {kind: statistics.median(t[kind] for t in per_run) / 1e3 / batch for kind in kinds}


def print_profile(profile, forward):
    """The explainer's (or the forward pass's) kernel time by kind, largest first, with multiples
    of the forward pass's kernel time per image."""
    print("    where the time goes (kernel ms/img, × forward kernels):")
    for kind, ms in sorted(profile.items(), key=lambda kv: -kv[1]):
        if kind != "run" and ms >= 0.005 * profile["kernels"]:
            print(f"      {kind:34s} {ms:8.1f}  {ms / forward:5.2f}x")


def measure(tool, name, batch, repeats, onnx_path, profile=False):
    env = dict(os.environ, OMP_NUM_THREADS="2", NUMBA_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2", MKL_NUM_THREADS="2")
    result = subprocess.run([sys.executable, __file__, "--worker", tool, name, str(batch), str(repeats), onnx_path]
                            + (["--profile"] if profile else []),
                            capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"{tool} on {name} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="vgg16,resnet50")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help="comma-separated subset of " + ", ".join(TOOLS) + " (onnxruntime is always measured)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every tool this many times, each in a fresh process, the tools taking "
                             "turns; report the fastest round (and the median peak) — on a machine whose speed "
                             "drifts, this keeps the drift out of the ratios")
    parser.add_argument("--profile", action="store_true",
                        help="also show where the forward pass's and the compiled explainer's time goes "
                             "(onnxruntime's per-node profile, summed by kind)")
    parser.add_argument("--worker", nargs=5)
    args = parser.parse_args()
    if args.worker:
        tool, name, batch, repeats, path = args.worker
        return worker(tool, name, int(batch), int(repeats), path, args.profile)
    unknown = set(args.tools.split(",")) - set(TOOLS)
    if unknown:
        raise SystemExit(f"--tools: unknown {', '.join(sorted(unknown))}; choose from {', '.join(TOOLS)}")
    tools = [tool for tool in TOOLS if tool == "onnxruntime" or tool in args.tools.split(",")]
    print("EpsilonPlusFlat, 224x224, 2 threads; time per image (median of the runs after the first"
          + (f", fastest of {args.rounds} rounds" if args.rounds > 1 else "") + "); "
          "peak = extra resident memory of the explanation")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            path = str(pathlib.Path(folder) / f"{name}.onnx")
            export(name, path)
            for batch in (int(b) for b in args.batches.split(",")):
                rounds = [{tool: measure(tool, name, batch, args.repeats, path, args.profile) for tool in tools}
                          for _ in range(max(args.rounds, 1))]
                results = {tool: fastest_round([r[tool] for r in rounds]) for tool in tools}
                ort_time = results["onnxruntime"]["seconds"] / batch
                zennit = results.get("zennit")
                print(f"{name} batch {batch}: onnxruntime forward {ort_time * 1e3:.1f} ms/img", flush=True)
                forward_profile = results["onnxruntime"].get("profile")
                if forward_profile:
                    print_profile(forward_profile, forward_profile["kernels"])
                for tool in tools[1:]:
                    r = results[tool]
                    per_image = r["seconds"] / batch
                    against = "" if zennit is None else (
                        f"{per_image / (zennit['seconds'] / batch):5.2f}x zennit time  ")
                    share = "" if zennit is None else f" ({r['peak'] / max(zennit['peak'], 1):4.2f}x zennit)"
                    print(f"  {tool:20s} {per_image * 1e3:8.1f} ms/img  {per_image / ort_time:5.2f}x ort  {against}"
                          f"peak {r['peak'] / 2**20:7.0f} MiB{share}  "
                          f"first call {r['first']:.2f} s, setup {r['setup']:.2f} s", flush=True)
                    if r.get("profile") and forward_profile:
                        print_profile(r["profile"], forward_profile["kernels"])


def fastest_round(measured):
    """One tool's rounds: the fastest time (with that round's profile, if any), the median of the
    peaks and one-time costs."""
    middle = lambda key: statistics.median(m[key] for m in measured)  # noqa: E731
    fastest = min(measured, key=lambda m: m["seconds"])
    result = {"seconds": fastest["seconds"], "peak": middle("peak"), "first": middle("first"), "setup": middle("setup")}
    if "profile" in fastest:
        result["profile"] = fastest["profile"]
    return result


TOOLS = ("onnxruntime", "zennit", "lrptool-compiled", "lrptool-eager", "lrptool-low-memory")
#: the tools whose onnxruntime session --profile reads
PROFILED = ("onnxruntime", "lrptool-compiled")


if __name__ == "__main__":
    main()
