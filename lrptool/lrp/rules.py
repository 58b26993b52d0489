"""LRP rules as recipes over a linear operator's two primitives (forward and transpose).

Every rule has the shape

    R_in = Σ_parts c_p · Σ_terms σ_t · x_t ⊙ Jᵀ_{W_t}( m_p ⊙ R_out / stabilise(Σ_terms σ_t z_t) ),
    z_t = forward(x_t, W_t, b_t)

where a term names a modified input x_t (x, x⁺, x⁻, 1, the lower or upper bound), a weight mode W_t
(see ``linear_ops``), whether its bias is kept (and in which mode) and a sign σ_t; a part groups
terms under one denominator with a coefficient c_p and an optional mask m_p on the sign of the
unmodified output. So every rule works on every linear operator.
"""

from dataclasses import dataclass, field

from .numpy_ops import NumpyOps

NUMPY = NumpyOps()


@dataclass(frozen=True)
class Term:
    inputs: str          # "x", "pos", "neg", "ones", "low", "high"
    weights: str         # a weight mode of linear_ops.modify
    bias: str = None     # a weight mode for the bias, or None to leave it out
    sign: float = 1.0


@dataclass(frozen=True)
class Part:
    terms: tuple
    coefficient: float = 1.0
    mask: str = None     # None, "positive" or "negative": where the unmodified output z is > 0 / < 0


@dataclass
class Rule:
    """A named LRP rule: parts of terms plus its stabiliser ε and γ."""

    name: str
    parts: tuple
    epsilon: float = 1e-6
    gamma: float = 0.0
    description: str = ""
    options: dict = field(default_factory=dict)
    #: "sign": divide by z + ε·sign(z) (Zennit); "zeros": ε replaces only z = 0 (iNNvestigate's safe division)
    division: str = "sign"

    @property
    def needs_output(self):
        """Whether the rule reads the node's recorded output (plain term or sign masks)."""
        return any(p.mask for p in self.parts) or any(
            t.inputs == "x" and t.weights == "w" and t.bias == "w" for p in self.parts for t in p.terms)

    def __str__(self):
        shows_epsilon = self.name in ("epsilon", "epsilon-nobias", "norm")
        return f"{self.name}(ε={self.epsilon:g})" if shows_epsilon else self.name

    def modified_input(self, x, kind, bounds, ops):
        if kind == "x":
            return x
        if kind == "pos":
            return ops.pos(x)
        if kind == "neg":
            return ops.neg(x)
        if kind == "ones":
            return ops.ones_like(x)
        if bounds is None:
            raise ValueError(f"rule {self.name} needs input bounds")
        low, high = bounds
        return ops.bound(low if kind == "low" else high, x)

    def apply(self, adapter, x, relevance, bounds=None, z=None, ops=NUMPY):
        """Input relevance of one linear node. ``z`` is the node's recorded output, when it is known;
        ``ops`` the tensor backend (eager NumPy, or ONNX emission)."""
        total = None
        needs_output = any(part.mask for part in self.parts)
        if needs_output and z is None:
            z = adapter.forward(x, "w", "w")
        inputs = {}
        for part in self.parts:
            denominator = None
            live = []
            for term in part.terms:
                if term.inputs not in inputs:
                    inputs[term.inputs] = self.modified_input(x, term.inputs, bounds, ops)
                x_t = inputs[term.inputs]
                vanishing = term.inputs in ("pos", "neg") and ops.is_zero(x_t)
                if vanishing and term.bias is None:
                    continue  # x⁻ after a ReLU is all zeros: the term adds nothing
                if not vanishing:
                    live.append(term)  # a term on all-zero inputs adds its bias to the denominator only
                z_t = self.term_output(adapter, term, x_t, x, z)
                signed = z_t if term.sign == 1.0 else ops.scale(z_t, term.sign)
                denominator = signed if denominator is None else ops.add(denominator, signed)
            if denominator is None:
                continue
            stabilised = (ops.stabilise(denominator, self.epsilon) if self.division == "sign"
                          else ops.stabilise_zeros(denominator, self.epsilon))
            s = ops.div(relevance, stabilised)
            if part.mask:
                s = ops.mask(s, z, positive=part.mask == "positive")
            for term in live:
                contribution = adapter.transpose(s, term.weights, self.gamma)
                if term.inputs != "ones":
                    contribution = ops.mul(contribution, inputs[term.inputs])
                factor = term.sign * part.coefficient
                if factor != 1.0:
                    contribution = ops.scale(contribution, factor)
                total = contribution if total is None else ops.add(total, contribution)
        return ops.zeros_like(x) if total is None else total

    def term_output(self, adapter, term, x_t, x, z):
        # the plain term reuses the output recorded by the forward pass
        if z is not None and term.inputs == "x" and term.weights == "w" and term.bias == "w":
            return z
        return adapter.forward(x_t, term.weights, term.bias, self.gamma)


