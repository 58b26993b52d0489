"""``report.html`` of ``lrptool evaluate``: the perturbation curves (curves.png), the AOPC table,
and for a few images the perturbation sequence as thumbnails — what the model saw after 0, ¼, ½,
¾ and all of the steps, under each method, with the explained score. Self-contained like the
explain report: inline CSS, no script, no network, pictures by relative path; written atomically."""

import html
import os
import time

import numpy as np
from PIL import Image

from .explain_folder import png_bytes
from .files import write_atomically

#: Images whose perturbation sequence the page shows.
SEQUENCE_IMAGES = 3
THUMBNAIL = 96


def sequence_steps(steps, count=5):
    """``count`` steps from 0 to ``steps``, evenly spread."""
    return sorted({int(round(steps * k / (count - 1))) for k in range(count)})


def to_picture(tensor, preprocessing):
    """The picture an input tensor (C, H, W) shows: the preprocessing undone, clipped to 0–255."""
    mean, std = preprocessing.mean_values(), preprocessing.per_channel(preprocessing.std)
    pixels = (np.asarray(tensor, dtype=np.float64) * std + mean) / preprocessing.scale
    if preprocessing.channels == "bgr":
        pixels = pixels[::-1]
    pixels = np.clip(np.nan_to_num(np.round(pixels)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[0], "L") if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0), "RGB")


def write_evaluate_page(outdir, table, settings, snapshots, names, preprocessing, dropped=()):
    """Write the thumbnails (``sequences/``) and ``report.html``; returns the page's path.

    ``snapshots``: as filled by ``evaluate.perturbation_curves``; ``names``: the images' names by index."""
    escape = html.escape
    parts = [f"<h1>lrptool evaluate: {escape(os.path.basename(str(settings.get('model', ''))))}</h1>",
             '<p class="muted">' + escape(" · ".join(f"{k}: {v}" for k, v in settings.items()
                                                     if not isinstance(v, dict))) + "</p>"]
    if os.path.isfile(os.path.join(outdir, "curves.png")):
        parts.append('<img class="curves" src="curves.png" alt="perturbation curves">')
    for order, rows in table.items():
        parts.append(f"<h2>{escape(order.upper())}: AOPC per method "
                     f"({'larger' if order == 'morf' else 'smaller'} is better)</h2>")
        parts.append("<table><thead><tr><th>rank</th><th>method</th><th>AOPC</th><th>± standard error</th>"
                     "<th>relative to the unperturbed score</th></tr></thead><tbody>")
        for row in rows:
            relative = (f"{row['relative_aopc']:.1%} ± {row['relative_sem']:.1%}"
                        if row.get("relative_aopc") is not None else "–")
            parts.append(f"<tr><td class=num>{row['rank']}</td><td>{escape(row['method'])}</td>"
                         f"<td class=num>{row['aopc']:.4g}</td><td class=num>{row['sem']:.2g}</td>"
                         f"<td class=num>{relative}</td></tr>")
        parts.append("</tbody></table>")
    images = sorted({image for _, _, image, _ in snapshots if image not in set(dropped)})
    steps = sorted({step for _, _, _, step in snapshots})
    for order, rows in table.items():
        for image in images:
            parts.append(f"<h2>{escape(names[image])}: {escape(order.upper())} sequence</h2>")
            parts.append("<table><thead><tr><th>method</th>" + "".join(f"<th>step {s}</th>" for s in steps)
                         + "</tr></thead><tbody>")
            for row in rows:
                method = row["method"]
                cells = []
                for step in steps:
                    found = snapshots.get((method, order, image, step))
                    if found is None:
                        cells.append("<td></td>")
                        continue
                    tensor, score = found
                    relative = f"sequences/{image}-{method}-{order}-{step}.png"
                    picture = to_picture(tensor, preprocessing)
                    write_atomically(os.path.join(outdir, relative), png_bytes(picture), root=outdir)
                    cells.append(f'<td><img src="{escape(relative)}" alt="{escape(method)} step {step}">'
                                 f'<div class="caption">score {score:.4g}</div></td>')
                parts.append(f"<tr><td>{escape(method)}</td>{''.join(cells)}</tr>")
            parts.append("</tbody></table>")
    page = PAGE.format(body="\n".join(parts), generated=time.strftime("%Y-%m-%d %H:%M:%S"), size=THUMBNAIL)
    path = os.path.join(outdir, "report.html")
    write_atomically(path, page.encode("utf-8"), root=outdir)
    return path


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lrptool evaluate</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.1em; margin-top: 1.5em; }}
.muted {{ color: #666; font-size: .9em; }}
table {{ border-collapse: collapse; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td img {{ width: {size}px; height: {size}px; object-fit: contain; image-rendering: pixelated; }}
img.curves {{ max-width: 100%; }}
.caption {{ font-size: .85em; color: #444; }}
</style></head>
<body>
{body}
<p class="muted">written {generated}</p>
</body></html>
"""
