"""Images in: decoding, and the preprocessing that turns a picture into the model's input tensor.

A ``Preprocessing`` says how: input size and resize mode (``resize`` to the size, or
``shorter-crop``: resize the shorter side, then crop the centre), channel order (``rgb``, ``bgr``,
``gray``), pixel scale, per-channel mean and std: x = (pixel · scale − mean) / std. Named presets
give the common conventions; the model's input shape fills in what the preset leaves open.
"""

import json
import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import LrpToolError
from .files import regular_file_problem

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageError(Exception):
    """One image could not be read; the run reports it and goes on."""


@dataclass
class Preprocessing:
    size: tuple = None                 # (height, width); None: from the model
    resize: str = "resize"             # "resize" or "shorter-crop"
    shorter: int = None                # shorter side before the crop (default: size · 256/224)
    channels: str = None               # "rgb", "bgr" or "gray"; None: from the model
    scale: float = 1.0                 # pixel (0–255) multiplier
    mean: list = field(default_factory=lambda: [0.0])
    std: list = field(default_factory=lambda: [1.0])
    native: bool = False               # each picture at its own size (models with a free input size)
    mean_file: str = None              # a Caffe mean image (.binaryproto) replaces ``mean``; said in describe()
    mean_image: object = field(default=None, repr=False, compare=False)   # its (C, H, W) or (C, 1, 1) values

    def channel_count(self):
        return 1 if self.channels == "gray" else 3

    def per_channel(self, values):
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size not in (1, self.channel_count()):
            raise LrpToolError(f"preprocessing: {values.size} values given for {self.channel_count()} channels")
        return np.broadcast_to(values, (self.channel_count(),)).reshape(-1, 1, 1)

    def mean_values(self):
        """What is subtracted: the (cropped) mean image, or the per-channel means as (C, 1, 1)."""
        return self.mean_image if self.mean_image is not None else self.per_channel(self.mean)

    def bounds(self):
        """The lowest and highest input values (per channel, or per pixel with a mean image): pixels 0
        and 255, preprocessed."""
        mean, std = self.mean_values(), self.per_channel(self.std)
        with np.errstate(over="ignore"):  # an overflow is refused by preprocessing_for
            return (0.0 - mean) / std, (255.0 * self.scale - mean) / std

    def describe(self):
        """The settings as JSON-ready values (for the run's JSON lines)."""
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k != "mean_image"}
        if not self.native:
            del settings["native"]  # said only where it is in effect
        if self.mean_file is None:
            del settings["mean_file"]
        else:
            del settings["mean"]
        return settings

    def summary(self):
        """One line: what a picture goes through before the model sees it."""
        if self.native:
            return (f"each picture at its own size, {self.channels}, x = (pixel · {self.scale:g} − {self.mean}) / "
                    f"{self.std}")
        height, width = self.size
        crop = f"shorter side {self.shorter or round(min(height, width) * 256 / 224)}, centre crop" \
            if self.resize == "shorter-crop" else "resized"
        mean = f"the mean image of {self.mean_file}" if self.mean_file else self.mean
        return f"{crop} to {height}x{width}, {self.channels}, x = (pixel · {self.scale:g} − {mean}) / {self.std}"


