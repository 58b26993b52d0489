"""Region perturbation (Samek et al. 2017): remove the most (or least) relevant regions first and
watch the explained score change; AOPC, the area over the perturbation curve, summarises it.

Images stream through in batches: each batch is explained with every method, then every step
perturbs one more region of every image under every method and order, and scores them in batches
of the same size. Only running sums leave a batch (per-step means and variances, per-image AOPC
moments), so memory does not grow with the number of images. Replacement values are drawn per
image from (seed, image index), so that all methods remove the same thing from the same region and
the result does not depend on the batch size.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import LrpToolError

ORDERS = ("morf", "lerf")
REPLACEMENTS = ("uniform", "mean", "zero", "blur")

#: The published setting (Samek et al. 2017, ILSVRC2012 at 224×224): 9×9 regions, replaced by
#: uniform noise, 100 perturbation steps, i.e. 8,100 of 50,176 pixels (16.1 %) perturbed.
PUBLISHED_SIZE, PUBLISHED_PATCH, PUBLISHED_STEPS = 224, 9, 100
PUBLISHED_SHARE = PUBLISHED_STEPS * PUBLISHED_PATCH ** 2 / PUBLISHED_SIZE ** 2


def region_count(height, width, patch):
    return (-(-height // patch)) * (-(-width // patch))


def default_setting(height, width):
    """(patch, steps): the published setting scaled to an H×W input — the region side in proportion
    to the shorter side (at least one pixel), and as many steps as perturb the same share of the
    image (16.1 %). 9 and 100 at 224×224; 1 and 127 at 28×28."""
    patch = max(1, round(PUBLISHED_PATCH * min(height, width) / PUBLISHED_SIZE))
    steps = max(1, round(PUBLISHED_SHARE * height * width / patch ** 2))
    return patch, min(steps, region_count(height, width, patch))


def perturbed_share(height, width, patch, steps):
    """The share of the image's pixels that ``steps`` full-size regions cover (at most 1)."""
    return min(1.0, steps * patch * patch / (height * width))


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


def replacement_values(x, kind, bounds, patch, rng):
    """What perturbed pixels become, per image: same shape as ``x``."""
    if kind == "uniform":
        low, high = bounds
        # per channel (C, 1, 1) or per pixel (C, H, W: a Caffe mean image)
        low = np.broadcast_to(np.asarray(low, dtype=np.float64), x.shape[1:])
        high = np.broadcast_to(np.asarray(high, dtype=np.float64), x.shape[1:])
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


