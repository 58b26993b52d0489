"""Models that read raw text: the string front end that skl2onnx writes for scikit-learn's
``CountVectorizer`` and ``TfidfVectorizer`` — StringNormalizer → Tokenizer (com.microsoft) →
TfIdfVectorizer, then per-feature scalings (Mul/Div by constants: the idf weights; Normalizer L1/L2/MAX;
the two Casts of ``binary=True``) — in front of a linear model.

lrptool computes the front end itself, as onnxruntime's kernels do, so that it knows which words of the
text made each feature; the rest of the model (the linear classifier or regressor) is read as usual,
its input being the front end's last tensor, the feature vector x. Relevance (docs/text.md): the
linear model gives feature f its R_f (= w_f · x_f with the ``zero`` preset); R_f goes in equal parts to
the occurrences of f's n-gram in the text, and an occurrence's part in equal parts to its n words.
The scalings are per-text constants, so R_f is the same whether x holds counts or normalised TF-IDF
values (a normaliser's scale is held constant, as LayerNorm's σ is).
"""

import os
import re
from dataclasses import dataclass

import numpy as np

from .errors import LrpToolError
from .text import Encoded, Placed, TextError

STRING_TYPE = 8          # onnx.TensorProto.STRING
SHAPE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
#: RE2 (onnxruntime's regular expressions) takes the longest match among alternatives and knows no lazy
#: quantifiers, look-arounds or back-references; Python's re agrees with it on patterns without these.
RE2_ONLY = re.compile(r"\||[+*?}]\?|\(\?[=!<]|\\[1-9]")
EXPORT_HINT = ("export the vectorizer with analyzer='word' and a plain token pattern (or explain the linear model "
               "on the count vector with --tokenizer vocab.json)")


class FrontEndError(LrpToolError):
    """A string front end lrptool cannot reproduce exactly."""


def attributes(node):
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def as_text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def compile_pattern(pattern, source, node):
    if RE2_ONLY.search(pattern):
        raise FrontEndError(f"{source}: node {node} uses the regular expression {pattern!r}, whose alternatives or "
                            f"lazy parts RE2 and Python match differently; {EXPORT_HINT}")
    try:
        return re.compile(pattern, re.ASCII)   # RE2's \w, \d, \s and \b are ASCII
    except re.error as error:
        raise FrontEndError(f"{source}: node {node}: cannot read the regular expression {pattern!r} ({error}); "
                            f"{EXPORT_HINT}") from None


@dataclass
class TextNormalizer:
    """StringNormalizer: case change of the whole text; a text equal to a stop word is removed."""
    case: str
    stopwords: frozenset
    case_sensitive: bool

    def apply(self, text):
        """(normalised text, index of the original character behind each normalised one); characters are
        changed one by one, as onnxruntime's towlower/towupper do."""
        if self.case == "NONE":
            return text, list(range(len(text)))
        change = str.lower if self.case == "LOWER" else str.upper
        pieces, origin = [], []
        for index, character in enumerate(text):
            changed = change(character)
            if len(changed) != 1:   # towlower/towupper map one character to one (Unicode's simple case mapping)
                changed = "i" if character == "\u0130" and self.case == "LOWER" else character
            pieces.append(changed)
            origin += [index] * len(changed)
        return "".join(pieces), origin

    def removes(self, text):
        key = text if self.case_sensitive else text.lower()
        return key in self.stopwords


@dataclass
class Splitter:
    """com.microsoft Tokenizer: the matches of ``tokenexp``, or the pieces between ``separators`` (applied one after
    the other), or single characters (one empty separator); pieces shorter than ``mincharnum`` are dropped."""
    expression: object
    separators: list
    mincharnum: int

    def spans(self, text):
        if self.expression is None and not self.separators:
            return [(i, i + 1) for i in range(len(text))]
        if self.expression is not None:
            return self.matches(text)
        pieces = [(0, len(text))]
        for separator in self.separators:
            found = []
            for start, end in pieces:
                position = start
                while True:
                    match = separator.search(text, position, end)
                    if match is None:
                        if end - position >= self.mincharnum:
                            found.append((position, end))
                        break
                    if match.start() - position >= self.mincharnum and match.start() > position:
                        found.append((position, match.start()))
                    position = match.end() if match.end() > match.start() else match.start() + 1
            if not found:
                return []
            pieces = found
        return [(s, e) for s, e in pieces if e > s]

    def matches(self, text):
        spans, position = [], 0
        if len(text) < self.mincharnum:
            return spans
        while position <= len(text):
            match = self.expression.search(text, position)
            if match is None:
                break
            if match.end() - match.start() >= self.mincharnum and match.end() > match.start():
                spans.append((match.start(), match.end()))
                position = match.end()
            else:
                position = match.start() + 1
        return spans


