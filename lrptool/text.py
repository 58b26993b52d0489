"""Text in: tokenizers, fitting token ids to a model's sequence length, and per-token relevance out.

A tokenizer turns a text into tokens, each with its id and the characters of the text it covers.
A *layout* places the ids into the model's fixed-length input — ``start`` (the first tokens, padded
at the end), ``end`` (the last tokens, padded at the start: Keras' ``pad_sequences`` default, what
a next-character model like textgenrnn reads) or ``head-tail`` (the first half of the input holds the text's beginning padded at its
end, the second half its end padded at its start: Magika's layout, where a short text appears
twice). Every input position then belongs to one token or to padding, and a token's relevance is
the sum over the positions that hold it; padding's relevance is reported on its own, never dropped.
"""

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import LrpToolError

LAYOUTS = ("start", "end", "head-tail")
UNKNOWN_TOKENS = ("<unk>", "[UNK]", "<UNK>", "<oov>", "<OOV>", "[unk]")
WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class TextError(ValueError):
    """A problem with one text (an unknown token, a bad class): that text is skipped and reported."""


@dataclass
class Encoded:
    text: str
    tokens: list          # token strings
    ids: list             # token ids
    spans: list           # (start, end) character offsets of each token in the text


class Tokenizer:
    """Splits text into tokens (``words``, ``chars`` or ``bytes``) and maps them to ids.

    ``vocabulary``: token → id (``words`` and ``chars`` need one; ``bytes`` uses the byte values
    0–255). ``lowercase``: fold words to lower case first (on when the vocabulary has no upper-case
    entry). Unknown tokens take the vocabulary's unknown entry (``<unk>``, ``[UNK]``, …) or ``unknown``;
    without either, a text holding one is refused."""

    def __init__(self, kind, vocabulary=None, lowercase=None, unknown=None, source=None):
        if kind not in ("words", "chars", "bytes"):
            raise LrpToolError(f"tokenizer {kind!r}: choose words, chars, bytes or a vocabulary file")
        if kind != "bytes" and vocabulary is None:
            raise LrpToolError(f"the {kind} tokenizer needs a vocabulary: give --tokenizer vocab.json or vocab.txt "
                               "(or put vocab.json / vocab.txt beside the model)")
        self.kind = kind
        self.vocabulary = vocabulary
        self.source = source
        if lowercase is None:
            lowercase = kind == "words" and not any(any(c.isupper() for c in t) for t in vocabulary)
        self.lowercase = lowercase
        if unknown is None and vocabulary is not None:
            unknown = next((vocabulary[t] for t in UNKNOWN_TOKENS if t in vocabulary), None)
        self.unknown = unknown

    def describe(self):
        if self.kind == "bytes":
            return "bytes (ids 0–255)"
        where = f" from {self.source}" if self.source else ""
        return f"{self.kind}, {len(self.vocabulary)} entries{where}" + (", lower-cased" if self.lowercase else "")

    def largest_id(self):
        return 255 if self.kind == "bytes" else max(self.vocabulary.values(), default=0)

    def encode(self, text):
        if self.kind == "bytes":
            return self.encode_bytes(text)
        if self.kind == "chars":
            pieces = [(c, i, i + 1) for i, c in enumerate(text)]
        else:
            pieces = [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]
        tokens, ids, spans = [], [], []
        for piece, start, end in pieces:
            key = piece.lower() if self.lowercase else piece
            token_id = self.vocabulary.get(key, self.unknown)
            if token_id is None:
                raise TextError(f"{piece!r} is not in the vocabulary, which has no unknown-token entry "
                                f"({' '.join(UNKNOWN_TOKENS[:2])}, …)")
            tokens.append(piece)
            ids.append(int(token_id))
            spans.append((start, end))
        return Encoded(text, tokens, ids, spans)

    @staticmethod
    def encode_bytes(text):
        tokens, ids, spans = [], [], []
        for index, character in enumerate(text):
            for byte in character.encode("utf-8", "surrogateescape"):
                tokens.append(chr(byte) if 32 <= byte < 127 else f"\\x{byte:02x}")
                ids.append(byte)
                spans.append((index, index + 1))
        return Encoded(text, tokens, ids, spans)


def read_vocabulary(path):
    """token → id from a JSON object ({"token": id}), a JSON list (id = position) or a text file with one
    token per line (id = line number, counted from 0)."""
    from .files import read_text

    text = read_text(path, "vocabulary entries", "give a vocabulary file (vocab.json or vocab.txt)")
    if path.lower().endswith(".json"):
        try:
            value = json.loads(text)
        except ValueError as error:
            raise LrpToolError(f"{path}: not valid JSON ({error}); give {{\"token\": id, …}}") from None
        if isinstance(value, list):
            value = {str(token): index for index, token in enumerate(value)}
        if not isinstance(value, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                  for v in value.values()):
            raise LrpToolError(f"{path}: a JSON vocabulary maps tokens to ids ≥ 0: {{\"token\": id, …}}")
        vocabulary = {str(k): int(v) for k, v in value.items()}
    else:
        vocabulary = {}
        for index, line in enumerate(text.split("\n")):
            token = line.rstrip("\r")
            if token and token not in vocabulary:
                vocabulary[token] = index
    if not vocabulary:
        raise LrpToolError(f"{path}: the vocabulary is empty")
    return vocabulary


