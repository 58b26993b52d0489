"""Class names stored in a model file's metadata (ONNX ``metadata_props``).

Exporters and tools write them under different keys and in different forms; the ones read here:

- ``names``: Ultralytics YOLO exports, a Python dict literal ``{0: 'person', 1: 'bicycle', …}``;
- ``class_names`` (QGIS Deepness and others): JSON ``{"0": "background", "1": "field"}``, or a list of
  such dicts, one per output;
- ``labels``, ``classes``, ``class_labels``, ``classLabels``, ``id2label`` (Hugging Face's config
  field), ``label_names``: a JSON list, a JSON/Python dict from index to name, or plain text with one
  name per line or comma-separated (optionally ``index:name``).

A dict must map exactly the indices 0…N−1. Whatever cannot be read as such a list is reported and
left unused; it never stops a run.
"""

import ast
import json
import re

#: Metadata keys that hold class names, compared without case, "_" or "-", first match wins.
LABEL_KEYS = ("labels", "classes", "classnames", "classlabels", "names", "id2label", "labelnames")

#: Longer values are not parsed (a hostile file could make literal_eval slow).
LONGEST_VALUE = 4 << 20


def normalized(key):
    return re.sub(r"[_\-\s]", "", key).lower()


def labels_from_metadata(metadata):
    """(names, key, problem): the class names in ``metadata`` ({key: text}), the key they came from,
    and why a label key's value was not used (None when nothing was found or all went well)."""
    problem = None
    by_key = {normalized(key): key for key in metadata}
    for wanted in LABEL_KEYS:
        key = by_key.get(wanted)
        if key is None:
            continue
        names, why = parse_names(metadata[key])
        if names:
            return names, key, None
        problem = problem or f"the model's metadata {key!r} is not a list of class names ({why}); it is not used"
    return None, None, problem


def parse_names(text):
    """(names, None) or (None, why)."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty"
    if len(text) > LONGEST_VALUE:
        return None, f"{len(text):,} characters"
    value = structured(text.strip())
    if value is None:
        return from_text(text)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]                      # one dict per output; a classifier has one
    if isinstance(value, dict):
        return from_mapping(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int, float)) for v in value):
        return checked([str(v) for v in value])
    return None, "neither a list nor a dict of names"


def structured(text):
    """The JSON or Python literal in ``text``, or None when it is neither (plain text)."""
    if text[:1] not in "[{(":
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def from_mapping(mapping):
    try:
        indexed = {int(key): value for key, value in mapping.items()}
    except (TypeError, ValueError):
        return None, "its keys are not class indices"
    if sorted(indexed) != list(range(len(indexed))):
        return None, f"its indices are not 0…{len(indexed) - 1}"
    if not all(isinstance(v, (str, int, float)) for v in indexed.values()):
        return None, "its values are not names"
    return checked([str(indexed[i]) for i in range(len(indexed))])


def from_text(text):
    lines = [line.strip() for line in text.strip().splitlines()]
    names = lines if len(lines) > 1 else [part.strip() for part in text.split(",")]
    numbered = [re.match(r"^(\d+)\s*:\s*(.*)$", name) for name in names]
    if names and all(numbered):
        return from_mapping({match.group(1): match.group(2) for match in numbered})
    return checked(names)


def checked(names):
    if not names or not all(name.strip() for name in names):
        return None, "an empty name"
    return [name.strip() for name in names], None
