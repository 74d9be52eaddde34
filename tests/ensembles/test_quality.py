"""The trained tiny preset works end to end: quality measured through the served pipelines.

One :func:`xsyn.client.quality.measure` run on the phantom validation split against the session's
real tritonserver (trained ``tiny`` preset), with the plain-SAM baseline (the preset's
``sam_baseline.safetensors``, exported like any SAM checkpoint) run in-process. Thresholds sit
below what the committed weights reach (docs/measurements.md, "Quality of the trained tiny
preset"), with margin, and above what the tiny-random weights reach, so each would fail on them.
What the weights do not reach yet is reported there, not asserted: the painted items are
mostly class-coloured blotches, a few bar-like outlines (the colour names the class for 4
boxes in 12); CAR's refined box is tighter than the painted item (IoU 0.46-0.49 after vs 0.94
before), and the magic-wand click (0.43) beats plain APSAM (0.38) on single clicks and only
ties APSAM with adaptive points (0.43).
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
#   sam_iou_with_painted 0.50 (random 0.015); class_accuracy 0.33 (random 0.17);
#   car_box_iou_after mps0 / mps4 0.46 / 0.49 (random 0 / 0.02);
#   BOM occluded items found 0.25, their SAM IoU 0.46 (random 0 and 0.06);
#   one-click mIoU APSAM 0.38, with adaptive points 0.43, plain-SAM baseline 0.25 (random APSAM 0.03);
#   AMG 17.5 masks an image, recall 0.75 (random: 72 masks, recall 0).


def test_sam_finds_the_painted_items_inside_their_boxes(report):
    s = report["synthesis"]
    assert s["painted_rate"] == 1.0, s
    assert s["sam_iou_with_painted"] >= 0.3, s
    assert s["class_accuracy"] >= 0.25, s


def test_car_boxes_overlap_the_painted_items(report):
    s = report["synthesis"]
    assert min(s["car_box_iou_after_mps0"], s["car_box_iou_after_mps4"]) >= 0.3, s


def test_bom_occludes_every_box_and_the_occluded_items_stay_findable(report):
    b = report["bom"]
    assert b["applied_rate"] >= 0.5 and b["occluder_overlaps_every_box"] >= 0.8, b
    assert b["occluded_found_rate"] >= 0.15 and b["occluded_sam_iou"] >= 0.3, b


def test_one_click_apsam_masks_beat_the_plain_sam_baseline(report):
    a = report["annotation"]
    assert a["miou"]["apsam"] >= 0.28, a
    assert a["miou"]["apsam"] >= a["miou"]["sam"] + 0.05, a
    assert a["miou"]["apsam_apg"] >= a["miou"]["apsam"] - 0.03, a


def test_automatic_masks_are_few_and_find_objects(report):
    a = report["annotation"]
    assert 1 <= a["amg_masks_per_image"] <= 40, a
    assert a["amg_recall_at_0.5"] >= 0.45, a


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
