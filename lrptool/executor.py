"""The forward executor: runs a Graph on NumPy arrays, batched, in float32 (default) or float64."""

import numpy as np

from .errors import LrpToolError


def cast_params(node, dtype):
    """Parameters of ``node`` in ``dtype``, cast once and cached on the node."""
    cache = node.__dict__.setdefault("_cast_cache", {})
    key = np.dtype(dtype).str
    cached = cache.get(key)
    if cached is not None and all(cached[0].get(k) is v for k, v in node.params.items()):
        return cached[1]
    cast = {k: v.astype(dtype, copy=False) if v.dtype.kind == "f" else v.astype(dtype)
            for k, v in node.params.items()}
    cache[key] = (dict(node.params), cast)
    return cast


def as_input(value, dtype, name):
    """``value`` as ``dtype``; token ids (int64) must be whole numbers."""
    value = np.asarray(value)
    if np.dtype(dtype).kind == "i" and value.dtype.kind == "f":
        if not np.all(np.isfinite(value)) or np.any(value != np.round(value)):
            raise LrpToolError(f"input {name!r} holds token ids: give whole numbers")
    return np.asarray(value, dtype=dtype)


def bind_inputs(graph, feeds, dtype):
    if not isinstance(feeds, dict):
        if len(graph.inputs) != 1:
            raise LrpToolError(f"the graph has inputs {list(graph.inputs)}: pass a dict of arrays")
        feeds = {next(iter(graph.inputs)): feeds}
    missing = set(graph.inputs) - set(feeds)
    if missing:
        raise LrpToolError(f"no value given for graph input(s) {sorted(missing)}")
    values = {}
    batch = None
    tokens = graph.token_inputs()
    for name, expected in graph.inputs.items():
        x = as_input(feeds[name], np.int64 if name in tokens else dtype, name)
        if x.ndim != len(expected) or any(e is not None and e != d for e, d in zip(expected, x.shape)):
            shown = tuple("N" if e is None else e for e in expected)
            raise LrpToolError(f"input {name!r} has shape {x.shape}, the graph expects {shown}")
        if expected[:1] == (None,):
            if batch is not None and x.shape[0] != batch:
                raise LrpToolError("graph inputs differ in batch size")
            batch = x.shape[0]
        values[name] = x
    return values


def last_uses(graph):
    last = {}
    for index, node in enumerate(graph.nodes):
        for tensor in node.inputs:
            last[tensor] = index
    return last


def run_graph(graph, feeds, dtype=np.float32, keep_all=False, keep=None):
    """Run ``graph`` forward.

    ``feeds`` is one array (single-input graphs) or a dict input name → array. Returns a dict
    of the graph outputs, or of every tensor (inputs included) when ``keep_all`` is set, or of the
    outputs and the tensors named in ``keep``.
    """
    dtype = np.dtype(dtype)
    values = bind_inputs(graph, feeds, dtype)
    last = {} if keep_all else last_uses(graph)
    keep = set(graph.outputs) | set(keep or ())
    for index, node in enumerate(graph.nodes):
        outputs = node.operator.run(node, [values[t] for t in node.inputs], cast_params(node, dtype))
        for tensor, value in zip(node.outputs, outputs):
            values[tensor] = np.asarray(value, dtype=dtype)
        if not keep_all:
            for tensor in node.inputs:
                if last.get(tensor) == index and tensor not in keep:
                    values.pop(tensor, None)
    if keep_all:
        return values
    result = {t: values[t] for t in graph.outputs}
    result.update((t, values[t]) for t in keep if t in values and t not in result)
    return result
