"""Adaptive point generator on constructed images; the embedding cache's LRU byte budget."""

import numpy as np
import pytest

from xsyn.errors import NotFound
from xsyn.ensembles.apg import adaptive_points
from xsyn.ensembles.embedding_cache import CachedImage, EmbeddingCache, image_key


def _two_clusters():
    image = np.full((60, 80, 3), 255, np.uint8)
    image[10:50, 10:40] = (200, 40, 30)   # red half of the object
    image[10:50, 40:70] = (30, 60, 200)   # blue half
    noise = np.random.default_rng(0).integers(-8, 9, image.shape)
    image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:50, 10:70] = True
    return image, mask


def test_one_generated_point_in_each_colour_cluster():
    image, mask = _two_clusters()
    for seed in range(5):
        points = adaptive_points(image, mask, seed)
        assert len(points) == 2
        sides = sorted("red" if x < 40 else "blue" for x, y in points)
        assert sides == ["blue", "red"], (seed, points)
        assert all(mask[y, x] for x, y in points)


def test_same_seed_same_points_and_degenerate_masks():
    image, mask = _two_clusters()
    assert adaptive_points(image, mask, 7) == adaptive_points(image, mask, 7)
    assert adaptive_points(image, np.zeros_like(mask), 0) == []
    flat = np.full_like(image, 100)
    assert adaptive_points(flat, mask, 0) == []  # one colour: no second cluster


def _entry(nbytes_image):
    return CachedImage(np.zeros(nbytes_image, np.uint8), np.zeros(0, np.float32), np.zeros(0, np.float32), "sam")


def test_cache_evicts_least_recently_used_within_the_byte_budget():
    cache = EmbeddingCache(budget_bytes=250)
    cache.put("a", _entry(100))
    cache.put("b", _entry(100))
    cache.get("a")                 # a is now the most recent
    cache.put("c", _entry(100))    # 300 > 250: evict b
    assert "a" in cache and "c" in cache and "b" not in cache
    assert cache.bytes == 200 <= cache.budget and cache.evictions == 1
    with pytest.raises(NotFound, match="'b' is not cached"):
        cache.get("b")
    cache.put("big", _entry(1000))  # larger than the budget alone: kept, everything else goes
    assert len(cache) == 1 and "big" in cache


def test_keys_are_content_hashes():
    a = np.zeros((4, 5, 3), np.uint8)
    assert image_key(a) == image_key(a.copy())
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_key(a) != image_key(b)
    assert image_key(np.zeros((5, 4, 3), np.uint8)) != image_key(a)
