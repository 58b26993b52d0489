"""Guarded access to the file a Keras model is stored in. Every group, link, attribute and dataset
of the HDF5 file is read through ``HDF5``, so that whatever h5py raises on a damaged file becomes one
message naming the part, and what could crash or hang libhdf5 is refused before h5py touches it:
a global heap libhdf5 would walk forever, attribute types h5py converts unsafely, weights that
declare more than the file holds or the memory budget allows, ``.keras`` zip members that inflate
beyond what is read."""

import math
import mmap
import os
import struct
import zipfile

import numpy as np

from lrptool.errors import ModelFileError
from lrptool.limits import BudgetError, check_bytes, check_shape, human_bytes

from .keras_errors import DAMAGED, WEIGHTS_ADVICE, BadLayer, damaged, short
from .keras_schema import LARGEST_CONFIG, valid_text
from .reading import describe

# Deflate, the strongest filter Keras-era HDF5 files use, shrinks data at most about 1:1032; a dataset
# claiming more than that decodes from fill values, not from data.
LARGEST_RATIO = 1100
# What h5py raises on a damaged file: a broken heap or B-tree surfaces as any of these.
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# HDF5's type classes (H5T_class_t) that never hold Keras text, for messages
H5_CLASSES = {2: "times", 4: "bit fields", 5: "opaque data", 6: "records (a compound type)", 7: "references",
              8: "an enumeration", 9: "variable-length sequences", 10: "fixed-size arrays"}


def failure(error):
    """h5py's or zipfile's own words for a failure (``describe`` would call h5py's KeyError a missing entry)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{first} ({type(error).__name__})" if first else describe(error)


def as_text(value):
    """An attribute or JSON value as text, or None where it is not text (or not UTF-8)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        return value if valid_text(value) else None
    return None


def regular_file(path, what):
    """Refuse what is not a file (a FIFO would block the read forever, a folder cannot be read)."""
    import stat

    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ModelFileError(f"{path}: {what} is not a regular file; give the file itself")


def endless_global_heap(data):
    """The offset of a global heap collection on which libhdf5 would loop forever, or None.

    libhdf5 (2.0 and earlier) walks the objects of a global heap collection — where variable-length
    strings such as ``model_config`` live — by each object's size, and never advances past a free-space
    object (index 0) of size 0: reading any string from such a collection hangs. A mutated heap
    address can point at any ``GCOL`` in the file, so every one is walked here the way libhdf5 walks it.
    """
    lengths = superblock_lengths(data)
    header, object_header = 8 + lengths, 8 + lengths
    at = data.find(b"GCOL")
    while at >= 0:
        if at + header <= len(data) and data[at + 4] == 1:
            size = int.from_bytes(data[at + 8:at + 8 + lengths], "little")
            end, place = at + size, at + header
            while place < end and place + object_header <= min(end, len(data)):
                index = struct.unpack_from("<H", data, place)[0]
                object_size = int.from_bytes(data[place + 8:place + 8 + lengths], "little")
                step = object_header + (object_size + 7) // 8 * 8 if index else object_size
                if step == 0:
                    return at
                place += step
        at = data.find(b"GCOL", at + 1)
    return None


def superblock_lengths(data):
    """The byte size of lengths in this HDF5 file (8 unless its superblock says otherwise)."""
    at = data.find(HDF5_SIGNATURE)
    if at < 0 or at + 16 > len(data):
        return 8
    field = at + (14 if data[at + 8] in (0, 1) else 10)
    return data[field] if data[field] in (2, 4, 8) else 8


def check_global_heaps(path):
    with open(path, "rb") as stream:
        if os.fstat(stream.fileno()).st_size == 0:
            return
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            heap = endless_global_heap(data)
    if heap is not None:
        raise damaged(path, None, f"the global heap at byte {heap} is broken (an object of size 0)")


