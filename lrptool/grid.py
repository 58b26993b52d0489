"""Comparison grids: one PNG per image with the picture and one titled column per method or class —
the figure a paper or a slide needs.

Every cell has the picture's aspect ratio, its longer side ``cell`` pixels; columns are
``GAP`` pixels apart, with a title strip above them drawn in Pillow's default font. The titles
may have several lines ("\n"); they are also stored in the PNG's text chunk ``lrptool-columns``
(a JSON list)."""

import functools
import io
import json
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

GAP = 8
FONT_SIZE = 14
BACKGROUND = (255, 255, 255)


@dataclass
class Layout:
    columns: int
    cell: tuple          # (width, height) of one picture
    title_height: int

    @property
    def size(self):
        width = self.columns * self.cell[0] + (self.columns + 1) * GAP
        return width, GAP + self.title_height + self.cell[1] + GAP

    def box(self, column):
        """(left, top) of a column's picture."""
        return GAP + column * (self.cell[0] + GAP), GAP + self.title_height


@functools.lru_cache(maxsize=None)
def font():
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow before 10.1: the fixed bitmap font
        return ImageFont.load_default()


@functools.lru_cache(maxsize=None)
def line_height():
    top, bottom = font().getbbox("Hg")[1::2]
    return bottom + top + 2


def layout_for(picture_size, columns, cell=224, title_lines=1):
    width, height = picture_size
    factor = cell / max(width, height)
    return Layout(columns, (max(1, round(width * factor)), max(1, round(height * factor))),
                  title_lines * line_height() + 4)


def fitted(text, face, width):
    """``text``, cut with an ellipsis where it is wider than ``width`` pixels."""
    if face.getlength(text) <= width:
        return text
    while text and face.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def montage(pictures, titles, cell=224):
    """The grid of ``pictures`` (PIL images, all of the first one's size) under ``titles``."""
    layout = layout_for(pictures[0].size, len(pictures), cell, max(len(t.split("\n")) for t in titles))
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    face = font()
    for column, (picture, title) in enumerate(zip(pictures, titles)):
        left, top = layout.box(column)
        canvas.paste(picture.convert("RGB").resize(layout.cell, Image.BILINEAR), (left, top))
        for line, words in enumerate(title.split("\n")):
            text = fitted(words, face, layout.cell[0])
            draw.text((left + (layout.cell[0] - face.getlength(text)) / 2, GAP + line * line_height()), text,
                      fill=(0, 0, 0), font=face)
    return canvas


def montage_png(pictures, titles, cell=224):
    """The grid as PNG bytes, its titles in the text chunk ``lrptool-columns``."""
    info = PngInfo()
    info.add_text("lrptool-columns", json.dumps(list(titles)))
    buffer = io.BytesIO()
    montage(pictures, titles, cell).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
