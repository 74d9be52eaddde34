"""Median Point Sampling (Xsyn CAR, paper section IV.B).

Activation maps are float ``[H, W]``; regions are bool ``[H, W]``; points are ``(x, y)``
integer pixel coordinates (x = column, y = row).
"""

from __future__ import annotations

import numpy as np


def box_mask(shape: tuple[int, int], box) -> np.ndarray:
    """bool ``[H, W]``: pixels whose centres lie in the xyxy box (floor/ceil to whole pixels)."""
    h, w = shape
    x0, y0, x1, y1 = box
    out = np.zeros((h, w), bool)
    out[max(int(np.floor(y0)), 0):min(int(np.ceil(y1)), h), max(int(np.floor(x0)), 0):min(int(np.ceil(x1)), w)] = True
    return out


def median_points(activation: np.ndarray, region: np.ndarray, divisions: int) -> list[tuple[int, int]]:
    """Up to ``2**divisions - 1`` foreground points, level by level.

    The region's pixels are sorted by activation (ties by row, then column); the median pixel
    is a point; the pixels below it and above it form two sub-regions that are divided the same
    way, ``divisions`` levels deep. With an even count the lower middle is the median (the
    reference picks one of the two at random; this rule is deterministic). Empty sub-regions
    yield no point. ``divisions = 0`` gives no points (box-only prompt).
    """
    rows, cols = np.nonzero(region)
    if divisions <= 0 or rows.size == 0:
        return []
    order = np.lexsort((cols, rows, activation[rows, cols]))
    rows, cols = rows[order], cols[order]
    points: list[tuple[int, int]] = []
    level = [(0, rows.size)]
    for _ in range(divisions):
        nxt = []
        for lo, hi in level:
            if lo >= hi:
                continue
            mid = lo + (hi - lo - 1) // 2
            points.append((int(cols[mid]), int(rows[mid])))
            nxt += [(lo, mid), (mid + 1, hi)]
        level = nxt
    return points


def background_point(activation: np.ndarray, region: np.ndarray, box) -> tuple[int, int] | None:
    """Minimum-activation pixel inside the box and outside the region (first in row-major order), or None."""
    candidates = box_mask(activation.shape, box) & ~region
    if not candidates.any():
        return None
    values = np.where(candidates, activation, np.inf)
    y, x = np.unravel_index(int(np.argmin(values)), values.shape)
    return int(x), int(y)
