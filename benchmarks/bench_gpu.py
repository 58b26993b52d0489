"""The compiled explainer on a GPU: onnxruntime's CUDA provider against Zennit on CUDA.

VGG-16 and ResNet-50 with random weights (the builders of bench_lrp.py), EpsilonPlusFlat, batch
1, 16 and 64. Prints the time per image of onnxruntime's forward pass, the compiled explainer and
Zennit, all on the GPU, and their ratios. Both explanations are timed from a batch in host memory
to relevance in host memory (the compiled explainer takes and gives NumPy arrays). Each row also
says how far the two explanations agree (relative L2 distance of the relevance) and on which
providers onnxruntime ran the compiled graph's nodes: a node the CUDA provider lacks falls back to
the CPU, and the row names the operators that did so with outputs over 64 KiB (onnxruntime keeps
small shape computations on the CPU on purpose).

Needs onnxruntime-gpu, torch with CUDA and zennit; where any of them or a GPU is missing it says
which and exits with status 0. ``--device cpu`` runs the same comparison on the CPU (onnxruntime's
CPU provider, torch on the CPU): a rehearsal of the script on a machine without a GPU.

Usage: ``python benchmarks/bench_gpu.py [--models vgg16,resnet50] [--batches 1,16,64] [--repeats 5]
[--device cuda|cpu]``.
"""

import argparse
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))


def missing(device):
    """Why this machine cannot run the comparison on ``device``, or None."""
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed"
    if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu on a machine with a GPU)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if device == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        from torch_support import ensure_torchvision
        ensure_torchvision()  # zennit imports torchvision; a stand-in serves where it is missing
        import zennit  # noqa: F401
    except ImportError as error:
        return f"zennit cannot be imported ({error})"
    return None


def placement(profile_path):
    """{provider: number of kernels}, and the operator types whose kernels ran on the CPU with outputs
    over 64 KiB: a fallback that moves activations between the devices (onnxruntime keeps small shape
    computations on the CPU on purpose), from one profiled run."""
    import collections
    import json

    from bench_lrp import profile_kernels
    with open(profile_path) as handle:
        events = profile_kernels(json.load(handle))
    providers = collections.Counter(e["args"].get("provider", "?") for e in events)
    on_cpu = sorted({e["args"]["op_name"] for e in events if e["args"].get("provider") == "CPUExecutionProvider"
                     and int(e["args"].get("output_size", 0)) > 65536})
    return providers, on_cpu


def relative_l2(a, b):
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="vgg16,resnet50")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: the same comparison on the CPU, to rehearse the script without a GPU")
    args = parser.parse_args()
    reason = missing(args.device)
    if reason:
        print(f"bench_gpu: nothing to measure: {reason}")
        return 0

    import os

    import numpy as np
    import onnxruntime
    import torch
    from bench_forward import median_seconds as timed
    from bench_lrp import build, export
    from torch_support import ensure_torchvision, fold_batchnorm

    from converters import load_model
    from lrptool.lrp import Explainer

    ensure_torchvision()
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    device = torch.device(args.device)
    provider = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}[args.device]
    print(f"EpsilonPlusFlat, 224x224, on the {'GPU' if args.device == 'cuda' else 'CPU'}; ms per image (median)")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            path = str(pathlib.Path(folder) / f"{name}.onnx")
            export(name, path)
            forward = onnxruntime.InferenceSession(path, providers=[provider])
            model = fold_batchnorm(build(name)).to(device)
            for batch in (int(b) for b in args.batches.split(",")):
                x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)
                # a session per batch size, its first run profiled: where onnxruntime placed each node
                os.environ["LRPTOOL_ORT_PROFILE"] = str(pathlib.Path(folder) / f"{name}-{batch}")
                explainer = Explainer(load_model(path), "epsilon-plus-flat", quiet=True, compiled=True,
                                      providers=[args.device])
                relevance = explainer.explain(x).relevance
                del os.environ["LRPTOOL_ORT_PROFILE"]
                providers, on_cpu = placement(explainer.compiled.session.end_profiling())

                def zennit_run():
                    tensor = torch.from_numpy(x).to(device)
                    with Gradient(model=model, composite=EpsilonPlusFlat()) as attributor:
                        with torch.no_grad():
                            logits = model(tensor)
                        seed = torch.zeros_like(logits)
                        rows = torch.arange(batch, device=device)
                        targets = logits.argmax(1)
                        seed[rows, targets] = logits[rows, targets]
                        _, result = attributor(tensor, seed)
                    return result.cpu().numpy()

                agreement = relative_l2(relevance, zennit_run())
                ort_time = timed(lambda: forward.run(None, {"x": x}), args.repeats) / batch
                compiled = timed(lambda: explainer.explain(x), args.repeats) / batch
                zennit_time = timed(zennit_run, args.repeats) / batch
                where = ", ".join(f"{count} on {name.replace('ExecutionProvider', '')}"
                                  for name, count in providers.most_common())
                fallback = (f"; large outputs on the CPU: {', '.join(on_cpu)}"
                            if on_cpu and args.device != "cpu" else "")
                print(f"{name:9s} batch {batch:3d}: forward {ort_time * 1e3:7.2f} | compiled {compiled * 1e3:7.2f} "
                      f"({compiled / ort_time:4.2f}x forward) | zennit {zennit_time * 1e3:7.2f} "
                      f"(compiled {compiled / zennit_time:4.2f}x zennit) | relevance vs zennit: relative L2 "
                      f"{agreement:.1e} | kernels: {where}{fallback}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
