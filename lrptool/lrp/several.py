"""Several methods explaining the same inputs with one forward pass.

``SharedForward`` takes explainers of one graph (made with ``compile_later=True``) and compiles the
methods that have a compiled form into one ONNX graph (``compile.compile_methods``): the forward pass
runs once per batch and every method's reverse walk reads it. Methods outside that graph — SmoothGrad
and integrated gradients (they run the gradient at other inputs), the random baseline, a graph with
free sizes, the eager walk's options — explain on their own, for the classes the shared pass chose.
"""

import numpy as np

from . import Explanation, top_k_targets

#: Methods whose explanation needs more than the one forward pass at ``x``.
OWN_PASSES = ("smoothgrad", "integrated-gradients", "random")


class SharedForward:
    """``explainers``: [(name, Explainer)]. ``ranks``: how many class ranks per sample are explained
    (``--target top-K``); with more than one, the shared graph explains them all from one forward pass
    (``compile_methods(ranks=True)``), also for a single method."""

    def __init__(self, explainers, ranks=1):
        self.explainers = list(explainers)
        self.ranks = max(1, int(ranks))
        self.session = None
        self.members = []
        candidates = [(name, e) for name, e in self.explainers if getattr(e, "compile_pending", False)
                      and e.by_size is None and e.method not in OWN_PASSES]
        if len(candidates) > 1 or (candidates and self.ranks > 1):
            self.session, self.members = self.compile(candidates, self.ranks > 1)

    @staticmethod
    def compile(candidates, ranks):
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
                                    recurrent_bias=s["recurrent_bias"], ranks=ranks, providers=s["providers"])
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
        return self.explain_ranks(x, target, 1, names)[0]

    def explain_ranks(self, x, target="pred", count=None, names=None):
        """[{name: Explanation}] per class rank: the first for ``target``, the r-th (r ≥ 2) for each
        sample's r-th largest output; ``count`` ranks (default ``ranks``), at most one per class."""
        wanted = self.names if names is None else list(names)
        count = self.ranks if count is None else count
        first = self.explainers[0][1]
        if not wanted:
            return [{}]
        if self.session is not None:
            x = first.input_array(x)
        classes = first.output_size() if hasattr(first, "output_size") else None
        count = max(1, min(count, classes) if classes else count)
        if self.session is not None and self.ranked and count > 1 and \
                any(name in wanted for name, _, _ in self.members):
            # one forward pass for every rank: the rows of the target input ask for them (−r: rank r)
            asked = [first.requested_targets(target, len(x))]
            asked += [np.full(len(x), -rank, dtype=np.int64) for rank in range(2, count + 1)]
            rows = self.shared_rows(x, np.concatenate(asked), count, wanted)
            return [self.filled(x, row, None, wanted) for row in rows]
        rows, ranking = [], None
        for rank in range(count):
            if rank == 0:
                asked = target
            else:
                if ranking is None:
                    ranking = top_k_targets(next(iter(rows[0].values())).outputs, count)
                if rank >= ranking.shape[0]:
                    break
                asked = ranking[rank]
            row = self.shared_rows(x, first.requested_targets(asked, len(x)), 1, wanted)[0] \
                if self.session is not None else {}
            rows.append(self.filled(x, row, asked, wanted))
        return rows

    @property
    def ranked(self):
        return self.ranks > 1

    def shared_rows(self, x, asked, count, wanted):
        """The shared graph's explanations: ``count`` rows of {name: Explanation} for the members."""
        run = self.session.run(x, asked)
        outputs, batch = run["logits"], len(x)
        rows = []
        for row in range(count):
            part = slice(row * batch, (row + 1) * batch)
            targets = run["explained_target"][part]
            scores = outputs.reshape(batch, -1)[np.arange(batch), targets]
            rows.append({name: Explanation(run[output][part], targets, scores, outputs)
                         for name, _, output in self.members if name in wanted})
        return rows

    def filled(self, x, row, asked, wanted):
        """``row`` with the methods outside the shared graph added, for the classes the row explains
        (or, where it is empty, for ``asked`` — then the first method's choice holds for the rest)."""
        for name, explainer in self.explainers:
            if name in wanted and name not in row:
                given = next(iter(row.values())).targets if row else asked
                row[name] = explainer.explain(x, target=given)
        return {name: row[name] for name in wanted}


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
