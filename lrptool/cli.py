"""The ``lrptool`` command line. User mistakes end in one line on stderr and exit status 2."""

import sys

import click

from . import __version__
from .cli_options import (NOTES, build_preprocessing, check_labels, check_target_range, combined_rule_spec,
                          labels_in_model, model_options, open_model, parse_target, preprocessing_options, read_labels,
                          require_runnable, say_notes)
from .cluster import cluster_options
from .errors import LrpToolError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lrptool")
def cli():
    """Explain neural-network predictions with Layer-wise Relevance Propagation."""


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@click.option("--preset", help="Show the rule each node gets under this LRP preset.")
@click.option("--rules", "rule_spec", help="Rule map: 'selector=rule,…' (with an optional preset name among "
              "the items) or a JSON file; shows the rule each node gets.")
@click.option("--wide", is_flag=True, help="Print every name in full instead of fitting the terminal's width.")
@click.option("--check", "check_image", type=click.Path(dir_okay=False),
              help="Explain this image with the preset (default epsilon-plus-flat) and print, per node, the "
                   "relevance arriving and leaving, the share of the score it absorbed and NaN/Inf counts.")
@click.option("--target", default="pred", show_default=True, help="With --check: pred or a class index.")
@preprocessing_options
def inspect(model, weights, model_config, random_weights, keras1_backend, model_input_size, preset, rule_spec, wide,
            check_image, target, preprocess_preset, config, size, resize, channels, scale, mean, std, mean_file):
    """Print the graph of MODEL: nodes, operators, shapes, parameter counts and totals.

    With --preset or --rules, print the graph the explainer walks (BatchNorm folded, output softmax
    removed) with each node's rule or relevance routing; nodes that relevance cannot cross are
    refused here, before anything runs. Lines fit the terminal (or $COLUMNS, else 100 characters),
    long names elided in the middle; --wide prints them whole."""
    import shutil

    from .inspect import graph_summary, wrapped

    width = None if wide else shutil.get_terminal_size((100, 24)).columns

    graph = open_model(model, weights, model_config, random_weights, keras1_backend, model_input_size,
                       needs_weights=check_image is not None, pictures=check_image is not None)
    if check_image is not None:
        preprocessing = build_preprocessing(model, graph, preprocess_preset, config, size, resize, channels, scale,
                                            mean, std, mean_file)
        click.echo(check_conservation(model, graph, combined_rule_spec(preset, rule_spec, "epsilon-plus-flat"),
                                      check_image, preprocessing, target, width))
        return
    if not (preset or rule_spec):
        click.echo(graph_summary(graph, source=model, width=width))
        return
    from .lrp.canonize import canonize
    from .lrp.engine import check_routable, routing_description
    from .lrp.presets import assign_rules, rule_map_from_spec

    canonical, changes = canonize(graph)
    check_routable(canonical)
    rules = assign_rules(canonical, rule_map_from_spec(combined_rule_spec(preset, rule_spec)))
    producers = canonical.producers()
    routing = {node.name: routing_description(node, rules, producers) for node in canonical.nodes}
    click.echo(graph_summary(canonical, source=model, routing=routing, width=width))
    if changes["folded"]:
        click.echo("\n".join(wrapped(f"folded into the layer before them: {', '.join(changes['folded'])}", width)))
    if changes["softmax_removed"]:
        click.echo("\n".join(wrapped(f"removed (logits are explained): {', '.join(changes['softmax_removed'])}",
                                      width)))


def check_conservation(model, graph, spec, path, preprocessing, target, width):
    """The per-node conservation table of one image (eager float64 walk)."""
    import numpy as np

    from .images import ImageError, load_picture, to_tensor
    from .inspect import absorption_table, wrapped
    from .lrp import GRADIENT_METHODS, Explainer

    if spec in GRADIENT_METHODS:
        raise LrpToolError(f"--check needs an LRP preset or rule map; {spec!r} is a gradient method")
    fixed_target, _ = parse_target(target, top=False)
    require_runnable(graph, model)
    explainer = Explainer(graph, spec, bounds=preprocessing.bounds(), dtype=np.float64, compiled=False, quiet=True)
    check_target_range(fixed_target, None, explainer.output_size())
    try:
        x = to_tensor(load_picture(path, preprocessing), preprocessing)[None]
    except ImageError as error:
        raise LrpToolError(f"{path}: {error}") from None
    say_notes()
    with np.errstate(all="ignore"):
        explanation = explainer.explain(x, target=fixed_target)
    heading = wrapped(f"image: {path}; preset: {spec}; class {int(explanation.targets[0])}", width)
    return "\n".join(heading + [absorption_table(explanation.report, float(explanation.scores[0]), width)])


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@model_options
def convert(model, output, weights, model_config, random_weights, keras1_backend, model_input_size):
    """Convert MODEL to ONNX (written through a temporary file, then renamed)."""
    from converters.onnx_writer import write_onnx

    graph = open_model(model, weights, model_config, random_weights, keras1_backend, model_input_size)
    try:
        write_onnx(graph, output)
    except OSError as error:
        raise LrpToolError(f"{output}: cannot write ({error.strerror or error})") from None
    click.echo(f"wrote {output}: {len(graph.nodes)} nodes, {graph.parameter_count():,} parameters", err=True)


