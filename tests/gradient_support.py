"""Central differences of lrptool's float64 forward pass: the reference for every gradient test."""

import numpy as np

from lrptool.executor import run_graph


def central_difference(graph, x, targets, output=None, step=1e-6):
    """d score / d x, where row r's score is ``output[r, targets[r]]`` (``targets``: one class for
    every row, or one per row; ``output``: the graph's first output unless named)."""
    x = np.asarray(x, dtype=np.float64)
    output = output or graph.outputs[0]
    targets = np.broadcast_to(np.asarray(targets), (x.shape[0],))
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        row, target = index[0], targets[index[0]]
        numeric[index] = (run_graph(graph, up, dtype=np.float64)[output][row, target]
                          - run_graph(graph, down, dtype=np.float64)[output][row, target]) / (2 * step)
    return numeric
