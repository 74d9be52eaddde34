"""Background Occlusion Modeling on constructed latents."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from xsyn.ensembles.bom import occlude, place_occluder, to_latent_box


def test_exactly_the_placed_region_changes_by_alpha_blending():
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    occluder, target, alpha = (10, 10, 13, 12), (2, 3, 6, 6), 0.3
    out, (placement,) = occlude(latent, occluder, [target], alpha, np.random.default_rng(1))
    x1, y1, x2, y2 = placement
    changed = np.any(out != latent, axis=(0, 1))
    expected = np.zeros((16, 16), bool)
    expected[y1:y2, x1:x2] = True
    assert (changed == expected).all()
    patch = latent[..., 10:10 + (y2 - y1), 10:10 + (x2 - x1)]
    np.testing.assert_allclose(out[..., y1:y2, x1:x2], alpha * patch + (1 - alpha) * latent[..., y1:y2, x1:x2], rtol=1e-6)
    assert (x2 - x1, y2 - y1) == (3, 2)


def test_alpha_zero_changes_nothing_and_one_copies_the_occluder():
    latent = np.random.default_rng(2).standard_normal((1, 4, 8, 8)).astype(np.float32)
    same, _ = occlude(latent, (0, 0, 2, 2), [(4, 4, 6, 6)], 0.0, np.random.default_rng(0))
    assert np.array_equal(same, latent)
    copied, ((x1, y1, x2, y2),) = occlude(latent, (0, 0, 2, 2), [(4, 4, 6, 6)], 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(copied[..., y1:y2, x1:x2], latent[..., : y2 - y1, : x2 - x1])


@settings(max_examples=200, deadline=None)
@given(st.integers(8, 64), st.data())
def test_placements_overlap_their_boxes_and_respect_the_borders(size, data):
    x1 = data.draw(st.integers(0, size - 1))
    y1 = data.draw(st.integers(0, size - 1))
    target = (x1, y1, data.draw(st.integers(x1 + 1, size)), data.draw(st.integers(y1 + 1, size)))
    ow, oh = data.draw(st.integers(1, size)), data.draw(st.integers(1, size))
    px1, py1, px2, py2 = place_occluder(np.random.default_rng(data.draw(st.integers(0, 2**31))), target, ow, oh, size, size)
    assert 0 <= px1 < px2 <= size and 0 <= py1 < py2 <= size
    assert px2 - px1 <= ow and py2 - py1 <= oh
    assert px1 < target[2] and px2 > target[0] and py1 < target[3] and py2 > target[1]  # overlap


def test_pixel_boxes_project_to_covering_latent_cells():
    assert to_latent_box((10, 20, 90, 41), 256, 32) == (1, 2, 12, 6)
    assert to_latent_box((0, 0, 256, 256), 256, 32) == (0, 0, 32, 32)
    assert to_latent_box((100, 100, 101, 101), 256, 32) == (12, 12, 13, 13)
