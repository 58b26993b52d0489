"""The safety net every reader shares: whatever goes wrong while a model file is read becomes one
``ModelFileError`` naming the file, the layer or node being read, and the problem.

Readers validate what they can say something useful about (shapes, sizes, missing parts). What
they did not foresee — a ``KeyError`` from a corrupt table, h5py's ``RuntimeError`` on a broken
heap, a ``RecursionError`` from nesting, a ``UnicodeDecodeError`` in a name — is caught here, so
that a damaged file never ends in a traceback::

    with reading_file(path):                       # once per file, in the reader's entry point
        for layer in layers:
            with reading_at(f"layer {name!r} ({kind})"):   # per layer or node
                convert(layer)
"""

import contextvars
from contextlib import contextmanager

from lrptool.errors import LrpToolError, ModelFileError

_location = contextvars.ContextVar("lrptool_reading_location", default=None)


class _Located(Exception):
    """An unforeseen failure with the place it happened; turned into a message by ``reading_file``."""

    def __init__(self, location, error):
        super().__init__(location)
        self.location = location
        self.error = error


def describe(error):
    """One line for an exception: its first line of text, or its type where it has none."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    if isinstance(error, MemoryError):
        return "needs more memory than this machine has"
    if isinstance(error, UnicodeError):
        return "text that is not valid UTF-8"
    if isinstance(error, KeyError):
        return f"missing entry {error.args[0]!r}" if error.args else "missing entry"
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{first} ({type(error).__name__})" if first else type(error).__name__


@contextmanager
def reading_at(location):
    """Mark where a reader is (``"layer 'conv1' (Convolution)"``); unforeseen failures inside
    carry that place out to ``reading_file``."""
    token = _location.set(location)
    try:
        yield
    except (LrpToolError, _Located, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as error:  # noqa: BLE001 - every failure of a damaged file is the file's problem
        if not isinstance(error, Exception):
            raise
        raise _Located(location, error) from None
    finally:
        _location.reset(token)


def current_location():
    return _location.get()


@contextmanager
def reading_file(source):
    """Turn every unforeseen failure while reading ``source`` into one ``ModelFileError``."""
    try:
        yield
    except LrpToolError:
        raise
    except _Located as located:
        raise ModelFileError(f"{source}: {located.location}: cannot read it: {describe(located.error)}; "
                             "the file is damaged or not what its name says") from None
    except Exception as error:  # noqa: BLE001
        raise ModelFileError(f"{source}: cannot read it: {describe(error)}; "
                             "the file is damaged or not what its name says") from None
