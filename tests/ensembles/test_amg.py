"""Automatic mask generation through the exported SAM graphs vs segment_anything's generator."""

import numpy as np
import pytest

from xsyn.ensembles.assets import PipelineAssets
from xsyn.ensembles.runner import LocalRunner
from xsyn.ensembles.sam_ops import AmgSettings, SamImage, embed_images, generate_masks

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("nms", [0.7, 0.99])
def test_same_masks_as_sam_automatic_mask_generator(tiny_sam_export, nms):
    from segment_anything import SamAutomaticMaskGenerator

    from xsyn.ensembles.assets import ANNOTATION_GRAPHS

    repo, sam = tiny_sam_export
    assets = PipelineAssets.load(repo, ANNOTATION_GRAPHS)
    runner = LocalRunner(repo)
    image = np.random.default_rng(3).integers(0, 256, (96, 144, 3), dtype=np.uint8)
    # thresholds relaxed so that untrained weights leave masks (0 disables a filter in both)
    settings = AmgSettings(points_per_side=6, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                           box_nms_thresh=nms)
    embeddings, tokens = embed_images(runner, [image], assets)
    sam_image = SamImage.from_embedding(runner, embeddings[0], image.shape[:2], assets, tokens[0])
    ours = generate_masks(sam_image, settings)
    reference = SamAutomaticMaskGenerator(sam, points_per_side=6, points_per_batch=16, pred_iou_thresh=0.0,
                                          stability_score_thresh=0.0, box_nms_thresh=nms).generate(image)
    assert len(ours) == len(reference) > 0
    ref_sorted = sorted(reference, key=lambda m: (-m["predicted_iou"], m["point_coords"][0]))
    our_sorted = sorted(ours, key=lambda m: (-m.predicted_iou, list(m.point)))
    for mine, ref in zip(our_sorted, ref_sorted):
        assert mine.predicted_iou == pytest.approx(ref["predicted_iou"], abs=1e-4)
        inter = np.logical_and(mine.segmentation, ref["segmentation"]).sum()
        union = np.logical_or(mine.segmentation, ref["segmentation"]).sum()
        assert inter / union > 0.995  # logits within 1e-6 can flip a few pixels at 0
        x, y, w, h = ref["bbox"]
        assert np.allclose(mine.box, (x, y, x + w + 1, y + h + 1), atol=1)
