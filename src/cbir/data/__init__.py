"""Datasets: safe downloads, sources, image decoding, curation and the manifest."""
