"""The picture of a signal's explanation: one PNG with two panels over a shared time axis.

Top: the waveform (each pixel column the range of the samples it covers) on a background coloured by
the relevance of those samples (their sum), with a relevance strip beneath it; colours from the
diverging map (blue negative, white 0, red positive), symmetric: ±(the ``clip`` percentile of the
columns' |R|) saturates, as the image heatmaps' ``--clip``. Bottom: the explained model output per frame, a step line. The
explained frames are shaded in both panels.
"""

import io

import numpy as np
from PIL import Image, ImageDraw

from .heatmaps import COLORMAPS, colour_scale

WIDTH, WAVE, STRIP, SCORES, MARGIN = 1200, 180, 20, 110, 56
INK, GRID, SHADE = (40, 40, 40), (200, 200, 200), (236, 236, 236)
WAVE_INK, WAVE_OPACITY, EDGE = (30, 30, 30), 150, (120, 120, 120)
#: Explained frames are marked on the output curve (and their edges on the waveform) up to this many.
MARKED = 20


def column_ranges(length, width):
    """[start, stop) sample indices of each of ``width`` pixel columns over ``length`` samples."""
    edges = np.floor(np.linspace(0, length, width + 1)).astype(np.int64)
    starts = np.minimum(edges[:-1], length - 1)
    stops = np.maximum(edges[1:], starts + 1)
    return starts, stops


def column_sums(values, starts, stops):
    cumulative = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    return cumulative[stops] - cumulative[starts]


