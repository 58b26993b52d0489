"""lrptool: explain neural-network predictions with Layer-wise Relevance Propagation."""

__version__ = "0.1.0"


def explain(graph, x, method="epsilon-plus-flat", target="pred", **options):
    """Explain a batch ``x``; ``graph`` is a Graph or a model path. See ``lrptool.lrp.Explainer``."""
    from .lrp import explain as explain_graph

    if not hasattr(graph, "nodes"):
        from converters import load_model
        graph = load_model(graph)
    return explain_graph(graph, x, method, target=target, **options)


def explain_text(graph, texts, tokenizer="bytes", method="epsilon", **options):
    """Explain a model that reads token ids for a list of texts; ``graph`` is a Graph or a model path.
    See ``lrptool.text.explain_text``."""
    from .text import explain_text as explain_texts

    return explain_texts(graph, texts, tokenizer=tokenizer, method=method, **options)


def explain_signal(model, signals, target="max", method="epsilon", **options):
    """Explain a 1-D signal model (audio, sensors) for arrays or WAV/.npy paths: per-sample relevance.
    See ``lrptool.signal.explain_signal``."""
    from .signal import explain_signal as explain_signals

    return explain_signals(model, signals, target=target, method=method, **options)


def __getattr__(name):
    # ``lrptool.explain_folder`` is the module of that name, callable as the Python form of
    # ``lrptool explain`` (lrptool.api.explain_folder); imported on first use, as the CLI does
    if name == "explain_folder":
        import importlib
        return importlib.import_module(".explain_folder", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
