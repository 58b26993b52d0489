"""The reverse walk: run the graph forward recording every tensor, then send relevance (or, for the
gradient methods, the gradient) from the explained output back to the input, node by node."""

from dataclasses import dataclass, field

import numpy as np

from ..errors import LrpToolError
from .forward import RecordingForward
from .numpy_ops import NumpyOps
from .presets import assign_rules
from .reverse import RULE_OPERATORS, multiplicative_routing, reverse_of
from .routing import refuse
from .rules import PassRule


@dataclass
class NodeReport:
    node: str
    op: str
    relevance_out: float
    relevance_in: float
    rule: str = ""
    nonfinite: int = 0       # NaN/Inf among the relevance the node passed on (eager walk)

    @property
    def absorbed(self):
        return self.relevance_out - self.relevance_in


@dataclass
class Conservation:
    """Σ R per node (batch totals), what each node absorbed (biases, stabilisers), NaN/Inf counts."""

    start: float
    input: float
    nodes: list = field(default_factory=list)
    nonfinite: int = 0

    @property
    def absorbed(self):
        return self.start - self.input

    def relative_error(self):
        return abs(self.absorbed) / max(abs(self.start), 1e-300)


def check_routable(graph, rule_map=None):
    """Refuse, before anything runs, nodes that relevance cannot cross; name every one of them."""
    producers = graph.producers()
    problems = []
    for node in graph.nodes:
        try:
            entry = reverse_of(node)
            if entry.kind == "refuse":
                refuse(node, entry.describe)
            if entry.kind == "gate":
                multiplicative_routing(node, producers)
        except LrpToolError as error:
            problems.append(str(error))
    if problems:
        raise LrpToolError("; ".join(problems))


class ReverseWalk:
    """One explanation pass over a canonical graph.

    ``mode`` is ``"lrp"`` (relevance, rules from ``rules``) or ``"gradient"`` (vector-Jacobian
    products; ``relu_policy`` ``gradient``/``guided``/``deconvnet``).
    """

    def __init__(self, graph, mode="lrp", rules=None, bounds=None, maxpool="winner", relu_policy="gradient",
                 stabiliser=1e-6, dtype=np.float64, keep_layers=False, forward_backend="auto",
                 primitives="onnxruntime", recurrent_epsilon=1e-3, recurrent_bias="absorb"):
        self.graph = graph
        if recurrent_bias not in ("absorb", "spread"):
            raise LrpToolError(f"recurrent bias {recurrent_bias!r}: absorb or spread")
        self.recurrent_epsilon = recurrent_epsilon
        self.recurrent_bias = recurrent_bias
        self.mode = mode
        self.rules = rules or {}
        self.bounds = bounds
        self.maxpool = maxpool
        self.relu_policy = relu_policy
        self.stabiliser = stabiliser
        self.dtype = np.dtype(dtype)
        self.keep_layers = keep_layers
        self.forward_backend = forward_backend
        self.recorder = None
        self.ops = NumpyOps(self.dtype, primitives)
        self.producers = graph.producers()
        if mode == "lrp":
            check_routable(graph)
            for node in graph.nodes:
                if node.op in RULE_OPERATORS and node.name not in self.rules:
                    raise LrpToolError(f"node {node.name!r} ({node.op}): no rule assigned")

    def needed_tensors(self):
        """The tensors whose values the walk reads; of the others it needs only the shapes."""
        if self.mode == "gradient":
            return None
        needed = set(self.graph.outputs)
        for node in self.graph.nodes:
            entry = reverse_of(node)
            if "inputs" in entry.reads:
                needed.update(node.inputs[:1] if entry.kind == "rule" else node.inputs)
            if (entry.kind == "rule" and self.rules[node.name].needs_output) or "outputs" in entry.reads:
                needed.update(node.outputs)
        return needed

    def forward(self, x):
        if self.recorder is None:
            self.recorder = RecordingForward(self.graph, self.dtype, self.forward_backend, self.needed_tensors())
        return self.recorder(x)

    def run(self, values, start):
        """Walk back from ``start`` ({tensor: array}); returns ({tensor: relevance}, Conservation)."""
        ops = self.ops
        pending = dict(start)
        layers = {}
        input_names = set(self.graph.inputs)
        report = Conservation(start=ops.total(list(start.values())), input=0.0)
        for node in reversed(self.graph.nodes):
            incoming = [pending.pop(t, None) for t in node.outputs]
            if all(r is None for r in incoming):
                continue
            incoming = [ops.zeros_like(values[t]) if r is None else r for t, r in zip(node.outputs, incoming)]
            if self.keep_layers:
                for t, r in zip(node.outputs, incoming):
                    layers[t] = r
            inputs = [values[t] for t in node.inputs]
            entry = reverse_of(node)
            step = entry.gradient if self.mode == "gradient" else entry.relevance
            outgoing = step(self, node, inputs, [values[t] for t in node.outputs], incoming)
            passed = []
            for tensor, relevance in zip(node.inputs, outgoing):
                if relevance is None:
                    continue
                relevance = ops.cast(relevance)
                passed.append(relevance)
                pending[tensor] = relevance if tensor not in pending else ops.add(pending[tensor], relevance)
            rule = self.rules.get(node.name)
            report.nodes.append(NodeReport(node.name, node.op, ops.total(incoming), ops.total(passed),
                                           str(rule) if rule is not None and entry.kind == "rule" else "",
                                           ops.nonfinite(passed)))
        result = {name: pending.get(name, ops.zeros_like(values[name])) for name in input_names}
        if self.keep_layers:
            layers.update(result)
        report.input = ops.total(list(result.values()))
        report.nonfinite = ops.nonfinite(list(result.values()))
        report.nodes.reverse()
        return (layers if self.keep_layers else result), report


def routing_description(node, rules, producers):
    """What happens to relevance at ``node``: its rule, or the fixed routing of its operator."""
    if node.name in rules:
        return str(rules[node.name])
    entry = reverse_of(node)
    if entry.kind == "gate":
        receiver = multiplicative_routing(node, producers)
        return f"all to {node.inputs[receiver]!r}"
    return entry.describe


def make_walk(graph, rule_map, **options):
    rules = assign_rules(graph, rule_map) if rule_map is not None else {}
    return ReverseWalk(graph, mode="lrp", rules=rules, **options)


__all__ = ["ReverseWalk", "Conservation", "make_walk", "PassRule"]
