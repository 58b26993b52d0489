"""Print the relative L2 error of lrptool against the stored iNNvestigate references, per model and
analyzer (eager float64 walk, and the compiled float32 explainer against iNNvestigate):

    .venv/bin/python tests/references/innvestigate/compare_with_references.py
"""

import os
import sys

import numpy as np

TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]

from lrptool.lrp import Explainer  # noqa: E402
from test_innvestigate_models import ANALYZERS, HERE, MODELS, channels_first, load, relative_error  # noqa: E402


def main():
    print(f"{'model':8s} {'analyzer':30s} {'lrptool method':30s} {'eager f64':>10s} {'compiled f32':>12s}")
    for model in MODELS:
        graph, x = load(model)
        for analyzer, (method, options) in ANALYZERS.items():
            reference = channels_first(np.load(os.path.join(HERE, f"{model}.{analyzer}.npy")).astype(np.float64))
            exact = Explainer(graph, method, dtype=np.float64, quiet=True, compiled=False, **options).explain(x)
            compiled = Explainer(graph, method, dtype=np.float32, quiet=True, compiled=True, **options)
            result = compiled.explain(x.astype(np.float32), target=exact.targets)
            print(f"{model:8s} {analyzer:30s} {method:30s} {relative_error(exact.relevance, reference):10.2e} "
                  f"{relative_error(result.relevance, reference):12.2e}")


if __name__ == "__main__":
    main()
