"""Errors that the command line turns into one-line messages (exit status 2)."""


class LrpToolError(Exception):
    """A user-facing problem: bad input file, unsupported model, inconsistent graph."""


class ModelFileError(LrpToolError):
    """A model file is missing, truncated, corrupt or of an unknown kind."""


class UnsupportedModelError(LrpToolError):
    """A model uses operators (or operator settings) outside lrptool's operator set.

    ``nodes`` lists ``(node name, op type, reason)`` for every offending node, so that a
    user learns about all of them at once.
    """

    def __init__(self, source, nodes):
        self.source = source
        self.nodes = list(nodes)
        listed = "; ".join(
            f"{name or '<unnamed>'} ({op}{': ' + reason if reason else ''})" for name, op, reason in self.nodes
        )
        super().__init__(
            f"{source}: {len(self.nodes)} unsupported node{'s' if len(self.nodes) != 1 else ''}: {listed}"
        )


class GraphError(LrpToolError):
    """A graph is inconsistent (unknown tensor, shape mismatch, bad attribute); names the node."""


class BatchAxisError(GraphError):
    """A node reads or changes the batch axis, so the graph cannot run with a free batch size."""


class FreeSizeError(GraphError):
    """A node needs a fixed size where the model leaves one free (a Flatten before a Dense on a
    fully convolutional input, a reshape into fixed sizes): the input size must be given."""
