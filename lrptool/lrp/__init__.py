"""Explaining predictions: LRP presets and rule maps, Deep Taylor, and the gradient baselines.

``Explainer`` prepares a graph once (canonization, rule assignment) and explains batches;
``lrptool.explain`` is the one-call form.
"""

import sys
from dataclasses import dataclass

import numpy as np

from ..errors import LrpToolError
from .canonize import canonize
from .engine import Conservation, NodeReport, ReverseWalk, make_walk
from .reverse import RULE_OPERATORS
from .presets import PRESET_NAMES, assign_rules, default_start, rule_map_from_spec

GRADIENT_METHODS = ("gradient", "sensitivity", "gradient-x-input", "smoothgrad", "integrated-gradients",
                    "guided-backprop", "deconvnet", "random")
METHODS = PRESET_NAMES + GRADIENT_METHODS


@dataclass
class Explanation:
    relevance: np.ndarray          # same shape as the input batch
    targets: np.ndarray            # explained output index per sample
    scores: np.ndarray             # the explained output value per sample
    outputs: np.ndarray            # the whole output batch (logits)
    report: Conservation = None    # LRP methods: relevance bookkeeping
    layers: dict = None            # every tensor's relevance, when asked for


def select_targets(scores, target):
    """Output index per sample: ``"pred"`` (largest output), an int, or one int per sample."""
    flat = scores.reshape(scores.shape[0], -1)
    if target is None or (isinstance(target, str) and target == "pred"):
        return np.argmax(flat, axis=1)
    targets = explicit_targets(target, flat.shape[0], flat.shape[1])
    return np.where(targets < 0, np.argmax(flat, axis=1), targets)  # -1 means "the predicted class"


def explicit_targets(target, batch, classes):
    """One class index per sample from an int or a sequence, checked against ``classes`` (None: not
    known); negative entries stand for the prediction and come back as -1."""
    targets = np.broadcast_to(np.asarray(target, dtype=np.int64), (batch,)).copy()
    if classes is not None and np.any(targets >= classes):
        raise LrpToolError(f"target {int(targets.max())} is out of range: the model has {classes} outputs")
    return np.where(targets < 0, -1, targets)


def top_k_targets(scores, k):
    """The k largest outputs per sample, best first: an array (k, N)."""
    flat = scores.reshape(scores.shape[0], -1)
    return np.argsort(-flat, axis=1, kind="stable")[:, :k].T