def vocabulary_beside(model):
    """MODEL.vocab.json, MODEL.vocab.txt, vocab.json or vocab.txt next to the model, or None."""
    if not model:
        return None
    folder = os.path.dirname(os.path.abspath(model))
    stem = os.path.splitext(model)[0]
    for candidate in (stem + ".vocab.json", stem + ".vocab.txt", os.path.join(folder, "vocab.json"),
                      os.path.join(folder, "vocab.txt")):
        if os.path.isfile(candidate):
            return candidate
    return None


def is_marker(token):
    return len(token) > 2 and token[0] + token[-1] in ("<>", "[]")


def make_tokenizer(spec, model=None, unknown=None):
    """A Tokenizer from ``words``, ``chars``, ``bytes`` or a vocabulary file (its entries decide: single
    characters, with markers like ``<s>`` aside, → chars, else words). ``words``/``chars`` take the vocabulary beside the model."""
    if isinstance(spec, Tokenizer) or hasattr(spec, "place"):
        return spec
    spec = spec or "bytes"
    if spec == "bytes":
        return Tokenizer("bytes")
    if spec in ("words", "chars"):
        path = vocabulary_beside(model)
        if path is None:
            raise LrpToolError(f"--tokenizer {spec}: no vocabulary found beside the model; give --tokenizer "
                               "vocab.json or vocab.txt")
        return Tokenizer(spec, read_vocabulary(path), unknown=unknown, source=path)
    if os.path.splitext(spec)[1].lower() in (".json", ".txt") or os.path.exists(spec):
        vocabulary = read_vocabulary(spec)
        # single characters, apart from markers such as <s> or [UNK]: a character vocabulary
        kind = "chars" if all(len(token) == 1 or is_marker(token) for token in vocabulary) else "words"
        return Tokenizer(kind, vocabulary, unknown=unknown, source=spec)
    raise LrpToolError(f"--tokenizer {spec!r}: choose words, chars, bytes or a vocabulary file (.json or .txt)")


@dataclass
class Placed:
    """A text's ids fitted to the model's length: ``slots[i]`` is the token at input position i, −1 for padding.
    For a bag-of-words model ``ids`` is the count vector and ``features[t]`` the feature of token t (−1: none);
    a model's own text front end gives the feature vector and ``shares``: (token, feature, fraction) arrays, token t
    taking that fraction of the feature's relevance."""
    encoded: Encoded
    ids: np.ndarray
    slots: np.ndarray
    truncated: bool
    features: np.ndarray = None
    shares: tuple = None


def bag_of_words(encoded, size):
    """The count vector (``size`` features) of a text whose token ids are feature indices; tokens outside
    the vocabulary (negative ids) count nowhere."""
    features = np.asarray(encoded.ids, dtype=np.int64)
    if features.size and features.max() >= size:
        raise TextError(f"the vocabulary gives feature {int(features.max())}; the model has {size} features")
    counts = np.bincount(features[features >= 0], minlength=size).astype(np.float64)
    return Placed(encoded, counts, np.full(size, -1, dtype=np.int64), False, features)


def place(encoded, length, pad, layout="start", limit=None):
    """Fit ``encoded`` into ``length`` positions; ``limit``: use at most that many positions for tokens
    (the rest is padding)."""
    if limit is not None and limit < length:
        placed = place(encoded, limit, pad, layout)
        ids = np.concatenate([placed.ids, np.full(length - limit, pad, dtype=np.int64)])
        slots = np.concatenate([placed.slots, np.full(length - limit, -1, dtype=np.int64)])
        return Placed(encoded, ids, slots, placed.truncated)
    count = len(encoded.ids)
    ids = np.full(length, pad, dtype=np.int64)
    slots = np.full(length, -1, dtype=np.int64)
    if layout == "start":
        used = min(count, length)
        ids[:used] = encoded.ids[:used]
        slots[:used] = np.arange(used)
        return Placed(encoded, ids, slots, count > length)
    if layout == "end":
        used = min(count, length)
        if used:
            ids[length - used:] = encoded.ids[count - used:]
            slots[length - used:] = np.arange(count - used, count)
        return Placed(encoded, ids, slots, count > length)
    if layout != "head-tail":
        raise LrpToolError(f"layout {layout!r}: choose {' or '.join(LAYOUTS)}")
    head = length // 2
    tail = length - head
    first = min(count, head)
    ids[:first] = encoded.ids[:first]
    slots[:first] = np.arange(first)
    last = min(count, tail)
    if last:
        ids[length - last:] = encoded.ids[count - last:]
        slots[length - last:] = np.arange(count - last, count)
    return Placed(encoded, ids, slots, count > max(head, tail))


