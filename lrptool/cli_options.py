"""Options and helpers that several lrptool commands share."""

import click

from .errors import LrpToolError


def parse_size(text):
    if text is None:
        return None
    parts = text.lower().replace("x", " ").split()
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise LrpToolError(f"--size {text!r}: give HxW or one number") from None
    return values * 2 if len(values) == 1 else values


def parse_floats(text, option):
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise LrpToolError(f"{option} {text!r}: give comma-separated numbers") from None


def read_labels(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except OSError as error:
        raise LrpToolError(f"{path}: cannot read the labels ({error.strerror or error})") from None


def combined_rule_spec(preset, rule_spec, default=None):
    """--preset with --rules: the rule items decide first, the preset for every node they leave."""
    if preset and rule_spec and "=" in rule_spec:
        return f"{preset},{rule_spec}"
    return rule_spec or preset or default


def model_options(function):
    """Options naming the parts of a model kept in more than one file."""
    options = [
        click.option("--weights", type=click.Path(dir_okay=False), help="Caffe: the .caffemodel beside the .prototxt."),
        click.option("--model-config", type=click.Path(dir_okay=False),
                     help="Keras: the architecture JSON for a weights-only .h5."),
        click.option("--random-weights", is_flag=True, help="Caffe: a prototxt without weights, random weights."),
        click.option("--keras1-backend", type=click.Choice(["tensorflow", "theano"]),
                     help="Keras 1: the backend that wrote the file (Theano stores kernels flipped)."),
        click.option("--input-size", "model_input_size",
                     help="ONNX/Keras: sizes a fully convolutional model leaves free, e.g. 12x12."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def open_model(model, weights=None, model_config=None, random_weights=False, keras1_backend=None, input_size=None):
    from converters import load_model

    sizes = None
    if input_size:
        try:
            sizes = tuple(int(v) for v in input_size.lower().replace("x", " ").split())
        except ValueError:
            raise LrpToolError(f"--input-size {input_size!r}: give sizes like 12x12") from None
    return load_model(model, weights=weights, model_config=model_config, random_weights=random_weights,
                      keras1_backend=keras1_backend, input_size=sizes)


def preprocessing_options(function):
    """The preprocessing flags that explain and evaluate share."""
    options = [
        click.option("--preprocess", "preprocess_preset", help="Preprocessing preset: imagenet, caffe, mnist, raw."),
        click.option("--config", type=click.Path(dir_okay=False),
                     help="Preprocessing JSON (default: MODEL.json next to the model, if present)."),
        click.option("--size", help="Input size HxW (default: from the model)."),
        click.option("--resize", type=click.Choice(["resize", "shorter-crop"])),
        click.option("--channels", type=click.Choice(["rgb", "bgr", "gray"])),
        click.option("--scale", type=float, help="Pixel (0-255) multiplier."),
        click.option("--mean", help="Per-channel mean, comma-separated."),
        click.option("--std", help="Per-channel std, comma-separated."),
        click.option("--mean-file", type=click.Path(dir_okay=False),
                     help="Caffe .binaryproto mean file (its per-channel means replace --mean)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def build_preprocessing(model, graph, preprocess_preset, config, size, resize, channels, scale, mean, std,
                        mean_file=None):
    import os

    from .images import preprocessing_for

    if mean_file:
        from converters.caffe_reader import read_mean_file
        mean = ",".join(str(v) for v in read_mean_file(mean_file))

    input_shape = next(iter(graph.inputs.values()))
    if config is None and os.path.isfile(model + ".json"):
        config = model + ".json"
    return preprocessing_for(input_shape, preprocess_preset, config, size=parse_size(size), resize=resize,
                             channels=channels, scale=scale, mean=parse_floats(mean, "--mean"),
                             std=parse_floats(std, "--std"))
