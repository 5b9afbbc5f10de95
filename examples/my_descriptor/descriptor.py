"""A researcher's own descriptor, kept outside ``src/``: a 4 x 4 grid of mean colours ("colour layout").

Any function ``image -> vector`` works: ``image`` is an RGB ``uint8`` array ``[H, W, 3]``; the vector's
length must depend only on the parameters.  The pipeline L2-normalises it and ranks by cosine.
"""

from __future__ import annotations

import numpy as np


def colour_layout(image: np.ndarray, grid: int = 4) -> np.ndarray:
    """Mean R, G, B of each cell of a ``grid`` x ``grid`` partition of the image, in [0, 1]; D = 3 * grid**2."""
    h, w = image.shape[:2]
    rows = np.array_split(np.arange(h), grid)
    cols = np.array_split(np.arange(w), grid)
    cells = [image[r[0]:r[-1] + 1, c[0]:c[-1] + 1].reshape(-1, 3).mean(axis=0) / 255.0
             for r in rows for c in cols]
    return np.concatenate(cells).astype(np.float32)
