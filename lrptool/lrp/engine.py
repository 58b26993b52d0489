"""The reverse walk: run the graph forward recording every tensor, then send relevance (or, for the
gradient methods, the gradient) from the explained output back to the input, node by node."""

from dataclasses import dataclass, field

import numpy as np

from ..errors import LrpToolError
from ..graph import Node, normalize_node
from .forward import RecordingForward
from .linear_ops import ADAPTERS, ParamCache, linear_adapter
from .presets import assign_rules
from .routing import (ACTIVATIONS, DATA_MOVEMENT, gradient_of, max_winners, max_winners_elementwise, move_back,
                      multiplicative_routing, proportional_split, refuse)
from .rules import PassRule, norm_rule

PASS_THROUGH = ACTIVATIONS | {"LRN"}


@dataclass
class NodeReport:
    node: str
    op: str
    relevance_out: float
    relevance_in: float
    rule: str = ""

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
            if node.op in ("Softmax", "LogSoftmax"):
                refuse(node, "a softmax inside the network has no relevance routing")
            if node.op in ("Mul", "Div"):
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
                 primitives="onnxruntime"):
        self.graph = graph
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
        self.cache = ParamCache(use_onnxruntime=primitives == "onnxruntime")
        self.producers = graph.producers()
        if mode == "lrp":
            check_routable(graph)
            for node in graph.nodes:
                if node.op in ADAPTERS and node.name not in self.rules:
                    raise LrpToolError(f"node {node.name!r} ({node.op}): no rule assigned")

    def needed_tensors(self):
        """The tensors whose values the walk reads; of the others it needs only the shapes."""
        if self.mode == "gradient":
            return None
        needed = set(self.graph.outputs)
        for node in self.graph.nodes:
            if node.op in ADAPTERS:
                needed.add(node.inputs[0])
                if self.rules[node.name].needs_output:
                    needed.update(node.outputs)
            elif node.op in ("MaxPool", "GlobalMaxPool", "Add", "Sum", "Sub", "Max"):
                needed.update(node.inputs)
        return needed

    def forward(self, x):
        if self.recorder is None:
            self.recorder = RecordingForward(self.graph, self.dtype, self.forward_backend, self.needed_tensors())
        return self.recorder(x)

    def run(self, values, start):
        """Walk back from ``start`` ({tensor: array}); returns ({tensor: relevance}, Conservation)."""
        pending = dict(start)
        layers = {}
        input_names = set(self.graph.inputs)
        report = Conservation(start=float(sum(np.sum(v) for v in start.values())), input=0.0)
        for node in reversed(self.graph.nodes):
            incoming = [pending.pop(t, None) for t in node.outputs]
            if all(r is None for r in incoming):
                continue
            incoming = [np.zeros_like(values[t]) if r is None else r for t, r in zip(node.outputs, incoming)]
            if self.keep_layers:
                for t, r in zip(node.outputs, incoming):
                    layers[t] = r
            inputs = [values[t] for t in node.inputs]
            outgoing = self.route(node, inputs, [values[t] for t in node.outputs], incoming)
            total_in = 0.0
            for tensor, relevance in zip(node.inputs, outgoing):
                if relevance is None:
                    continue
                relevance = np.asarray(relevance, dtype=self.dtype)
                total_in += float(np.sum(relevance))
                pending[tensor] = relevance if tensor not in pending else pending[tensor] + relevance
            rule = self.rules.get(node.name)
            report.nodes.append(NodeReport(node.name, node.op, float(sum(np.sum(r) for r in incoming)), total_in,
                                           str(rule) if rule is not None and node.op in ADAPTERS else ""))
        result = {name: pending.get(name, np.zeros_like(values[name])) for name in input_names}
        if self.keep_layers:
            layers.update(result)
        report.input = float(sum(np.sum(r) for r in result.values()))
        report.nonfinite = int(sum(np.count_nonzero(~np.isfinite(r)) for r in result.values()))
        report.nodes.reverse()
        return (layers if self.keep_layers else result), report

    def route(self, node, inputs, outputs, incoming):
        if self.mode == "gradient":
            if node.op in ADAPTERS:
                adapter = linear_adapter(node, self.cache, inputs[0].shape, self.dtype)
                return [adapter.transpose(incoming[0], "w")]
            return gradient_of(node, inputs, outputs, incoming, self.producers, self.relu_policy)
        relevance = incoming[0]
        op = node.op
        if op in ADAPTERS:
            adapter = linear_adapter(node, self.cache, inputs[0].shape, self.dtype)
            rule = self.rules[node.name]
            return [rule.apply(adapter, inputs[0], relevance, self.bounds_for(node), z=outputs[0])]
        if op in PASS_THROUGH:
            return [relevance]
        if op in DATA_MOVEMENT:
            return move_back(node, [i.shape for i in inputs], incoming)
        if op in ("MaxPool", "GlobalMaxPool"):
            if self.maxpool == "average" and op == "MaxPool":
                return [self.maxpool_as_average(node, inputs[0], relevance)]
            return [max_winners(node, inputs[0], relevance)]
        if op in ("Add", "Sum"):
            return proportional_split(node, inputs, relevance, self.stabiliser)
        if op == "Sub":
            return proportional_split(node, inputs, relevance, self.stabiliser, signs=[1.0, -1.0])
        if op == "Max":
            return max_winners_elementwise(inputs, relevance)
        if op in ("Mul", "Div"):
            receiver = multiplicative_routing(node, self.producers)
            routed = [None, None]
            routed[receiver] = relevance if inputs[receiver].shape == relevance.shape else None
            if routed[receiver] is None:
                refuse(node, "the signal input is broadcast; relevance cannot be routed to it")
            return routed
        if op == "Constant":
            return []
        refuse(node, "no relevance routing for this operator")

    def bounds_for(self, node):
        return self.bounds

    def maxpool_as_average(self, node, x, relevance):
        average = normalize_node(Node(node.name, "AveragePool", node.inputs, node.outputs,
                                      dict(node.attrs, count_include_pad=False)))
        adapter = linear_adapter(average, self.cache, x.shape, self.dtype)
        return norm_rule(self.stabiliser).apply(adapter, x, relevance)


def routing_description(node, rules, producers):
    """What happens to relevance at ``node``: its rule, or the fixed routing of its operator."""
    if node.name in rules:
        return str(rules[node.name])
    if node.op in PASS_THROUGH:
        return "pass"
    if node.op in DATA_MOVEMENT:
        return "moves with the data"
    if node.op in ("MaxPool", "GlobalMaxPool"):
        return "to the window's winner"
    if node.op == "Max":
        return "to the larger input"
    if node.op in ("Add", "Sum", "Sub"):
        return "split in proportion"
    if node.op in ("Mul", "Div"):
        receiver = multiplicative_routing(node, producers)
        return f"all to {node.inputs[receiver]!r}"
    if node.op == "Constant":
        return "absorbs its share"
    return "-"


def make_walk(graph, rule_map, **options):
    rules = assign_rules(graph, rule_map) if rule_map is not None else {}
    return ReverseWalk(graph, mode="lrp", rules=rules, **options)


__all__ = ["ReverseWalk", "Conservation", "make_walk", "PassRule"]
