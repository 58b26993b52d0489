"""Named presets (composites) and custom rule maps: which rule each linear node gets.

A rule map is an ordered list of (selector, rule) pairs; the first selector that matches a node
decides. Selectors: an operator category (``conv``, ``dense``, ``linear``, ``avgpool``,
``batchnorm``), a position (``first`` / ``last`` linear layer), an operator name (``op:Conv``) or
a node-name pattern (``name:features.*``, shell-style).
"""

import fnmatch
import json
import math
import os

from ..errors import LrpToolError
from . import rules as R
from .reverse import RULE_OPERATORS

CATEGORIES = {
    "conv": {"Conv", "ConvTranspose"},
    "dense": {"Dense"},
    "avgpool": {"AveragePool", "GlobalAveragePool", "ReduceMean"},
    "batchnorm": {"BatchNorm", "Scale", "Bias"},
}
CATEGORIES["linear"] = CATEGORIES["conv"] | CATEGORIES["dense"]


def base_map(stabiliser):
    # as in Zennit's composites: averages split proportionally, unfolded normalisation passes
    return [("avgpool", R.norm_rule(stabiliser)), ("batchnorm", R.PassRule())]


#: iNNvestigate divides by z + ε only where z = 0, with Keras' ε of 1e-7; its presets use that ε
INNVESTIGATE_STABILISER = 1e-7


def innvestigate_presets():
    """iNNvestigate 2.1.2's analyzers of the same names: αβ with the whole bias in both parts'
    denominators, z⁺ without bias, average pooling spread evenly in Deep Taylor (its gradient)."""
    def safe(rule):
        rule.division = "zeros"
        return rule

    stabiliser = INNVESTIGATE_STABILISER

    def alpha_beta(alpha, beta):
        return safe(R.alpha_beta_rule(alpha, beta, stabiliser, full_bias=True))

    dense = R.epsilon_rule(0.1)
    zplus = safe(R.zplus_rule(stabiliser, bias=False))
    flat = safe(R.flat_rule(stabiliser))
    average = [("avgpool", safe(R.norm_rule(stabiliser)))]
    return {
        "alpha1-beta0": [("linear", alpha_beta(1, 0))] + average,
        "alpha2-beta1": [("linear", alpha_beta(2, 1))] + average,
        "preset-a": [("dense", dense), ("conv", alpha_beta(1, 0))] + average,
        "preset-a-flat": [("first", flat), ("dense", dense), ("conv", alpha_beta(1, 0))] + average,
        "preset-b": [("dense", dense), ("conv", alpha_beta(2, 1))] + average,
        "preset-b-flat": [("first", flat), ("dense", dense), ("conv", alpha_beta(2, 1))] + average,
        # Deep Taylor passes average pooling on as its gradient: evenly over each window
        "deep-taylor": [("linear", zplus), ("avgpool", flat)],
        "deep-taylor-bounded": [("first", safe(R.zbox_rule(stabiliser))), ("linear", zplus), ("avgpool", flat)],
    }


def published_deep_taylor(stabiliser):
    """Deep Taylor decomposition as Montavon et al. (2017) publish it: z⁺ without bias on every layer
    that reads ReLU outputs (the output layer included), w² at an unbounded input, zᴮ at an input
    bounded by ``bounds``. Max pooling goes to the winner, average pooling is z⁺ over its window
    (in proportion to the inputs, which are non-negative), residual sums split in proportion."""
    zplus = R.zplus_rule(stabiliser, bias=False)
    return {
        "deep-taylor-published": [("first", R.wsquare_rule(stabiliser, bias=False)), ("linear", zplus),
                                  ("avgpool", zplus)],
        "deep-taylor-published-box": [("first", R.zbox_rule(stabiliser)), ("linear", zplus), ("avgpool", zplus)],
    }


#: iNNvestigate's Deep Taylor puts a ReLU on the output: a negative score is explained as 0
POSITIVE_OUTPUT = ("deep-taylor", "deep-taylor-bounded")


