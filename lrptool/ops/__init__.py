"""lrptool's closed operator set. ``OPERATORS`` maps an operator name to its definition."""

from .base import OPERATORS, REQUIRED, Operator  # noqa: F401
from . import activation, arithmetic, embedding, layout, linear, normalization, pooling, recurrent  # noqa: F401  (registration)
