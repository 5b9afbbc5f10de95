"""The per-dataset Markdown report, the README results block and the offline DVC plots page."""
