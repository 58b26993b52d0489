"""lrptool: explain neural-network predictions with Layer-wise Relevance Propagation."""

__version__ = "0.1.0"


def explain(graph, x, method="epsilon-plus-flat", target="pred", **options):
    """Explain a batch ``x``; ``graph`` is a Graph or a model path. See ``lrptool.lrp.Explainer``."""
    from .lrp import explain as explain_graph

    if not hasattr(graph, "nodes"):
        from converters import load_model
        graph = load_model(graph)
    return explain_graph(graph, x, method, target=target, **options)
