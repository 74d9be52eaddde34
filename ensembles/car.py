"""Cross-Attention Refinement (Xsyn CAR, paper section IV.B).

Per generated item, on the un-occluded image at the generation size:
1. ``r`` = SAM on the attention map (as a 3-channel image) with the grounding box, restricted
   to the box: the most class-discriminative region;
2. background point = minimum activation in the box outside ``r``;
3. Median Point Sampling in ``r`` -> ``2^n - 1`` foreground points;
4. SAM on the image with the points, the background point and the box (single-mask output);
5. refined box = bounding box of that mask's largest connected component (grounding box if empty).

Untrained weights can give an empty ``r``; then the box pixels at or above the box's median
activation stand in for it, and the result records that fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xsyn.api.masks import mask_box
from xsyn.ensembles.mps import background_point, box_mask, median_points
from xsyn.ensembles.sam_ops import SamImage


@dataclass
class CarResult:
    """Refined box (xyxy pixels, exclusive max), mask bool ``[H, W]``, and the prompts used."""

    box: tuple[float, float, float, float]
    mask: np.ndarray
    foreground_points: list[tuple[int, int]] = field(default_factory=list)
    background_point: tuple[int, int] | None = None
    region_fallback: bool = False
    kept_grounding_box: bool = False


def largest_component_box(mask: np.ndarray):
    """(xyxy box of the largest 8-connected component, its mask), or (None, empty mask)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), int))
    if n == 0:
        return None, np.zeros_like(mask)
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    component = labels == (int(np.argmax(sizes)) + 1)
    return tuple(mask_box(component)), component


def discriminative_region(attention_image: SamImage, activation: np.ndarray, box) -> tuple[np.ndarray, bool]:
    """Step 1: SAM's single mask for the box on the attention map, within the box; (region, fallback used)."""
    masks, _, _ = attention_image.predict(boxes=np.asarray([box], np.float64))
    inside = box_mask(activation.shape, box)
    region = (masks[0, 0] > 0) & inside
    if region.any():
        return region, False
    values = activation[inside]
    return inside & (activation >= np.median(values)) if values.size else inside, True


def refine(image: SamImage, attention_image: SamImage, activation: np.ndarray, box, divisions: int) -> CarResult:
    """Steps 1-5 for one item. ``activation``: float ``[H, W]`` attention map at the image size."""
    region, fallback = discriminative_region(attention_image, activation, box)
    bg = background_point(activation, region, box)
    fg = median_points(activation, region, divisions)
    points = fg + ([bg] if bg is not None else [])
    labels = [1] * len(fg) + ([0] if bg is not None else [])
    if points:
        masks, _, _ = image.predict(points=np.asarray([points], np.float64), labels=np.asarray([labels], np.float32),
                                    boxes=np.asarray([box], np.float64))
    else:
        masks, _, _ = image.predict(boxes=np.asarray([box], np.float64))
    refined, component = largest_component_box(masks[0, 0] > 0)
    if refined is None:
        return CarResult(tuple(float(v) for v in box), component, fg, bg, fallback, kept_grounding_box=True)
    return CarResult(refined, component, fg, bg, fallback)
