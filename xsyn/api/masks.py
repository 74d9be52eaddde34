"""Masks: bounding boxes and COCO RLE. Masks are bool ``[H, W]`` (row = y, column = x).

Boxes are ``[x0, y0, x1, y1]`` pixels with exclusive ``x1``/``y1``; RLE is COCO's compressed
form ``{"size": [H, W], "counts": str}`` (pycocotools, column-major).
"""

from __future__ import annotations

import numpy as np


def mask_box(mask: np.ndarray) -> list[float] | None:
    """xyxy box (exclusive max) of a bool ``[H, W]`` mask's pixels, or None when it is empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def rle_encode(mask: np.ndarray) -> dict:
    """bool ``[H, W]`` -> COCO RLE ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE (``counts`` as str or bytes) -> bool ``[H, W]``."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
    return mask_utils.decode({"size": list(rle["size"]), "counts": counts}).astype(bool)


def rle_area(rle: dict) -> float:
    """Pixel count of a COCO RLE mask."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
    return float(mask_utils.area({"size": list(rle["size"]), "counts": counts}))