@dataclass
class NgramCounter:
    """TfIdfVectorizer on strings: n-grams of ``min_n``…``max_n`` tokens with 0…``max_skip`` tokens skipped between
    neighbours, counted into their output columns; ``mode`` TF (counts), IDF (weight where present) or TFIDF."""
    ngrams: dict           # tuple of strings → output column
    min_n: int
    max_n: int
    max_skip: int
    mode: str
    weights: np.ndarray    # per output column (empty: none)
    size: int

    def occurrences(self, tokens):
        """[(output column, token positions)] for every n-gram occurrence counted, as onnxruntime counts them."""
        found = []
        start_n = self.min_n
        if start_n == 1:
            for position, token in enumerate(tokens):
                column = self.ngrams.get((token,))
                if column is not None:
                    found.append((column, (position,)))
            start_n = 2
            if start_n > self.max_n:
                return found
        for distance in range(1, self.max_skip + 2):
            for start in range(len(tokens)):
                if start + distance * (start_n - 1) >= len(tokens):
                    break
                positions = tuple(range(start, min(len(tokens), start + distance * self.max_n), distance))
                for n in range(start_n, len(positions) + 1):
                    column = self.ngrams.get(tuple(tokens[p] for p in positions[:n]))
                    if column is not None:
                        found.append((column, positions[:n]))
        return found

    def values(self, counts):
        counts = counts.astype(np.float32)
        if self.mode == "TF" or not self.weights.size and self.mode == "TFIDF":
            return counts
        if self.mode == "IDF":
            return np.where(counts > 0, self.weights if self.weights.size else np.float32(1), np.float32(0))
        return counts * self.weights


class StringFrontEnd:
    """The front end of a model that reads raw text; ``place(text)`` gives the feature vector the linear model reads
    and which word occurrences made each feature (``Placed.shares``)."""

    kind = "model"

    def __init__(self, source, normalizer, splitter, counter, scalings, pad_value):
        self.source = source
        self.normalizer = normalizer
        self.splitter = splitter
        self.counter = counter
        self.scalings = scalings
        self.pad_value = pad_value
        self.unigrams = {words[0]: column for words, column in counter.ngrams.items() if len(words) == 1}
        self.reference = None    # onnxruntime's run of the whole model, where the explained output is its own

    def describe(self):
        parts = ["the model's own"]
        if self.normalizer is not None and self.normalizer.case != "NONE":
            parts.append(f"{self.normalizer.case.lower()}-cased,")
        splitter = self.splitter
        if splitter.expression is not None:
            parts.append(f"tokens /{splitter.expression.pattern}/,")
        elif splitter.separators:
            parts.append(f"split at {' '.join(s.pattern for s in splitter.separators)},")
        else:
            parts.append("characters,")
        grams = self.counter
        parts.append(f"{grams.min_n}–{grams.max_n}-grams" if grams.max_n > grams.min_n else f"{grams.min_n}-grams")
        parts.append(f"({grams.mode}{', ' + ', '.join(s[0] for s in self.scalings) if self.scalings else ''}), "
                     f"{grams.size} features")
        return " ".join(parts)

    def largest_id(self):
        return self.counter.size - 1

    def encode(self, text):
        normalised, origin = (self.normalizer.apply(text) if self.normalizer is not None
                              else (text, list(range(len(text)))))
        if self.normalizer is not None and self.normalizer.stopwords and self.normalizer.removes(text):
            raise TextError("the model's StringNormalizer removes this whole text (it is one of its stop words)")
        spans, tokens = [], []
        for start, end in self.splitter.spans(normalised):
            tokens.append(normalised[start:end])
            first, last = origin[start], origin[end - 1] + 1
            spans.append((first, last))
        return Encoded(text, [text[s:e] for s, e in spans], [self.unigrams.get(t, -1) for t in tokens], spans), tokens

    def place(self, text):
        encoded, tokens = self.encode(text)
        found = self.counter.occurrences(tokens)
        counts = np.zeros(self.counter.size, dtype=np.int64)
        for column, _ in found:
            counts[column] += 1
        values = self.counter.values(counts)
        for _, apply in self.scalings:
            values = apply(values)
        owner, feature, weight = [], [], []
        for column, positions in found:
            for position in positions:
                owner.append(position)
                feature.append(column)
                weight.append(1.0 / (counts[column] * len(positions)))
        shares = (np.asarray(owner, dtype=np.int64), np.asarray(feature, dtype=np.int64),
                  np.asarray(weight, dtype=np.float64))
        return Placed(encoded, values.astype(np.float64), np.full(self.counter.size, -1, dtype=np.int64), False,
                      shares=shares)