@cli.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The explainer's ONNX file.")
@model_options
@click.option("--preset", "--method", "method",
              help="LRP preset or gradient method (see `lrptool methods`), or several separated by commas (one "
                   "forward pass, an output relevance/METHOD each); default epsilon-plus-flat.")
@click.option("--rules", "rule_spec", help="Rule map 'selector=rule,…' or a JSON file; overrides --preset.")
@click.option("--target", default="pred", show_default=True,
              help="The class explained when the caller gives none: pred or a class index.")
@click.option("--node-sums", is_flag=True, help="Also output each tensor's relevance summed per sample.")
@click.option("--provider", "providers",
              help="The onnxruntime execution providers the explainer is for, e.g. cuda (default cpu). For any but "
                   "the CPU's, max-pools route relevance with ScatterElements instead of MaxUnpool, which CUDA "
                   "and the others lack, so that the whole explanation runs on their device.")
@preprocessing_options
def compile_command(model, output, weights, model_config, random_weights, keras1_backend, model_input_size, method,
                    rule_spec, target, node_sums, providers, preprocess_preset, config, size, resize, channels, scale,
                    mean, std, mean_file):
    """Compile the explanation of MODEL into one ONNX model that any onnxruntime runs, without
    lrptool: input x (and an optional int64 target per sample, -1 for the prediction); outputs
    logits, relevance (shaped like x; relevance/METHOD for each of several methods) and
    explained_target. The preprocessing options give the input's bounds, which the zB rule needs."""
    from .lrp.compile import PROVIDER_NAMES, compile_explainer, compile_methods, write_explainer

    providers = provider_list(providers)
    for provider in providers or ():
        if provider.lower() not in PROVIDER_NAMES and not provider.endswith("ExecutionProvider"):
            raise LrpToolError(f"--provider {provider}: not an onnxruntime execution provider; give one of "
                               f"{', '.join(PROVIDER_NAMES)} or a full name such as CUDAExecutionProvider")
    fixed_target, _ = parse_target(target, top=False)
    graph = open_model(model, weights, model_config, random_weights, keras1_backend, model_input_size)
    require_runnable(graph, model)
    if graph.free_sizes():
        raise LrpToolError(f"{model}: the model leaves its input size free; a compiled explainer is made for one "
                           "size: give it with --input-size HxW")
    bounds = None
    if len(next(iter(graph.inputs.values()))) == 4:  # pictures: the preprocessing gives the input's range
        bounds = build_preprocessing(model, graph, preprocess_preset, config, size, resize, channels, scale, mean,
                                     std, mean_file).bounds()
    specs = method_list(method, rule_spec)
    if "random" in specs:
        raise LrpToolError("--method random: the random baseline has no compiled form")
    if node_sums and len(specs) > 1:
        raise LrpToolError("--node-sums takes one method; compile the others without it")
    check_target_range(fixed_target, None, graph.output_size())
    default = None if fixed_target == "pred" else fixed_target
    # compile_explainer refuses unroutable nodes with the check, and the words, of inspect --preset
    if len(specs) > 1:
        explainer = compile_methods(graph, specs, bounds=bounds, target=default, providers=providers)
    else:
        explainer = compile_explainer(graph, specs[0], bounds=bounds, node_sums=node_sums, target=default,
                                      providers=providers)
    spec = ", ".join(specs)
    say_notes()
    try:
        written = write_explainer(explainer, output)
    except OSError as error:
        raise LrpToolError(f"{output}: cannot write ({error.strerror or error})") from None
    click.echo(f"lrptool: wrote {', '.join(written)}: {len(explainer.graph.node)} nodes, explains with {spec}", err=True)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Folder for the outputs (a mirror of the input tree).")
