"""Word heatmaps: a text's tokens coloured by relevance, as one self-contained HTML page or as ANSI
colours for a terminal.

Both read the JSON records of ``lrptool explain-text``. Colours come from the diverging ``bwr`` map
(blue negative, white at 0, red positive), normalised per text by its largest |R| so that zero is
always white. Tokens that share characters (the bytes of one UTF-8 character) are shown as one span
with their relevance summed; the text between tokens is shown uncoloured.
"""

import html

import numpy as np

from .heatmaps import COLORMAPS


def display_units(record):
    """[(start, end, relevance, unknown)] over the text: tokens covering the same characters merged, in
    order; ``unknown``: every token of the unit is outside the model's vocabulary (a bag-of-words model's
    ``out_of_vocabulary``)."""
    unknown = set(record.get("out_of_vocabulary") or ())
    units = []
    for index, ((start, end), value) in enumerate(zip(record["offsets"], record["relevance"])):
        if units and units[-1][0] == start and units[-1][1] == end:
            units[-1][2] += value
            units[-1][3] = units[-1][3] and index in unknown
        else:
            units.append([start, end, float(value), index in unknown])
    return units


def pieces(record):
    """[(text, relevance or None, unknown)] covering the whole text: coloured units and the plain gaps
    between."""
    text = record["text"]
    out, position = [], 0
    for start, end, value, unknown in display_units(record):
        if start < position:
            continue
        if start > position:
            out.append((text[position:start], None, False))
        out.append((text[start:end], value, unknown))
        position = end
    if position < len(text):
        out.append((text[position:], None, False))
    return out


def colour(value, scale):
    """(r, g, b) in 0–255 of ``value`` on the bwr map normalised by ``scale`` (the text's max |R|)."""
    level = 0.0 if scale <= 0 else float(np.clip(value / scale, -1.0, 1.0))
    rgb = COLORMAPS["bwr"](np.array([level]))[0]
    return tuple(int(round(c * 255)) for c in rgb)


def text_scale(record):
    values = [abs(unit[2]) for unit in display_units(record)]
    return max(values, default=0.0)


def caption(record):
    label = record.get("label")
    name = f"{record['target']}" + (f" ({label})" if label else "")
    parts = [f"{record.get('source', '')}:{record.get('line', '')}", f"class {name}", f"score {record['score']:.4g}",
             f"Σ R {record['relevance_sum']:.4g}", f"padding {record['padding_relevance']:.3g} "
             f"({record['padding_share']:.1%} of |R|)"]
    if record.get("rank") is not None:
        parts.insert(1, f"top-{record['rank']}")
    if record.get("truncated"):
        parts.append("truncated")
    return " · ".join(parts)


STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 60em; color: #222; }
.text { margin: 0 0 1.5em 0; }
.caption { font-size: 0.8em; color: #666; margin-bottom: 0.3em; }
.tokens { font-family: monospace; font-size: 1.05em; line-height: 1.9; white-space: pre-wrap; word-break: break-all; }
.tokens span.t { border-radius: 2px; padding: 1px 0; }
.tokens span.oov { text-decoration: underline dotted #999; }
.legend span { display: inline-block; width: 4em; text-align: center; font-size: 0.8em; }
"""


def html_page(records, title="lrptool explain-text"):
    """One self-contained HTML page (no scripts, no external files) with every record as coloured spans."""
    rows = []
    for index, record in enumerate(records):
        scale = text_scale(record)
        spans = []
        for piece, value, unknown in pieces(record):
            if value is None:
                spans.append(html.escape(piece))
                continue
            r, g, b = colour(value, scale)
            note = " (not in the model's vocabulary)" if unknown else ""
            spans.append(f'<span class="t{" oov" if unknown else ""}" data-r="{value:.6g}" '
                         f'style="background-color: rgb({r}, {g}, {b})" '
                         f'title="{html.escape(piece)}: R = {value:.4g}{note}">{html.escape(piece)}</span>')
        rows.append(f'<div class="text" id="text-{index}"><div class="caption">{html.escape(caption(record))}</div>'
                    f'<div class="tokens">{"".join(spans)}</div></div>')
    legend = "".join(f'<span style="background-color: rgb{colour(v, 1.0)}">{v:+.1f}</span>'
                     for v in (-1.0, -0.5, 0.0, 0.5, 1.0))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"legend\">relevance / max |R| of each text: {legend}</p>"
            + "\n".join(rows) + "\n</body></html>\n")


def ansi_line(record):
    """The caption and the text with 24-bit background colours (black letters), for a terminal."""
    scale = text_scale(record)
    out = []
    for piece, value, _ in pieces(record):
        shown = piece.replace("\n", " ")
        if value is None:
            out.append(shown)
        else:
            r, g, b = colour(value, scale)
            out.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{shown}\x1b[0m")
    return f"{caption(record)}\n{''.join(out)}"