# -- reading the front end from an ONNX model ------------------------------------------------------------------

def scaling(node, constant):
    factor = np.asarray(constant, dtype=np.float32).reshape(-1)
    if node.op_type == "Mul":
        return "idf" if factor.size > 1 else "scaled", lambda x: (x * factor).astype(np.float32)
    return "scaled", lambda x: (x / factor).astype(np.float32)


def normalizer_step(norm):
    def apply(x):
        x = np.asarray(x, dtype=np.float32)
        if norm == "MAX":
            scale = np.max(x)
        elif norm == "L1":
            scale = np.sum(np.abs(x), dtype=np.float32)
        else:
            scale = np.sqrt(np.sum(x * x, dtype=np.float32))
        return x if scale == 0 else (x / scale).astype(np.float32)
    return f"{norm} norm", apply


def string_input(model):
    initialized = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialized]
    if len(inputs) == 1 and inputs[0].type.tensor_type.elem_type == STRING_TYPE:
        return inputs[0].name
    return None


def read_text_model(model_path):
    """(graph, front end) for an ONNX model whose input is text (a string tensor), or None for any other model."""
    source = str(model_path)
    if os.path.splitext(source)[1].lower() in (".h5", ".hdf5", ".keras", ".prototxt", ".pbtxt", ".caffemodel"):
        return None
    from converters.onnx_checks import load_onnx_proto

    if not os.path.isfile(source):
        return None
    try:
        model = load_onnx_proto(source)
    except LrpToolError:
        return None   # the usual reader says what is wrong with the file
    name = string_input(model)
    if name is None:
        return None
    front, numeric = split_front_end(model, name, source)
    from converters.onnx_reader import read_onnx

    graph = read_onnx(numeric)
    if list(graph.inputs.values()) != [(None, front.counter.size)]:
        raise FrontEndError(f"{source}: the linear model after the text front end takes {list(graph.inputs.values())}, "
                            f"not the {front.counter.size} features")
    from converters.onnx_svm_votes import explain_sums

    if len(graph.outputs) == 1 and explain_sums(numeric)[0] is numeric:   # the explained output is the model's own
        front.reference = Reference(model, name, graph.outputs[0])
    return graph, front


