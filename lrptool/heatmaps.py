"""Heatmaps out: relevance → colours, PNG files, overlays on the input picture.

Relevance is summed over channels and normalised symmetrically (divided by its largest absolute
value), so that zero relevance is always the colour map's centre.
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


COLORMAPS = {
    # blue – white – red; also the LRP toolbox's default red/blue rendering
    "bwr": gradient([(-1, (0, 0, 1)), (0, (1, 1, 1)), (1, (1, 0, 0))]),
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


def heatmap_values(relevance):
    """(H, W) map in [-1, 1]: channels summed, divided by the largest absolute value."""
    if relevance.ndim == 3:
        relevance = relevance.sum(axis=0)
    elif relevance.ndim == 2 and relevance.shape[0] in (1, 3):  # 1-D data: one row
        relevance = relevance.sum(axis=0, keepdims=True)
    top = np.max(np.abs(relevance))
    return relevance / top if top > 0 else np.zeros_like(relevance)


def heatmap_image(relevance, colormap="bwr"):
    if colormap not in COLORMAPS:
        raise LrpToolError(f"unknown colour map {colormap!r}; colour maps: {', '.join(sorted(COLORMAPS))}")
    rgb = COLORMAPS[colormap](heatmap_values(np.asarray(relevance, dtype=np.float64)))
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB")


def overlay_image(picture, relevance, colormap="bwr", opacity=0.6):
    """The heatmap over a greyed copy of the picture, with opacity growing with |relevance|."""
    heat = np.asarray(heatmap_image(relevance, colormap), dtype=np.float64)
    strength = np.abs(heatmap_values(np.asarray(relevance, dtype=np.float64)))[..., None] * opacity
    base = np.asarray(picture.convert("L").convert("RGB"), dtype=np.float64)
    mixed = base * (1 - strength) + heat * strength
    return Image.fromarray(np.round(mixed).astype(np.uint8), "RGB")
