"""Region perturbation (Samek et al. 2017): remove the most (or least) relevant regions first and
watch the explained score change; AOPC, the area over the perturbation curve, summarises it.

Every step perturbs one more region of every image under every method, and scores all of them
in one batched forward pass. Replacement values are drawn once per image (seeded), so that all
methods remove the same thing from the same region.
"""

from dataclasses import dataclass, field

import numpy as np

from .errors import LrpToolError

ORDERS = ("morf", "lerf")
REPLACEMENTS = ("uniform", "mean", "zero", "blur")


def region_ranking(relevance, patch, order):
    """For each image, the grid regions (patch × patch, over all channels) by summed relevance:
    largest first for MoRF, smallest first for LeRF. Returns (N, regions) flat region indices."""
    n, _, height, width = relevance.shape
    rows, cols = -(-height // patch), -(-width // patch)
    padded = np.zeros((n, rows * patch, cols * patch))
    padded[:, :height, :width] = relevance.sum(axis=1)
    scores = padded.reshape(n, rows, patch, cols, patch).sum(axis=(2, 4)).reshape(n, -1)
    # a stable sort on the negated scores keeps ties in reading order for both orders
    return np.argsort(-scores if order == "morf" else scores, axis=1, kind="stable")


def region_mask(index, patch, shape):
    """Boolean (H, W) mask of flat region ``index`` on the patch grid."""
    height, width = shape
    cols = -(-width // patch)
    row, col = divmod(int(index), cols)
    mask = np.zeros((height, width), dtype=bool)
    mask[row * patch:(row + 1) * patch, col * patch:(col + 1) * patch] = True
    return mask


def replacement_values(x, kind, bounds, patch, rng):
    """What perturbed pixels become, per image: same shape as ``x``."""
    if kind == "uniform":
        low, high = bounds
        low = np.broadcast_to(np.asarray(low, dtype=np.float64), x.shape[1:2] + (1, 1))
        high = np.broadcast_to(np.asarray(high, dtype=np.float64), x.shape[1:2] + (1, 1))
        return (low + (high - low) * rng.random(x.shape)).astype(x.dtype)
    if kind == "mean":
        return np.broadcast_to(x.mean(axis=(2, 3), keepdims=True), x.shape).astype(x.dtype)
    if kind == "zero":
        return np.zeros_like(x)
    if kind == "blur":
        return box_blur(x, patch)
    raise LrpToolError(f"unknown replacement {kind!r}; choose from {', '.join(REPLACEMENTS)}")


def box_blur(x, size):
    """Mean over a size × size window (clipped at the border), per channel."""
    pad = size // 2
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, size - 1 - pad), (pad, size - 1 - pad)))
    ones = np.pad(np.ones(x.shape[2:]), ((pad, size - 1 - pad), (pad, size - 1 - pad)))
    total = np.zeros(x.shape, dtype=np.float64)
    count = np.zeros(x.shape[2:])
    for i in range(size):
        for j in range(size):
            total += padded[:, :, i:i + x.shape[2], j:j + x.shape[3]]
            count += ones[i:i + x.shape[2], j:j + x.shape[3]]
    return (total / count).astype(x.dtype)


@dataclass
class Curves:
    """Scores per (method, order): an array (steps + 1, N); step 0 is the unperturbed image."""

    scores: dict = field(default_factory=dict)

    def aopc(self, method, order):
        """Per-image AOPC: the mean over steps 0…L of (f(x⁰) − f(xᵏ))."""
        curve = self.scores[method, order]
        return np.mean(curve[0][None, :] - curve, axis=0)