def default_start(method, gradient):
    """Where the walk starts when no ``start`` is given: 1 for the gradient methods, the explained value
    for LRP, max(value, 0) for iNNvestigate's Deep Taylor."""
    if gradient:
        return "one"
    return "positive" if isinstance(method, str) and method in POSITIVE_OUTPUT else "value"


def make_preset(name, epsilon=1e-6, stabiliser=1e-6, gamma=0.25):
    eps = R.epsilon_rule(epsilon)
    presets = {
        "epsilon": [("linear", eps)],
        "zero": [("linear", R.zero_rule())],
        "epsilon-plus": [("conv", R.zplus_rule(stabiliser)), ("dense", eps)],
        "epsilon-plus-flat": [("first", R.flat_rule(stabiliser)), ("conv", R.zplus_rule(stabiliser)),
                              ("dense", eps)],
        "epsilon-gamma-box": [("first-conv", R.zbox_rule(stabiliser)), ("conv", R.gamma_rule(gamma, stabiliser)),
                              ("dense", eps)],
        "epsilon-alpha2-beta1": [("conv", R.alpha_beta_rule(2, 1, stabiliser)), ("dense", eps)],
        "epsilon-alpha2-beta1-flat": [("first", R.flat_rule(stabiliser)),
                                      ("conv", R.alpha_beta_rule(2, 1, stabiliser)), ("dense", eps)],
        **innvestigate_presets(),
        **published_deep_taylor(stabiliser),
    }
    if name not in presets:
        raise LrpToolError(f"unknown preset {name!r}; presets: {', '.join(PRESET_NAMES)}")
    return presets[name] + base_map(stabiliser)


PRESET_NAMES = ("epsilon", "zero", "epsilon-plus", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1",
                "epsilon-alpha2-beta1-flat", "alpha1-beta0", "alpha2-beta1", "deep-taylor", "deep-taylor-bounded",
                "preset-a", "preset-a-flat", "preset-b", "preset-b-flat", "deep-taylor-published",
                "deep-taylor-published-box")


def parse_rule(text, default_stabiliser=1e-6):
    """``epsilon``, ``epsilon:0.25``, ``gamma:0.25``, ``alpha-beta:2:1``, ``zplus``, ``zbox``, ``flat``,
    ``wsquare``, ``zero``, ``pass``, ``norm``; a ``-nobias`` suffix leaves biases out."""
    if not isinstance(text, str):
        raise LrpToolError(f"rule {text!r}: give a rule name such as epsilon:0.25 (a string)")
    name, *args = text.strip().split(":")
    bias = not name.endswith("-nobias")
    name = name.removesuffix("-nobias")
    full_bias = name == "alpha-beta-fullbias" and bias
    try:
        values = [float(a) for a in args]
    except ValueError:
        raise LrpToolError(f"rule {text!r}: parameters must be numbers") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise LrpToolError(f"rule {text!r}: parameters must be finite numbers of 0 or more")
    makers = {
        "epsilon": lambda e=1e-6: R.epsilon_rule(e, bias),
        "zero": lambda: R.zero_rule(bias),
        "gamma": lambda g=0.25: R.gamma_rule(g, default_stabiliser, bias),
        "alpha-beta": lambda a=2.0, b=1.0: R.alpha_beta_rule(a, b, default_stabiliser, bias),
        "alpha-beta-fullbias": lambda a=2.0, b=1.0: R.alpha_beta_rule(a, b, default_stabiliser, bias, full_bias),
        "zplus": lambda: R.zplus_rule(default_stabiliser, bias),
        "zbox": lambda: R.zbox_rule(default_stabiliser),
        "flat": lambda: R.flat_rule(default_stabiliser),
        "wsquare": lambda: R.wsquare_rule(default_stabiliser, bias),
        "pass": R.PassRule,
        "norm": lambda: R.norm_rule(default_stabiliser),
    }
    if name not in makers:
        raise LrpToolError(f"unknown rule {name!r}; rules: {', '.join(makers)}")
    try:
        return makers[name](*values)
    except TypeError:
        raise LrpToolError(f"rule {text!r}: wrong number of parameters") from None


