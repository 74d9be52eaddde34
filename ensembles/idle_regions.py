"""Idle regions for Xsyn-A and BOM occluders (paper eq. 3).

Boxes are xyxy pixels at the generation size. From SAM's automatic masks sorted by area
(largest first) the two largest are dropped (background and the bag); a candidate's box must
have IoU < ``d`` with every given box, a box area within the configured range, and a box no
smaller than the minimum ratio of the image area.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def box_ious(boxes, others) -> np.ndarray:
    """IoU matrix ``[len(boxes), len(others)]`` of xyxy boxes (``torchvision.ops.box_iou``, float64)."""
    import torch
    from torchvision.ops import box_iou as torchvision_box_iou

    a = torch.as_tensor(np.asarray(boxes, np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(others, np.float64).reshape(-1, 4))
    return torchvision_box_iou(a, b).nan_to_num(0.0).numpy()


def box_iou(a, b) -> float:
    """IoU of two xyxy boxes."""
    return float(box_ious([a], [b])[0, 0])


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
    sized = [i for i in order if rules.min_area <= box_area(mask_boxes[i]) <= rules.max_area
             and box_area(mask_boxes[i]) >= min_box]
    if not sized or not avoid:
        return sized
    ious = box_ious([mask_boxes[i] for i in sized], avoid)
    return [i for i, row in zip(sized, ious) if np.all(row < rules.iou_threshold)]


def pick_idle_box(mask_boxes: list, mask_areas: list, avoid: list, rules: IdleRules, image_size: int,
                  rng: np.random.Generator):
    """One candidate box chosen at random, or None when no region qualifies."""
    candidates = idle_candidates(mask_boxes, mask_areas, avoid, rules, image_size)
    if not candidates:
        return None
    return tuple(float(v) for v in mask_boxes[candidates[int(rng.integers(len(candidates)))]])
