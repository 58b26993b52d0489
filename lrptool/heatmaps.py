"""Heatmaps out: relevance → colours, PNG files, overlays on the input picture.

Relevance becomes one value per pixel (``CHANNEL_MODES``: the channels summed, their absolute
values summed, or the largest absolute value), which is divided by a scale — the largest absolute
value, or with ``clip`` a percentile of the absolute values, beyond which colours saturate — so
that zero relevance is always the colour map's centre and one hot pixel does not leave the rest of
the map blank. ``map_back`` places such a map onto the original picture's geometry (the inverse of
the preprocessing's resize and crop).
"""

import numpy as np
from PIL import Image

from .errors import LrpToolError


def gradient(stops):
    """A colour map from (position in [-1, 1], (r, g, b) in 0–1) stops, linearly interpolated."""
    positions = np.array([p for p, _ in stops])
    colours = np.array([c for _, c in stops], dtype=np.float64)

    def apply(values):
        return np.stack([np.interp(values, positions, colours[:, i]) for i in range(3)], axis=-1)
    return apply


def lab_to_srgb(lab):
    """CIELAB (D65) to sRGB in 0–1, clipped to the gamut."""
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    fy = (lightness + 16) / 116
    delta = 6 / 29

    def finv(t):
        return np.where(t > delta, t ** 3, 3 * delta ** 2 * (t - 4 / 29))
    xyz = np.stack([0.95047 * finv(fy + a / 500), finv(fy), 1.08883 * finv(fy - b / 200)], axis=-1)
    linear = xyz @ np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]).T
    linear = np.clip(linear, 0, 1)
    return np.clip(np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055), 0, 1)


def uniform_diverging(ends_lightness=40.0, centre_lightness=96.0, chroma=70.0, cold_hue=295.0, warm_hue=40.0):
    """A diverging map whose two arms are straight lines in CIELAB from a near-white centre to a blue
    and a red of equal lightness and chroma: equal steps in relevance are equal perceived steps
    (CIE76), and the same |R| looks equally strong on either side."""
    stops = np.linspace(-1, 1, 257)
    strength = np.abs(stops)
    hue = np.radians(np.where(stops < 0, cold_hue, warm_hue))
    lab = np.stack([centre_lightness + (ends_lightness - centre_lightness) * strength,
                    chroma * strength * np.cos(hue), chroma * strength * np.sin(hue)], axis=-1)
    return gradient(list(zip(stops, lab_to_srgb(lab))))


COLORMAPS = {
    # blue – white – red; also the LRP toolbox's default red/blue rendering
    "bwr": gradient([(-1, (0, 0, 1)), (0, (1, 1, 1)), (1, (1, 0, 0))]),
    # blue – white – red, perceptually uniform (straight lines in CIELAB)
    "diverging": uniform_diverging(),
    # the LRP toolbox's classic: black at zero; red, yellow, white for positive; blue, cyan, white for negative
    "black-firered": gradient([(-1, (1, 1, 1)), (-0.5, (0, 1, 1)), (-0.25, (0, 0, 1)), (0, (0, 0, 0)),
                               (0.25, (1, 0, 0)), (0.5, (1, 1, 0)), (1, (1, 1, 1))]),
    # dark blue – blue – white – red – dark red
    "seismic": gradient([(-1, (0, 0, 0.3)), (-0.5, (0, 0, 1)), (0, (1, 1, 1)), (0.5, (1, 0, 0)), (1, (0.5, 0, 0))]),
    # cyan – blue – black – red – yellow
    "coldnhot": gradient([(-1, (0, 1, 1)), (-0.5, (0, 0, 1)), (0, (0, 0, 0)), (0.5, (1, 0, 0)), (1, (1, 1, 0))]),
    # positive relevance only: black – red – yellow – white
    "hot": gradient([(-1, (0, 0, 0)), (0, (0, 0, 0)), (1 / 3, (1, 0, 0)), (2 / 3, (1, 1, 0)), (1, (1, 1, 1))]),
    # black – grey – white
    "gray": gradient([(-1, (0, 0, 0)), (1, (1, 1, 1))]),
}
COLORMAPS["lrp"] = COLORMAPS["bwr"]

#: How the channels of a pixel's relevance become one value.
CHANNEL_MODES = {
    "sum": lambda r: r.sum(axis=0),                   # signed total: what the pixel contributes
    "abs": lambda r: np.abs(r).sum(axis=0),           # total magnitude, evidence for and against alike
    "max-abs": lambda r: np.abs(r).max(axis=0),       # the strongest channel's magnitude
}
DEFAULT_CLIP = 99.5


