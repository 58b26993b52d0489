"""A Keras layer's settings before its converter reads them: Keras 1 spellings renamed to the Keras 2
keys, and each setting's type and range checked, so that a damaged config is refused by name
instead of tripping a converter."""

import math

from .keras_errors import BadLayer, Unsupported, short

# Sizes, strides and paddings beyond this are damage, not models; it also keeps them in ONNX's int64.
LARGEST_SIZE = 2 ** 31 - 1


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and -LARGEST_SIZE <= value <= LARGEST_SIZE


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def ints(value, low):
    """An int or a (non-empty) list of ints, each at least ``low``."""
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(is_int(v) and v >= low for v in items)


def spans(value):
    """ZeroPadding/Cropping: an int, a list of ints, or a list of (begin, end) pairs, all >= 0."""
    if isinstance(value, list):
        return bool(value) and all(ints(v, 0) and (not isinstance(v, list) or len(v) == 2) for v in value)
    return ints(value, 0)


def activation_setting(value):
    if value is None or isinstance(value, str):
        return True
    if not isinstance(value, dict):
        return False
    inner = value.get("config")
    return isinstance(value.get("class_name", ""), str) and (
        inner is None or isinstance(inner, str) or (isinstance(inner, dict) and isinstance(inner.get("name", ""), str)))


# What each setting a converter reads may hold, with the words for the message.
SETTINGS = {
    "kernel_size": (lambda v: ints(v, 1), "a positive int or a list of them"),
    "strides": (lambda v: v is None or ints(v, 1), "a positive int or a list of them"),
    "dilation_rate": (lambda v: ints(v, 1), "a positive int or a list of them"),
    "pool_size": (lambda v: ints(v, 1), "a positive int or a list of them"),
    "size": (lambda v: ints(v, 1), "a positive int or a list of them"),
    "groups": (lambda v: v is None or ints(v, 1) and not isinstance(v, list), "a positive int"),
    "padding": (lambda v: isinstance(v, str) or spans(v), "'valid', 'same', or sizes >= 0"),
    "cropping": (spans, "sizes >= 0"),
    "axis": (lambda v: ints(v, -LARGEST_SIZE), "an int or a list of ints"),
    "target_shape": (lambda v: isinstance(v, list) and all(is_int(d) and (d > 0 or d == -1) for d in v),
                     "a list of positive sizes (one may be -1)"),
    "dims": (lambda v: isinstance(v, list) and all(is_int(d) for d in v), "a list of axes"),
    "epsilon": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "alpha": (is_number, "a number"),
    "theta": (is_number, "a number"),
    "negative_slope": (lambda v: v is None or is_number(v), "a number"),
    "threshold": (lambda v: v is None or is_number(v), "a number"),
    "max_value": (lambda v: v is None or is_number(v), "a number or null"),
    "use_bias": (lambda v: isinstance(v, bool), "true or false"),
    "scale": (lambda v: isinstance(v, bool), "true or false"),
    "center": (lambda v: isinstance(v, bool), "true or false"),
    "keepdims": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "data_format": (lambda v: v is None or isinstance(v, str), "a string"),
    "interpolation": (lambda v: isinstance(v, str), "a string"),
    "activation": (activation_setting, "an activation name"),
}


def check_settings(cfg):
    """Refuse settings of the wrong type or range before a converter trusts them."""
    for key, (valid, expected) in SETTINGS.items():
        if key in cfg and not valid(cfg[key]):
            raise BadLayer(f"setting {key!r} is {short(cfg[key])}, expected {expected}")


KERAS1_NAMES = {"Convolution1D": "Conv1D", "Convolution2D": "Conv2D"}


def keras1_layer(class_name, cfg):
    """Keras 1 spelled layer settings differently (``nb_filter``, ``border_mode``, …); rename them to
    the Keras 2 keys the converters read. Keras 2+ configs pass through unchanged."""
    if not any(key in cfg for key in ("nb_filter", "output_dim", "border_mode", "dim_ordering", "subsample",
                                      "subsample_length", "filter_length", "p", "mode")):
        return class_name, cfg
    cfg = dict(cfg)
    class_name = KERAS1_NAMES.get(class_name, class_name)
    renames = {"nb_filter": "filters", "border_mode": "padding", "output_dim": "units", "bias": "use_bias",
               "p": "rate"}
    for old, new in renames.items():
        if old in cfg:
            cfg[new] = cfg.pop(old)
    if "nb_row" in cfg:
        # a missing nb_col leaves None in kernel_size, which the settings check refuses by name
        cfg["kernel_size"] = [cfg.pop("nb_row"), cfg.pop("nb_col", None)]
    if "filter_length" in cfg:
        cfg["kernel_size"] = [cfg.pop("filter_length")]
    if "subsample" in cfg:
        cfg["strides"] = cfg.pop("subsample")
    if "subsample_length" in cfg:
        cfg["strides"] = [cfg.pop("subsample_length")]
    if "pool_length" in cfg:
        cfg["pool_size"] = [cfg.pop("pool_length")]
        if "stride" in cfg:
            cfg["strides"] = [cfg.pop("stride")] if cfg["stride"] is not None else None
    ordering = cfg.pop("dim_ordering", "tf")
    if ordering not in ("tf", "default"):
        # Keras 1 'th' files also stored kernels (out, in, h, w) for a flipping convolution.
        raise Unsupported(f"Keras 1 dim_ordering {ordering!r} (only 'tf' ordering is read)")
    cfg["data_format"] = "channels_last"
    # Keras 1 kept the moving variance under the name running_std, in the same weight order.
    if class_name == "BatchNormalization" and cfg.get("mode", 0) != 0:
        raise Unsupported(f"Keras 1 BatchNormalization mode {cfg['mode']} (only feature-wise mode 0)")
    return class_name, cfg
