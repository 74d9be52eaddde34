"""Idle regions and class groups on constructed masks."""

import numpy as np
import pytest

from xsyn.errors import InvalidArgument
from xsyn.api.class_groups import load_class_groups, shipped_names
from xsyn.ensembles.idle_regions import IdleRules, box_iou, idle_candidates, pick_idle_box


def test_exactly_the_allowed_regions_pass():
    boxes = [
        (0, 0, 512, 512),      # 0 background: one of the two largest, dropped
        (20, 20, 480, 480),    # 1 the bag: dropped
        (40, 40, 140, 140),    # 2 overlaps the annotation (IoU 0.64): rejected
        (300, 300, 400, 380),  # 3 free, area 8000: kept
        (300, 40, 310, 50),    # 4 free but area 100 < 500: rejected
        (200, 200, 399, 399),  # 5 area 39601 > 30000: rejected
        (60, 300, 160, 380),   # 6 free, area 8000: kept
        (50, 50, 150, 150),    # 7 IoU with annotation exactly 1: rejected
    ]
    areas = [262144, 200000, 9000, 7000, 90, 35000, 6000, 9500]
    annotations = [(50, 50, 150, 150)]
    rules = IdleRules(iou_threshold=0.2, min_area=500, max_area=30000)
    assert idle_candidates(boxes, areas, annotations, rules, 512) == [3, 6]
    assert box_iou(boxes[2], annotations[0]) >= 0.2
    assert pick_idle_box(boxes, areas, annotations, rules, 512, np.random.default_rng(0)) in (boxes[3], boxes[6])
    strict = IdleRules(iou_threshold=0.2, min_area=500, max_area=30000, min_box_ratio=0.04)  # 10486 px minimum
    assert idle_candidates(boxes, areas, annotations, strict, 512) == []
    assert pick_idle_box(boxes, areas, annotations, strict, 512, np.random.default_rng(0)) is None


def test_class_comes_from_the_area_group():
    groups = load_class_groups("pidray")
    rng = np.random.default_rng(0)
    assert groups.pick_class(5000, 512, rng) in ("Lighter", "Bullet")
    assert groups.pick_class(12000, 512, rng) in groups.groups[1].classes
    assert groups.pick_class(30000, 512, rng) == "Hammer"
    assert groups.pick_class(3000, 256, rng) in groups.groups[1].classes  # 3000 px at 256 = 12000 at 512
    hixray = load_class_groups("hixray")
    assert hixray.pick_class(50000, 512, rng) == "Tablet"
    assert sorted(shipped_names()) == ["hixray", "opixray", "phantom", "pidray"]
    with pytest.raises(InvalidArgument, match="class_groups: unknown 'nope'"):
        load_class_groups("nope")


def test_the_phantom_groups_hold_exactly_the_classes_sample_data_draws():
    from xsyn.client.sample_data import THREATS

    phantom = load_class_groups("phantom")
    assert sorted(phantom.classes) == sorted(THREATS)
    rng = np.random.default_rng(0)
    assert phantom.pick_class(2000, 256, rng) == "Knife"  # 8000 px at 512
    assert phantom.pick_class(30000, 512, rng) in ("Hammer", "Gun")
