"""Options and helpers that several lrptool commands share."""

import math

import click

from .errors import LrpToolError


def parse_sizes(text, option, counts=(1, 2), example="HxW or one number", square=True):
    """Positive integer sizes like ``224x224`` or ``224`` (``square``: one number stands for both sides)."""
    if text is None:
        return None
    parts = text.lower().replace("x", " ").replace(",", " ").split()
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in counts or any(v < 1 for v in values):
        raise LrpToolError(f"{option} {text!r}: give {example} (positive whole numbers)")
    return values * 2 if len(values) == 1 and square else values


def parse_size(text):
    return parse_sizes(text, "--size")


def parse_floats(text, option, positive=False):
    """Comma-separated finite numbers (``positive``: each above 0)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise LrpToolError(f"{option} {text!r}: give comma-separated numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise LrpToolError(f"{option} {text!r}: every value must be a finite number")
    if positive and not all(v > 0 for v in values):
        raise LrpToolError(f"{option} {text!r}: every value must be above 0")
    return values


def check_scale(scale):
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise LrpToolError(f"--scale {scale}: give a finite number above 0")
    return scale


#: Class name lists shipped with lrptool, by the name --labels takes.
BUILTIN_LABELS = {"imagenet": "imagenet_classes.txt"}


def read_labels(path):
    """Class names, one per line (UTF-8); a name of ``BUILTIN_LABELS`` (not a file here) is the list
    shipped in lrptool/data."""
    import os

    from .files import read_text

    if path in BUILTIN_LABELS and not os.path.exists(path):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", BUILTIN_LABELS[path])
    text = read_text(path, "labels", "give a text file of class names")
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_target(target, top=True):
    """``pred``, a class index (≥ 0), or ``top-K`` (K ≥ 1): returns (fixed target, K or None)."""
    choices = "pred, a class index or top-K" if top else "pred or a class index"
    text = target.strip().lower()
    if text == "pred":
        return "pred", None
    if top and text.startswith("top-"):
        number = text[4:]
        if not number.isdigit() or int(number) < 1:
            raise LrpToolError(f"--target {target!r}: top-K needs K of 1 or more")
        return "pred", int(number)
    try:
        index = int(text)
    except ValueError:
        raise LrpToolError(f"--target {target!r}: give {choices}") from None
    if index < 0:
        raise LrpToolError(f"--target {target!r}: class indices start at 0 (use pred for the predicted class)")
    return index, None


def check_target_range(target, top_k, classes):
    """Refuse a class index or K beyond the model's outputs, before any image is read."""
    if classes is None:
        return
    if isinstance(target, int) and target >= classes:
        raise LrpToolError(f"--target {target}: the model has {classes} outputs (0–{classes - 1})")
    if top_k is not None and top_k > classes:
        raise LrpToolError(f"--target top-{top_k}: the model has only {classes} outputs")


def preprocessing_file_beside(model):
    """MODEL.onnx.json, or MODEL.json unless that is something else (a Keras architecture, say); the
    run says which file it uses."""
    import json
    import os

    from .images import Preprocessing

    candidates = [model + ".json", os.path.splitext(model)[0] + ".json"]
    for index, candidate in enumerate(candidates):
        if not os.path.isfile(candidate):
            continue
        if index == 1:
            try:
                with open(candidate, "rb") as handle:
                    keys = set(json.loads(handle.read().decode("utf-8")))
            except (OSError, ValueError, TypeError, RecursionError):
                keys = {None}
            if not keys <= set(Preprocessing.__dataclass_fields__) | {"preset"}:
                NOTES.append(f"ignored {candidate}: not a preprocessing file")
                continue
        NOTES.append(f"preprocessing settings from {candidate}")
        return candidate
    return None


def check_labels(labels, names, classes):
    """Refuse a label file whose line count is not the model's output count."""
    if names is not None and classes is not None and len(names) != classes:
        raise LrpToolError(f"{labels}: {len(names)} class names for a model with {classes} outputs; give one name "
                           "per line, in output order")


def labels_in_model(model, graph, classes):
    """The class names the model file stores in its metadata (said once), or None; refused when their
    count is not the model's output count (--labels FILE overrides them)."""
    from .model_labels import labels_from_metadata

    names, key, problem = labels_from_metadata(getattr(graph, "metadata", {}))
    if problem:
        NOTES.append(problem)
    if names is None:
        return None
    if classes is not None and len(names) != classes:
        raise LrpToolError(f"{model}: its metadata {key!r} names {len(names)} classes for a model with {classes} "
                           "outputs; give the right names with --labels FILE")
    NOTES.append(f"class names from the model's metadata {key!r} ({len(names)} names; --labels overrides them)")
    return names


