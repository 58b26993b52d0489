"""Files written whole or not at all: a temporary name in the same folder, renamed when complete."""

import os
import tempfile

TEMP_PREFIX = ".lrptool-part-"


def write_atomically(path, payload, make_folders=True):
    """Write bytes to ``path`` through a temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    if make_folders:
        os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def remove_stale_parts(folder):
    """Delete temporary files a hard kill left behind under ``folder``."""
    for parent, _, files in os.walk(folder):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                os.unlink(os.path.join(parent, name))
