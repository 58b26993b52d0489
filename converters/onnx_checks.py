"""Checks of an ONNX file before it is converted: a model file is not trusted.

Names, the node order, every tensor's declared size against the bytes it holds, attribute types
against the operator's ONNX schema and external data paths are checked before anything is
allocated; each problem becomes one ``ModelFileError`` naming the file and the node or tensor.
"""

import math
import os
import stat
import unicodedata
import warnings

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, defs, helper, numpy_helper

from lrptool.errors import ModelFileError
from lrptool.limits import check_bytes, check_shape

from .onnx_ops import Unsupported, brief
from .reading import reading_at

DAMAGED = "the file is damaged; export the model again"

#: Which repeated field holds a tensor's values when it has no raw_data, and how many entries one
#: element takes there (complex numbers are stored as pairs).
TYPED_FIELDS = {
    TensorProto.FLOAT: ("float_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1), TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1), TensorProto.STRING: ("string_data", 1),
    **{data_type: ("int32_data", 1) for data_type in (
        TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT16, TensorProto.UINT8,
        TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN,
        TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ)},
}

ATTRIBUTE_KINDS = {
    AttributeProto.FLOAT: ("f", "a float"), AttributeProto.INT: ("i", "an int"),
    AttributeProto.STRING: ("s", "a string"),
    AttributeProto.TENSOR: ("t", "a tensor"), AttributeProto.GRAPH: ("g", "a graph"),
    AttributeProto.SPARSE_TENSOR: ("sparse_tensor", "a sparse tensor"), AttributeProto.TYPE_PROTO: ("tp", "a type"),
    AttributeProto.FLOATS: ("floats", "a list of floats"), AttributeProto.INTS: ("ints", "a list of ints"),
    AttributeProto.STRINGS: ("strings", "a list of strings"), AttributeProto.TENSORS: ("tensors", "a list of tensors"),
    AttributeProto.GRAPHS: ("graphs", "a list of graphs"),
    AttributeProto.SPARSE_TENSORS: ("sparse_tensors", "a list of sparse tensors"),
    AttributeProto.TYPE_PROTOS: ("type_protos", "a list of types"),
}

#: Line and paragraph separators and control characters would break the one-line error messages.
BAD_NAME_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")

#: Longer names and strings are refused: they would turn a one-line message into a page.
LONGEST_TEXT = 4096

#: More axes than NumPy (64) can hold, and far more than any network uses.
MOST_AXES = 32


def refuse(source, where, problem, advice=DAMAGED):
    return ModelFileError(f"{source}: {where}: {problem}; {advice}")


def check_text(source, where, text, what="name"):
    """A name from the file: valid UTF-8 without line breaks (protobuf hands invalid UTF-8 over as bytes)."""
    if isinstance(text, bytes):
        raise refuse(source, where, f"{what} {text!r} is not valid UTF-8")
    if len(text) > LONGEST_TEXT:
        raise refuse(source, where, f"{what} {text[:40]!r}… is {len(text)} characters long")
    if any(unicodedata.category(c) in BAD_NAME_CATEGORIES for c in text):
        raise refuse(source, where, f"{what} {text!r} holds control characters or line breaks")
    return text


def load_onnx_proto(path):
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a folder, not an ONNX model file")
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: is not a regular file; give an ONNX model file")
    check_bytes(os.path.getsize(path), f"{path}: reading the model")
    try:
        # external data is read later, and only from where the checks allow
        model = onnx.load(path, load_external_data=False)
    except Exception as error:  # protobuf raises several unrelated types for corrupt data
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelFileError(f"{path}: not a readable ONNX model (truncated or corrupt?): {reason}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelFileError(f"{path}: the ONNX file holds no graph (truncated or not a model?)")
    return model


# -- tensors in the file --------------------------------------------------------------------------

def data_type_name(data_type):
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return str(data_type)


def tensor_array(tensor, source, where, folder):
    """The array a TensorProto holds, after checking its declared size against the bytes it has."""
    data_type = tensor.data_type
    if data_type not in TYPED_FIELDS:
        if data_type_name(data_type) == str(data_type) or data_type == TensorProto.UNDEFINED:
            raise refuse(source, where, f"unknown tensor data type {data_type}")
        raise refuse(source, where, f"tensors of type {data_type_name(data_type)} are not supported",
                     "convert the model's weights to float32")
    dims = [int(d) for d in tensor.dims]
    if len(dims) > MOST_AXES:
        raise refuse(source, where, f"has {len(dims)} axes", f"lrptool reads tensors of up to {MOST_AXES} axes")
    if any(d < 0 for d in dims):
        raise refuse(source, where, f"negative size in dims {brief(dims)}")
    itemsize = 8 if data_type == TensorProto.STRING else np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    check_shape(dims, itemsize, f"{source}: {where}")
    count = math.prod(dims)
    if tensor.HasField("segment"):
        raise refuse(source, where, "segmented tensors are not supported", "save the model as one file")
    if tensor.data_location == TensorProto.EXTERNAL:
        if data_type == TensorProto.STRING:
            raise refuse(source, where, "string tensors cannot be external data")
        stored = TensorProto()
        stored.CopyFrom(tensor)
        del stored.external_data[:]
        stored.data_location = TensorProto.DEFAULT
        stored.raw_data = external_bytes(tensor, source, where, folder, count * itemsize)
        tensor = stored
    elif tensor.data_location != TensorProto.DEFAULT:
        raise refuse(source, where, f"unknown data_location {tensor.data_location}")
    elif tensor.HasField("raw_data"):
        if data_type == TensorProto.STRING:
            raise refuse(source, where, "a string tensor with raw_data")
        if len(tensor.raw_data) != count * itemsize:
            raise refuse(source, where, f"raw_data holds {len(tensor.raw_data)} bytes but dims {brief(dims)} of "
                                        f"{data_type_name(data_type)} need {count * itemsize}")
    else:
        field, per_element = TYPED_FIELDS[data_type]
        held = len(getattr(tensor, field))
        if held != count * per_element:
            raise refuse(source, where,
                         f"{field} holds {held} values but dims {brief(dims)} need {count * per_element}")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind not in "biufcUSO":
            # bfloat16 and the float8 types (ml_dtypes) would surprise every NumPy step after the reader
            array = array.astype(np.float32)
        if array.dtype.kind in "fc" and np.isnan(array).any():
            # a signalling NaN (a flipped bit is enough) raises a warning at every later cast
            array = np.where(np.isnan(array), np.nan, array).astype(array.dtype, copy=False)
    return array


def external_bytes(tensor, source, where, folder, expected):
    """The bytes of an external-data tensor, read only from a regular file inside the model's folder."""
    if folder is None:
        raise refuse(source, where, "refers to external data, which a model given in memory cannot reach",
                     "load the model from its file")
    entries = {}
    for entry in tensor.external_data:
        entries[check_text(source, where, entry.key, "external data key")] = \
            check_text(source, where, entry.value, "external data value")
    location = entries.get("location", "")
    outside = "lies outside the model's folder"
    if not location:
        raise refuse(source, where, "external data without a location")
    parts = location.replace("\\", "/").split("/")
    if "\0" in location or os.path.isabs(location) or ".." in parts or os.path.splitdrive(location)[0] \
            or location.startswith(("/", "\\")):
        raise refuse(source, where, f"external data {location!r} {outside}",
                     "keep the data file in the model's folder and name it relative to the model")
    real_folder = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(real_folder, location))
    if os.path.commonpath([path, real_folder]) != real_folder:
        raise refuse(source, where, f"external data {location!r} {outside} (through a link)",
                     "keep the data file in the model's folder")
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise refuse(source, where, f"external data offset {entries.get('offset')!r} or length "
                                    f"{entries.get('length')!r} is not a whole number") from None
    try:
        info = os.stat(path)
    except OSError as error:
        raise refuse(source, where, f"external data file {location!r} cannot be read ({error.strerror})",
                     "put the data file beside the model") from None
    if not stat.S_ISREG(info.st_mode):
        raise refuse(source, where, f"external data {location!r} is not a regular file")
    if length is None:
        length = info.st_size - offset
    if offset < 0 or length < 0 or offset + length > info.st_size:
        raise refuse(source, where, f"external data {location!r} offset {offset} length {length} lies beyond the "
                                    f"file's {info.st_size} bytes", "the data file is truncated or not this model's")
    if length != expected:
        raise refuse(source, where, f"external data holds {length} bytes but the tensor's dims need {expected}")
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
    except OSError as error:
        raise refuse(source, where, f"external data file {location!r} cannot be read ({error.strerror})",
                     "check the data file") from None
    if len(data) != length:
        raise refuse(source, where, f"external data {location!r} ended early", "the data file is truncated")
    return data


# -- attributes and operator schemas --------------------------------------------------------------

def attribute_type(attribute, source, where):
    """The attribute's declared type, or the one field that is set (files from before IR 0.0.2 lack it)."""
    if attribute.type != AttributeProto.UNDEFINED:
        if attribute.type not in ATTRIBUTE_KINDS:
            raise refuse(source, where, f"attribute {attribute.name!r} has unknown type {attribute.type}")
        return attribute.type
    filled = [kind for kind, (field, _) in ATTRIBUTE_KINDS.items()
              if (attribute.HasField(field) if field in ("f", "i", "s", "t", "g", "sparse_tensor", "tp")
                  else len(getattr(attribute, field)))]
    if len(filled) != 1:
        raise refuse(source, where, f"attribute {attribute.name!r} has no type and "
                                    f"{'no value' if not filled else 'several values'}")
    return filled[0]


def attribute_values(ctx, node, where):
    """Attribute name → Python value; TENSOR values are checked like initializers."""
    source = ctx.source
    values, kinds = {}, {}
    for attribute in node.attribute:
        name = check_text(source, where, attribute.name, "attribute name")
        if not name or name in values:
            raise refuse(source, where, f"attribute name {name!r} is {'empty' if not name else 'given twice'}")
        if attribute.ref_attr_name:
            raise refuse(source, where, f"attribute {name!r} refers to a function attribute outside a function")
        kind = attribute_type(attribute, source, where)
        kinds[name] = kind
        if kind == AttributeProto.FLOAT:
            value = float(attribute.f)
        elif kind == AttributeProto.INT:
            value = int(attribute.i)
        elif kind == AttributeProto.STRING:
            value = attribute_text(attribute.s, source, where, name)
        elif kind == AttributeProto.FLOATS:
            value = [float(v) for v in attribute.floats]
        elif kind == AttributeProto.INTS:
            value = [int(v) for v in attribute.ints]
        elif kind == AttributeProto.STRINGS:
            value = [attribute_text(v, source, where, name) for v in attribute.strings]
        elif kind == AttributeProto.TENSOR:
            value = tensor_array(attribute.t, source, f"{where}: attribute {name!r}", ctx.folder)
        else:
            value = ATTRIBUTE_KINDS[kind][1]     # only named in a refusal; never used as a value
        values[name] = value
    return values, kinds


def attribute_text(raw, source, where, name):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse(source, where, f"attribute {name!r} is not valid UTF-8 text") from None
    return check_text(source, where, text, f"attribute {name!r}")


def op_schema(op_type, opset):
    try:
        return defs.get_schema(op_type, opset, "")
    except Exception:  # noqa: BLE001 - SchemaError for an unknown operator or one newer than the opset
        return None


def check_against_schema(ctx, node, kinds, where):
    """Input and output counts, required inputs and attributes, attribute types: as ONNX defines the operator."""
    schema = op_schema(node.op_type, ctx.opset)
    if schema is None:
        if defs.has(node.op_type, ""):
            raise Unsupported(f"{node.op_type} does not exist in opset {ctx.opset}")
        return
    fail = lambda problem: refuse(ctx.source, where, problem)  # noqa: E731
    inputs, outputs = len(node.input), len(node.output)
    if not schema.min_input <= inputs <= schema.max_input:
        raise fail(f"has {inputs} inputs; ONNX {node.op_type}-{schema.since_version} takes "
                   f"{count_range(schema.min_input, schema.max_input)}")
    if not schema.min_output <= outputs <= schema.max_output:
        raise fail(f"has {outputs} outputs; ONNX {node.op_type}-{schema.since_version} makes "
                   f"{count_range(schema.min_output, schema.max_output)}")
    formal = list(schema.inputs)
    for index, name in enumerate(node.input):
        if not name and formal:
            parameter = formal[min(index, len(formal) - 1)]
            if parameter.option != defs.OpSchema.FormalParameterOption.Optional:
                raise fail(f"input {index} ({parameter.name}) is required but empty")
    for name, attribute in schema.attributes.items():
        if attribute.required and name not in kinds:
            raise fail(f"lacks the required attribute {name!r}")
        wanted = int(attribute.type)
        if name in kinds and kinds[name] != wanted and wanted in ATTRIBUTE_KINDS:
            raise fail(f"attribute {name!r} is {ATTRIBUTE_KINDS[kinds[name]][1]} where ONNX wants "
                       f"{ATTRIBUTE_KINDS[wanted][1]}")


def count_range(low, high):
    if low == high:
        return str(low)
    return f"at least {low}" if high >= 2 ** 31 - 1 else f"{low} to {high}"


def default_opset(model, source):
    versions = {int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")}
    newest = defs.onnx_opset_version()
    if not versions:
        if model.ir_version >= 3:
            raise refuse(source, "opset_import", "the model declares no ONNX opset")
        return 1
    if len(versions) > 1:
        raise refuse(source, "opset_import", f"the model declares several ONNX opsets {sorted(versions)}")
    (version,) = versions
    if not 1 <= version <= newest:
        raise refuse(source, "opset_import", f"ONNX opset {version} does not exist (this onnx knows 1 to {newest})",
                     "export the model with an older opset or update onnx" if version > newest else DAMAGED)
    return version


# -- the graph's structure ------------------------------------------------------------------------

def node_label(node, index):
    return node.name or f"{node.op_type}_{index}"


def check_structure(model, source):
    """Names, the node order and the graph outputs, before anything is converted."""
    graph = model.graph
    check_text(source, "graph", graph.name, "graph name")
    known = {}
    for kind, values in (("graph input", graph.input), ("initializer", graph.initializer)):
        for value in values:
            name = check_text(source, kind, value.name)
            if not name:
                raise refuse(source, f"{kind} #{list(values).index(value)}", "has no name")
            if kind == "initializer" and known.get(name) == "initializer":
                raise refuse(source, f"initializer {name!r}", "is given twice")
            if kind == "graph input" and name in known:
                raise refuse(source, f"graph input {name!r}", "is listed twice")
            known[name] = kind
    if graph.sparse_initializer:
        raise refuse(source, "graph", "sparse initializers are not supported", "store the weights as dense tensors")
    later = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            later.setdefault(name, (index, node))
    for index, node in enumerate(graph.node):
        check_text(source, f"node #{index}", node.op_type, "operator type")
        where = f"node #{index}"
        check_text(source, where, node.name)
        check_text(source, where, node.domain, "domain")
        where = f"node {node_label(node, index)!r} ({node.op_type or '?'})"
        if not node.op_type:
            raise refuse(source, where, "has no operator type")
        for name in node.input:
            check_text(source, where, name, "input name")
            if name and name not in known:
                if name in later and later[name][0] >= index:
                    maker = node_label(later[name][1], later[name][0])
                    raise refuse(source, where, f"input {name!r} is made only by a later node {maker!r} "
                                                "(the nodes are out of order or form a cycle)")
                raise refuse(source, where, f"input {name!r} is made by no node, graph input or initializer")
        if not any(node.output):
            raise refuse(source, where, "makes no output")
        for name in node.output:
            check_text(source, where, name, "output name")
            if name in known:
                raise refuse(source, where, f"output {name!r} is already made by "
                                            f"{known[name] if known[name] != 'node' else 'another node'}")
            if name:
                known[name] = "node"
    if not graph.output:
        raise refuse(source, "graph", "declares no outputs")
    for output in graph.output:
        name = check_text(source, "graph output", output.name)
        if not name:
            raise refuse(source, "graph output", "has no name")
        if name not in known:
            raise refuse(source, f"graph output {name!r}", "is made by no node, graph input or initializer")


def read_initializers(model, source, folder):
    arrays = {}
    for tensor in model.graph.initializer:
        with reading_at(f"initializer {tensor.name!r}"):
            arrays[tensor.name] = tensor_array(tensor, source, f"initializer {tensor.name!r}", folder)
    return arrays


def tensor_shape(value_info, source="", what="value"):
    """Declared dims (None where free), or None without a shape; refuses what is not a tensor."""
    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        raise refuse(source, f"{what} {value_info.name!r}",
                     "has no type" if kind is None else f"is a {kind.replace('_type', '')}, not a tensor",
                     "declare it as a tensor with a shape")
    t = value_info.type.tensor_type
    if t.elem_type not in TYPED_FIELDS or t.elem_type == TensorProto.STRING:
        text = " (a model that reads raw text, as skl2onnx exports a text pipeline: `lrptool explain-text` reads it)" \
            if t.elem_type == TensorProto.STRING and what == "input" else ""
        raise refuse(source, f"{what} {value_info.name!r}", f"has element type {data_type_name(t.elem_type)}",
                     "lrptool reads numeric tensors only" + text)
    if not t.HasField("shape"):
        return None
    if len(t.shape.dim) > MOST_AXES:
        raise refuse(source, f"{what} {value_info.name!r}", f"has {len(t.shape.dim)} axes",
                     f"lrptool reads tensors of up to {MOST_AXES} axes")
    dims = []
    for axis, d in enumerate(t.shape.dim):
        if d.WhichOneof("value") == "dim_value":
            if d.dim_value == -1 and axis == 0:
                dims.append(None)  # PaddlePaddle's way of saying the batch size is free
                continue
            if d.dim_value < 0:
                raise refuse(source, f"{what} {value_info.name!r}", f"negative size {d.dim_value} in its shape")
            dims.append(int(d.dim_value))
        else:
            dims.append(None)
    return dims