class Reference:
    """onnxruntime running the whole model on texts, for the explained output: the scores lrptool explains must be
    the ones it gives. Where onnxruntime cannot run the model (its StringNormalizer's locale is not installed), the
    same model with the locale C.UTF-8 is run, which changes the case of ASCII letters the same way."""

    def __init__(self, model, text_input, output):
        self.model, self.text_input, self.output = model, text_input, output
        self.session, self.problem = None, None

    def open(self):
        import onnxruntime
        from onnx import helper

        from converters.onnx_patterns import with_nodes

        probed = with_nodes(self.model, list(self.model.graph.node))
        del probed.graph.output[:]
        probed.graph.output.append(helper.make_empty_tensor_value_info(self.output))
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4
        try:
            return onnxruntime.InferenceSession(probed.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - then try the portable locale, else say why there is no check
            first = str(error)
        for node in probed.graph.node:
            if node.op_type == "StringNormalizer":
                kept = [a for a in node.attribute if a.name != "locale"]
                del node.attribute[:]
                node.attribute.extend(kept + [helper.make_attribute("locale", "C.UTF-8")])
        try:
            return onnxruntime.InferenceSession(probed.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001
            self.problem = first.strip().splitlines()[-1][:200] if first.strip() else "it cannot run the model"
            return None

    def scores(self, texts):
        """(N, outputs) onnxruntime's output for ``texts``, or None when it cannot run the model."""
        if self.session is None and self.problem is None:
            self.session = self.open()
        if self.session is None:
            return None
        rank = len(next(i for i in self.model.graph.input if i.name == self.text_input).type.tensor_type.shape.dim)
        feed = np.array(list(texts), dtype=object).reshape((-1, 1) if rank == 2 else (-1,))
        return np.asarray(self.session.run(None, {self.text_input: feed})[0], dtype=np.float64).reshape(len(texts), -1)


def split_front_end(model, name, source):
    """(StringFrontEnd, the rest of the model as a ModelProto whose input is the feature vector)."""
    from onnx import TensorProto, numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = attributes(node).get("value")
            if value is not None:
                constants[node.output[0]] = numpy_helper.to_array(value)
    readers = {}
    for node in model.graph.node:
        for tensor in node.input:
            readers.setdefault(tensor, []).append(node)

    def where(node):
        return f"{node.name or node.output[0]!r} ({node.op_type})"

    normalizer = splitter = counter = None
    pad_value, scalings, taken = None, [], []
    tensor = name
    while True:
        following = readers.get(tensor, [])
        node = following[0] if len(following) == 1 else None
        if counter is not None and (node is None or not takes_features(node, tensor, constants)):
            break
        if node is None:
            raise FrontEndError(f"{source}: the text input feeds {len(following)} nodes; lrptool reads the front end "
                                "StringNormalizer → Tokenizer → TfIdfVectorizer as skl2onnx writes it")
        a = attributes(node)
        if node.op_type in SHAPE_OPS or node.op_type == "Cast" and counter is not None:
            if node.op_type == "Cast" and a.get("to") == TensorProto.BOOL:
                scalings.append(("binary", lambda x: (x != 0).astype(np.float32)))
            elif node.op_type == "Cast" and a.get("to") not in (TensorProto.FLOAT, TensorProto.DOUBLE):
                raise FrontEndError(f"{source}: node {where(node)} casts the features to "
                                    f"{TensorProto.DataType.Name(a.get('to', 0))}; lrptool reads casts to bool "
                                    "(binary=True) and to floats")
        elif node.op_type == "StringNormalizer" and splitter is None:
            normalizer = TextNormalizer(as_text(a.get("case_change_action", b"NONE")),
                                    frozenset(as_text(s) if a.get("is_case_sensitive", 0) else as_text(s).lower()
                                              for s in a.get("stopwords", [])),
                                    bool(a.get("is_case_sensitive", 0)))
            if normalizer.case not in ("NONE", "LOWER", "UPPER"):
                raise FrontEndError(f"{source}: node {where(node)}: case_change_action {normalizer.case!r} is unknown")
        elif node.op_type == "Tokenizer" and splitter is None:
            splitter = read_splitter(a, source, where(node))
            pad_value = as_text(a.get("pad_value", b"#"))
            if a.get("mark"):
                pad_value = (pad_value, "\x02", "\x03")
        elif node.op_type in ("TfIdfVectorizer", "Ngram") and splitter is not None and counter is None:
            counter = read_counter(a, source, where(node))
            for marker in (pad_value if isinstance(pad_value, tuple) else (pad_value,)):
                if (marker,) in counter.ngrams or any(marker in words for words in counter.ngrams):
                    raise FrontEndError(f"{source}: node {where(node)}: the vocabulary holds the Tokenizer's padding "
                                        "or marker token, so a text's features would depend on the other texts of a "
                                        "batch")
        elif node.op_type in ("Mul", "Div") and counter is not None:
            scalings.append(scaling(node, constants[node.input[1] if node.input[0] == tensor else node.input[0]]))
        elif node.op_type == "Normalizer" and counter is not None:
            norm = as_text(a.get("norm", b"MAX"))
            if norm not in ("MAX", "L1", "L2"):
                raise FrontEndError(f"{source}: node {where(node)}: norm {norm!r} is unknown")
            scalings.append(normalizer_step(norm))
        else:
            raise FrontEndError(f"{source}: node {where(node)} in the text front end: lrptool reads StringNormalizer → "
                                f"Tokenizer → TfIdfVectorizer → per-feature scalings (Mul, Div, Normalizer) → a linear "
                                f"model; {EXPORT_HINT}")
        taken.append(node)
        tensor = node.output[0]
    rest = [n for n in model.graph.node if all(n is not t for t in taken)]
    inside = {name} | {o for n in taken for o in n.output}
    stray = [n for n in rest if any(t in inside and t != tensor for t in n.input)]
    if stray:
        raise FrontEndError(f"{source}: node {where(stray[0])} reads the text front end before its last tensor; "
                            "lrptool explains a linear model on the feature vector")
    front = StringFrontEnd(source, normalizer, splitter, counter, scalings, pad_value)
    return front, numeric_model(model, rest, tensor, counter.size)


def takes_features(node, tensor, constants):
    """Whether ``node`` is a per-feature step of the front end (a scaling, a shape change, a Cast)."""
    if node.op_type in SHAPE_OPS or node.op_type in ("Cast", "Normalizer"):
        return True
    if node.op_type in ("Mul", "Div") and len(node.input) == 2:
        other = node.input[1] if node.input[0] == tensor else node.input[0]
        return (node.op_type == "Mul" or node.input[0] == tensor) and other in constants
    return False


def read_splitter(a, source, where):
    mincharnum = int(a.get("mincharnum", 1))
    if mincharnum < 1:
        raise FrontEndError(f"{source}: node {where}: mincharnum {mincharnum} (onnxruntime needs at least 1)")
    expression = a.get("tokenexp")
    separators = [as_text(s) for s in a.get("separators", [])]
    if expression:
        return Splitter(compile_pattern(as_text(expression), source, where), [], mincharnum)
    if separators == [""]:
        return Splitter(None, [], mincharnum)
    if not separators or "" in separators:
        raise FrontEndError(f"{source}: node {where}: neither tokenexp nor usable separators")
    return Splitter(None, [compile_pattern(s, source, where) for s in separators], mincharnum)


def read_counter(a, source, where):
    pool = [as_text(s) for s in a.get("pool_strings", [])]
    if not pool:
        raise FrontEndError(f"{source}: node {where}: a TfIdfVectorizer on strings needs pool_strings")
    starts = [int(c) for c in a.get("ngram_counts", [])]
    indexes = [int(i) for i in a.get("ngram_indexes", [])]
    min_n, max_n = int(a.get("min_gram_length", 1)), int(a.get("max_gram_length", 1))
    mode = as_text(a.get("mode", b"TF"))
    if mode not in ("TF", "IDF", "TFIDF") or not starts or not 1 <= min_n <= max_n <= len(starts):
        raise FrontEndError(f"{source}: node {where}: mode {mode}, n-grams {min_n}–{max_n} with {len(starts)} counts "
                            "do not fit together")
    ngrams, ngram_id = {}, 0
    for n, start in enumerate(starts, start=1):
        end = starts[n] if n < len(starts) else len(pool)
        if end < start or (end - start) % n:
            raise FrontEndError(f"{source}: node {where}: ngram_counts do not split the pool into {n}-grams")
        for offset in range(start, end, n):
            if ngram_id >= len(indexes):
                raise FrontEndError(f"{source}: node {where}: fewer ngram_indexes than n-grams in the pool")
            if min_n <= n <= max_n:
                ngrams[tuple(pool[offset:offset + n])] = indexes[ngram_id]
            ngram_id += 1
    weights = np.asarray(a.get("weights", []), dtype=np.float32)
    size = max(indexes) + 1
    if weights.size and weights.size != len(indexes):
        raise FrontEndError(f"{source}: node {where}: {weights.size} weights for {len(indexes)} n-grams")
    if weights.size:   # the i-th weight is the i-th n-gram's (the ONNX specification, onnxruntime)
        by_column = np.zeros(size, dtype=np.float32)
        by_column[indexes] = weights
        weights = by_column
    return NgramCounter(ngrams, min_n, max_n, int(a.get("max_skip_count", 0)), mode, weights, size)


def numeric_model(model, nodes, features, size):
    """The model after the front end: ``nodes`` reading ``features`` (N, size) float. Only score outputs are kept
    (a classifier's predicted label, an integer or a string, is no score); a ZipMap (a list of {class:
    probability} maps) is left out and its input becomes the output."""
    from onnx import TensorProto, helper

    kept, outputs = [], []
    renamed = {}
    for node in nodes:
        if node.op_type == "ZipMap":
            renamed[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    for output in model.graph.output:
        if output.name not in renamed and output.type.tensor_type.elem_type not in (TensorProto.FLOAT,
                                                                                   TensorProto.DOUBLE):
            continue
        wanted = renamed.get(output.name, output.name)
        if wanted not in [o.name for o in outputs]:
            outputs.append(output if wanted == output.name else
                           helper.make_tensor_value_info(wanted, TensorProto.FLOAT, None))
    graph = helper.make_graph(kept, model.graph.name or "linear model",
                              [helper.make_tensor_value_info(features, TensorProto.FLOAT, ["N", size])], outputs,
                              initializer=list(model.graph.initializer))
    numeric = helper.make_model(graph, opset_imports=list(model.opset_import))
    numeric.ir_version = model.ir_version
    return numeric
