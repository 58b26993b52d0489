"""Caffe's message classes, built at import time from a trimmed copy of the caffe.proto schema.

Caffe is not a dependency and generated ``_pb2`` modules tie a project to one protobuf release,
so the schema is declared here as data and handed to a private ``DescriptorPool``; the classes
come from ``message_factory.GetMessageClass`` (protobuf 4.21 and later). Field numbers, types and
defaults follow BVLC caffe.proto. Only what the reader needs is declared: a binary ``.caffemodel``
keeps undeclared fields as unknown fields, and prototxt text is parsed with
``allow_unknown_field=True`` so training-only settings (fillers, data sources, solver hints) pass.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "lrptool_caffe"

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {
    "string": _F.TYPE_STRING, "int32": _F.TYPE_INT32, "uint32": _F.TYPE_UINT32, "int64": _F.TYPE_INT64,
    "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE, "bool": _F.TYPE_BOOL,
}
_LABELS = {"optional": _F.LABEL_OPTIONAL, "repeated": _F.LABEL_REPEATED}

# Enums: name -> [(value name, number)]. Enum value names share one scope per file in protobuf,
# so nested enums are declared inside their messages (see MESSAGES) to keep MAX/SUM/... apart.
ENUMS = {
    "Phase": [("TRAIN", 0), ("TEST", 1)],
}

# Message name -> (fields, nested enums). A field is (label, type, name, number[, default][, packed]);
# a type that is not a scalar names a message or enum of this file ("Msg.Enum" for nested enums).
MESSAGES = {
    "BlobShape": ([("repeated", "int64", "dim", 1, None, True)], {}),
    "BlobProto": ([
        ("optional", "BlobShape", "shape", 7),
        ("repeated", "float", "data", 5, None, True),
        ("repeated", "float", "diff", 6, None, True),
        ("repeated", "double", "double_data", 8, None, True),
        ("repeated", "double", "double_diff", 9, None, True),
        ("optional", "int32", "num", 1, "0"),
        ("optional", "int32", "channels", 2, "0"),
        ("optional", "int32", "height", 3, "0"),
        ("optional", "int32", "width", 4, "0"),
    ], {}),
    "NetState": ([
        ("optional", "Phase", "phase", 1, "TEST"),
        ("optional", "int32", "level", 2, "0"),
        ("repeated", "string", "stage", 3),
    ], {}),
    "NetStateRule": ([
        ("optional", "Phase", "phase", 1),
        ("optional", "int32", "min_level", 2),
        ("optional", "int32", "max_level", 3),
        ("repeated", "string", "stage", 4),
        ("repeated", "string", "not_stage", 5),
    ], {}),
    "NetParameter": ([
        ("optional", "string", "name", 1),
        ("repeated", "string", "input", 3),
        ("repeated", "BlobShape", "input_shape", 8),
        ("repeated", "int32", "input_dim", 4),
        ("optional", "bool", "force_backward", 5, "false"),
        ("optional", "NetState", "state", 6),
        ("optional", "bool", "debug_info", 7, "false"),
        ("repeated", "LayerParameter", "layer", 100),
        ("repeated", "V1LayerParameter", "layers", 2),
    ], {}),
    "ConvolutionParameter": ([
        ("optional", "uint32", "num_output", 1),
        ("optional", "bool", "bias_term", 2, "true"),
        ("repeated", "uint32", "pad", 3),
        ("repeated", "uint32", "kernel_size", 4),
        ("repeated", "uint32", "stride", 6),
        ("repeated", "uint32", "dilation", 18),
        ("optional", "uint32", "pad_h", 9, "0"),
        ("optional", "uint32", "pad_w", 10, "0"),
        ("optional", "uint32", "kernel_h", 11),
        ("optional", "uint32", "kernel_w", 12),
        ("optional", "uint32", "stride_h", 13),
        ("optional", "uint32", "stride_w", 14),
        ("optional", "uint32", "group", 5, "1"),
        ("optional", "ConvolutionParameter.Engine", "engine", 15, "DEFAULT"),
        ("optional", "int32", "axis", 16, "1"),
        ("optional", "bool", "force_nd_im2col", 17, "false"),
    ], {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]}),
    "PoolingParameter": ([
        ("optional", "PoolingParameter.PoolMethod", "pool", 1, "MAX"),
        ("optional", "uint32", "pad", 4, "0"),
        ("optional", "uint32", "pad_h", 9, "0"),
        ("optional", "uint32", "pad_w", 10, "0"),
        ("optional", "uint32", "kernel_size", 2),
        ("optional", "uint32", "kernel_h", 5),
        ("optional", "uint32", "kernel_w", 6),
        ("optional", "uint32", "stride", 3, "1"),
        ("optional", "uint32", "stride_h", 7),
        ("optional", "uint32", "stride_w", 8),
        ("optional", "PoolingParameter.Engine", "engine", 11, "DEFAULT"),
        ("optional", "bool", "global_pooling", 12, "false"),
        ("optional", "PoolingParameter.RoundMode", "round_mode", 13, "CEIL"),
    ], {"PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
        "Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
        "RoundMode": [("CEIL", 0), ("FLOOR", 1)]}),
    "InnerProductParameter": ([
        ("optional", "uint32", "num_output", 1),
        ("optional", "bool", "bias_term", 2, "true"),
        ("optional", "int32", "axis", 5, "1"),
        ("optional", "bool", "transpose", 6, "false"),
    ], {}),
    "LRNParameter": ([
        ("optional", "uint32", "local_size", 1, "5"),
        ("optional", "float", "alpha", 2, "1"),
        ("optional", "float", "beta", 3, "0.75"),
        ("optional", "LRNParameter.NormRegion", "norm_region", 4, "ACROSS_CHANNELS"),
        ("optional", "float", "k", 5, "1"),
        ("optional", "LRNParameter.Engine", "engine", 6, "DEFAULT"),
    ], {"NormRegion": [("ACROSS_CHANNELS", 0), ("WITHIN_CHANNEL", 1)],
        "Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]}),
    "ReLUParameter": ([
        ("optional", "float", "negative_slope", 1, "0"),
        ("optional", "ReLUParameter.Engine", "engine", 2, "DEFAULT"),
    ], {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]}),
    "PReLUParameter": ([("optional", "bool", "channel_shared", 2, "false")], {}),
    "ELUParameter": ([("optional", "float", "alpha", 1, "1")], {}),
    "PowerParameter": ([
        ("optional", "float", "power", 1, "1"),
        ("optional", "float", "scale", 2, "1"),
        ("optional", "float", "shift", 3, "0"),
    ], {}),
    "BatchNormParameter": ([
        ("optional", "bool", "use_global_stats", 1),
        ("optional", "float", "moving_average_fraction", 2, "0.999"),
        ("optional", "float", "eps", 3, "1e-5"),
    ], {}),
    "ScaleParameter": ([
        ("optional", "int32", "axis", 1, "1"),
        ("optional", "int32", "num_axes", 2, "1"),
        ("optional", "bool", "bias_term", 4, "false"),
    ], {}),
    "BiasParameter": ([
        ("optional", "int32", "axis", 1, "1"),
        ("optional", "int32", "num_axes", 2, "1"),
    ], {}),
    "EltwiseParameter": ([
        ("optional", "EltwiseParameter.EltwiseOp", "operation", 1, "SUM"),
        ("repeated", "float", "coeff", 2),
        ("optional", "bool", "stable_prod_grad", 3, "true"),
    ], {"EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)]}),
    "ConcatParameter": ([
        ("optional", "int32", "axis", 2, "1"),
        ("optional", "uint32", "concat_dim", 1, "1"),
    ], {}),
    "SliceParameter": ([
        ("optional", "int32", "axis", 3, "1"),
        ("repeated", "uint32", "slice_point", 2),
        ("optional", "uint32", "slice_dim", 1, "1"),
    ], {}),
    "ReshapeParameter": ([
        ("optional", "BlobShape", "shape", 1),
        ("optional", "int32", "axis", 2, "0"),
        ("optional", "int32", "num_axes", 3, "-1"),
    ], {}),
    "FlattenParameter": ([
        ("optional", "int32", "axis", 1, "1"),
        ("optional", "int32", "end_axis", 2, "-1"),
    ], {}),
    "SoftmaxParameter": ([
        ("optional", "SoftmaxParameter.Engine", "engine", 1, "DEFAULT"),
        ("optional", "int32", "axis", 2, "1"),
    ], {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]}),
    "DropoutParameter": ([("optional", "float", "dropout_ratio", 1, "0.5")], {}),
    # caffe.proto marks min/max required; optional here so a half-written layer is our error to report.
    "ClipParameter": ([("optional", "float", "min", 1), ("optional", "float", "max", 2)], {}),
    "InputParameter": ([("repeated", "BlobShape", "shape", 1)], {}),
    "LayerParameter": ([
        ("optional", "string", "name", 1),
        ("optional", "string", "type", 2),
        ("repeated", "string", "bottom", 3),
        ("repeated", "string", "top", 4),
        ("optional", "Phase", "phase", 10),
        ("repeated", "float", "loss_weight", 5),
        ("repeated", "BlobProto", "blobs", 7),
        ("repeated", "NetStateRule", "include", 8),
        ("repeated", "NetStateRule", "exclude", 9),
        ("optional", "BatchNormParameter", "batch_norm_param", 139),
        ("optional", "BiasParameter", "bias_param", 141),
        ("optional", "ClipParameter", "clip_param", 148),
        ("optional", "ConcatParameter", "concat_param", 104),
        ("optional", "ConvolutionParameter", "convolution_param", 106),
        ("optional", "DropoutParameter", "dropout_param", 108),
        ("optional", "EltwiseParameter", "eltwise_param", 110),
        ("optional", "ELUParameter", "elu_param", 140),
        ("optional", "FlattenParameter", "flatten_param", 135),
        ("optional", "InnerProductParameter", "inner_product_param", 117),
        ("optional", "InputParameter", "input_param", 143),
        ("optional", "LRNParameter", "lrn_param", 118),
        ("optional", "PoolingParameter", "pooling_param", 121),
        ("optional", "PowerParameter", "power_param", 122),
        ("optional", "PReLUParameter", "prelu_param", 131),
        ("optional", "ReLUParameter", "relu_param", 123),
        ("optional", "ReshapeParameter", "reshape_param", 133),
        ("optional", "ScaleParameter", "scale_param", 142),
        ("optional", "SoftmaxParameter", "softmax_param", 125),
        ("optional", "SliceParameter", "slice_param", 126),
    ], {}),
    "V1LayerParameter": ([
        ("repeated", "string", "bottom", 2),
        ("repeated", "string", "top", 3),
        ("optional", "string", "name", 4),
        ("repeated", "NetStateRule", "include", 32),
        ("repeated", "NetStateRule", "exclude", 33),
        ("optional", "V1LayerParameter.LayerType", "type", 5),
        ("repeated", "BlobProto", "blobs", 6),
        ("repeated", "float", "loss_weight", 35),
        ("optional", "ConcatParameter", "concat_param", 9),
        ("optional", "ConvolutionParameter", "convolution_param", 10),
        ("optional", "DropoutParameter", "dropout_param", 12),
        ("optional", "EltwiseParameter", "eltwise_param", 24),
        ("optional", "InnerProductParameter", "inner_product_param", 17),
        ("optional", "LRNParameter", "lrn_param", 18),
        ("optional", "PoolingParameter", "pooling_param", 19),
        ("optional", "PowerParameter", "power_param", 21),
        ("optional", "ReLUParameter", "relu_param", 30),
        ("optional", "SoftmaxParameter", "softmax_param", 39),
        ("optional", "SliceParameter", "slice_param", 31),
    ], {"LayerType": [
        ("NONE", 0), ("ABSVAL", 35), ("ACCURACY", 1), ("ARGMAX", 30), ("BNLL", 2), ("CONCAT", 3),
        ("CONTRASTIVE_LOSS", 37), ("CONVOLUTION", 4), ("DATA", 5), ("DECONVOLUTION", 39), ("DROPOUT", 6),
        ("DUMMY_DATA", 32), ("EUCLIDEAN_LOSS", 7), ("ELTWISE", 25), ("EXP", 38), ("FLATTEN", 8),
        ("HDF5_DATA", 9), ("HDF5_OUTPUT", 10), ("HINGE_LOSS", 28), ("IM2COL", 11), ("IMAGE_DATA", 12),
        ("INFOGAIN_LOSS", 13), ("INNER_PRODUCT", 14), ("LRN", 15), ("MEMORY_DATA", 29),
        ("MULTINOMIAL_LOGISTIC_LOSS", 16), ("MVN", 34), ("POOLING", 17), ("POWER", 26), ("RELU", 18),
        ("SIGMOID", 19), ("SIGMOID_CROSS_ENTROPY_LOSS", 27), ("SILENCE", 36), ("SOFTMAX", 20),
        ("SOFTMAX_LOSS", 21), ("SPLIT", 22), ("SLICE", 33), ("TANH", 23), ("WINDOW_DATA", 24),
        ("THRESHOLD", 31)]}),
}


def _enum(proto, name, values):
    enum = proto.enum_type.add(name=name)
    for value_name, number in values:
        enum.value.add(name=value_name, number=number)


def _is_enum(type_name):
    if type_name in ENUMS:
        return True
    owner, _, inner = type_name.partition(".")
    return bool(inner) and inner in MESSAGES.get(owner, ((), {}))[1]


def _build_file():
    file_proto = descriptor_pb2.FileDescriptorProto(name="lrptool_caffe.proto", package=PACKAGE,
                                                    syntax="proto2")
    for name, values in ENUMS.items():
        _enum(file_proto, name, values)
    for message_name, (fields, enums) in MESSAGES.items():
        message = file_proto.message_type.add(name=message_name)
        for enum_name, values in enums.items():
            _enum(message, enum_name, values)
        for spec in fields:
            label, type_name, name, number = spec[:4]
            default = spec[4] if len(spec) > 4 else None
            packed = spec[5] if len(spec) > 5 else False
            field = message.field.add(name=name, number=number, label=_LABELS[label])
            if type_name in _TYPES:
                field.type = _TYPES[type_name]
            else:
                field.type = _F.TYPE_ENUM if _is_enum(type_name) else _F.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{type_name}"
            if default is not None:
                field.default_value = default
            if packed:
                field.options.packed = True
    return file_proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_build_file())


def _message_class(name):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


NetParameter = _message_class("NetParameter")
LayerParameter = _message_class("LayerParameter")
V1LayerParameter = _message_class("V1LayerParameter")
BlobProto = _message_class("BlobProto")
BlobShape = _message_class("BlobShape")
DESCRIPTOR_POOL = _POOL