def check_colormap(name):
    if name not in COLORMAPS:
        raise LrpToolError(f"unknown colour map {name!r}; colour maps: {', '.join(sorted(COLORMAPS))}")
    return COLORMAPS[name]


def pixel_relevance(relevance, channels="sum"):
    """(H, W) relevance per pixel from (C, H, W), (H, W), or one row (C, L) of 1-D data."""
    relevance = np.asarray(relevance, dtype=np.float64)
    if channels not in CHANNEL_MODES:
        raise LrpToolError(f"unknown channel mode {channels!r}; choose from {', '.join(CHANNEL_MODES)}")
    if relevance.ndim == 3:
        return CHANNEL_MODES[channels](relevance)
    if relevance.ndim == 2 and relevance.shape[0] in (1, 3):  # 1-D data: one row
        return CHANNEL_MODES[channels](relevance)[None]
    return relevance


def colour_scale(values, clip=None):
    """What |value| saturates the colours: the largest |value|, or its ``clip`` percentile when that is
    above zero (a map that is zero almost everywhere falls back to the largest)."""
    magnitude = np.abs(values)
    top = float(magnitude.max()) if magnitude.size else 0.0
    if clip is not None and clip < 100 and top > 0:
        scale = float(np.percentile(magnitude, clip))
        if scale > 0:
            return scale
    return top


def heatmap_values(relevance, clip=None, channels="sum"):
    """(H, W) map in [-1, 1]: one value per pixel, divided by ``colour_scale`` and clipped."""
    values = pixel_relevance(relevance, channels)
    scale = colour_scale(values, clip)
    return np.clip(values / scale, -1, 1) if scale > 0 else np.zeros_like(values)


def colourise(values, colormap="bwr"):
    rgb = check_colormap(colormap)(values)
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB")


def heatmap_image(relevance, colormap="bwr", clip=None, channels="sum", geometry=None):
    """The heatmap as an RGB picture; with ``geometry`` (see ``map_back``) at the original picture's size."""
    values = heatmap_values(relevance, clip, channels)
    if geometry is not None:
        values = map_back(values, geometry)
    return colourise(values, colormap)


def overlay_image(picture, relevance, colormap="bwr", opacity=0.6, clip=None, channels="sum", geometry=None):
    """The heatmap over a greyed copy of ``picture``, with opacity growing with √|value| up to
    ``opacity`` at the colour scale (the square root keeps middling relevance visible: a tenth of the
    scale shows at a third of the opacity). With ``geometry``, ``picture`` is the original and the map
    is placed onto it."""
    values = heatmap_values(relevance, clip, channels)
    if geometry is not None:
        values = map_back(values, geometry)
    heat = np.asarray(colourise(values, colormap), dtype=np.float64)
    strength = np.sqrt(np.abs(values))[..., None] * opacity
    base = np.asarray(picture.convert("L").convert("RGB"), dtype=np.float64)
    if base.shape[:2] != values.shape:
        raise ValueError(f"the picture is {base.shape[1]}x{base.shape[0]} but the map {values.shape[1]}x{values.shape[0]}")
    mixed = base * (1 - strength) + heat * strength
    return Image.fromarray(np.round(mixed).astype(np.uint8), "RGB")


def map_back(values, geometry):
    """Place an (H, W) map made at the model's input onto the original picture.

    ``geometry`` (``images.Geometry``) says how the original (width × height) was resized to
    ``resized`` and where the input's ``box`` was cut from it. The map goes into a zero canvas of the
    resized size at the box (what the crop removed carries no relevance), which is then resized to
    the original's size, bilinearly, as floating-point values."""
    values = np.asarray(values, dtype=np.float32)
    resized_width, resized_height = geometry.resized
    left, top = geometry.box[:2]
    canvas = np.zeros((resized_height, resized_width), dtype=np.float32)
    height, width = values.shape
    canvas[top:top + height, left:left + width] = values[:resized_height - top, :resized_width - left]
    if (resized_width, resized_height) == tuple(geometry.original):
        return canvas.astype(np.float64)
    image = Image.fromarray(canvas, "F").resize(tuple(geometry.original), Image.BILINEAR)
    return np.clip(np.asarray(image, dtype=np.float64), -1, 1)
