"""The compiled explainer on a GPU: onnxruntime's CUDA provider against Zennit on CUDA.

VGG-16 and ResNet-50 with random weights (the builders of bench_lrp.py), EpsilonPlusFlat, batch
1, 16 and 64. Prints the time per image of onnxruntime's forward pass, the compiled explainer and
Zennit, all on the GPU, and their ratios. Needs onnxruntime-gpu, torch with CUDA and zennit; where
any of them or a GPU is missing it says which and exits with status 0.

Usage: ``python benchmarks/bench_gpu.py [--models vgg16,resnet50] [--batches 1,16,64] [--repeats 5]``.
"""

import argparse
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def missing():
    """Why this machine cannot run the comparison, or None."""
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu on a machine with a GPU)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        import zennit  # noqa: F401
    except ImportError as error:
        return f"zennit cannot be imported ({error})"
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="vgg16,resnet50")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    reason = missing()
    if reason:
        print(f"bench_gpu: nothing to measure: {reason}")
        return 0

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

    device = torch.device("cuda")
    print("EpsilonPlusFlat, 224x224, on the GPU; ms per image (median)")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            path = str(pathlib.Path(folder) / f"{name}.onnx")
            export(name, path)
            forward = onnxruntime.InferenceSession(path, providers=["CUDAExecutionProvider"])
            explainer = Explainer(load_model(path), "epsilon-plus-flat", quiet=True, compiled=True,
                                  providers=["cuda"])
            model = fold_batchnorm(build(name)).to(device)
            for batch in (int(b) for b in args.batches.split(",")):
                x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)
                tensor = torch.from_numpy(x).to(device)

                def zennit_run():
                    with Gradient(model=model, composite=EpsilonPlusFlat()) as attributor:
                        with torch.no_grad():
                            logits = model(tensor)
                        seed = torch.zeros_like(logits)
                        rows = torch.arange(batch, device=device)
                        targets = logits.argmax(1)
                        seed[rows, targets] = logits[rows, targets]
                        result = attributor(tensor, seed)
                    torch.cuda.synchronize()
                    return result

                ort_time = timed(lambda: forward.run(None, {"x": x}), args.repeats) / batch
                compiled = timed(lambda: explainer.explain(x), args.repeats) / batch
                zennit_time = timed(zennit_run, args.repeats) / batch
                print(f"{name:9s} batch {batch:3d}: forward {ort_time * 1e3:7.2f} | compiled {compiled * 1e3:7.2f} "
                      f"({compiled / ort_time:4.2f}x forward) | zennit {zennit_time * 1e3:7.2f} "
                      f"(compiled {compiled / zennit_time:4.2f}x zennit)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
