"""The memory budget: sizes a file or an option declares are checked against it before anything is
allocated, so that a 200-byte file cannot ask for 400 GiB.

The budget is half of this machine's physical memory, or ``LRPTOOL_MEMORY_BUDGET`` (bytes, or with a
K/M/G/T suffix) where that is set.
"""

import math
import os

from .errors import LrpToolError


class BudgetError(LrpToolError):
    """A declared size does not fit the memory budget."""


def physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 8 * 2 ** 30


def parse_bytes(text):
    text = str(text).strip().upper().rstrip("B").rstrip("I")
    factor = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}.get(text[-1:], 1)
    number = text[:-1] if factor != 1 else text
    value = float(number) * factor
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return int(value)


def memory_budget():
    setting = os.environ.get("LRPTOOL_MEMORY_BUDGET")
    if setting:
        try:
            return parse_bytes(setting)
        except ValueError:
            raise LrpToolError(f"LRPTOOL_MEMORY_BUDGET={setting!r}: give a size in bytes, e.g. 8G") from None
    return physical_memory() // 2


def human_bytes(count):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} PiB"


def element_count(shape):
    """Elements in ``shape`` as an exact Python int (no overflow); free (None) sizes count as 1."""
    total = 1
    for size in shape:
        total *= 1 if size is None else int(size)
    return total


def check_bytes(count, what):
    """Refuse ``count`` bytes for ``what`` (a phrase naming the file and tensor) beyond the budget."""
    budget = memory_budget()
    if count > budget:
        raise BudgetError(f"{what} needs {human_bytes(count)}, more than the memory budget of "
                          f"{human_bytes(budget)} (half this machine's memory; set LRPTOOL_MEMORY_BUDGET to change it)")


def check_shape(shape, itemsize, what):
    if any(size is not None and int(size) < 0 for size in shape):
        raise LrpToolError(f"{what}: negative size in shape {list(shape)}")
    check_bytes(element_count(shape) * itemsize, what)
