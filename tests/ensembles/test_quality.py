"""The trained tiny preset works end to end: quality measured through the served pipelines.

One :func:`xsyn.client.quality.measure` run on the phantom validation split against the session's
real tritonserver (trained ``tiny`` preset), with the plain-SAM baseline (the preset's
``sam_baseline.safetensors``, exported like any SAM checkpoint) run in-process. Thresholds sit
below what the committed weights reach (docs/measurements.md, "Quality of the trained tiny
preset"), with margin, and above what the tiny-random weights reach, so each would fail on them.
What the weights do not reach yet is reported there, not asserted: the painted colour names the
class for 1 box in 12, CAR's refined box is tighter than the painted item (IoU 0.22 after vs
0.89 before), BOM finds no occluder, and the magic-wand click (0.56) beats both models.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import run_env

IMAGES = 6


@pytest.fixture(scope="module")
def baseline_repo(tmp_path_factory, cache_home):
    from xsyn.export.sources import TINY_WEIGHTS

    out = tmp_path_factory.mktemp("sam_baseline")
    proc = subprocess.run([sys.executable, "-m", "xsyn.client.cli", "export", "--checkpoint",
                           str(TINY_WEIGHTS / "sam_baseline.safetensors"), "--out", str(out)],
                          capture_output=True, text=True, env=run_env(cache_home), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def report(onnxruntime_server, baseline_repo):
    from xsyn.client.quality import InProcessAnnotator, measure
    from xsyn.client.sdk import XsynClient

    with XsynClient(onnxruntime_server.options.grpc_url) as client:
        return measure(client, images=IMAGES, baseline=InProcessAnnotator(baseline_repo))


# Measured on the committed weights (docs/measurements/tiny_quality/quality_tiny.json) and on
# tiny-random (quality_tiny_random.json), 6 validation bags, 12 objects:
#   sam_iou_with_painted 0.17 (random 0.004); car_box_iou_after_mps4 0.22 (random 0.008);
#   one-click mIoU APSAM 0.29, with adaptive points 0.32, plain-SAM baseline 0.13 (random 0.011 each);
#   AMG with the tiny defaults (components split) 21 masks an image (random: 72 masks, recall 0).


def test_sam_finds_the_painted_items_inside_their_boxes(report):
    s = report["synthesis"]
    assert s["painted_rate"] == 1.0, s
    assert s["sam_iou_with_painted"] >= 0.08, s


def test_car_boxes_overlap_the_painted_items(report):
    s = report["synthesis"]
    assert min(s["car_box_iou_after_mps0"], s["car_box_iou_after_mps4"]) >= 0.1, s


def test_one_click_apsam_masks_beat_the_plain_sam_baseline(report):
    a = report["annotation"]
    assert a["miou"]["apsam"] >= 0.18, a
    assert a["miou"]["apsam"] >= a["miou"]["sam"] + 0.05, a
    assert a["miou"]["apsam_apg"] >= a["miou"]["apsam"] - 0.03, a


def test_automatic_masks_are_few_and_find_objects(report):
    a = report["annotation"]
    assert 1 <= a["amg_masks_per_image"] <= 40, a
    assert a["amg_recall_at_0.5"] >= 0.08, a


def test_the_truth_the_measurements_use_is_exact_on_real_items():
    """The painted-region and colour rules recover the rendered items from (image, empty bag)."""
    import numpy as np

    from xsyn.client.quality import box_region, loosened, mask_iou, painted_class, painted_region, val_scenes

    ious, right = [], []
    for scene in val_scenes(12, seed=5):
        every = np.any([m for _, m in scene.items], axis=0)
        for cls, mask in scene.items:
            box = loosened(mask)
            ious.append(mask_iou(painted_region(scene.image, scene.empty, box), every & box_region(box)))
            alone = mask & ~np.any([m for m in (m for _, m in scene.items) if m is not mask] or [0 * mask], axis=0)
            right.append(painted_class(scene.image, scene.empty, alone) == cls)
    assert all(right) and np.mean(ious) > 0.9, (ious, right)