class Explainer:
    """Explain a graph's predictions with one method.

    ``method``: a preset name (``epsilon-plus-flat``, …), a rule map (see ``presets``), or one of
    the gradient baselines. ``bounds=(low, high)``: the input's value range for zᴮ rules (scalars or
    per-channel arrays broadcastable to one input). ``start``: ``"positive"`` (max(value, 0): iNNvestigate's Deep Taylor), ``"value"`` (the explained output's
    value; the default for LRP) or ``"one"`` (the default for the gradient methods).
    ``forward_backend``: ``"auto"`` (onnxruntime in float32, lrptool's executor otherwise),
    ``"onnxruntime"`` or ``"lrptool"``. ``primitives``: ``"onnxruntime"`` runs the convolutions of
    the rules in onnxruntime (float32; about twice as fast, about twice the memory: each session
    keeps its own packed copy of the modified kernels) or ``"numpy"`` (``--low-memory``).

    ``compiled``: ``"auto"`` (the default) explains in float32 with the compiled explainer — the
    forward pass and the whole reverse walk as one ONNX graph (``lrp.compile``) — whenever the
    options leave the defaults above, and falls back to the eager walk where a graph has no compiled
    form; ``True`` insists on it, ``False`` takes the eager walk. The eager walk also serves float64,
    ``layers=True`` and the random baseline. ``providers``: onnxruntime execution providers for the
    compiled explainer (``["cuda"]``, …) and ``threads`` its CPU threads (default: onnxruntime's, one
    per core). ``report``: the compiled explainer also computes the conservation report (the eager
    walk always does).

    Recurrent layers (LSTM, GRU, RNN) follow Arras et al. 2017 whatever the method's rules
    (``lrp.recurrent``): ``recurrent_epsilon`` is their ε, ``recurrent_bias`` ``"absorb"`` (biases and
    stabilisers keep their share) or ``"spread"`` (that share is spread over the inputs, so relevance
    is conserved exactly). The compiled explainer unrolls their steps; sequence lengths, clipping,
peepholes and the gradient methods through them are explained eagerly.

    A graph with free spatial sizes (a fully convolutional model read without an input size) is
    explained at each batch's own size: the graph is fixed to that size (``Graph.at_sizes``) and
    prepared — canonized, and compiled where the options ask for it — once per size; the last
    ``SIZES_KEPT`` sizes stay prepared.
    """

    SIZES_KEPT = 8

    def __init__(self, graph, method="epsilon-plus-flat", bounds=None, epsilon=1e-6, stabiliser=1e-6, gamma=0.25,
                 maxpool="winner", dtype=np.float32, start=None, samples=32, noise=0.1, steps=64, seed=0,
                 forward_backend="auto", primitives="onnxruntime", quiet=False, compiled="auto", providers=None,
                 report=False, recurrent_epsilon=1e-3, recurrent_bias="absorb", threads=None, compile_later=False):
        settings = {k: v for k, v in locals().items() if k not in ("self", "graph", "__class__")}
        # Explainer(self.original, **self.settings) builds it again (also in another process: lrptool.cluster_worker)
        self.settings = settings
        self.original = graph
        self.method = method
        self.by_size = None
        if graph.free_sizes():
            # prepared per size on first use; what the rules and notes need is known only then
            self.graph, self.settings, self.by_size = graph, settings, {}
            self.rules, self.compiled, self.prepared, self.dtype = {}, None, False, np.dtype(dtype)
            self.compile_pending = False
            return
        self.graph, self.canonization = canonize(graph)
        if self.canonization["softmax_removed"] and not quiet:
            removed = " and ".join(op.lower() for op in self.canonization["output_operators"])
            print(f"lrptool: the output {removed} is left out: logits are explained", file=sys.stderr)
        if len(self.graph.outputs) != 1:
            raise LrpToolError(f"the model has {len(self.graph.outputs)} outputs; lrptool explains one")
        self.method = method
        self.dtype = np.dtype(dtype)
        self.start = start
        self.samples, self.noise, self.steps = samples, noise, steps
        self.rng = np.random.default_rng(seed)
        self.bounds = None if bounds is None else tuple(np.asarray(b, dtype=self.dtype) for b in bounds)
        self.output = self.graph.outputs[0]
        if primitives not in ("onnxruntime", "numpy"):
            raise LrpToolError(f"primitives {primitives!r}: onnxruntime or numpy")
        if self.graph.token_inputs() and method in ("gradient-x-input", "smoothgrad", "integrated-gradients"):
            raise LrpToolError(f"{method} needs a float input; this model reads token ids (the gradient method "
                               "already gives each token its gradient × embedding)")
        if method in GRADIENT_METHODS:
            policy = {"guided-backprop": "guided", "deconvnet": "deconvnet"}.get(method, "gradient")
            self.walk = ReverseWalk(self.graph, mode="gradient", relu_policy=policy, dtype=self.dtype,
                                    forward_backend=forward_backend, primitives=primitives,
                                    recurrent_epsilon=recurrent_epsilon, recurrent_bias=recurrent_bias)
            self.rules = {}
        else:
            rule_map = rule_map_from_spec(method, epsilon, stabiliser, gamma)
            self.rules = assign_rules(self.graph, rule_map)
            self.walk = ReverseWalk(self.graph, mode="lrp", rules=self.rules, bounds=self.bounds, maxpool=maxpool,
                                    stabiliser=stabiliser, dtype=self.dtype, forward_backend=forward_backend,
                                    primitives=primitives, recurrent_epsilon=recurrent_epsilon,
                                    recurrent_bias=recurrent_bias)
            if any(r.name == "zbox" for r in self.rules.values()) and self.bounds is None:
                raise LrpToolError("the zB (box) rule needs the input's bounds: give bounds=(low, high)")
        self.compiled = None
        # compile_later: the compiled explainer is built on first use, unless ``lrp.several.SharedForward``
        # builds one graph for this and other methods first
        self.compile_pending = bool(compiled and method != "random" and (compiled is True or (
            self.dtype == np.float32 and forward_backend == "auto" and primitives == "onnxruntime")))
        if self.compile_pending:
            from .compile import resolve_providers

            resolve_providers(providers)  # an unavailable provider is the user's mistake, said at once
            if not compile_later:
                self.compile_now()

    def compile_now(self):
        """Build, once, the compiled explainer this explainer's options ask for; where the graph has no
        compiled form the eager walk serves (with ``compiled=True`` that is an error)."""
        if not self.compile_pending:
            return
        from .compile import CompiledSession, compile_explainer

        self.compile_pending = False
        s = self.settings
        try:
            external = {}
            model = compile_explainer(self.original, s["method"], bounds=s["bounds"], epsilon=s["epsilon"],
                                      stabiliser=s["stabiliser"], gamma=s["gamma"], maxpool=s["maxpool"],
                                      start=s["start"], external=external, node_sums=s["report"],
                                      recurrent_epsilon=s["recurrent_epsilon"], recurrent_bias=s["recurrent_bias"],
                                      providers=s["providers"])
            self.compiled = CompiledSession(model, s["providers"], threads=s["threads"], external=external)
        except Exception:  # noqa: BLE001 - the eager walk computes the same explanation
            if s["compiled"] is True:
                raise

    def output_size(self):
        """How many outputs a sample has (the range of class indices), or None where it is free."""
        return self.graph.output_size()

    def at_size(self, x):
        """The Explainer of the free-size graph fixed to the size of batch ``x`` (made on first use)."""
        sizes = tuple(x.shape[1:])
        explainer = self.by_size.pop(sizes, None)
        if explainer is None:
            # notes (the softmax left out) are said for the first size only
            settings = dict(self.settings, quiet=self.settings["quiet"] or self.prepared)
            explainer = Explainer(self.original.at_sizes(sizes), **settings)
            self.prepared = True
            while len(self.by_size) >= self.SIZES_KEPT:
                self.by_size.pop(next(iter(self.by_size)))
        self.by_size[sizes] = explainer  # the most recently used last
        return explainer

    def seed_for(self, outputs, targets):
        flat = outputs.reshape(outputs.shape[0], -1)
        seed = np.zeros_like(flat)
        rows = np.arange(flat.shape[0])
        start = self.start or default_start(self.method, self.method in GRADIENT_METHODS)
        values = flat[rows, targets]
        seed[rows, targets] = {"value": values, "positive": np.maximum(values, 0)}.get(start, 1.0)
        return seed.reshape(outputs.shape)

    def requested_targets(self, target, batch):
        """The target input of the compiled graph: −1 (the prediction) or a checked class index per sample."""
        if target is None or (isinstance(target, str) and target == "pred"):
            return np.full(batch, -1, dtype=np.int64)
        return explicit_targets(target, batch, self.output_size())

    def explain_compiled(self, x, target):
        results = self.compiled.run(x, self.requested_targets(target, x.shape[0]))
        outputs, targets = results["logits"], results["explained_target"]
        scores = outputs.reshape(outputs.shape[0], -1)[np.arange(len(targets)), targets]
        if self.method == "smoothgrad":
            relevance = self.smoothgrad(x, targets)
        elif self.method == "integrated-gradients":
            relevance = self.integrated_gradients(x, targets)
        else:
            relevance = results["relevance"]
        return Explanation(relevance, targets, scores, outputs, self.compiled_report(results, relevance))

    def compiled_report(self, results, relevance):
        """The conservation report from the compiled graph's per-node sums (batch totals)."""
        if "relevance_start" not in results:
            return None
        report = Conservation(start=float(np.sum(results["relevance_start"])), input=float(np.sum(relevance)),
                              nonfinite=int(np.count_nonzero(~np.isfinite(relevance))))
        for name in self.graph.nodes:
            if f"relevance_out/{name.name}" in results:
                rule = self.rules.get(name.name)
                report.nodes.append(NodeReport(name.name, name.op, float(np.sum(results[f"relevance_out/{name.name}"])),
                                               float(np.sum(results.get(f"relevance_in/{name.name}", 0.0))),
                                               str(rule) if rule is not None and name.op in RULE_OPERATORS else ""))
        return report

    def conservation(self, x, target):
        """The conservation report of an LRP method for ``x`` from the eager walk, whichever path explains:
        Σ R per node and what each node absorbed."""
        x = self.input_array(x)
        if self.by_size is not None:
            return self.at_size(x).conservation(x, target)
        values = self.walk.forward(x)
        outputs = np.array(values[self.output])
        targets = select_targets(outputs, target)
        _, report = self.walk.run(values, {self.output: self.seed_for(outputs, targets)})
        return report

    def input_array(self, x):
        """``x`` in the dtype the graph takes: int64 token ids, or floats."""
        from ..executor import as_input

        name = next(iter(self.graph.inputs))
        return as_input(x, self.graph.input_dtype(name, self.dtype), name)

    def explain(self, x, target="pred", layers=False):
        x = self.input_array(x)
        if self.by_size is not None:
            return self.at_size(x).explain(x, target, layers)
        self.compile_now()
        if self.compiled is not None and not layers:
            return self.explain_compiled(x, target)
        input_name = next(iter(self.graph.inputs))
        values = self.walk.forward(x)
        # the recorded tensors may live in buffers the next forward pass reuses: keep a copy
        outputs = np.array(values[self.output])
        targets = select_targets(outputs, target)
        scores = outputs.reshape(outputs.shape[0], -1)[np.arange(len(targets)), targets]
        self.walk.keep_layers = layers
        if self.method in GRADIENT_METHODS:
            relevance = self.gradient_method(x, values, targets)
            return Explanation(relevance, targets, scores, outputs)
        result, report = self.walk.run(values, {self.output: self.seed_for(outputs, targets)})
        relevance = result[input_name]
        return Explanation(relevance, targets, scores, outputs, report, result if layers else None)

    def gradient(self, x, targets, values=None):
        """d score / d x; from the compiled gradient graph where there is one and no forward pass was
        recorded (the sampling loops), else from the eager walk over ``values``."""
        self.compile_now()
        if values is None and self.compiled is not None:
            return self.compiled.run(x, targets)["relevance"]
        values = values if values is not None else self.walk.forward(x)
        outputs = values[self.output]
        result, _ = self.walk.run(values, {self.output: self.seed_for(outputs, targets)})
        return result[next(iter(self.graph.inputs))]

    def gradient_method(self, x, values, targets):
        method = self.method
        if method == "random":
            return self.rng.standard_normal(x.shape).astype(self.dtype)
        if method in ("gradient", "guided-backprop", "deconvnet"):
            return self.gradient(x, targets, values)
        if method == "sensitivity":
            return self.gradient(x, targets, values) ** 2
        if method == "gradient-x-input":
            return self.gradient(x, targets, values) * x
        if method == "smoothgrad":
            return self.smoothgrad(x, targets)
        if method == "integrated-gradients":
            return self.integrated_gradients(x, targets)
        raise LrpToolError(f"unknown method {method!r}")

    def smoothgrad(self, x, targets):
        spread = self.noise * (np.max(x, axis=tuple(range(1, x.ndim)), keepdims=True)
                               - np.min(x, axis=tuple(range(1, x.ndim)), keepdims=True))
        total = np.zeros_like(x)
        for _ in range(self.samples):
            noisy = x + self.rng.standard_normal(x.shape).astype(self.dtype) * spread
            total += self.gradient(noisy, targets)
        return total / self.samples

    def integrated_gradients(self, x, targets):
        # from the zero baseline to x, both ends included
        total = np.zeros_like(x)
        for alpha in np.linspace(0.0, 1.0, self.steps):
            total += self.gradient(x * self.dtype.type(alpha), targets)
        return x * total / self.steps


def explain(graph, x, method="epsilon-plus-flat", target="pred", layers=False, **options):
    """Explain ``x`` (a batch) with ``method``; see ``Explainer`` for the options."""
    return Explainer(graph, method, **options).explain(x, target=target, layers=layers)


__all__ = ["Explainer", "Explanation", "explain", "METHODS", "PRESET_NAMES", "GRADIENT_METHODS", "top_k_targets",
           "select_targets", "make_walk"]
