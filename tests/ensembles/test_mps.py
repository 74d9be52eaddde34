"""Median Point Sampling on constructed activation maps, and properties on random ones."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xsyn.ensembles.mps import background_point, box_mask, median_points


def _row_map():
    act = np.zeros((5, 12), np.float32)
    act[2, 2:9] = np.arange(7)  # region values 0..6 at x = 2..8, y = 2
    region = np.zeros_like(act, bool)
    region[2, 2:9] = True
    return act, region


def test_known_medians_level_by_level():
    act, region = _row_map()
    values = lambda pts: [float(act[y, x]) for x, y in pts]  # noqa: E731
    assert median_points(act, region, 0) == []
    assert values(median_points(act, region, 1)) == [3]
    assert values(median_points(act, region, 2)) == [3, 1, 5]
    assert values(median_points(act, region, 3)) == [3, 1, 5, 0, 2, 4, 6]  # 2^3 - 1 points
    assert median_points(act, region, 4) == median_points(act, region, 3)  # only 7 pixels


def test_even_counts_take_the_lower_middle_deterministically():
    act = np.array([[4.0, 1.0, 3.0, 2.0]])
    assert median_points(act, np.ones_like(act, bool), 1) == [(3, 0)]  # values 1,2,3,4 -> 2


def test_negative_point_is_the_minimum_in_the_box_outside_the_region():
    act, region = _row_map()
    act[1, 5] = -3.0  # inside the box, outside the region
    act[0, 0] = -9.0  # outside the box
    assert background_point(act, region, (1, 1, 10, 4)) == (5, 1)
    assert background_point(act, region, (2, 2, 9, 3)) is None  # the box is all region


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(2, 12), st.integers(2, 12)),
              elements=st.floats(-10, 10, width=32)),
       st.integers(0, 2**31 - 1), st.integers(0, 5))
def test_properties_on_random_maps(act, seed, divisions):
    rng = np.random.default_rng(seed)
    region = rng.random(act.shape) < 0.5
    points = median_points(act, region, divisions)
    k = int(region.sum())
    assert len(points) == min(k, 2**divisions - 1)
    assert len(set(points)) == len(points)
    assert all(region[y, x] for x, y in points)
    if points:
        ordered = np.sort(act[region])
        assert act[points[0][1], points[0][0]] == ordered[(k - 1) // 2]
    h, w = act.shape
    box = (0, 0, w, h)
    bg = background_point(act, region, box)
    if (~region).any():
        assert bg is not None and not region[bg[1], bg[0]]
        assert act[bg[1], bg[0]] == act[~region].min()
    else:
        assert bg is None
    assert box_mask(act.shape, box).all()
