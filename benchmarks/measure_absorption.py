"""How much of the explained score each preset keeps at the input on a MobileNet-style block whose
BatchNorm, folded into a depthwise convolution, leaves positive biases that keep units on with no
positive input (tests/absorption_support.py). Prints Σ R_input / score, mean and range over 4 inputs:

    .venv/bin/python benchmarks/measure_absorption.py
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from absorption_support import CANDIDATES, depthwise_block, inactive_input_share, inputs, kept_share  # noqa: E402


def main():
    graph, x = depthwise_block(), inputs()
    print(f"active depthwise outputs with no positive input: {inactive_input_share(graph, x):.1%}")
    print(f"{'preset or rule map':42s} {'kept (mean)':>12s} {'min':>9s} {'max':>9s}")
    for method in CANDIDATES:
        kept = kept_share(graph, method, x)
        print(f"{method:42s} {kept.mean():12.2%} {kept.min():9.2%} {kept.max():9.2%}")


if __name__ == "__main__":
    main()
