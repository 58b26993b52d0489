"""What goes wrong while a Keras file is read, and how messages show it: the exceptions converters
raise for a layer, and the message helpers every Keras reader module shares, so that each failure
names the file, the part and what to do next in the same words."""

from lrptool.errors import ModelFileError

from .builder import Unsupported  # noqa: F401  (what layer converters raise)

DAMAGED = "the file is damaged; save the model again with Keras"
WEIGHTS_ADVICE = "the weights do not belong to this layer; save the model again (or check --model-config)"


class BadLayer(Exception):
    """A layer setting or weight that no Keras model has (a damaged or hand-edited file); the reader
    names the file, layer and class. ``advice`` is what the user can do about it."""

    def __init__(self, problem, advice=DAMAGED):
        super().__init__(problem)
        self.problem = problem
        self.advice = advice


class WeightCountError(Exception):
    pass


def damaged(path, where, problem, advice=DAMAGED):
    return ModelFileError(f"{path}: {where + ': ' if where else ''}{problem}; {advice}")


def short(value):
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def kind_of(value):
    """How a JSON value is called in messages."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)