def token_relevance(placed, relevance):
    """(per-token relevance, padding relevance) from the relevance of each input position."""
    relevance = np.asarray(relevance, dtype=np.float64).reshape(-1)
    if placed.shares is not None:
        owner, feature, fraction = placed.shares
        tokens = np.zeros(len(placed.encoded.tokens), dtype=np.float64)
        np.add.at(tokens, owner, relevance[feature] * fraction)
        return tokens, 0.0
    if placed.features is not None:
        # each occurrence of a word takes an equal part of its feature's relevance: R_f = w_f · count_f
        tokens = np.zeros(len(placed.features), dtype=np.float64)
        known = placed.features >= 0
        tokens[known] = relevance[placed.features[known]] / placed.ids[placed.features[known]]
        return tokens, 0.0
    tokens = np.zeros(len(placed.encoded.ids), dtype=np.float64)
    used = placed.slots >= 0
    np.add.at(tokens, placed.slots[used], relevance[used])
    return tokens, float(np.sum(relevance[~used]))


@dataclass
class TextExplanation:
    text: str
    tokens: list
    relevance: np.ndarray        # one value per token (tokens cut off by truncation get 0)
    padding: float               # Σ R over the padding positions
    target: int
    score: float
    spans: list = field(default_factory=list)
    truncated: bool = False

    @property
    def total(self):
        return float(np.sum(self.relevance) + self.padding)

    @property
    def padding_share(self):
        """|R| on padding as a share of all |R|."""
        magnitude = float(np.sum(np.abs(self.relevance)) + abs(self.padding))
        return abs(self.padding) / magnitude if magnitude > 0 else 0.0


def token_input(graph, max_len=None):
    """(name, length, bag): the graph's one input, its length (tokens, or features of a bag-of-words model;
    ``max_len`` where the model leaves it free) and whether it takes a count vector rather than token ids."""
    if len(graph.inputs) != 1:
        raise LrpToolError(f"the model has {len(graph.inputs)} inputs; explaining text needs one (the token ids)")
    (name, shape), = graph.inputs.items()
    if len(shape) != 2:
        raise LrpToolError(f"the model's input {name!r} has shape {shape}; text models take (batch, length)")
    if shape[1] is None and not max_len:
        raise LrpToolError(f"the model leaves the length of its input {name!r} free; for a text model give "
                           "--max-len (Python: max_len=)")
    return name, int(shape[1] if shape[1] is not None else max_len), name not in graph.token_inputs()


def fit_text(tokenizer, text, length, bag, pad=0, layout="start", limit=None):
    if hasattr(tokenizer, "place"):   # the model's own text front end (lrptool.text_frontend)
        return tokenizer.place(text)
    encoded = tokenizer.encode(text)
    return bag_of_words(encoded, length) if bag else place(encoded, length, pad, layout, limit)


def explain_text(graph, texts, tokenizer="bytes", method="epsilon", target="pred", pad=0, layout="start",
                 batch_size=64, explainer=None, max_len=None, **options):
    """Explain a model that reads token ids, for a list of texts: one ``TextExplanation`` per text.

    ``graph``: a Graph or a model path (an ONNX model that reads raw text, as skl2onnx exports a text pipeline,
    uses its own tokenizer: ``lrptool.text_frontend``); ``tokenizer``: ``bytes``, ``words``, ``chars``, a vocabulary file
    or a ``Tokenizer``; ``pad``: the id that fills the input past a text's end; ``layout``: ``start``, ``end`` or
    ``head-tail``; ``target``: ``pred``, a class index, or one per text; ``max_len``: the length where the model
    leaves it free. Further options go to
    ``lrptool.lrp.Explainer``."""
    from .lrp import Explainer

    model = None
    if not hasattr(graph, "nodes"):
        from converters import load_model
        from .text_frontend import read_text_model
        model = str(graph)
        text_model = read_text_model(model)
        if text_model is not None:   # the model reads raw text: its own tokenizer is used
            graph, tokenizer = text_model
        else:
            graph = load_model(graph)
    _, length, bag = token_input(graph, max_len)
    tokenizer = make_tokenizer(tokenizer, model, unknown=-1 if bag else None)
    explainer = explainer or Explainer(graph, method, **options)
    texts = list(texts)
    targets = target if isinstance(target, (list, tuple, np.ndarray)) else [target] * len(texts)
    results = []
    for start in range(0, len(texts), max(1, batch_size)):
        chunk = [fit_text(tokenizer, t, length, bag, pad, layout) for t in texts[start:start + batch_size]]
        wanted = [-1 if t in (None, "pred") else int(t) for t in targets[start:start + batch_size]]
        explained = explainer.explain(np.stack([p.ids for p in chunk]), target=np.asarray(wanted, dtype=np.int64))
        results += explanations_of(chunk, explained)
    return results


def explanations_of(placed, explained):
    results = []
    for index, item in enumerate(placed):
        tokens, padding = token_relevance(item, explained.relevance[index])
        results.append(TextExplanation(item.encoded.text, item.encoded.tokens, tokens, padding,
                                       int(explained.targets[index]), float(explained.scores[index]),
                                       item.encoded.spans, item.truncated))
    return results
