"""Plain sharding: N independent runs (SLURM array jobs, GNU parallel, several shells) that
together cover an input list exactly once.

The list is sorted by output path (the input's path relative to the inputs' common folder, which
every run computes alike from the same arguments) and image i goes to shard i mod N + 1: a shard
depends only on the list, never on which runs happen to be going, and neighbouring files (often
alike in size) are spread evenly.
"""

from .errors import LrpToolError


def parse_shard(text):
    """``K/N`` with 1 ≤ K ≤ N → (K, N); None stays None."""
    if text is None:
        return None
    first, slash, second = text.strip().partition("/")
    if slash and first.isdigit() and second.isdigit() and 1 <= int(first) <= int(second):
        return int(first), int(second)
    raise LrpToolError(f"--shard {text!r}: give K/N with 1 ≤ K ≤ N (e.g. --shard 2/8 for the second of 8 shares)")


def shard_share(items, shard, shards):
    """The ``shard``-th (1-based) of ``shards`` shares of ``items`` (objects with ``stem`` and
    ``path``), in sorted order."""
    ordered = sorted(items, key=lambda item: (item.stem, item.path))
    return ordered[shard - 1::shards]
