"""Plain SAM checkpoints keep working: the graphs exported from a SAM ``.pth`` vs segment_anything
(injected mask tokens, and SamPredictor with the learned tokens)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from xsyn.export.onnx_export import compare_outputs, onnxruntime_outputs

pytestmark = pytest.mark.slow
OUTS = ["masks", "iou_predictions", "low_res_masks"]


@pytest.fixture
def sam_export(tiny_sam_export):
    return tiny_sam_export


def _decoder_reference(sam, embedding, coords, labels, tokens, orig_hw, multimask):
    """segment_anything's own prompt encoder + mask decoder with the mask tokens replaced."""
    sam = copy.deepcopy(sam)
    with torch.no_grad():
        sam.mask_decoder.mask_tokens.weight.copy_(torch.from_numpy(tokens))
        sparse, dense = sam.prompt_encoder(points=(torch.from_numpy(coords), torch.from_numpy(labels)),
                                           boxes=None, masks=None)
        low, iou = sam.mask_decoder(image_embeddings=torch.from_numpy(embedding),
                                    image_pe=sam.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                    dense_prompt_embeddings=dense, multimask_output=multimask)
        input_hw = _resized(orig_hw, sam.image_encoder.img_size)
        masks = sam.postprocess_masks(low, input_hw, orig_hw)
    return [masks.numpy(), iou.numpy(), low.numpy()]


def _resized(hw, longest):
    scale = longest / max(hw)
    return int(hw[0] * scale + 0.5), int(hw[1] * scale + 0.5)


def test_decoder_with_injected_tokens_matches_pytorch(sam_export):
    out, sam = sam_export
    rng = np.random.default_rng(5)
    p, n, orig_hw = 6, 3, (90, 128)
    embedding = rng.standard_normal((1, 32, 8, 8)).astype(np.float32)
    coords = rng.uniform(0, 128, (p, n, 2)).astype(np.float32)
    labels = rng.choice(np.array([0, 1], np.float32), (p, n)).astype(np.float32)
    tokens = rng.standard_normal((4, 32)).astype(np.float32)
    # segment_anything pads point prompts without a box with one "not a point" entry
    coords_pad = np.concatenate([coords, np.zeros((p, 1, 2), np.float32)], 1)
    labels_pad = np.concatenate([labels, -np.ones((p, 1), np.float32)], 1)
    inputs = {
        "image_embeddings": embedding, "point_coords": coords_pad, "point_labels": labels_pad,
        "mask_input": np.zeros((1, 1, 32, 32), np.float32), "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(orig_hw, np.float32), "mask_tokens": tokens[None],
    }
    got = onnxruntime_outputs(out / "sam_decoder" / "1" / "model.onnx", inputs, OUTS)
    multi = _decoder_reference(sam, embedding, coords, labels, tokens, orig_hw, multimask=True)
    single = _decoder_reference(sam, embedding, coords, labels, tokens, orig_hw, multimask=False)
    report = compare_outputs(OUTS, multi, [g[:, 1:] for g in got], 1e-4)
    report |= {k + "_single": v for k, v in compare_outputs(OUTS, single, [g[:, :1] for g in got], 1e-4).items()}
    assert all(v["ok"] for v in report.values()), report


def test_encoder_and_decoder_with_learned_tokens_match_sam_predictor(sam_export):
    from segment_anything import SamPredictor

    out, sam = sam_export
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, (75, 140, 3), dtype=np.uint8)  # non-square
    point, box = np.array([[60.0, 30.0]]), np.array([20.0, 10.0, 110.0, 70.0])
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    ref_masks, ref_iou, ref_low = predictor.predict(point_coords=point, point_labels=np.array([1]), box=box,
                                                    multimask_output=True, return_logits=True)

    encoder_in = predictor.model.preprocess(
        torch.as_tensor(predictor.transform.apply_image(image)).permute(2, 0, 1)[None].float()).numpy()
    (embedding,) = onnxruntime_outputs(out / "sam_image_encoder" / "1" / "model.onnx", {"image": encoder_in},
                                       ["image_embeddings"])
    coords = predictor.transform.apply_coords(np.concatenate([point, box.reshape(2, 2)]), image.shape[:2])
    inputs = {
        "image_embeddings": embedding, "point_coords": coords[None].astype(np.float32),
        "point_labels": np.array([[1, 2, 3]], np.float32),
        "mask_input": np.zeros((1, 1, 32, 32), np.float32), "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(image.shape[:2], np.float32),
        "mask_tokens": np.load(out / "sam_decoder" / "1" / "sam_mask_tokens.npy"),
    }
    masks, iou, low = onnxruntime_outputs(out / "sam_decoder" / "1" / "model.onnx", inputs, OUTS)
    report = compare_outputs(OUTS, [ref_masks, ref_iou, ref_low], [masks[0, 1:], iou[0, 1:], low[0, 1:]], 1e-4)
    assert all(v["ok"] for v in report.values()), report
