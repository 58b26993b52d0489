"""The ``lrptool`` command line. User mistakes end in one line on stderr and exit status 2."""

import sys

import click

from . import __version__
from .errors import LrpToolError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lrptool")
def cli():
    """Explain neural-network predictions with Layer-wise Relevance Propagation."""


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--preset", help="Show the rule each node gets under this LRP preset.")
@click.option("--rules", "rule_spec", help="Rule map: 'selector=rule,…' (with an optional preset name among "
              "the items) or a JSON file; shows the rule each node gets.")
def inspect(model, preset, rule_spec):
    """Print the graph of MODEL: nodes, operators, shapes, parameter counts and totals.

    With --preset or --rules, print the graph the explainer walks (BatchNorm folded, output softmax
    removed) with each node's rule or relevance routing; nodes that relevance cannot cross are
    refused here, before anything runs."""
    from converters import load_model
    from .inspect import graph_summary

    graph = load_model(model)
    if not (preset or rule_spec):
        click.echo(graph_summary(graph, source=model))
        return
    from .lrp.canonize import canonize
    from .lrp.engine import check_routable, routing_description
    from .lrp.presets import assign_rules, rule_map_from_spec

    canonical, changes = canonize(graph)
    check_routable(canonical)
    spec = rule_spec if rule_spec else preset
    if rule_spec and preset:
        spec = f"{preset},{rule_spec}" if "=" in rule_spec else rule_spec
    rules = assign_rules(canonical, rule_map_from_spec(spec))
    producers = canonical.producers()
    routing = {node.name: routing_description(node, rules, producers) for node in canonical.nodes}
    click.echo(graph_summary(canonical, source=model, routing=routing))
    if changes["folded"]:
        click.echo(f"folded into the layer before them: {', '.join(changes['folded'])}")
    if changes["softmax_removed"]:
        click.echo(f"removed (logits are explained): {', '.join(changes['softmax_removed'])}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
def convert(model, output):
    """Convert MODEL to ONNX (written through a temporary file, then renamed)."""
    from converters import load_model
    from converters.onnx_writer import write_onnx

    graph = load_model(model)
    try:
        write_onnx(graph, output)
    except OSError as error:
        raise LrpToolError(f"{output}: cannot write ({error.strerror or error})") from None
    click.echo(f"wrote {output}: {len(graph.nodes)} nodes, {graph.parameter_count():,} parameters", err=True)


def main(argv=None):
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
    sys.exit(0)


if __name__ == "__main__":
    main()