def perturbation_curves(score, x, targets, relevances, patch=4, steps=20, orders=("morf",),
                        replacement="uniform", bounds=(0.0, 1.0), seed=0, batch_size=256):
    """Region-perturbation curves.

    ``score(batch, targets) -> (B,)`` gives the explained outputs; ``relevances`` maps a method
    name to its (N, C, H, W) relevance. Each step perturbs one more region in every image under
    every method and (order), and scores them all in batches of ``batch_size``.
    """
    n, _, height, width = x.shape
    regions = (-(-height // patch)) * (-(-width // patch))
    steps = min(steps, regions)
    values = replacement_values(x, replacement, bounds, patch, np.random.default_rng(seed))
    runs = [(method, order) for method in relevances for order in orders]
    rankings = {(m, o): region_ranking(relevances[m], patch, o) for m, o in runs}
    current = {run: x.copy() for run in runs}
    base = score(x, targets)
    curves = Curves({run: np.empty((steps + 1, n)) for run in runs})
    for run in runs:
        curves.scores[run][0] = base
    masks = np.stack([region_mask(r, patch, (height, width)) for r in range(regions)])
    for step in range(1, steps + 1):
        for run in runs:
            chosen = masks[rankings[run][:, step - 1]]              # (N, H, W)
            image = current[run]
            image[:] = np.where(chosen[:, None], values, image)
        stacked = np.concatenate([current[run] for run in runs])
        all_targets = np.tile(targets, len(runs))
        results = np.concatenate([score(stacked[i:i + batch_size], all_targets[i:i + batch_size])
                                  for i in range(0, len(stacked), batch_size)])
        for index, run in enumerate(runs):
            curves.scores[run][step] = results[index * n:(index + 1) * n]
    return curves


def summary(curves):
    """{order: [{method, aopc, sem}, …]} ranked best first: for MoRF the largest AOPC (the score falls
    fastest when the most relevant regions go), for LeRF the smallest (it holds longest when the least
    relevant go)."""
    table = {}
    for method, order in curves.scores:
        per_image = curves.aopc(method, order)
        sem = float(np.std(per_image, ddof=1) / np.sqrt(len(per_image))) if len(per_image) > 1 else 0.0
        table.setdefault(order, []).append({"method": method, "aopc": float(np.mean(per_image)), "sem": sem})
    for order in table:
        table[order].sort(key=lambda row: row["aopc"] if order == "lerf" else -row["aopc"])
        for rank, row in enumerate(table[order], start=1):
            row["rank"] = rank
    return table


def onnxruntime_scorer(graph):
    """score(batch, targets) through onnxruntime on ``graph`` (float32)."""
    import onnxruntime
    from converters.onnx_writer import graph_to_onnx

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(graph_to_onnx(graph).SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def score(batch, targets):
        outputs = session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return outputs.reshape(len(batch), -1)[np.arange(len(batch)), targets].astype(np.float64)
    return score


def evaluate_methods(graph, x, methods, target="pred", patch=4, steps=20, orders=("morf",), replacement="uniform",
                     bounds=(0.0, 1.0), seed=0, batch_size=64, explainer_options=None):
    """Explain ``x`` with every method (``random`` always among them), then perturb and score.
    Returns (Curves, summary, targets, dropped): images with non-finite scores or relevance are
    dropped from the curves and the summary, and their indices listed."""
    from .lrp import Explainer, select_targets

    methods = list(dict.fromkeys(list(methods) + ["random"]))
    options = dict(bounds=bounds, quiet=True, seed=seed)
    options.update(explainer_options or {})
    explainers = {m: Explainer(graph, m, **options) for m in methods}
    first = next(iter(explainers.values()))
    score = onnxruntime_scorer(first.graph)
    outputs = np.concatenate([first.walk.forward(x[i:i + batch_size])[first.output].copy()
                              for i in range(0, len(x), batch_size)])
    targets = select_targets(outputs, target)
    relevances = {}
    for method, explainer in explainers.items():
        relevances[method] = np.concatenate([explainer.explain(x[i:i + batch_size], target=targets[i:i + batch_size])
                                             .relevance for i in range(0, len(x), batch_size)])
    curves = perturbation_curves(score, x, targets, relevances, patch, steps, orders, replacement, bounds, seed,
                                 batch_size=max(batch_size, 256))
    curves, dropped = without_non_finite(curves, relevances)
    return curves, summary(curves) if len(dropped) < len(x) else {}, targets, dropped


def without_non_finite(curves, relevances):
    """The curves of the images whose relevance (every method) and scores (every step) are finite,
    and the indices of the others, which no AOPC may include."""
    finite = None
    for method, relevance in relevances.items():
        ok = np.all(np.isfinite(relevance.reshape(len(relevance), -1)), axis=1)
        finite = ok if finite is None else finite & ok
    for curve in curves.scores.values():
        finite &= np.all(np.isfinite(curve), axis=0)
    dropped = [int(i) for i in np.flatnonzero(~finite)]
    if dropped:
        curves = Curves({run: curve[:, finite] for run, curve in curves.scores.items()})
    return curves, dropped


def write_report(outdir, curves, table, settings, write=None, say=print):
    """curves.csv, summary.json and (with matplotlib) curves.png in ``outdir``."""
    import csv
    import io
    import json
    import os

    from .files import write_atomically

    os.makedirs(outdir, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["method", "order", "step", "mean_score", "std", "sem"])
    for (method, order), curve in curves.scores.items():
        for step, row in enumerate(curve):
            sem = np.std(row, ddof=1) / np.sqrt(len(row)) if len(row) > 1 else 0.0
            writer.writerow([method, order, step, f"{np.mean(row):.9g}", f"{np.std(row):.9g}", f"{sem:.9g}"])
    write_atomically(os.path.join(outdir, "curves.csv"), text.getvalue().encode())
    write_atomically(os.path.join(outdir, "summary.json"),
                     json.dumps({"settings": settings, "aopc": table}, indent=2, allow_nan=False).encode())
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed: no curves.png (pip install matplotlib); the CSV and JSON are written")
        return
    figure, axes = plt.subplots(1, len(table), figsize=(6 * len(table), 4), squeeze=False)
    # one colour per method in every panel, whatever its rank there
    methods = sorted({method for method, _ in curves.scores})
    colours = {method: f"C{index % 10}" for index, method in enumerate(methods)}
    for axis, order in zip(axes[0], table):
        for row in table[order]:
            curve = curves.scores[row["method"], order]
            axis.plot(np.arange(len(curve)), curve.mean(axis=1), color=colours[row["method"]],
                      label=f"{row['method']} (AOPC {row['aopc']:.3g})")
        axis.set_title(f"{order.upper()} region perturbation")
        axis.set_xlabel("perturbation step")
        axis.set_ylabel("mean explained score")
        axis.legend(fontsize=8)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_atomically(os.path.join(outdir, "curves.png"), buffer.getvalue())