PRESETS = {
    "imagenet": Preprocessing(size=(224, 224), resize="shorter-crop", shorter=256, channels="rgb", scale=1 / 255,
                              mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    # BVLC Caffe (its ImageNet models and examples): shorter side 256, centre crop, BGR, 0–255 minus the
    # ImageNet mean 104/117/123 — or a mean image from --mean-file, cropped at the same place
    "caffe": Preprocessing(resize="shorter-crop", shorter=256, channels="bgr", scale=1.0, mean=[104.0, 117.0, 123.0],
                           std=[1.0]),
    # Keras applications' "caffe" mode (VGG16, ResNet50): the picture resized whole, BGR, minus 103.939/116.779/123.68
    "keras-caffe": Preprocessing(resize="resize", channels="bgr", scale=1.0, mean=[103.939, 116.779, 123.68],
                                 std=[1.0]),
    # ImageNet statistics in the BGR channel order (PaddlePaddle's image models)
    "imagenet-bgr": Preprocessing(size=(224, 224), resize="shorter-crop", shorter=256, channels="bgr", scale=1 / 255,
                                  mean=[0.406, 0.456, 0.485], std=[0.225, 0.224, 0.229]),
    # TensorFlow/Keras applications (Inception, MobileNet, EfficientNet-Lite): x/127.5 − 1
    "tf": Preprocessing(resize="resize", channels="rgb", scale=1 / 127.5, mean=[1.0], std=[1.0]),
    "mnist": Preprocessing(size=(28, 28), channels="gray", scale=1 / 255),
    "raw": Preprocessing(),
}
PRESETS["inception"] = PRESETS["tf"]


def preprocessing_for(model_shape, preset=None, config=None, **overrides):
    """The preprocessing from a preset, then a JSON config, then single overrides; the model's
    input shape (N, C, H, W) supplies the size and channel count when they are still open."""
    if preset and preset not in PRESETS:
        raise LrpToolError(f"unknown preprocessing preset {preset!r}; presets: {', '.join(PRESETS)}")
    base = replace(PRESETS[preset]) if preset else Preprocessing()
    if config:
        base = apply_config(base, config)
    for key, value in overrides.items():
        if value is not None:
            base = replace(base, **{key: value})
    base = checked(base)
    if len(model_shape) != 4:
        raise LrpToolError(f"the model's input has shape {model_shape}; images need (N, C, H, W)")
    _, channels, height, width = model_shape
    free = height is None or width is None
    if base.native:
        if not free:
            raise LrpToolError(f"--native-size: the model takes {height}x{width} inputs only; it needs a model whose "
                               "input size is free (a fully convolutional one)")
        base = replace(base, size=None)
    elif base.size is None and free:
        raise LrpToolError("the model leaves its input size free: give --size HxW (or, to explain, --native-size: "
                           "each picture at its own size)")
    elif base.size is None:
        base = replace(base, size=(height, width))
    if base.channels is None:
        base = replace(base, channels="gray" if channels == 1 else "rgb")
    if base.channel_count() != channels:
        raise LrpToolError(f"the model takes {channels} channels but the preprocessing makes {base.channel_count()} "
                           f"({base.channels})")
    if not free and tuple(base.size) != (height, width):
        raise LrpToolError(f"the model takes {height}x{width} inputs but the preprocessing makes "
                           f"{base.size[0]}x{base.size[1]}")
    base.per_channel(base.mean), base.per_channel(base.std)
    if base.mean_image is not None:
        base = with_mean_image(base, channels)
    low, high = base.bounds()
    limit = float(np.finfo(np.float32).max)
    if not (np.all(np.abs(low) < limit) and np.all(np.abs(high) < limit)):
        raise LrpToolError(f"the preprocessing (scale {base.scale:g}, mean {base.mean}, std {base.std}) maps pixels "
                           "beyond the range of float32; check --scale, --mean and --std")
    return base


def with_mean_image(base, channels):
    """The preprocessing with its mean image cut to the input as Caffe's data transformer does: a
    per-channel blob (1×1) as it is; a larger image at the centre crop's offsets, ((h − H)/2, (w − W)/2)."""
    source = base.mean_file or "the mean image"
    mean = np.asarray(base.mean_image, dtype=np.float64)
    if mean.ndim != 3:
        raise LrpToolError(f"{source}: the mean image has shape {mean.shape}; give a (C, H, W) blob")
    if mean.shape[0] not in (1, channels):
        raise LrpToolError(f"{source}: the mean file has {mean.shape[0]} channels but the model takes {channels}")
    if not np.all(np.isfinite(mean)):
        raise LrpToolError(f"{source}: the mean file holds NaN or infinite values")
    if mean.shape[1:] != (1, 1):
        if base.native:
            raise LrpToolError(f"{source}: a mean image needs one input size; with --native-size give --mean")
        height, width = base.size
        if mean.shape[1] < height or mean.shape[2] < width:
            raise LrpToolError(f"{source}: the mean image is {mean.shape[1]}x{mean.shape[2]}, smaller than the "
                               f"{height}x{width} input; give the mean file saved with the model, or --mean")
        top, left = (mean.shape[1] - height) // 2, (mean.shape[2] - width) // 2
        mean = mean[:, top:top + height, left:left + width]
    return replace(base, mean_image=np.ascontiguousarray(np.broadcast_to(mean, (channels,) + mean.shape[1:])))


def apply_config(base, config):
    source = config if isinstance(config, str) else "the preprocessing settings"
    if isinstance(config, str):
        try:
            with open(config, "rb") as handle:
                config = json.loads(handle.read().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as error:
            reason = getattr(error, "strerror", None) or str(error).splitlines()[0] if str(error) else type(error).__name__
            raise LrpToolError(f"{source}: not a readable JSON preprocessing file ({reason})") from None
    if not isinstance(config, dict):
        raise LrpToolError(f"{source}: a preprocessing file holds one JSON object, e.g. "
                           '{"preset": "imagenet", "mean": [0.5]}')
    config = dict(config)
    if "preset" in config:
        name = config.pop("preset")
        if not isinstance(name, str) or name not in PRESETS:
            raise LrpToolError(f"{source}: unknown preprocessing preset {name!r}; presets: {', '.join(PRESETS)}")
        base = replace(PRESETS[name])
    known = set(Preprocessing.__dataclass_fields__) - {"mean_file", "mean_image"}   # mean files: --mean-file
    unknown = set(config) - known
    if unknown:
        raise LrpToolError(f"{source}: unknown preprocessing setting(s) {sorted(unknown)}; settings: {sorted(known)}")
    if isinstance(config.get("size"), int) and not isinstance(config.get("size"), bool):
        config["size"] = (config["size"],) * 2
    return checked(replace(base, **config), source)


def checked(settings, source="preprocessing"):
    """The settings, each of the right type and range; a one-line error naming the first that is not."""
    def whole(value):
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0

    def finite_numbers(value):
        values = value if isinstance(value, (list, tuple)) else [value]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                                    for v in values)

    size = settings.size
    if size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(whole(v) for v in size)):
            raise LrpToolError(f"{source}: size {size!r}: give [height, width] (positive whole numbers)")
        settings = replace(settings, size=tuple(int(v) for v in size))
    if settings.resize not in ("resize", "shorter-crop"):
        raise LrpToolError(f"{source}: unknown resize mode {settings.resize!r} (resize, shorter-crop)")
    if settings.shorter is not None and not whole(settings.shorter):
        raise LrpToolError(f"{source}: shorter {settings.shorter!r}: give a positive whole number")
    if settings.channels not in (None, "rgb", "bgr", "gray"):
        raise LrpToolError(f"{source}: channels {settings.channels!r}: choose rgb, bgr or gray")
    if not (finite_numbers(settings.scale) and not isinstance(settings.scale, (list, tuple)) and settings.scale > 0):
        raise LrpToolError(f"{source}: scale {settings.scale!r}: give a finite number above 0")
    if not finite_numbers(settings.mean):
        raise LrpToolError(f"{source}: mean {settings.mean!r}: give finite numbers (one, or one per channel)")
    if not finite_numbers(settings.std) or not all(v > 0 for v in np.ravel(settings.std)):
        raise LrpToolError(f"{source}: std {settings.std!r}: give numbers above 0 (one, or one per channel)")
    return settings


