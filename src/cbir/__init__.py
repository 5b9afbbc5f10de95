"""cbir: a reproducible content-based image retrieval research pipeline."""

__version__ = "0.1.0"