def region_slices(index, patch, width):
    """(rows, cols) slices of flat region ``index`` on the patch grid of an image ``width`` wide."""
    row, col = divmod(int(index), -(-width // patch))
    return slice(row * patch, (row + 1) * patch), slice(col * patch, (col + 1) * patch)


def per_image_replacements(x, kind, bounds, patch, seed, first_index=0):
    """Replacement values for a batch whose first image is image ``first_index`` of the run: each
    image's values come from its own generator, seeded with (seed, image index)."""
    return np.concatenate([replacement_values(x[i:i + 1], kind, bounds, patch,
                                              np.random.default_rng([seed, first_index + i]))
                           for i in range(len(x))])


@dataclass
class Curves:
    """Scores per (method, order): an array (steps + 1, N); step 0 is the unperturbed image."""

    scores: dict = field(default_factory=dict)

    def aopc(self, method, order):
        """Per-image AOPC: the mean over steps 0…L of (f(x⁰) − f(xᵏ))."""
        curve = self.scores[method, order]
        return np.mean(curve[0][None, :] - curve, axis=0)


def perturbation_curves(score, x, targets, relevances, patch=4, steps=20, orders=("morf",),
                        replacement="uniform", bounds=(0.0, 1.0), seed=0, batch_size=256, first_index=0,
                        snapshots=None):
    """Region-perturbation curves of one batch of images.

    ``score(batch, targets) -> (B,)`` gives the explained outputs; ``relevances`` maps a method
    name to its (N, C, H, W) relevance. Each step perturbs one more region in every image under
    every method and order, and scores them all in batches of at most ``batch_size`` images.
    ``first_index``: the index of ``x[0]`` in the whole run (it seeds the replacement values).

    ``snapshots``: a dict to fill with the perturbed inputs of a few images, for pictures of the
    sequence: ``{(method, order, image, step): (input (C, H, W), score)}`` for the images (indices
    in the whole run) in ``snapshots["images"]`` at the steps in ``snapshots["steps"]``.
    """
    n, _, height, width = x.shape
    steps = min(steps, region_count(height, width, patch))
    values = per_image_replacements(x, replacement, bounds, patch, seed, first_index)
    runs = [(method, order) for method in relevances for order in orders]
    rankings = {(m, o): region_ranking(relevances[m], patch, o) for m, o in runs}
    current = np.repeat(x[None], len(runs), axis=0)                 # (runs, N, C, H, W)
    base = score(x, targets)
    curves = Curves({run: np.empty((steps + 1, n)) for run in runs})
    for run in runs:
        curves.scores[run][0] = base
    all_targets = np.tile(targets, len(runs))
    wanted = [i - first_index for i in (snapshots or {}).get("images", ()) if 0 <= i - first_index < n]
    wanted_steps = set((snapshots or {}).get("steps", ()))

    def keep(step):
        if step in wanted_steps:
            for index, run in enumerate(runs):
                for i in wanted:
                    snapshots[run + (first_index + i, step)] = (current[index, i].copy(),
                                                               float(curves.scores[run][step][i]))
    keep(0)
    for step in range(1, steps + 1):
        for index, run in enumerate(runs):
            for i, region in enumerate(rankings[run][:, step - 1]):
                rows, cols = region_slices(region, patch, width)
                current[index, i, :, rows, cols] = values[i, :, rows, cols]
        stacked = current.reshape((-1,) + x.shape[1:])
        results = np.concatenate([score(stacked[i:i + batch_size], all_targets[i:i + batch_size])
                                  for i in range(0, len(stacked), batch_size)])
        for index, run in enumerate(runs):
            curves.scores[run][step] = results[index * n:(index + 1) * n]
        keep(step)
    return curves


@dataclass
class Moments:
    """Running count, mean and sum of squared deviations over images (the last axis), merged batch
    by batch (Chan et al.'s pairwise update), so that no per-image value needs to be kept."""

    count: int = 0
    mean: object = 0.0
    m2: object = 0.0

    def add(self, values):
        values = np.asarray(values, dtype=np.float64)
        n = values.shape[-1]
        if n == 0:
            return
        mean = values.mean(axis=-1)
        m2 = ((values - mean[..., None]) ** 2).sum(axis=-1)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    def std(self):
        return np.sqrt(self.m2 / self.count) if self.count else np.zeros_like(self.mean)

    def sem(self):
        """Standard error of the mean (sample standard deviation / √n); 0 for one image."""
        if self.count < 2:
            return np.zeros_like(self.mean)
        return np.sqrt(self.m2 / (self.count - 1)) / np.sqrt(self.count)


@dataclass
class Tally:
    """What a run keeps of its images: per (method, order) the moments of the curve (per step) and
    of the per-image AOPC, and the moments of the unperturbed score."""

    curves: dict = field(default_factory=dict)
    aopc: dict = field(default_factory=dict)
    base: Moments = field(default_factory=Moments)

    def add(self, curves):
        first = True
        for run, curve in curves.scores.items():
            self.curves.setdefault(run, Moments()).add(curve)
            self.aopc.setdefault(run, Moments()).add(curves.aopc(*run))
            if first:
                self.base.add(curve[0])
                first = False
        return self

    @property
    def images(self):
        return self.base.count

    def summary(self):
        """{order: [{method, aopc, sem, relative_aopc, relative_sem, rank}, …]} ranked best first:
        for MoRF the largest AOPC (the score falls fastest when the most relevant regions go), for
        LeRF the smallest (it holds longest when the least relevant go). The relative AOPC is the
        mean AOPC divided by the mean unperturbed score of the same images (None when that mean is
        not above 0): the share of the score the perturbation removes on average over the steps."""
        table = {}
        score = float(self.base.mean)
        for (method, order), moments in self.aopc.items():
            aopc, sem = float(moments.mean), float(moments.sem())
            relative = score > 0 and math.isfinite(aopc / score)
            table.setdefault(order, []).append({"method": method, "aopc": aopc, "sem": sem,
                                                "relative_aopc": aopc / score if relative else None,
                                                "relative_sem": sem / score if relative else None})
        for order in table:
            table[order].sort(key=lambda row: row["aopc"] if order == "lerf" else -row["aopc"])
            for rank, row in enumerate(table[order], start=1):
                row["rank"] = rank
        return table


def summary(curves):
    """The ranked AOPC table of ``curves`` (see ``Tally.summary``)."""
    return Tally().add(curves).summary()


def onnxruntime_scorer(graph):
    """score(batch, targets) through onnxruntime on ``graph`` (float32); ``score.outputs(batch)`` gives
    the whole output rows (to pick the targets) without recording every tensor as the explainer's
    forward pass does."""
    import onnxruntime
    from converters.onnx_writer import graph_to_onnx

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False      # the arena would keep the largest batch's working set
    session = onnxruntime.InferenceSession(graph_to_onnx(graph).SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def outputs(batch):
        return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0].reshape(len(batch), -1)

    def score(batch, targets):
        return outputs(batch)[np.arange(len(batch)), targets].astype(np.float64)
    score.outputs = outputs
    return score


def batches_of(images, size):
    """Lists of at most ``size`` images from any iterable of (C, H, W) arrays, taken lazily."""
    batch = []
    for image in images:
        batch.append(image)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate_methods(graph, images, methods, target="pred", patch=4, steps=20, orders=("morf",),
                     replacement="uniform", bounds=(0.0, 1.0), seed=0, batch_size=8, explainer_options=None,
                     progress=None, snapshots=None):
    """Explain ``images`` (an (N, C, H, W) array or any iterable of (C, H, W) arrays, read lazily)
    with every method (``random`` always among them), then perturb and score, ``batch_size`` images
    at a time: at most that many images (times the method/order runs) are held at once.
    ``progress(n)`` is called after each batch with its image count. ``snapshots``: see
    ``perturbation_curves``.

    Returns (tally, summary, dropped): images with non-finite scores or relevance are left out of
    the tally and the summary, and their indices (in the order given) listed."""
    explainers, score = prepared_methods(graph, methods, bounds, seed, explainer_options)
    tally, dropped, offset = Tally(), [], 0
    for batch in batches_of(images, batch_size):
        x = np.stack(batch)
        del batch
        curves, relevances = batch_curves(explainers, score, x, target, patch, steps, orders, replacement, bounds,
                                          seed, batch_size, offset, snapshots)
        curves, left_out = without_non_finite(curves, relevances)
        tally.add(curves)
        dropped += [offset + i for i in left_out]
        offset += len(x)
        if progress:
            progress(len(x))
    return tally, tally.summary() if tally.images else {}, dropped


def prepared_methods(graph, methods, bounds=(0.0, 1.0), seed=0, explainer_options=None):
    """(the methods' ``SharedForward``, ``random`` always among them, and the scorer): what scoring a
    batch needs. The methods share one forward pass per batch."""
    from .lrp import Explainer
    from .lrp.several import SharedForward

    methods = list(dict.fromkeys(list(methods) + ["random"]))
    options = dict(bounds=bounds, quiet=True, seed=seed, compile_later=True)
    options.update(explainer_options or {})
    explainers = SharedForward([(m, Explainer(graph, m, **options)) for m in methods])
    return explainers, onnxruntime_scorer(explainers.explainers[0][1].graph)


def batch_curves(explainers, score, x, target, patch, steps, orders, replacement, bounds, seed, batch_size,
                 first_index=0, snapshots=None):
    """(Curves, {method: relevance}) of one batch whose first image is image ``first_index`` of the
    run. Every image's values depend on that index and the seed alone, not on the batch it is in."""
    from .lrp import select_targets

    targets = select_targets(score.outputs(x), target)
    explained = explainers.explain(x, target=targets, names=[m for m in explainers.names if m != "random"])
    relevances = {method: random_relevance(x.shape, seed, first_index) if method == "random"
                  else explained[method].relevance for method in explainers.names}
    curves = perturbation_curves(score, x, targets, relevances, patch, steps, orders, replacement, bounds, seed,
                                 batch_size=batch_size, first_index=first_index, snapshots=snapshots)
    return curves, relevances


def random_relevance(shape, seed, first_index=0):
    """The random baseline of a batch whose first image is image ``first_index`` of the run: each
    image's standard normal values from its own generator, seeded with (seed, image index, 1)."""
    return np.stack([np.random.default_rng([seed, first_index + i, 1]).standard_normal(shape[1:])
                     for i in range(shape[0])]).astype(np.float32)


def without_non_finite(curves, relevances):
    """The curves of the images whose relevance (every method) and scores (every step) are finite,
    and the indices of the others, which no AOPC may include."""
    finite = None
    for relevance in relevances.values():
        ok = np.all(np.isfinite(relevance.reshape(len(relevance), -1)), axis=1)
        finite = ok if finite is None else finite & ok
    for curve in curves.scores.values():
        finite &= np.all(np.isfinite(curve), axis=0)
    dropped = [int(i) for i in np.flatnonzero(~finite)]
    if dropped:
        curves = Curves({run: curve[:, finite] for run, curve in curves.scores.items()})
    return curves, dropped


def write_report(outdir, tally, table, settings, say=print):
    """curves.csv (per method, order and step: the mean score over images, its standard deviation
    and standard error), summary.json and (with matplotlib) curves.png in ``outdir``."""
    import csv
    import io
    import json
    import os

    from .files import write_atomically

    os.makedirs(outdir, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["method", "order", "step", "mean_score", "std", "sem"])
    for (method, order), moments in tally.curves.items():
        for step, (mean, std, sem) in enumerate(zip(moments.mean, moments.std(), moments.sem())):
            writer.writerow([method, order, step, f"{mean:.9g}", f"{std:.9g}", f"{sem:.9g}"])
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
    methods = sorted({method for method, _ in tally.curves})
    colours = {method: f"C{index % 10}" for index, method in enumerate(methods)}
    for axis, order in zip(axes[0], table):
        for row in table[order]:
            curve = tally.curves[row["method"], order].mean
            share = f", {row['relative_aopc']:.1%} of the score" if row["relative_aopc"] is not None else ""
            axis.plot(np.arange(len(curve)), curve, color=colours[row["method"]],
                      label=f"{row['method']} (AOPC {row['aopc']:.3g}{share})")
        axis.set_title(f"{order.upper()} region perturbation")
        axis.set_xlabel("perturbation step")
        axis.set_ylabel("mean explained score")
        axis.legend(fontsize=8)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_atomically(os.path.join(outdir, "curves.png"), buffer.getvalue())
