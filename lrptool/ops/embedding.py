"""Token embeddings: the one operator that reads integer tensors (token ids)."""

import numpy as np

from ..errors import LrpToolError
from .base import Operator, fail, register


@register
class Embedding(Operator):
    """``weight[ids]``: ids of any shape (N, …) give vectors (N, …, D) from the table ``weight`` (V, D).

    A graph input read only by Embedding nodes holds token ids and is fed as int64."""

    params = ("weight",)

    def infer(self, node, shapes):
        (shape,) = shapes
        weight = node.params["weight"]
        if weight.ndim != 2:
            fail(node, f"the embedding table has shape {weight.shape}; it must be (tokens, features)")
        if weight.shape[0] < 1:
            fail(node, "the embedding table has no rows")
        return [tuple(shape) + (int(weight.shape[1]),)]

    def run(self, node, inputs, params):
        ids = np.asarray(inputs[0])
        if ids.dtype.kind == "f":
            if not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids)):
                raise LrpToolError(f"node {node.name!r} (Embedding): token ids must be whole numbers")
            ids = ids.astype(np.int64)
        rows = params["weight"].shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= rows):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise LrpToolError(f"node {node.name!r} (Embedding): token id {bad} is outside the table's "
                               f"{rows} rows (0–{rows - 1}); check the tokenizer or vocabulary")
        return [params["weight"][ids]]