def require_runnable(graph, source):
    """Before explaining: every weight finite, and one image's tensors within the memory budget."""
    import numpy as np

    from .limits import check_bytes, element_count

    for node in graph.nodes:
        for name, value in node.params.items():
            array = np.asarray(value)
            if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
                raise LrpToolError(f"{source}: node {node.name!r} ({node.op}): parameter {name!r} holds NaN or "
                                   "infinite values; no explanation of this model can be finite")
    per_image = sum(element_count(shape[1:]) for shape in graph.shapes.values()) * 4
    check_bytes(per_image, f"{source}: one image through this model")


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
        click.option("--custom-layers", multiple=True, expose_value=False, callback=load_custom_layers,
                     is_eager=True, metavar="FILE.py|MODULE",
                     help="Keras: a plug-in registering converters for custom layer classes (repeatable), e.g. "
                          "lrptool.plugins.attention_weighted_average."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def load_custom_layers(context, parameter, sources):
    """Load each --custom-layers plug-in before the model is read; a broken one is one line."""
    from .plugins import load_custom_layers as load

    for source in sources or ():
        try:
            load(source)
        except LrpToolError as error:
            raise click.BadParameter(str(error), param_hint="--custom-layers") from None


def open_model(model, weights=None, model_config=None, random_weights=False, keras1_backend=None, input_size=None,
               needs_weights=True, pictures=False):
    """The model's graph. ``needs_weights``: a Caffe prototxt alone (no --weights, no --random-weights) is
    refused, since its parameters would all be zero; ``inspect`` looks at the structure only.
    ``pictures``: the graph is fed preprocessed pictures, channels first; a model that takes them
    channels-last and transposes them first (tf2onnx's exports) takes them channels-first instead."""
    import os

    from converters import load_model

    if needs_weights and not weights and not random_weights and \
            os.path.splitext(str(model))[1].lower() in (".prototxt", ".pbtxt"):
        raise LrpToolError(f"{model}: a Caffe prototxt holds no weights; give --weights NET.caffemodel "
                           "(or --random-weights to check the structure with random ones)")

    sizes = parse_sizes(input_size, "--input-size", counts=(1, 2, 3), example="sizes like 12x12",
                        square=False)
    graph = load_model(model, weights=weights, model_config=model_config, random_weights=random_weights,
                       keras1_backend=keras1_backend, input_size=sizes)
    NOTES.extend(getattr(graph, "notes", []))
    if pictures:
        turned = graph.channels_first()
        if turned is not None:
            (name, shape), = graph.inputs.items()
            NOTES.append(f"{model} takes channels-last pictures ({name}: {shape_text(shape)}) and transposes them "
                         "first; they are fed channels-first, and relevance (.npy) is channels-first too")
            graph = turned
    return graph


def shape_text(shape):
    return "×".join("N" if d is None else str(d) for d in shape)


def preprocessing_options(function):
    """The preprocessing flags that explain and evaluate share."""
    options = [
        click.option("--preprocess", "preprocess_preset", help="Preprocessing preset: imagenet, imagenet-bgr, tf "
                     "(= inception, x/127.5 - 1), caffe (BVLC: shorter side 256, centre crop, BGR - 104/117/123), "
                     "keras-caffe (resized whole, BGR - 103.939/116.779/123.68), mnist, raw."),
        click.option("--config", type=click.Path(dir_okay=False),
                     help="Preprocessing JSON (default: MODEL.json next to the model, if present)."),
        click.option("--size", help="Input size HxW (default: from the model)."),
        click.option("--resize", type=click.Choice(["resize", "shorter-crop"])),
        click.option("--channels", type=click.Choice(["rgb", "bgr", "gray"])),
        click.option("--scale", type=float, help="Pixel (0-255) multiplier."),
        click.option("--mean", help="Per-channel mean, comma-separated."),
        click.option("--std", help="Per-channel std, comma-separated."),
        click.option("--mean-file", type=click.Path(dir_okay=False),
                     help="Caffe .binaryproto mean image, cropped at the centre to the input as Caffe does "
                     "(replaces --mean)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


#: Notes about the run's settings (which preprocessing file was used), said once every check passed,
#: so that a refusal stays one line.
NOTES = []


def say_notes():
    for note in NOTES:
        click.echo(f"lrptool: {note}", err=True)
    NOTES.clear()


def build_preprocessing(model, graph, preprocess_preset, config, size, resize, channels, scale, mean, std,
                        mean_file=None, native_size=False):
    from .images import preprocessing_for

    check_scale(scale)
    from .files import regular_file_problem

    for given, option in ((mean_file, "--mean-file"), (config, "--config")):
        problem = given and regular_file_problem(given)
        if problem:
            raise LrpToolError(f"{given}: {problem}; give the {option} file")
    input_shape = next(iter(graph.inputs.values()))
    mean_image = None
    if mean_file:
        from converters.caffe_reader import read_mean_image

        mean_image = read_mean_image(mean_file)
    if config is None:
        config = preprocessing_file_beside(model)
    return preprocessing_for(input_shape, preprocess_preset, config, size=parse_size(size), resize=resize,
                             channels=channels, scale=scale, mean=parse_floats(mean, "--mean"),
                             std=parse_floats(std, "--std", positive=True), native=native_size or None,
                             mean_image=mean_image, mean_file=mean_file)