def signal_png(samples, relevance, scores, frames, frame_length, rate=None, title="", output_name="output",
               clip=99.5, colormap="bwr", hop=None):
    """PNG bytes: see the module's documentation. ``frames``: the explained frame indices; ``hop``: samples
    between frame starts (default: the frame length). Frame i covers samples [i·hop, i·hop + length);
    its output is drawn over [i·hop, (i + 1)·hop), the last over its whole length."""
    from .grid import font

    samples = np.asarray(samples, dtype=np.float64)
    relevance = np.asarray(relevance, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    face = font()
    line = face.getbbox("Hg")[3] + 4
    plot = WIDTH - 2 * MARGIN
    top = 8 + line
    height = top + WAVE + STRIP + 12 + SCORES + 2 * line + 8
    image = Image.new("RGB", (WIDTH, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 6), title, fill=INK, font=face)

    length = len(samples)
    hop = hop or frame_length
    total = max(length, (len(scores) - 1) * hop + frame_length)   # the axis covers the padded last frame too

    def x_of(sample):
        return MARGIN + plot * sample / total

    # explained frames, shaded in both panels
    wave_box = (MARGIN, top, MARGIN + plot, top + WAVE)
    score_top = top + WAVE + STRIP + 12
    score_box = (MARGIN, score_top, MARGIN + plot, score_top + SCORES)
    for first, last in runs(frames):
        left, right = x_of(first * hop), x_of(last * hop + frame_length)
        for box in (wave_box, score_box):
            draw.rectangle((left, box[1], max(left + 1, right), box[3]), fill=SHADE)

    # waveform coloured by relevance
    columns = max(1, int(round(plot * length / total)))
    starts, stops = column_ranges(length, columns)
    sums = column_sums(relevance, starts, stops)
    scale = colour_scale(sums, clip)
    levels = np.clip(sums / scale, -1, 1) if scale > 0 else np.zeros_like(sums)
    colours = np.round(COLORMAPS[colormap](levels) * 255).astype(int)
    peak = float(np.max(np.abs(samples))) or 1.0
    middle, half = top + WAVE / 2, WAVE / 2 - 4
    lows = np.minimum.reduceat(samples, starts) if columns else []
    highs = np.maximum.reduceat(samples, starts) if columns else []
    for column in range(columns):
        if abs(levels[column]) > 0.01:       # the relevance as the column's background; near 0 stays white
            x = MARGIN + column
            draw.line((x, top + 1, x, top + WAVE - 1), fill=tuple(int(c) for c in colours[column]))
    draw.line((MARGIN, middle, MARGIN + plot, middle), fill=GRID)
    # the waveform, translucent so that a dense one still shows the colours behind it
    mask = Image.new("L", image.size, 0)
    pen = ImageDraw.Draw(mask)
    for column in range(columns):
        x = MARGIN + column
        upper = middle - half * highs[column] / peak
        lower = middle - half * lows[column] / peak
        if lower - upper < 1:
            upper, lower = (upper + lower) / 2 - 0.5, (upper + lower) / 2 + 0.5
        pen.line((x, upper, x, lower), fill=WAVE_OPACITY)
        draw.line((x, top + WAVE + 2, x, top + WAVE + STRIP), fill=tuple(int(c) for c in colours[column]))
    image.paste(WAVE_INK, (0, 0), mask)
    if len(frames) <= MARKED:
        for first, last in runs(frames):
            for edge in (first * hop, last * hop + frame_length):
                draw.line((x_of(edge), top, x_of(edge), top + WAVE), fill=EDGE)
    draw.rectangle(wave_box, outline=GRID)
    draw.text((4, top), "wave", fill=INK, font=face)
    draw.text((4, top + WAVE + 1), "R", fill=INK, font=face)
    draw.text((MARGIN + plot + 4, top), f"±{scale:.2g}", fill=INK, font=face)

    # the output per frame
    if len(scores):
        low, high = float(min(0.0, scores.min())), float(scores.max())
        if low >= 0 and high <= 1:
            low, high = 0.0, 1.0
        span = (high - low) or 1.0

        def y_of(value):
            return score_top + SCORES - 4 - (SCORES - 8) * (value - low) / span
        points = []
        for index, value in enumerate(scores):
            end = index * hop + (frame_length if index == len(scores) - 1 else hop)
            points += [(x_of(index * hop), y_of(value)), (x_of(end), y_of(value))]
        if low < 0 < high:
            draw.line((MARGIN, y_of(0), MARGIN + plot, y_of(0)), fill=GRID)
        draw.line(points, fill=INK, width=2)
        for index in (frames if len(frames) <= MARKED else []):
            centre = x_of(index * hop + frame_length / 2)
            draw.ellipse((centre - 4, y_of(scores[index]) - 4, centre + 4, y_of(scores[index]) + 4),
                         fill=(200, 30, 30))
        draw.text((MARGIN + plot + 4, score_top), f"{high:.3g}", fill=INK, font=face)
        draw.text((MARGIN + plot + 4, score_top + SCORES - line), f"{low:.3g}", fill=INK, font=face)
    draw.rectangle(score_box, outline=GRID)
    draw.text((4, score_top), "out", fill=INK, font=face)
    draw.text((MARGIN, score_top + SCORES + 2), f"{output_name} per frame ({frame_length} samples"
              + (f", every {hop})" if hop != frame_length else ")"), fill=INK,
              font=face)

    # time axis
    unit, factor = ("s", 1.0 / rate) if rate else ("samples", 1.0)
    for tick in np.linspace(0, total, 6):
        x = x_of(tick)
        draw.line((x, score_top + SCORES, x, score_top + SCORES + 3), fill=INK)
        text = f"{tick * factor:.3g}" if rate else f"{int(tick)}"
        width = face.getlength(text)
        draw.text((min(max(x - width / 2, MARGIN), MARGIN + plot - width), score_top + SCORES + 2 + line), text,
                  fill=INK, font=face)
    draw.text((MARGIN + plot + 4, score_top + SCORES + 2 + line), unit, fill=INK, font=face)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def runs(frames):
    """Consecutive runs (first, last) of the sorted frame indices."""
    out = []
    for index in sorted(frames):
        if out and index == out[-1][1] + 1:
            out[-1][1] = index
        else:
            out.append([index, index])
    return [tuple(r) for r in out]
