"""Background Occlusion Modeling (Xsyn BOM, paper section IV.C, eq. 5-9), in latent space.

Latent boxes are integer ``(x1, y1, x2, y2)`` cells, half-open (``x2``/``y2`` exclusive), on a
``[1, 4, H', W']`` latent. The occluder patch is always read from the un-occluded latent.
"""

from __future__ import annotations

import numpy as np


def to_latent_box(box, image_size: int, latent_size: int) -> tuple[int, int, int, int]:
    """xyxy pixels at ``image_size`` -> latent cells covering it (floor / ceil, clipped)."""
    f = latent_size / image_size
    x0, y0, x1, y1 = box
    lx0, ly0 = max(int(np.floor(x0 * f)), 0), max(int(np.floor(y0 * f)), 0)
    lx1, ly1 = min(int(np.ceil(x1 * f)), latent_size), min(int(np.ceil(y1 * f)), latent_size)
    return lx0, ly0, max(lx1, lx0 + 1), max(ly1, ly0 + 1)


def place_occluder(rng: np.random.Generator, target, occ_w: int, occ_h: int, width: int, height: int):
    """Eq. 9: a random ``occ_w x occ_h`` placement that overlaps ``target`` and is clipped to the latent.

    ``x1`` is drawn from ``[max(tx1 - occ_w + 1, 0), tx2 - 1]`` (inclusive), so the half-open
    placement always shares at least one cell with the target (the paper's bounds
    ``[max(tx1 - w, 0), tx2]`` include placements that only touch it); ``y1`` likewise;
    ``x2 = min(x1 + occ_w, W)``, ``y2 = min(y1 + occ_h, H)``.
    """
    tx1, ty1, tx2, ty2 = target
    x1 = int(rng.integers(max(tx1 - occ_w + 1, 0), max(tx2 - 1, 0) + 1))
    y1 = int(rng.integers(max(ty1 - occ_h + 1, 0), max(ty2 - 1, 0) + 1))
    return x1, y1, min(x1 + occ_w, width), min(y1 + occ_h, height)


def blend(latent: np.ndarray, source: np.ndarray, occluder, placement, alpha: float) -> None:
    """Eq. 5-7 in place: ``latent[placement] = alpha * source[occluder crop] + (1 - alpha) * latent[placement]``."""
    ox1, oy1, _, _ = occluder
    x1, y1, x2, y2 = placement
    patch = source[..., oy1:oy1 + (y2 - y1), ox1:ox1 + (x2 - x1)]
    latent[..., y1:y2, x1:x2] = alpha * patch + (1 - alpha) * latent[..., y1:y2, x1:x2]


def occlude(latent: np.ndarray, occluder, targets: list, alpha: float, rng: np.random.Generator):
    """Occlude every target box with the occluder patch; returns (new latent, placements)."""
    out = latent.copy()
    h, w = latent.shape[-2:]
    ox1, oy1, ox2, oy2 = occluder
    placements = []
    for target in targets:
        placement = place_occluder(rng, target, ox2 - ox1, oy2 - oy1, w, h)
        blend(out, latent, occluder, placement, alpha)
        placements.append(placement)
    return out, placements
