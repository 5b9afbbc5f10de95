"""The figures of a paper: sample trials, curves, heat maps, maps and galleries (matplotlib, no pyplot)."""