@model_options
@click.option("--preset", "--method", "method",
              help="LRP preset or gradient method (see `lrptool methods`), or several separated by commas "
                   "(one output column each); default epsilon-plus-flat.")
@click.option("--rules", "rule_spec", help="Rule map 'selector=rule,…' or a JSON file; overrides --preset.")
@click.option("--target", default="pred", show_default=True, help="pred, a class index, or top-K.")
@click.option("--labels", help="Class names, one per line, from a file; or 'imagenet' for the 1000 ImageNet classes.")
@click.option("--format", "formats", default="png", show_default=True,
              help="Any of png,overlay,npy,grid (one PNG per image: the picture and a titled heatmap per method "
                   "or class),html (OUTDIR/index.html, rewritten as the run goes).")
@click.option("--cmap", default="bwr", show_default=True,
              help="Colour map: bwr, diverging (perceptually uniform blue–white–red), black-firered (the LRP "
                   "toolbox's), seismic, coldnhot, hot, gray, lrp (= bwr).")
@click.option("--clip", default=99.5, show_default=True, type=click.FloatRange(0, 100, min_open=True),
              help="Colours saturate at this percentile of |relevance| (100: the largest).")
@click.option("--channels-mode", default="sum", show_default=True, type=click.Choice(["sum", "abs", "max-abs"]),
              help="A pixel's value from its channels: their sum, the sum of their absolute values, or the "
                   "largest absolute value.")
@click.option("--map-back/--no-map-back", default=None,
              help="Draw heatmaps too onto the original picture's size (undoing resize and crop) / draw overlays "
                   "on the model's input instead. Default: overlays on the original, heatmaps at the input size.")
@preprocessing_options
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(1),
              help="Threads for decoding and writing beside the engine.")
@click.option("--resume", is_flag=True,
              help="Skip images the output folder's manifest proves finished (files whole); append to --jsonl.")
@click.option("--jsonl", type=click.Path(dir_okay=False), help="Write the JSON lines here instead of stdout.")
@click.option("--low-memory", is_flag=True,
              help="Run the eager walk in NumPy/Numba instead of the compiled explainer: less memory, slower.")
@click.option("--provider", "providers", help="onnxruntime execution providers, e.g. cuda or cuda,cpu (default cpu).")
@click.option("--native-size", is_flag=True,
              help="Explain each picture at its own size (a model whose input size is free, e.g. fully convolutional).")
@click.option("--shard", help="K/N: explain only the K-th of N shares of the sorted inputs (N independent runs "
              "cover them exactly once).")
