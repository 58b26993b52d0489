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

    def channel_count(self):
        return 1 if self.channels == "gray" else 3

    def per_channel(self, values):
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size not in (1, self.channel_count()):
            raise LrpToolError(f"preprocessing: {values.size} values given for {self.channel_count()} channels")
        return np.broadcast_to(values, (self.channel_count(),)).reshape(-1, 1, 1)

    def bounds(self):
        """The lowest and highest input values (per channel): pixels 0 and 255, preprocessed."""
        mean, std = self.per_channel(self.mean), self.per_channel(self.std)
        return (0.0 - mean) / std, (255.0 * self.scale - mean) / std

    def describe(self):
        return {k: v for k, v in asdict(self).items()}


PRESETS = {
    "imagenet": Preprocessing(size=(224, 224), resize="shorter-crop", shorter=256, channels="rgb", scale=1 / 255,
                              mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    "caffe": Preprocessing(resize="resize", channels="bgr", scale=1.0, mean=[103.939, 116.779, 123.68], std=[1.0]),
    "mnist": Preprocessing(size=(28, 28), channels="gray", scale=1 / 255),
    "raw": Preprocessing(),
}


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
    if len(model_shape) != 4:
        raise LrpToolError(f"the model's input has shape {model_shape}; images need (N, C, H, W)")
    _, channels, height, width = model_shape
    if base.size is None:
        base = replace(base, size=(height, width))
    if base.channels is None:
        base = replace(base, channels="gray" if channels == 1 else "rgb")
    if base.channel_count() != channels:
        raise LrpToolError(f"the model takes {channels} channels but the preprocessing makes {base.channel_count()} "
                           f"({base.channels})")
    if tuple(base.size) != (height, width):
        raise LrpToolError(f"the model takes {height}x{width} inputs but the preprocessing makes "
                           f"{base.size[0]}x{base.size[1]}")
    if base.resize not in ("resize", "shorter-crop"):
        raise LrpToolError(f"unknown resize mode {base.resize!r} (resize, shorter-crop)")
    base.per_channel(base.mean), base.per_channel(base.std)
    return base


def apply_config(base, config):
    if isinstance(config, str):
        try:
            with open(config, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError) as error:
            raise LrpToolError(f"{config}: not a readable JSON preprocessing file ({error})") from None
    config = dict(config)
    if "preset" in config:
        name = config.pop("preset")
        if name not in PRESETS:
            raise LrpToolError(f"unknown preprocessing preset {name!r}; presets: {', '.join(PRESETS)}")
        base = replace(PRESETS[name])
    known = set(Preprocessing.__dataclass_fields__)
    unknown = set(config) - known
    if unknown:
        raise LrpToolError(f"unknown preprocessing setting(s) {sorted(unknown)}; settings: {sorted(known)}")
    if "size" in config and config["size"] is not None:
        config["size"] = tuple(config["size"]) if not isinstance(config["size"], int) else (config["size"],) * 2
    return replace(base, **config)


def load_picture(path, preprocessing):
    """Decode, convert and resize one image; returns the PIL image the model sees (for overlays)."""
    try:
        with Image.open(path) as image:
            image.load()
            picture = image
            if picture.mode in ("RGBA", "LA", "P", "PA"):
                picture = picture.convert("RGBA")
                background = Image.new("RGBA", picture.size, (255, 255, 255, 255))
                picture = Image.alpha_composite(background, picture)
            picture = picture.convert("L" if preprocessing.channels == "gray" else "RGB")
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except IsADirectoryError:
        raise ImageError("is a folder") from None
    except UnidentifiedImageError:
        raise ImageError("not an image file lrptool can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot decode ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    return resize(picture, preprocessing)


def resize(picture, preprocessing):
    height, width = preprocessing.size
    if preprocessing.resize == "resize":
        return picture.resize((width, height), Image.BILINEAR) if picture.size != (width, height) else picture
    shorter = preprocessing.shorter or int(round(min(height, width) * 256 / 224))
    w, h = picture.size
    factor = shorter / min(w, h)
    picture = picture.resize((max(width, round(w * factor)), max(height, round(h * factor))), Image.BILINEAR)
    w, h = picture.size
    left, top = (w - width) // 2, (h - height) // 2
    return picture.crop((left, top, left + width, top + height))


def to_tensor(picture, preprocessing):
    """(C, H, W) float32 input from the resized picture."""
    pixels = np.asarray(picture, dtype=np.float64)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if preprocessing.channels == "bgr":
        pixels = pixels[::-1]
    mean, std = preprocessing.per_channel(preprocessing.mean), preprocessing.per_channel(preprocessing.std)
    return ((pixels * preprocessing.scale - mean) / std).astype(np.float32)


def walk_inputs(arguments, stdin=None):
    """(path, target or None) for every image named: files, folders (recursively, image types
    only) and ``-`` for newline-separated paths on stdin, each optionally followed by TAB target."""
    items = []
    for argument in arguments:
        if argument == "-":
            for line in (stdin or []):
                line = line.rstrip("\n").rstrip("\r")
                if not line.strip():
                    continue
                path, _, target = line.partition("\t")
                items.append((path, parse_target(target, line) if target.strip() else None))
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


def parse_target(text, line):
    try:
        return int(text.strip())
    except ValueError:
        raise LrpToolError(f"list line {line!r}: the target after the tab must be a class index") from None