class HDF5:
    """One HDF5 file's groups, attributes and datasets, read so that whatever h5py raises on a damaged
    file (a broken heap, a wrong type, a link to another file) becomes one message naming the part."""

    def __init__(self, path, size):
        self.path = path
        self.size = size
        self.loaded = 0  # bytes of weights read so far, against the memory budget

    def fail(self, where, problem, advice=DAMAGED):
        raise damaged(self.path, where, problem, advice)

    def member(self, group, key, where, kind):
        """``group[key]`` when it is a ``kind`` (h5py.Group or h5py.Dataset), None where it is absent."""
        import h5py

        try:
            link = group.get(key, getlink=True)
            if link is None:
                return None
            if isinstance(link, h5py.ExternalLink):
                self.fail(where, f"{key!r} links to another file ({link.filename!r})",
                          "lrptool reads a model from one file only")
            item = group[key]
        except H5_ERRORS as error:
            self.fail(where, f"cannot read {key!r} ({failure(error)})")
        if not isinstance(item, kind):
            found = "group" if isinstance(item, h5py.Group) else "dataset" if isinstance(item, h5py.Dataset) else "link"
            self.fail(where, f"{key!r} is a {found}, expected a {kind.__name__.lower()}")
        return item

    def keys(self, group, where):
        try:
            return [key for key in group.keys()]
        except H5_ERRORS as error:
            self.fail(where, f"cannot list the group's members ({failure(error)})")

    def attr(self, obj, name, where):
        """An attribute's value, or None where there is none. Keras writes text, lists of text and
        (for empty lists) numbers; any other HDF5 type is refused unread, since h5py's conversion of
        some damaged variable-length types crashes the process."""
        from h5py import h5t

        try:
            if name not in obj.attrs:
                return None
            attribute = obj.attrs.get_id(name)
            kind = attribute.get_type()
            if not isinstance(kind, (h5t.TypeStringID, h5t.TypeIntegerID, h5t.TypeFloatID)):
                self.fail(where, f"attribute {name!r} holds {H5_CLASSES.get(kind.get_class(), 'data')}, expected text")
            size = attribute.get_space().get_simple_extent_npoints() * kind.get_size()
            if size > LARGEST_CONFIG:
                self.fail(where, f"attribute {name!r} declares {human_bytes(size)}, more than any Keras attribute")
            return obj.attrs[name]
        except UnicodeError:
            self.fail(where, f"attribute {name!r} is not UTF-8 text")
        except H5_ERRORS as error:
            self.fail(where, f"cannot read attribute {name!r} ({failure(error)})")

    def text_attr(self, obj, name, where):
        value = self.attr(obj, name, where)
        if value is None:
            return None
        text = as_text(value)
        if text is None:
            self.fail(where, f"attribute {name!r} is {describe_value(value)}, expected UTF-8 text")
        return text

    def names_attr(self, obj, name, where):
        """A list-of-names attribute; Keras splits long ones into ``name0``, ``name1``, …"""
        values = self.attr(obj, name, where)
        parts = [values] if values is not None else []
        index = 0
        while values is None and (part := self.attr(obj, f"{name}{index}", where)) is not None:
            parts.append(part)
            index += 1
        names = []
        for part in parts:
            # Keras writes an empty list as an empty float array.
            if not isinstance(part, np.ndarray) or part.ndim != 1 or part.dtype.kind not in "SUO" and part.size:
                self.fail(where, f"attribute {name!r} is {describe_value(part)}, expected a list of names")
            for value in part:
                text = as_text(value)
                if text is None:
                    self.fail(where, f"attribute {name!r} holds {describe_value(value)}, expected UTF-8 names")
                names.append(text)
        return names

    def array(self, dataset, what):
        """A weight dataset as an array, after checking what it declares against the file and the
        memory budget; problems are ``BadLayer`` for the layer being converted to report."""
        try:
            dtype, shape = dataset.dtype, dataset.shape
            plist = dataset.id.get_create_plist()
            filters, external = plist.get_nfilters(), plist.get_external_count()
            virtual = dataset.is_virtual
            stored = dataset.id.get_storage_size()
        except H5_ERRORS as error:
            raise BadLayer(f"cannot read {what} ({failure(error)})") from None
        if external or virtual:
            raise BadLayer(f"{what} keeps its data in other files", "lrptool reads weights stored in the model file")
        if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
            raise BadLayer(f"{what} holds {describe_dtype(dtype)}, not floating-point numbers", WEIGHTS_ADVICE)
        if shape is None:
            raise BadLayer(f"{what} has no shape (an empty dataspace)")
        nbytes = math.prod(shape) * dtype.itemsize
        declared = f"{what} declares shape {list(shape)} ({human_bytes(nbytes)})"
        if not filters and nbytes > self.size:
            raise BadLayer(f"{declared}, more than the whole file ({human_bytes(self.size)})")
        if nbytes > (stored if not filters else LARGEST_RATIO * stored + 2 ** 20):
            raise BadLayer(f"{declared} but stores {human_bytes(stored)}")
        try:
            check_shape(shape, dtype.itemsize, what)
            self.loaded += nbytes
            check_bytes(self.loaded, "the weights read so far")
        except BudgetError as error:
            raise BadLayer(str(error), "unless the model is that large, the file is damaged") from None
        try:
            array = np.asarray(dataset[()])
        except H5_ERRORS as error:
            raise BadLayer(f"cannot read {what} ({failure(error)})") from None
        if not np.all(np.isfinite(array)):
            raise BadLayer(f"{what} holds NaN or infinite values", "the model cannot be explained; "
                           "check the training run that wrote it")
        return array


def describe_value(value):
    if isinstance(value, np.ndarray):
        return f"an array of {describe_dtype(value.dtype)} with shape {list(value.shape)}"
    if isinstance(value, (bytes, np.bytes_)):
        return f"{short(bytes(value))}, which is not UTF-8"
    if isinstance(value, str):
        return "text that cannot be written out"
    return f"{type(value).__name__} {short(value)}"


def describe_dtype(dtype):
    if dtype.names:
        return "records (a compound type)"
    if dtype.kind in "OSU":
        return "strings or objects"
    return str(dtype)


def archive_member(path, archive, name, largest):
    """One member of a .keras zip, refused before inflating where it declares more than ``largest``."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.file_size > largest:
        raise damaged(path, name, f"inflates to {human_bytes(info.file_size)}, more than lrptool reads "
                                  f"({human_bytes(largest)})")
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError,
            NotImplementedError) as error:
        raise damaged(path, name, f"cannot unpack it ({failure(error)})") from None
    except Exception as error:  # noqa: BLE001 - zlib.error and friends: a damaged member, whatever its kind
        raise damaged(path, name, f"cannot unpack it ({failure(error)})") from None