@cluster_options
def explain(model, inputs, outdir, weights, model_config, random_weights, keras1_backend, model_input_size, method, rule_spec, target, labels, formats, cmap, clip, channels_mode, map_back, preprocess_preset, config,
            size, resize, channels, scale, mean, std, mean_file, batch_size, jobs, resume, jsonl, low_memory, providers,
            native_size, shard, cluster_spec, scheduler, scheduler_file, chunk_size):
    """Explain the predictions of MODEL for image files, folders (recursively) or '-' (paths on
    stdin, each optionally followed by TAB and a class index). Writes heatmaps, overlays and raw
    relevance into a mirror of the input tree and one JSON line per image to stdout; messages go
    to stderr. Exit status 1 when some image failed."""
    import os

    from .cluster import chosen, run_folder
    from .explain_folder import FORMATS, FolderExplainer
    from .shards import parse_shard
    from .heatmaps import COLORMAPS
    from .images import walk_inputs
    from .lrp import Explainer
    from .records import open_records

    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown or not wanted:
        raise LrpToolError(f"--format {formats!r}: choose from {', '.join(FORMATS)}")
    if cmap not in COLORMAPS:
        raise LrpToolError(f"--cmap {cmap!r}: choose from {', '.join(sorted(COLORMAPS))}")
    fixed_target, top_k = parse_target(target)
    shard = parse_shard(shard)
    chosen(cluster_spec, scheduler, scheduler_file)
    label_names = read_labels(labels) if labels else None
    specs = method_list(method, rule_spec)
    graph = open_model(model, weights, model_config, random_weights, keras1_backend, model_input_size,
                       pictures=True)
    preprocessing = build_preprocessing(model, graph, preprocess_preset, config, size, resize, channels, scale, mean,
                                        std, mean_file, native_size)
    require_runnable(graph, model)
    explainers = [(spec, Explainer(graph, spec, bounds=preprocessing.bounds(),
                                   primitives="numpy" if low_memory else "onnxruntime",
                                   forward_backend="lrptool" if low_memory else "auto",
                                   providers=provider_list(providers), quiet=index > 0,
                                   compile_later=len(specs) > 1 or bool(top_k)))   # one graph: SharedForward
                  for index, spec in enumerate(specs)]
    explainer = explainers[0][1]
    check_target_range(fixed_target, top_k, explainer.output_size())
    check_labels(labels, label_names, explainer.output_size())
    if label_names is None:
        label_names = labels_in_model(model, graph, explainer.output_size())
    items = walk_inputs(inputs, stdin=stdin_bytes() if "-" in inputs else None)
    if not items:
        raise LrpToolError("no images found in " + ", ".join(inputs))
    click.echo(f"lrptool: preprocessing: {preprocessing.summary()}", err=True)
    say_notes()
    try:
        os.makedirs(outdir, exist_ok=True)
        stream, recorded = open_records(jsonl, resume)
    except OSError as error:
        raise LrpToolError(f"{error.filename or jsonl}: cannot write ({error.strerror})") from None
    try:
        runner = FolderExplainer(explainer, preprocessing, outdir, wanted, cmap, fixed_target, top_k, label_names,
                                 batch_size, jobs, resume, stream, progress=sys.stderr.isatty(),
                                 recorded=recorded if jsonl else None, clip=clip, channels=channels_mode,
                                 map_back=map_back, methods=explainers,
                                 page={"title": f"{os.path.basename(model)}: lrptool explain",
                                       "settings": {"model": model, "method": ", ".join(specs), "target": target,
                                                    "preprocessing": preprocessing.summary()}})
        failures = run_folder(runner, items, shard, cluster_spec, scheduler, scheduler_file, chunk_size,
                              say=lambda message: click.echo(f"lrptool: {message}", err=True))
    finally:
        if stream:
            stream.close()
    click.echo(f"lrptool: explained {runner.explained} image(s) into {outdir} ({runner.written} files); "
               f"{len(failures)} failed", err=True)
    if failures:
        sys.exit(1)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Folder for curves.csv, summary.json, curves.png and report.html.")
@model_options
@click.option("--methods", "method_list", default="epsilon-plus-flat,epsilon,gradient,sensitivity,random",
              show_default=True, help="Comma-separated presets or gradient methods; random is always added.")
@click.option("--target", default="pred", show_default=True, help="pred or a class index.")
@click.option("--patch", type=click.IntRange(1),
              help="Region side in pixels (default: 9 at 224x224, scaled to the input).")
@click.option("--steps", type=click.IntRange(1),
              help="Regions perturbed (default: enough for 16 % of the image, as published).")
@click.option("--order", default="morf,lerf", show_default=True, help="morf (most relevant first), lerf, or both.")
@click.option("--replacement", default="uniform", show_default=True,
              type=click.Choice(["uniform", "mean", "zero", "blur"]),
              help="What removed regions become: uniform noise over the input range, the image mean, 0, a blur.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Seed of the replacement values.")
@preprocessing_options
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1),
              help="Images held and scored at once; memory grows with it, not with the image count.")