def linear_nodes(graph):
    return [n for n in graph.nodes if n.op in CATEGORIES["linear"]]


def matches(selector, node, graph, positions):
    if selector in CATEGORIES:
        return node.op in CATEGORIES[selector]
    if selector == "first":
        return node.name == positions.get("first")
    if selector == "first-conv":
        return node.name == positions.get("first-conv")
    if selector == "last":
        return node.name == positions.get("last")
    if selector.startswith("op:"):
        return node.op == selector[3:]
    if selector.startswith("name:"):
        return fnmatch.fnmatchcase(node.name, selector[5:])
    raise LrpToolError(f"unknown selector {selector!r} (use a category, first, last, op:TYPE or name:PATTERN)")


def assign_rules(graph, rule_map):
    """{node name: rule} for every node that takes a rule (linear operators and averages)."""
    linear = linear_nodes(graph)
    convs = [n for n in linear if n.op in CATEGORIES["conv"]]
    positions = {"first": linear[0].name if linear else None, "last": linear[-1].name if linear else None,
                 "first-conv": convs[0].name if convs else None}
    assigned = {}
    for node in graph.nodes:
        if node.op not in RULE_OPERATORS:
            continue
        for selector, rule in rule_map:
            if matches(selector, node, graph, positions):
                assigned[node.name] = rule
                break
        else:
            raise LrpToolError(f"node {node.name!r} ({node.op}): no rule in the rule map applies to it")
    return assigned


def rule_map_from_spec(spec, epsilon=1e-6, stabiliser=1e-6, gamma=0.25):
    """A rule map from a preset name, a ``selector=rule,…`` string, a JSON file, or a mix:
    ``{"preset": "epsilon-plus", "rules": {"first": "flat", "name:fc*": "epsilon:0.1"}}``."""
    if isinstance(spec, list):
        return spec
    source = "the rule map"
    if isinstance(spec, str) and os.path.isfile(spec):
        source = spec
        try:
            with open(spec, "rb") as handle:
                spec = json.loads(handle.read().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise LrpToolError(f"{source}: not a readable JSON rule file ({reason})") from None
        if not isinstance(spec, dict):
            raise LrpToolError(f"{source}: a rule file holds one JSON object: "
                               '{"preset": "epsilon-plus", "rules": {"first": "flat"}}')
    if isinstance(spec, dict):
        rules, preset = spec.get("rules", {}), spec.get("preset")
        unknown = set(spec) - {"rules", "preset"}
        if unknown or not isinstance(rules, dict) or not isinstance(preset, (str, type(None))):
            raise LrpToolError(f"{source}: give {{\"preset\": NAME, \"rules\": {{SELECTOR: RULE, …}}}} "
                               "with strings for names, selectors and rules")
        custom = [(k, parse_rule(v, stabiliser)) for k, v in rules.items()]
        base = make_preset(preset, epsilon, stabiliser, gamma) if preset else base_map(stabiliser)
        return custom + base
    if not isinstance(spec, str):
        raise LrpToolError(f"rule map {spec!r}: give a preset name, 'selector=rule,…' or a JSON file")
    if "=" in spec:
        custom = []
        base_name = None
        for item in spec.split(","):
            if "=" not in item:
                base_name = item.strip()
                continue
            selector, rule = item.split("=", 1)
            custom.append((selector.strip(), parse_rule(rule, stabiliser)))
        base = make_preset(base_name, epsilon, stabiliser, gamma) if base_name else base_map(stabiliser)
        return custom + base
    return make_preset(spec, epsilon, stabiliser, gamma)
