"""lrptool: explain neural-network predictions with Layer-wise Relevance Propagation."""

__version__ = "0.1.0"