#: Pictures larger than this (width × height) are refused before they are decoded: a 45-byte PNG
#: can declare 20000×20000 pixels. Pillow's own limit by default; ``LRPTOOL_MAX_PIXELS`` changes both.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89478485
if os.environ.get("LRPTOOL_MAX_PIXELS", "").isdigit():
    MAX_PIXELS = Image.MAX_IMAGE_PIXELS = int(os.environ["LRPTOOL_MAX_PIXELS"])


def open_regular_file(path):
    """Open an image file for reading; FIFOs, devices and folders are refused before they are opened."""
    problem = regular_file_problem(path)
    if problem:
        raise ImageError(problem + ("; give image files" if "regular" in problem else ""))
    try:
        return open(path, "rb")
    except OSError as error:
        raise ImageError(f"cannot read ({error.strerror or error})") from None


def load_picture(path, preprocessing):
    """Decode, convert and resize one image; returns the PIL image the model sees (for overlays)."""
    return resize(load_original(path, preprocessing), preprocessing)


def load_original(path, preprocessing):
    """Decode one image and convert it to the preprocessing's colour mode, at its own size."""
    with open_regular_file(path) as handle:
        try:
            # beyond MAX_PIXELS Pillow warns (the CLI silences that) and this refuses
            image = Image.open(handle)
            with image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(f"declares {width}×{height} pixels, more than the limit of {MAX_PIXELS:,} "
                                     "(set LRPTOOL_MAX_PIXELS to allow more)")
                if width < 1 or height < 1:
                    raise ImageError(f"declares {width}×{height} pixels")
                image.load()
                with np.errstate(all="ignore"):  # non-finite pixels are refused by eight_bit
                    picture = eight_bit(image)
                if picture.mode in ("RGBA", "LA", "P", "PA"):
                    picture = picture.convert("RGBA")
                    background = Image.new("RGBA", picture.size, (255, 255, 255, 255))
                    picture = Image.alpha_composite(background, picture)
                picture = picture.convert("L" if preprocessing.channels == "gray" else "RGB")
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError("not an image file lrptool can read") from None
        except Image.DecompressionBombError:
            raise ImageError(f"declares more pixels than the limit of {MAX_PIXELS:,} "
                             "(set LRPTOOL_MAX_PIXELS to allow more)") from None
        except MemoryError:
            raise ImageError("too large to decode in this machine's memory") from None
        except Exception as error:  # noqa: BLE001 - every decoder failure is this image's problem
            text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ImageError(f"cannot decode ({text})") from None
    return picture