@click.option("--provider", "providers", help="onnxruntime execution providers, e.g. cuda or cuda,cpu (default cpu).")
@cluster_options
def evaluate(model, inputs, outdir, weights, model_config, random_weights, keras1_backend, model_input_size, method_list, target, patch, steps, order, replacement, seed, preprocess_preset,
             config, size, resize, channels, scale, mean, std, mean_file, batch_size, providers, cluster_spec, scheduler,
             scheduler_file, chunk_size):
    """Compare explanation methods by region perturbation (Samek et al. 2017): AOPC per method with its
    standard error, raw and relative to the unperturbed score, ranked, and the perturbation curves.
    By default regions of 9x9 pixels at 224x224 (scaled to the input) are replaced by uniform noise
    until 16 % of the image is perturbed, as published. Exit status 1 when some image failed."""
    import numpy as np

    from .evaluate import ORDERS, default_setting, evaluate_methods, perturbed_share, region_count, write_report
    from .images import ImageError, load_picture, to_tensor, walk_inputs
    from .limits import check_bytes
    from .lrp import METHODS

    orders = tuple(o.strip() for o in order.split(",") if o.strip())
    if not orders or any(o not in ORDERS for o in orders):
        raise LrpToolError(f"--order {order!r}: choose from morf, lerf")
    methods_wanted = [m.strip() for m in method_list.split(",") if m.strip()]
    unknown = [m for m in methods_wanted if m not in METHODS]
    if unknown:
        raise LrpToolError(f"--methods: unknown {', '.join(unknown)}; see `lrptool methods`")
    target, _ = parse_target(target, top=False)
    from .cluster import chosen, connected, evaluate_on_cluster
    on_cluster = chosen(cluster_spec, scheduler, scheduler_file)
    graph = open_model(model, weights, model_config, random_weights, keras1_backend, model_input_size,
                       pictures=True)
    preprocessing = build_preprocessing(model, graph, preprocess_preset, config, size, resize, channels, scale, mean,
                                        std, mean_file)
    require_runnable(graph, model)
    check_target_range(target, None, graph.output_size())
    height, width = preprocessing.size
    if patch is not None and patch > max(height, width):
        raise LrpToolError(f"--patch {patch}: larger than the {height}x{width} input; give at most {max(height, width)}")
    default_patch, default_steps = default_setting(height, width)
    published = patch is None and steps is None
    patch = patch or default_patch
    if steps is None:
        steps = default_steps if patch == default_patch else max(1, round(default_steps * default_patch ** 2 / patch ** 2))
    steps = min(steps, region_count(height, width, patch))
    items = walk_inputs(inputs, stdin=stdin_bytes() if "-" in inputs else None)
    if not items:
        raise LrpToolError("no images found in " + ", ".join(inputs))
    runs = len(set(methods_wanted) | {"random"}) * len(orders)
    channels_in = preprocessing.channel_count()
    check_bytes(4 * channels_in * height * width * batch_size * (2 * runs + len(methods_wanted) + 4),
                f"region perturbation of {batch_size} images at a time with {runs} method/order runs "
                "(a smaller --batch-size needs less)")
    share = perturbed_share(height, width, patch, steps)
    setting = (f"{patch}x{patch} regions, {steps} steps ({share:.1%} of the {height}x{width} input), "
               f"{replacement} replacement, {'/'.join(orders)}, seed {seed}"
               + (" — Samek et al. 2017's setting scaled to the input" if published else ""))
    say_notes()
    click.echo(f"lrptool: evaluate: {setting}", err=True)
    failures, paths = [0], []
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=len(items), unit="img", file=sys.stderr, dynamic_ncols=True)

    def say(message):
        (bar.write if bar else lambda m: click.echo(m, err=True))(message)

    def tensors():
        for path, _ in items:
            try:
                tensor = to_tensor(load_picture(path, preprocessing), preprocessing)
            except ImageError as problem:
                failures[0] += 1
                say(f"lrptool: skipped {path}: {problem}")
                if bar:
                    bar.update(1)
                continue
            paths.append(path)
            yield tensor

    from .evaluate_report import SEQUENCE_IMAGES, sequence_steps, write_evaluate_page

    snapshots = {"images": range(SEQUENCE_IMAGES), "steps": sequence_steps(steps)}
    try:
        if on_cluster:
            with connected(cluster_spec, scheduler, scheduler_file) as client:
                tally, table, dropped, failures[0] = evaluate_on_cluster(
                    client, graph, [path for path, _ in items], preprocessing, methods_wanted, target, patch, steps,
                    orders, replacement, seed, batch_size, {"providers": provider_list(providers)}, chunk_size,
                    snapshots, bar.update if bar else None, say, paths)
        else:
            with np.errstate(all="ignore"):
                tally, table, dropped = evaluate_methods(graph, tensors(), methods_wanted, target, patch, steps,
                                                         orders, replacement, preprocessing.bounds(), seed, batch_size,
                                                         {"providers": provider_list(providers)},
                                                         progress=bar.update if bar else None, snapshots=snapshots)
    finally:
        if bar:
            bar.close()
    failures = failures[0]
    if not paths:
        raise LrpToolError("no readable images among " + ", ".join(inputs))
    for index in dropped:
        failures += 1
        click.echo(f"lrptool: skipped {paths[index]}: its scores or relevance are not finite (NaN or Inf)", err=True)
    if not tally.images:
        raise LrpToolError("no image gave finite scores and relevance; nothing to evaluate")
    settings = {"model": model, "images": tally.images, "input_size": [height, width], "patch": patch, "steps": steps,
                "perturbed_share": round(share, 6), "published_setting": published, "orders": list(orders),
                "replacement": replacement, "seed": seed, "target": target, "batch_size": batch_size,
                "preprocessing": preprocessing.describe(), "mean_unperturbed_score": float(tally.base.mean),
                "relative_aopc": "mean AOPC / mean unperturbed score of the same images"}
    write_report(outdir, tally, table, settings, say=lambda m: click.echo(f"lrptool: {m}", err=True))
    del snapshots["images"], snapshots["steps"]
    import os
    write_evaluate_page(outdir, table, settings, snapshots, [os.path.basename(p) for p in paths], preprocessing,
                        dropped)
    click.echo(f"{setting}; mean unperturbed score {float(tally.base.mean):.4g}")
    for name in orders:
        click.echo(f"{name.upper()}  AOPC ± standard error, and relative to the mean unperturbed score "
                   f"({tally.images} images)")
        for row in table[name]:
            relative = f"{row['relative_aopc']:8.1%} ± {row['relative_sem']:.1%}" if row["relative_aopc"] is not None \
                else "       – (mean score not above 0)"
            click.echo(f"  {row['rank']}. {row['method']:<28} {row['aopc']:10.4g} ± {row['sem']:<8.2g} {relative}")
    click.echo(f"lrptool: report in {outdir}; {failures} image(s) failed", err=True)
    if failures:
        sys.exit(1)


