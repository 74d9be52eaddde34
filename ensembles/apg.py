"""Adaptive Point Generator (APSAM, methods.md section 4), used at inference to expand one click.

k-means (k = 2) on the RGB values of the pixels inside a predicted mask; one pixel is drawn
from each cluster ``samples`` times and the pair farthest apart (in pixels) becomes two extra
positive points. Seeded: the same image, mask and seed give the same points.
Points are ``(x, y)`` pixel coordinates.
"""

from __future__ import annotations

import numpy as np


def two_means(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels (0/1) of a 2-means clustering of ``values`` ``[N, D]`` (scipy's k-means++, seeded by ``rng``)."""
    from scipy.cluster.vq import kmeans2

    _, labels = kmeans2(values, 2, minit="++", seed=rng)
    return labels


def adaptive_points(image: np.ndarray, mask: np.ndarray, seed: int, samples: int = 6) -> list[tuple[int, int]]:
    """Two extra positive points inside ``mask`` (bool ``[H, W]``) of ``image`` (uint8 ``[H, W, 3]``).

    Returns ``[]`` when the mask has fewer than two pixels or its colours form a single cluster.
    """
    rows, cols = np.nonzero(mask)
    if rows.size < 2:
        return []
    rng = np.random.default_rng(seed)
    colours = image[rows, cols].astype(np.float64)
    labels = two_means(colours, rng)
    clusters = [np.flatnonzero(labels == k) for k in range(2)]
    if any(c.size == 0 for c in clusters):
        return []
    best, best_d = None, -1.0
    for _ in range(samples):
        a, b = (int(rng.choice(c)) for c in clusters)
        d = float((rows[a] - rows[b]) ** 2 + (cols[a] - cols[b]) ** 2)
        if d > best_d:
            best, best_d = (a, b), d
    return [(int(cols[i]), int(rows[i])) for i in best]