def eight_bit(image):
    """The picture with 8-bit channels. 16-bit and 32-bit integer greys are scaled from their
    range (0–65535) to 0–255, float images from 0–1 (or 0–255 when their values lie there); Pillow's
    own conversion would clip them instead."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageError(f"{image.mode} pixels outside 0–65535; convert the image to 8 or 16 bits")
        return Image.fromarray(np.round(values / 257.0).astype(np.uint8), "L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ImageError("floating-point pixels that are NaN or infinite")
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low >= 0 and high <= 1:
            values = values * 255.0
        elif low < 0 or high > 255:
            raise ImageError(f"floating-point pixels from {low:g} to {high:g}; lrptool reads float images "
                             "with values in 0–1 or 0–255")
        return Image.fromarray(np.round(values).astype(np.uint8), "L")
    if image.mode in ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        return image
    return image.convert("RGB")


@dataclass(frozen=True)
class Geometry:
    """How a picture became the model's input: the ``original`` (width, height) was resized to
    ``resized`` (width, height) and the input is the ``box`` (left, top, right, bottom) of that."""
    original: tuple
    resized: tuple
    box: tuple


def geometry_for(size, preprocessing):
    """The ``Geometry`` of a picture of ``size`` (width, height) under ``preprocessing``."""
    if preprocessing.native:
        return Geometry(tuple(size), tuple(size), (0, 0) + tuple(size))
    height, width = preprocessing.size
    if preprocessing.resize == "resize":
        return Geometry(tuple(size), (width, height), (0, 0, width, height))
    shorter = preprocessing.shorter or int(round(min(height, width) * 256 / 224))
    w, h = size
    factor = shorter / min(w, h)
    resized = (max(width, round(w * factor)), max(height, round(h * factor)))
    left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
    return Geometry(tuple(size), resized, (left, top, left + width, top + height))


def resize(picture, preprocessing):
    """The picture as the model sees it: resized, or resized by the shorter side and centre-cropped."""
    geometry = geometry_for(picture.size, preprocessing)
    if picture.size != geometry.resized or preprocessing.resize != "resize":
        picture = picture.resize(geometry.resized, Image.BILINEAR)
    if geometry.box != (0, 0) + geometry.resized:
        picture = picture.crop(geometry.box)
    return picture


def to_tensor(picture, preprocessing):
    """(C, H, W) float32 input from the resized picture."""
    pixels = np.asarray(picture, dtype=np.float64)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if preprocessing.channels == "bgr":
        pixels = pixels[::-1]
    mean, std = preprocessing.mean_values(), preprocessing.per_channel(preprocessing.std)
    return ((pixels * preprocessing.scale - mean) / std).astype(np.float32)


def walk_inputs(arguments, stdin=None):
    """(path, target) for every image named: files, folders (recursively, image types only) and
    ``-`` for newline-separated paths on stdin, each optionally followed by TAB and a class index.

    stdin is read as bytes and decoded like file names (``os.fsdecode``), so that any path the file
    system holds can be listed. ``target`` is None, an int, or — for a list line whose target is
    not a class index — the problem as a string, which fails that image alone."""
    items = []
    for argument in arguments:
        if argument == "-":
            for raw in stdin_lines(stdin):
                line = raw.rstrip(b"\r")
                if not line.strip():
                    continue
                path, _, target = line.partition(b"\t")
                items.append((os.fsdecode(path), parse_target(target) if target.strip() else None))
        elif os.path.isdir(argument):
            found = []
            for folder, dirs, files in os.walk(argument):
                dirs.sort()
                found += [os.path.join(folder, f) for f in sorted(files)
                          if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
            items += [(path, None) for path in found]
        else:
            items.append((argument, None))
    return items


def stdin_lines(stream):
    if stream is None:
        return []
    binary = getattr(stream, "buffer", stream)
    data = binary.read()
    if isinstance(data, str):
        data = os.fsencode(data)
    return data.split(b"\n")


def parse_target(text):
    try:
        value = int(text.strip())
    except ValueError:
        shown = text.strip().decode("utf-8", "backslashreplace")
        return f"the target {shown!r} after the tab is not a class index"
    if value < 0:
        return f"the target {value} after the tab is negative; class indices start at 0"
    return value
