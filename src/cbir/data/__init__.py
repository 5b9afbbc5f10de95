"""Datasets: safe downloads, sources, image decoding and curation (the ``download`` and ``curate`` stages)."""

from cbir.data.images import ImageError, decode_rgb, load_rgb, open_rgb

__all__ = ["ImageError", "decode_rgb", "load_rgb", "open_rgb"]