def epsilon_rule(epsilon=1e-6, bias=True):
    name = ("epsilon" if epsilon else "zero") + ("" if bias else "-nobias")
    return Rule(name, (Part((Term("x", "w", "w" if bias else None),)),), epsilon=epsilon)


def zero_rule(bias=True):
    """LRP-0: the ε rule with a stabiliser that only keeps denominators off zero."""
    rule = epsilon_rule(1e-12, bias)
    rule.name = "zero" if bias else "zero-nobias"
    return rule


def zplus_rule(stabiliser=1e-6, bias=True):
    return Rule("zplus" if bias else "zplus-nobias", (Part((Term("pos", "pos", "pos" if bias else None), Term("neg", "neg", None))),),
                epsilon=stabiliser)


def alpha_beta_rule(alpha=2.0, beta=1.0, stabiliser=1e-6, bias=True, full_bias=False):
    """α(x⁺W⁺ + x⁻W⁻) − β(x⁺W⁻ + x⁻W⁺), each part over its own denominator.

    Zennit's form (the default) puts b⁺ into the positive part's denominator and b⁻ into the
    negative one's. iNNvestigate's (``full_bias``) keeps the clipped bias on both the positive and
    the negative copy of the layer, so each part's denominator holds b⁺ + b⁻ = b."""
    if full_bias and bias:
        positive = Part((Term("pos", "pos", "pos"), Term("neg", "neg", "neg")), alpha)
        negative = Part((Term("pos", "neg", "neg"), Term("neg", "pos", "pos")), -beta)
    else:
        positive = Part((Term("pos", "pos", "pos" if bias else None), Term("neg", "neg", None)), alpha)
        negative = Part((Term("pos", "neg", "neg" if bias else None), Term("neg", "pos", None)), -beta)
    parts = (positive, negative) if beta else (positive,)
    suffix = "-fullbias" if full_bias and bias else ("" if bias else "-nobias")
    return Rule(f"alpha{alpha:g}-beta{beta:g}{suffix}", parts, epsilon=stabiliser)


def gamma_rule(gamma=0.25, stabiliser=1e-6, bias=True):
    """Generalised γ rule (positive and negative outputs handled separately)."""
    keep = "gamma+" if bias else None
    keep_negative = "gamma-" if bias else None
    up = Part((Term("pos", "gamma+", keep), Term("neg", "gamma-", None)), 1.0, "positive")
    down = Part((Term("pos", "gamma-", keep_negative), Term("neg", "gamma+", None)), 1.0, "negative")
    return Rule(f"gamma{gamma:g}" + ("" if bias else "-nobias"), (up, down), epsilon=stabiliser, gamma=gamma)


def zbox_rule(stabiliser=1e-6):
    """zᴮ: for inputs bounded below by ``low`` and above by ``high`` (the bounds are given per call)."""
    return Rule("zbox", (Part((Term("x", "w", "w"), Term("low", "pos", "pos", -1.0),
                               Term("high", "neg", "neg", -1.0))),), epsilon=stabiliser)


def wsquare_rule(stabiliser=1e-6, bias=True):
    return Rule("wsquare" if bias else "wsquare-nobias", (Part((Term("ones", "square", "square" if bias else None),)),),
                epsilon=stabiliser)


def flat_rule(stabiliser=1e-6):
    return Rule("flat", (Part((Term("ones", "ones", None),)),), epsilon=stabiliser)


class PassRule(Rule):
    """Relevance passes unchanged (shape-preserving operators only)."""

    def __init__(self):
        super().__init__("pass", ())

    def apply(self, adapter, x, relevance, bounds=None, z=None, ops=NUMPY):
        return relevance


def norm_rule(stabiliser=1e-6):
    """Proportional split without bias (Zennit's ``Norm``): the ε rule used as a pure stabiliser."""
    rule = epsilon_rule(stabiliser, bias=False)
    rule.name = "norm"
    return rule
