"""``lrptool.explain_folder``: ``lrptool explain`` from Python, in this process or on a Dask cluster."""

import os
import warnings
from dataclasses import dataclass, field


@dataclass
class FolderResult:
    explained: int                                   # images explained in this call
    written: int                                     # files written
    resumed: int                                     # images found finished (``resume``)
    failures: list = field(default_factory=list)     # (path, problem) per image that failed
    throughput: list = field(default_factory=list)   # on a cluster: a line per worker and the total rate


def explain_folder(model, inputs, outdir, method="epsilon-plus-flat", preprocess=None, formats=("png",),
                   target="pred", top_k=None, labels=None, colormap="bwr", batch_size=16, jobs=2, resume=False,
                   jsonl=None, shard=None, client=None, chunk_size=None, progress=False, **explainer_options):
    """Explain every image in ``inputs`` (a path or a list of image files and folders) into
    ``outdir``, as ``lrptool explain`` does: heatmaps, overlays and raw relevance per ``formats``,
    written whole or not at all, with the folder's manifest for ``resume``.

    ``model``: a model path or a Graph. ``preprocess``: None (from the model's input), a preset name
    or an ``lrptool.images.Preprocessing``. ``jsonl``: a path for the JSON lines (None: none are
    written). ``shard=(K, N)``: only the K-th of N shares of the sorted inputs. ``client``: a
    ``distributed.Client``; its workers then write the outputs, and ``outdir`` must be a folder
    they all see at the same path. Other keyword arguments go to ``lrptool.lrp.Explainer``. Notes
    (relevance not conserved, …) come as warnings; nothing is printed.
    """
    from converters import load_model

    from .cluster import ClusterExplain
    from .explain_folder import FolderExplainer
    from .images import Preprocessing, preprocessing_for, walk_inputs
    from .lrp import Explainer
    from .records import open_records

    graph = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    if not isinstance(preprocess, Preprocessing):
        preprocess = preprocessing_for(next(iter(graph.inputs.values())), preprocess)
    options = dict(bounds=preprocess.bounds(), quiet=True)
    options.update(explainer_options)
    explainer = Explainer(graph, method, **options)
    items = walk_inputs([os.fspath(inputs)] if isinstance(inputs, (str, os.PathLike))
                        else [os.fspath(i) for i in inputs])
    os.makedirs(outdir, exist_ok=True)
    stream, recorded = open_records(os.fspath(jsonl), resume) if jsonl else (open(os.devnull, "w"), None)
    try:
        runner = FolderExplainer(explainer, preprocess, os.fspath(outdir), tuple(formats), colormap, target, top_k,
                                 labels, batch_size, jobs, resume, stream, progress=progress, recorded=recorded,
                                 report=lambda message: warnings.warn(message, stacklevel=3))
        throughput = []
        if client is None:
            runner.run(items, shard)
        else:
            distributed_run = ClusterExplain(runner, client, chunk_size)
            distributed_run.run(items, shard)
            throughput = distributed_run.throughput.lines()
    finally:
        stream.close()
    return FolderResult(runner.explained, runner.written, runner.resumed, list(runner.failures), throughput)
