"""Idle regions for Xsyn-A and BOM occluders (paper eq. 3).

Boxes are xyxy pixels at the generation size. From SAM's automatic masks sorted by area
(largest first) the two largest are dropped (background and the bag); a candidate's box must
have IoU < ``d`` with every given box, a box area within the configured range, and a box no
smaller than the minimum ratio of the image area.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def box_iou(a, b) -> float:
    """IoU of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


@dataclass(frozen=True)
class IdleRules:
    """Thresholds of the idle-region rule, areas in pixels at the generation size."""

    iou_threshold: float = 0.2
    min_area: float = 500.0
    max_area: float = 30000.0
    min_box_ratio: float = 0.0
    drop_largest: int = 2


def idle_candidates(mask_boxes: list, mask_areas: list, avoid: list, rules: IdleRules, image_size: int) -> list[int]:
    """Indices (into ``mask_boxes``) of the masks that pass the rules, largest mask first."""
    order = sorted(range(len(mask_boxes)), key=lambda i: -mask_areas[i])[rules.drop_largest:]
    min_box = rules.min_box_ratio * image_size * image_size
    keep = []
    for i in order:
        box = mask_boxes[i]
        area = box_area(box)
        if not rules.min_area <= area <= rules.max_area or area < min_box:
            continue
        if all(box_iou(box, other) < rules.iou_threshold for other in avoid):
            keep.append(i)
    return keep


def pick_idle_box(mask_boxes: list, mask_areas: list, avoid: list, rules: IdleRules, image_size: int,
                  rng: np.random.Generator):
    """One candidate box chosen at random, or None when no region qualifies."""
    candidates = idle_candidates(mask_boxes, mask_areas, avoid, rules, image_size)
    if not candidates:
        return None
    return tuple(float(v) for v in mask_boxes[candidates[int(rng.integers(len(candidates)))]])
