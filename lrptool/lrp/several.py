"""Several methods explaining the same inputs with one forward pass.

``SharedForward`` takes explainers of one graph (made with ``compile_later=True``) and compiles the
methods that have a compiled form into one ONNX graph (``compile.compile_methods``): the forward pass
runs once per batch and every method's reverse walk reads it. Methods outside that graph — SmoothGrad
and integrated gradients (they run the gradient at other inputs), the random baseline, a graph with
free sizes, the eager walk's options — explain on their own, for the classes the shared pass chose.
"""

import numpy as np

from . import Explanation

#: Methods whose explanation needs more than the one forward pass at ``x``.
OWN_PASSES = ("smoothgrad", "integrated-gradients", "random")


class SharedForward:
    def __init__(self, explainers):
        self.explainers = list(explainers)           # [(name, Explainer)]
        self.session = None
        self.members = []
        candidates = [(name, e) for name, e in self.explainers if getattr(e, "compile_pending", False)
                      and e.by_size is None and e.method not in OWN_PASSES]
        if len(candidates) > 1:
            self.session, self.members = self.compile(candidates)

    @staticmethod
    def compile(candidates):
        """(session, [(name, Explainer, output name)]) of one graph for every candidate, or (None, [])
        where the graph has no compiled form (each explainer then compiles, or walks, on its own)."""
        from .compile import CompiledSession, compile_methods, method_label

        first = candidates[0][1]
        s = first.settings
        if not all(same_options(e, first) for _, e in candidates[1:]):
            return None, []
        methods = [e.method for _, e in candidates]
        try:
            external = {}
            model = compile_methods(first.original, methods, bounds=s["bounds"], epsilon=s["epsilon"],
                                    stabiliser=s["stabiliser"], gamma=s["gamma"], maxpool=s["maxpool"],
                                    external=external, recurrent_epsilon=s["recurrent_epsilon"],
                                    recurrent_bias=s["recurrent_bias"])
            session = CompiledSession(model, s["providers"], threads=s["threads"], external=external)
        except Exception:  # noqa: BLE001 - each explainer computes the same explanation alone
            if any(e.settings["compiled"] is True for _, e in candidates):
                raise
            return None, []
        for _, explainer in candidates:
            explainer.compile_pending = False   # the shared graph serves them
        return session, [(name, e, f"relevance/{method_label(e.method, i)}")
                         for i, (name, e) in enumerate(candidates)]

    @property
    def names(self):
        return [name for name, _ in self.explainers]

    def explain(self, x, target="pred", names=None):
        """{name: Explanation} of every method (or those in ``names``), all for the same classes: those
        ``target`` asks for (pred, an int, one per sample), decided by the shared pass or else by the
        first method."""
        wanted = self.names if names is None else list(names)
        results = {}
        first = self.explainers[0][1]
        if self.session is not None:
            x = first.input_array(x)
            run = self.session.run(x, first.requested_targets(target, x.shape[0]))
            outputs, targets = run["logits"], run["explained_target"]
            scores = outputs.reshape(outputs.shape[0], -1)[np.arange(len(targets)), targets]
            for name, _, output in self.members:
                results[name] = Explanation(run[output], targets, scores, outputs)
        for name, explainer in self.explainers:
            if name in wanted and name not in results:
                results[name] = explainer.explain(x, target=targets if results else target)
                targets = next(iter(results.values())).targets
        return {name: results[name] for name in wanted}


def same_options(a, b):
    """Whether two explainers differ in nothing but their method (so one graph can hold both)."""
    if a.original is not b.original:
        return False
    for key in set(a.settings) | set(b.settings):
        if key in ("method", "quiet", "compile_later"):
            continue
        p, q = a.settings.get(key), b.settings.get(key)
        if key == "bounds" and p is not None and q is not None:
            if len(p) != len(q) or not all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(p, q)):
                return False
        elif p is not q and not (type(p) is type(q) and p == q):
            return False
    return True
