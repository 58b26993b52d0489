"""Files written whole or not at all, and only inside the output folder.

Every file goes to a temporary name in its own folder (``.lrptool-part-PID-HOST-RANDOM``), created
with the permissions the umask allows, and is renamed when complete. The PID and host in the name
tell a later ``--resume`` which parts a dead run left behind and which belong to a run still going;
on a shared filesystem, only the host that wrote a part can tell whether its writer is alive.
"""

import errno
import hashlib
import os
import secrets
import socket

TEMP_PREFIX = ".lrptool-part-"
#: This machine in temporary names: eight hex digits of its host name.
HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


class OutsideOutputError(OSError):
    """An output path would leave the output folder (through a symbolic link or ``..``)."""


def inside(folder, path):
    """Whether the real location of ``path`` lies in the real location of ``folder``."""
    root = os.path.realpath(folder)
    target = os.path.realpath(path)
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def safe_folder(root, folder):
    """Create ``folder`` (below ``root``) and check that it does not lead outside ``root``:
    a symbolic link in the output tree must not carry outputs elsewhere."""
    if not inside(root, folder):
        raise OutsideOutputError(errno.EXDEV, "leads outside the output folder (a symbolic link?)", folder)
    os.makedirs(folder, exist_ok=True)
    if not inside(root, folder):  # a link made while the folders were being created
        raise OutsideOutputError(errno.EXDEV, "leads outside the output folder (a symbolic link?)", folder)


def write_atomically(path, payload, make_folders=True, root=None):
    """Write bytes to ``path`` through a temporary file in the same folder, then rename.

    With ``root``, the file's folder must lie inside ``root`` once symbolic links are resolved."""
    folder = os.path.dirname(os.path.abspath(path))
    if root is not None:
        safe_folder(root, folder)
    elif make_folders:
        os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{HOST}-{secrets.token_hex(6)}")
    # os.open with 0o666 lets the umask decide the permissions, as any other program's output
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def part_owner(name):
    """The PID in a temporary file's name, or None for names without one."""
    rest = name[len(TEMP_PREFIX):]
    pid, _, _ = rest.partition("-")
    return int(pid) if pid.isdigit() else None


def part_host(name):
    """The host tag in a temporary file's name, or None for names without one."""
    fields = name[len(TEMP_PREFIX):].split("-")
    return fields[1] if len(fields) == 3 else None


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_parts(folder, recursive=True):
    """Delete temporary files that a killed run left under ``folder`` (``recursive=False``: in
    ``folder`` itself); parts of a run that is still going (its PID alive) and parts written on
    another host (whose processes this one cannot see) are left alone. Returns how many were removed."""
    removed = 0
    walk = os.walk(folder) if recursive else [(folder, None, entries(folder))]
    for parent, _, files in walk:
        for name in files:
            if not name.startswith(TEMP_PREFIX):
                continue
            owner, host = part_owner(name), part_host(name)
            if host not in (None, HOST) or (owner is not None and (owner == os.getpid() or process_alive(owner))):
                continue
            try:
                os.unlink(os.path.join(parent, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def entries(folder):
    try:
        return os.listdir(folder)
    except OSError:
        return []


def regular_file_problem(path):
    """Why ``path`` cannot be read as a file (missing, a folder, a FIFO or device), or None.
    Opening a FIFO would wait for a writer forever, so it is refused before it is opened."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"cannot read ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return "is a folder"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device)"
    return None


def read_text(path, what, advice):
    """A small UTF-8 text file's content (a BOM dropped); one-line errors naming ``path`` and ``what``
    it should hold, with ``advice`` where it is no readable file."""
    from .errors import LrpToolError

    problem = regular_file_problem(path)
    if problem:
        raise LrpToolError(f"{path}: {problem}; {advice}")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise LrpToolError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise LrpToolError(f"{path}: the {what} are not UTF-8 text (byte {error.start}); save the file as UTF-8") \
            from None
