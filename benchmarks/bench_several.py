"""Several methods (and class ranks) in one run: one shared forward pass (``SharedForward``, one
compiled graph for all methods and ranks) against one compiled explainer per method run once per
rank, on the bundled trained SqueezeNet (Caffe, 227×227). Both are measured in the same process,
interleaved, after a warm-up; printed: the median time per batch of each, their ratio, and the
one-time cost of building each.

    python benchmarks/bench_several.py [--methods a,b,c] [--top K] [--batch 8] [--repeats 5] [--threads 2]
"""

import argparse
import pathlib
import statistics
import time

import numpy as np

from converters import load_model
from lrptool.lrp import Explainer, top_k_targets
from lrptool.lrp.several import SharedForward

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = ROOT / "sample_models" / "squeezenet" / "SqueezeNet_deploy.prototxt"
WEIGHTS = ROOT / "sample_models" / "squeezenet" / "squeezenet_dc.caffemodel"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="epsilon-plus-flat,epsilon-gamma-box,gradient")
    parser.add_argument("--top", type=int, default=1, help="class ranks per image (--target top-K)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    methods = args.methods.split(",")
    graph = load_model(str(MODEL), weights=str(WEIGHTS))
    shape = graph.inputs[next(iter(graph.inputs))][1:]
    x = np.random.default_rng(0).uniform(-120, 150, size=(args.batch,) + tuple(shape)).astype(np.float32)
    options = dict(bounds=(-124.0, 152.0), quiet=True, threads=args.threads)

    start = time.perf_counter()
    separate = [(m, Explainer(graph, m, **options)) for m in methods]
    built_separate = time.perf_counter() - start
    start = time.perf_counter()
    shared = SharedForward([(m, Explainer(graph, m, compile_later=True, **options)) for m in methods], ranks=args.top)
    built_shared = time.perf_counter() - start

    def run_separate():
        first = separate[0][1].explain(x)
        ranking = top_k_targets(first.outputs, args.top)
        for rank in range(args.top):
            for index, (_, explainer) in enumerate(separate):
                if rank or index:
                    explainer.explain(x, target=ranking[rank])

    def run_shared():
        shared.explain_ranks(x, "pred", args.top)

    run_separate(), run_shared()   # warm-up: onnxruntime's first call plans its memory
    times = {"separate": [], "shared": []}
    for _ in range(args.repeats):
        for name, run in (("separate", run_separate), ("shared", run_shared)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    separate_time, shared_time = (statistics.median(times[k]) for k in ("separate", "shared"))
    print(f"SqueezeNet, {len(methods)} method(s) ({', '.join(methods)}), top-{args.top}, batch {args.batch}, "
          f"{args.threads} threads")
    print(f"  one compiled explainer per method: {separate_time * 1000:.0f} ms per batch (built in {built_separate:.1f} s)")
    print(f"  one shared forward pass:           {shared_time * 1000:.0f} ms per batch (built in {built_shared:.1f} s)")
    print(f"  shared / separate: {shared_time / separate_time:.2f}")


if __name__ == "__main__":
    main()
