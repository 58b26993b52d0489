"""A printable summary of a graph: one row per node, then totals."""


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


def graph_summary(graph, source=None, routing=None):
    """Text table of ``graph``: node, operator, input and output shapes, parameter counts, totals;
    with ``routing`` ({node name: text}) also the LRP rule or relevance routing of each node."""
    header = ("#", "node", "op", "input shape", "output shape", "params")
    rows = [header + (("rule",) if routing else ()) + ("settings",)]
    for index, node in enumerate(graph.nodes):
        row = (str(index), node.name, node.op,
               " ".join(format_shape(graph.shapes[t]) for t in node.inputs) or "-",
               " ".join(format_shape(graph.shapes[t]) for t in node.outputs),
               f"{node.parameter_count():,}" if node.parameter_count() else "")
        rows.append(row + ((routing.get(node.name, "-"),) if routing else ()) + (describe_attrs(node),))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    if source:
        lines.append(f"model: {source}")
    for name, shape in graph.inputs.items():
        lines.append(f"input  {name}: {format_shape(shape)}")
    for name in graph.outputs:
        lines.append(f"output {name}: {format_shape(graph.shapes[name])}")
    lines.append("")
    for row in rows:
        cells = [cell.ljust(width) if i != 5 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells + [row[-1]]).rstrip())
    lines.append("")
    ops = {}
    for node in graph.nodes:
        ops[node.op] = ops.get(node.op, 0) + 1
    lines.append(f"total: {len(graph.nodes)} nodes, {graph.parameter_count():,} parameters; "
                 + ", ".join(f"{op} {count}" for op, count in sorted(ops.items())))
    if not graph.batch_free:
        lines.append("note: the batch size is fixed by the model (some node reads the batch axis)")
    return "\n".join(lines)
