"""A printable summary of a graph: one row per node, then totals."""

import textwrap

#: The narrowest a column that may be shortened gets (node names, shapes, rules, settings).
MIN_ELIDED = 8


def elide(text, width):
    """``text`` in at most ``width`` characters: the middle replaced by an ellipsis when longer, so
    that both the start and the distinguishing end of long node names stay visible."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    head = width // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def fit_widths(widths, groups, total_width, separator=2):
    """Column widths whose sum (with separators) is at most ``total_width``. ``groups``: lists of
    (column, narrowest width) that may shorten, the first group first; within a group the widest
    column gives up a character at a time."""
    widths = list(widths)
    for group in groups:
        while sum(widths) + separator * (len(widths) - 1) > total_width:
            candidates = [i for i, narrowest in group if widths[i] > narrowest]
            if not candidates:
                break
            widths[max(candidates, key=lambda i: widths[i])] -= 1
    return widths


def cut(text, width):
    """``text`` in at most ``width`` characters, the end replaced by an ellipsis when longer (for
    texts whose start says the most: rules, settings)."""
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def format_shape(shape):
    """``(N, 3, ?, ?)``: N the free batch axis, ? a free size."""
    return "(" + ", ".join(("N" if axis == 0 else "?") if d is None else str(d) for axis, d in enumerate(shape)) + ")"


def describe_attrs(node):
    shown = []
    for key, value in node.attrs.items():
        if key in ("strides", "dilations") and all(v == 1 for v in value):
            continue
        if key == "pads" and not any(value):
            continue
        if key == "group" and value == 1:
            continue
        shown.append(f"{key}={','.join(map(str, value)) if isinstance(value, tuple) else value}")
    return " ".join(shown)


def graph_summary(graph, source=None, routing=None, width=None):
    """Text table of ``graph``: node, operator, input and output shapes, parameter counts, totals;
    with ``routing`` ({node name: text}) also the LRP rule or relevance routing of each node.
    ``width``: fit every line into that many characters, eliding long names, shapes, rules and
    settings in the middle (None: print everything)."""
    header = ("#", "node", "op", "input shape", "output shape", "params")
    rows = [header + (("rule",) if routing else ()) + ("settings",)]
    for index, node in enumerate(graph.nodes):
        row = (str(index), node.name, node.op,
               " ".join(format_shape(graph.shapes[t]) for t in node.inputs) or "-",
               " ".join(format_shape(graph.shapes[t]) for t in node.outputs),
               f"{node.parameter_count():,}" if node.parameter_count() else "")
        rows.append(row + ((routing.get(node.name, "-"),) if routing else ()) + (describe_attrs(node),))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if width:
        # the settings shorten first, then node names, then rules, then shapes; #, op and params never
        last = len(widths) - 1
        widths = fit_widths(widths, [[(last, MIN_ELIDED)], [(1, MIN_ELIDED)],
                                     [(i, 12) for i in range(6, last)], [(3, MIN_ELIDED), (4, MIN_ELIDED)]], width)
    lines = []
    if source:
        lines.append(f"model: {source}")
    for name, shape in graph.inputs.items():
        lines.append(f"input  {name}: {format_shape(shape)}")
    for name in graph.outputs:
        lines.append(f"output {name}: {format_shape(graph.shapes[name])}")
    if width:
        lines = [elide(line, width) for line in lines]
    lines.append("")
    for row in rows:
        # names and shapes keep both ends; rules and settings their start
        cells = [(cut if i >= 6 else elide)(cell, size) for i, (cell, size) in enumerate(zip(row, widths))]
        cells = [cell.ljust(size) if i != 5 else cell.rjust(size) for i, (cell, size) in enumerate(zip(cells, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    ops = {}
    for node in graph.nodes:
        ops[node.op] = ops.get(node.op, 0) + 1
    total = (f"total: {len(graph.nodes)} nodes, {graph.parameter_count():,} parameters; "
             + ", ".join(f"{op} {count}" for op, count in sorted(ops.items())))
    lines += wrapped(total, width)
    if not graph.batch_free:
        lines.append("note: the batch size is fixed by the model (some node reads the batch axis)")
    return "\n".join(lines)


def wrapped(text, width):
    """``text`` as lines of at most ``width`` characters (continuations indented), or as one line."""
    if not width:
        return [text]
    return textwrap.wrap(text, width, subsequent_indent="  ", break_long_words=True, break_on_hyphens=False) or [""]


def absorption_table(report, score, width=None):
    """One image's conservation report as text: per node (in graph order) Σ R arriving at its outputs,
    Σ R it passes to its inputs, the share of the explained score it absorbed, and NaN/Inf counts."""
    scale = score if score else 1.0
    rows = [("node", "op", "rule", "Σ R out", "Σ R in", "absorbed", "NaN/Inf")]
    for node in report.nodes:
        rows.append((node.node, node.op, node.rule or "-", f"{node.relevance_out:.4g}", f"{node.relevance_in:.4g}",
                     f"{node.absorbed / scale:+.2%}", str(node.nonfinite) if node.nonfinite else ""))
    fixed = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if width:  # long node names are elided in the middle, long rules cut, so that a row fits
        fixed = fit_widths(fixed, [[(0, MIN_ELIDED), (2, MIN_ELIDED)]], width)
    lines = wrapped(f"explained score {score:.6g}; the input keeps {report.input:.6g} ({report.input / scale:.2%}); "
                    f"absorbed in total {report.absorbed / scale:+.2%}. Per node: Σ R out arrives at its outputs, "
                    "Σ R in goes on to its inputs, absorbed = (out − in) / score.", width) + [""]
    for row in rows:
        shorten = {0: elide, 1: cut, 2: cut}
        cells = [shorten[i](cell, size).ljust(size) if i in shorten else cell.rjust(size)
                 for i, (cell, size) in enumerate(zip(row, fixed))]
        lines.append("  ".join(cells).rstrip())
    if report.nonfinite:
        lines.append(f"NaN/Inf in the input's relevance: {report.nonfinite}")
    return "\n".join(lines)

