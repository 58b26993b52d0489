"""Which rule keeps more relevance: when the input keeps too little of the explained score, measure a
few bias-free alternatives for the node that absorbed the most, on the same sample, and name the best.

Measured on MobileNet-style blocks (benchmarks/measure_absorption.py, docs/lrp.md): z⁺ hands the
relevance of units kept on by a positive folded bias to that bias; γ without bias keeps the most
there, z⁺ without bias next, and ε without bias is unstable (denominators cross zero)."""

import re

import numpy as np

from .presets import CATEGORIES


def without_bias(rule):
    """The ``--rules`` spelling of ``rule`` without its bias, or None where it has none to leave out."""
    name = rule.name
    if name.endswith("-nobias") or name in ("flat", "pass", "norm", "zbox"):
        return None
    if name in ("epsilon", "zero"):
        return f"epsilon-nobias:{rule.epsilon:g}"
    if name == "zplus":
        return "zplus-nobias"
    if name == "wsquare":
        return "wsquare-nobias"
    if name.startswith("gamma"):
        return f"gamma-nobias:{rule.gamma:g}"
    match = re.fullmatch(r"alpha([0-9.e+-]+)-beta([0-9.e+-]+)(-fullbias)?", name)
    if match:
        return f"alpha-beta-nobias:{match.group(1)}:{match.group(2)}"
    return None


def candidates(explainer, worst):
    """Rule maps to try, each put before the explainer's own method."""
    rule = explainer.rules.get(worst.node)
    category = next((c for c in ("conv", "dense", "avgpool") if worst.op in CATEGORIES[c]), None)
    tries = []
    plain = without_bias(rule) if rule is not None else None
    if plain:
        tries.append(f"name:{worst.node}={plain}")
        if category:
            tries.append(f"{category}={plain}")
    if category == "conv":
        tries += ["conv=gamma-nobias:0.25", "conv=zplus-nobias"]
    return list(dict.fromkeys(tries))


def kept_share(explainer, spec, x, target):
    """Σ R_input / score of one sample under ``spec`` (the eager float64 walk)."""
    from . import Explainer

    bounds = explainer.bounds
    other = Explainer(explainer.original, spec, bounds=bounds, dtype=np.float64, compiled=False, quiet=True)
    with np.errstate(all="ignore"):
        explanation = other.explain(np.asarray(x, dtype=np.float64), target=target)
    score = float(explanation.scores[0])
    return float(np.sum(explanation.relevance)) / score if score else float("nan")


def best_alternative(explainer, x, target, worst, kept_now):
    """(rule map, kept share) of the alternative that keeps closest to all of the score, when it does
    better than ``kept_now``; else None. ``x``: one sample (batch of 1)."""
    method = explainer.method
    if not isinstance(method, str) or method.endswith(".json"):
        return None
    best = None

    def distance(share):
        return abs(np.log(share)) if np.isfinite(share) and share > 0 else np.inf

    for alternative in candidates(explainer, worst):
        spec = f"{alternative},{method}"
        try:
            share = kept_share(explainer, spec, x, target)
        except Exception:  # noqa: BLE001 - an alternative that cannot run is not advice
            continue
        if distance(share) < distance(kept_now) and (best is None or distance(share) < distance(best[1])):
            best = (spec, share)
    return best