@cli.command("explain-text")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("input_file", metavar="INPUT", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Folder for explanations.jsonl and index.html.")
@model_options
@click.option("--tokenizer", default="bytes", show_default=True,
              help="words, chars, bytes, or a vocabulary file (vocab.json: {token: id}; vocab.txt: a token per line).")
@click.option("--max-len", type=click.IntRange(1), help="Tokens used per text (default: the model's input length; "
              "sets it where the model leaves it free).")
@click.option("--pad", default=0, show_default=True, type=click.IntRange(0), help="Id that fills the input past a text.")
@click.option("--layout", default="start", show_default=True, type=click.Choice(["start", "end", "head-tail"]),
              help="start: the text's first tokens; end: its last tokens, padded at the start; head-tail: first "
                   "half from its start, second from its end.")
@click.option("--preset", "--method", "method", help="LRP preset or gradient method; default epsilon.")
@click.option("--rules", "rule_spec", help="Rule map 'selector=rule,…' or a JSON file; overrides --preset.")
@click.option("--target", default="pred", show_default=True, help="pred, a class index, or top-K.")
@click.option("--labels", type=click.Path(dir_okay=False), help="Class names, one per line.")
@click.option("--format", "formats", default="jsonl,html", show_default=True, help="Any of jsonl,html,ansi.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--resume", is_flag=True, help="Skip texts the output folder's manifest records as finished.")
@click.option("--low-memory", is_flag=True, help="Run the eager walk in NumPy instead of the compiled explainer.")
@click.option("--provider", "providers", help="onnxruntime execution providers, e.g. cuda (default cpu).")
def explain_text(model, input_file, outdir, weights, model_config, random_weights, keras1_backend, model_input_size,
                 tokenizer, max_len, pad, layout, method, rule_spec, target, labels, formats, batch_size, resume,
                 low_memory, providers):
    """Explain a text model (its input: token ids) for every line of INPUT ('-': stdin), each line one
    text, optionally followed by TAB and a class index or label. Writes explanations.jsonl (tokens and
    their relevance per text) and index.html (coloured words) into the output folder; ansi prints
    coloured text. Exit status 1 when some line failed."""
    from .text_runner import run_explain_text

    failures = run_explain_text(model, input_file, outdir, dict(
        weights=weights, model_config=model_config, random_weights=random_weights, keras1_backend=keras1_backend,
        input_size=model_input_size), tokenizer, max_len, pad, layout, combined_rule_spec(method, rule_spec, "epsilon"),
        target, labels, formats, batch_size, resume, low_memory, provider_list(providers), stdin_bytes())
    if failures:
        sys.exit(1)


@cli.command("explain-signal")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", metavar="INPUT…", nargs=-1, required=True)
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Folder for the .npy, .png, explanations.jsonl and index.html.")
@model_options
@click.option("--bind", "binds", multiple=True, metavar="NAME=VALUE",
              help="Fix a model input besides the signal: a number broadcast to its shape, or a .npy file "
                   "(repeatable), e.g. --bind h=0 --bind c=0.")
@click.option("--model-output", help="The model output to explain, where it has several.")
@click.option("--frame", type=click.IntRange(1), help="Frame length in samples where the model leaves it free.")
@click.option("--hop", type=click.IntRange(1), help="Samples between frame starts (default: the frame length); "
                                                   "less makes frames overlap, e.g. a model's context samples.")
@click.option("--layout", default="auto", show_default=True, type=click.Choice(["auto", "sequence", "frames"]),
              help="sequence: the input's first axis is the sequence of frames (the clip is one sequence); frames: "
                   "each frame on its own; auto: sequence when that axis is named like one (sequence_length, …) "
                   "or the model moves it (an LSTM's time axis).")
@click.option("--sample-rate", help="The rate the model expects, in Hz (default: a bound sr input or the model's "
                                    "metadata); a WAV at another rate is refused. 'any': explain files at any rate.")
@click.option("--channel", type=click.IntRange(0), help="Take this channel of a WAV (from 0) instead of the "
                                                          "average of all.")
@click.option("--target", default="max", show_default=True,
              help="The explained frame: max (the highest output), N (counted from 0), A:B or all (their sum).")
@click.option("--class", "klass", default="pred", show_default=True,
              help="Which value of a frame's output, where it has several: pred or an index.")
@click.option("--preset", "--method", "method", help="LRP preset, gradient or gradient-x-input; default epsilon.")
@click.option("--rules", "rule_spec", help="Rule map 'selector=rule,…' or a JSON file; overrides --preset.")
@click.option("--recurrent-bias", default="absorb", show_default=True, type=click.Choice(["absorb", "spread"]),
              help="LSTM/GRU biases keep their share of relevance, or spread it over the inputs (exact conservation).")
@click.option("--format", "formats", default="npy,png,jsonl,html", show_default=True,
              help="Any of npy,png,jsonl,html.")
@click.option("--clip", default=99.5, show_default=True, type=click.FloatRange(0, 100, min_open=True),
              help="Colours saturate at this percentile of |R| (per pixel column).")
@click.option("--cmap", default="bwr", show_default=True, help="Diverging colour map of the waveform.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1),
              help="Frames per forward pass (frames layout).")
@click.option("--resume", is_flag=True, help="Skip files the output folder's manifest records as finished.")
def explain_signal(model, inputs, outdir, weights, model_config, random_weights, keras1_backend, model_input_size,
                   binds, model_output, frame, hop, layout, sample_rate, channel, target, klass, method, rule_spec,
                   recurrent_bias, formats, clip, cmap, batch_size, resume):
    """Explain a 1-D signal model (audio, sensors) for WAV files (PCM or float, mixed to mono) and 1-D .npy
    arrays, or folders of them. The signal is cut into the model's frames, the last padded with zeros;
    relevance is per input sample. Exit status 1 when some file failed."""
    from .signal_runner import run_explain_signal

    failures = run_explain_signal(model, inputs, outdir, dict(
        weights=weights, model_config=model_config, random_weights=random_weights, keras1_backend=keras1_backend,
        input_size=model_input_size), binds, model_output, frame, layout, sample_rate,
        combined_rule_spec(method, rule_spec, "epsilon"), recurrent_bias, target, klass, formats, clip, cmap,
        batch_size, resume, hop, channel)
    if failures:
        sys.exit(1)


@cli.command()
def methods():
    """List the LRP presets and gradient methods."""
    from .lrp import GRADIENT_METHODS, PRESET_NAMES

    click.echo("LRP presets: " + ", ".join(PRESET_NAMES))
    click.echo("gradient methods: " + ", ".join(GRADIENT_METHODS))


def interrupt_on_terminate():
    """SIGTERM ends a run like Ctrl-C: files being written are finished or removed, never half-left."""
    import signal

    from .explain_folder import STOP

    def handler(signum, frame):
        STOP.set()
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        pass


def method_list(method, rule_spec):
    """The explanation specs of one run: --preset a,b,c names several methods (each a known name),
    anything else is one spec."""
    from .lrp import METHODS

    names = [name.strip() for name in (method or "").split(",")]
    if method and len(names) > 1 and not any("=" in name for name in names):
        unknown = [name for name in names if name not in METHODS]
        if unknown:
            raise LrpToolError(f"--preset {method!r}: unknown {', '.join(map(repr, unknown))}; see `lrptool methods`")
        if rule_spec:
            raise LrpToolError("--rules applies to one method; give one --preset with it, or several presets alone")
        if len(set(names)) != len(names):
            raise LrpToolError(f"--preset {method!r}: a method is named twice")
        return names
    return [combined_rule_spec(method, rule_spec, "epsilon-plus-flat")]


@cli.command()
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--title", help="The page's title (default: the folder's name).")
@click.option("--cmap", help="The colour map the heatmaps were drawn with, for the page's swatch.")
def report(outdir, title, cmap):
    """Write OUTDIR/index.html for a folder `lrptool explain` (or explain-text, explain-signal) wrote,
    from the records in its manifest (.lrptool-manifest.jsonl). Original pictures are linked by their paths relative to OUTDIR, as
    recorded: run this from the folder the explain run ran in. A folder whose sub-folders hold runs
    gets a page linking theirs. Prints the page's path."""
    import os

    from .manifest import NAME, Manifest
    from .report import entries_of, run_folders, write_index, write_page

    manifest = Manifest(outdir)
    if not os.path.isfile(manifest.path):
        folders = run_folders(outdir) if os.path.isdir(outdir) else []
        if not folders:
            raise LrpToolError(f"{outdir}: no {NAME} here or in its sub-folders; give a folder `lrptool explain` "
                               "wrote")
        try:
            path = write_index(outdir, folders, title or f"{os.path.basename(os.path.abspath(outdir))}: lrptool runs")
        except OSError as error:
            raise LrpToolError(f"{outdir}: cannot write index.html ({error.strerror or error})") from None
        click.echo(os.path.abspath(path))
        return
    entries = entries_of(manifest.load())
    if not entries:
        raise LrpToolError(f"{manifest.path}: no finished item recorded")
    if cmap:
        from .heatmaps import check_colormap
        check_colormap(cmap)
    # explain-text and explain-signal folders hold records of texts and signal files
    kind = "text" if "tokens" in entries[0]["record"] else "signal" if "frame_length" in entries[0]["record"] \
        else "image"
    command = {"text": "explain-text", "signal": "explain-signal", "image": "explain"}[kind]
    title = title or f"{os.path.basename(os.path.abspath(outdir))}: lrptool {command}"
    try:
        if kind == "text":
            from .text_runner import write_page as write_text_page

            path = write_text_page(outdir, [entry["record"] for entry in entries], title)
        else:
            path = write_page(outdir, entries, title=title, colormap=cmap, item="file" if kind == "signal" else "image")
    except OSError as error:
        raise LrpToolError(f"{outdir}: cannot write index.html ({error.strerror or error})") from None
    click.echo(os.path.abspath(path))


def provider_list(text):
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def stdin_bytes():
    """Standard input as bytes: listed paths are file names, which need not be UTF-8."""
    return getattr(sys.stdin, "buffer", sys.stdin)


def quiet_handled_warnings():
    """Pillow warns about pictures beyond its pixel limit, which lrptool refuses itself with a line
    naming the picture, and about odd metadata in pictures it still decodes; neither needs more
    lines on stderr."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")


def main(argv=None):
    interrupt_on_terminate()
    quiet_handled_warnings()
    NOTES.clear()
    try:
        cli.main(args=argv, prog_name="lrptool", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("lrptool: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except LrpToolError as error:
        click.echo(f"lrptool: error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("lrptool: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(1)
    except Exception as error:  # noqa: BLE001 - a bug must still end in one line, not a traceback
        report_internal_error(error)
        sys.exit(3)
    sys.exit(0)


def report_internal_error(error):
    """A failure no check foresaw: one line saying so (the traceback with LRPTOOL_DEBUG=1)."""
    import os
    import traceback

    if os.environ.get("LRPTOOL_DEBUG"):
        traceback.print_exc()
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    click.echo(f"lrptool: internal error: {type(error).__name__}{': ' + first if first else ''} "
               "(a bug in lrptool; rerun with LRPTOOL_DEBUG=1 for the traceback and report it)", err=True)


if __name__ == "__main__":
    main()
