"""The `apsam` annotation model through a real tritonserver (tiny preset: APSAM), and the same
orchestrator in-process on a plain SAM export (``sam`` mode vs segment_anything)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.conftest import APSAM_TEST_CACHE_BYTES
from xsyn.client.sdk import AnnotationSession, XsynClient, annotation_call
from xsyn.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.slow



@pytest.fixture
def tiny_server(any_server):
    """Every served test of this module runs on both leaf runtimes (ONNX Runtime and torch)."""
    return any_server

def _image(seed, h, w):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _decode(rle):
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


PROMPTS = {
    "points": dict(points=[[40.0, 30.0], [90.0, 70.0]], labels=[1, 0]),
    "box": dict(box=[20.0, 15.0, 120.0, 95.0]),
    "points and box": dict(points=[[60.0, 50.0]], labels=[1], box=[20.0, 15.0, 120.0, 95.0]),
}


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("shape", [(110, 170), (160, 125)], ids=["wide", "tall"])
def test_sam_mode_equals_sam_predictor(tiny_sam_export, shape, multimask):
    """A plain SAM export through the annotation orchestrator (in-process: the code the `apsam`
    model runs in Triton). Reference: segment_anything.SamPredictor on the same weights.
    Tolerance: scores and low-res logits within 1e-4 of the output scale; binary masks agree on
    >= 99.9% of pixels."""
    from segment_anything import SamPredictor

    from xsyn.api.annotation import SegmentRequest
    from xsyn.ensembles.annotation import Annotator
    from xsyn.ensembles.assets import ANNOTATION_GRAPHS, PipelineAssets
    from xsyn.ensembles.embedding_cache import EmbeddingCache
    from xsyn.ensembles.runner import LocalRunner

    repo, sam = tiny_sam_export
    annotator = Annotator(LocalRunner(repo), PipelineAssets.load(repo, ANNOTATION_GRAPHS), EmbeddingCache(10**8))
    image = _image(sum(shape), *shape)
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    key = annotator.embed(image).key
    for name, prompt in PROMPTS.items():
        for previous in (None, "previous"):
            mask_input = None
            if previous:  # a second click that sends the first click's low-res logits
                _, _, low = predictor.predict(point_coords=np.array([[50.0, 40.0]]), point_labels=np.array([1]),
                                              multimask_output=False)
                mask_input = low[None].astype(np.float32)
            request = SegmentRequest(key=key, points=prompt.get("points", []), labels=prompt.get("labels", []),
                                     box=prompt.get("box"), multimask=multimask, adaptive_points=False)
            response, got_low = annotator.segment(request, mask_input)
            masks, scores, low = predictor.predict(
                point_coords=np.array(prompt["points"]) if "points" in prompt else None,
                point_labels=np.array(prompt["labels"]) if "labels" in prompt else None,
                box=np.array(prompt["box"]) if "box" in prompt else None,
                mask_input=mask_input[0] if mask_input is not None else None, multimask_output=multimask)
            assert response.mode == "sam"
            assert len(response.masks) == len(masks), name
            for ours, ref_mask, ref_score in zip(response.masks, masks, scores):
                assert ours.score == pytest.approx(float(ref_score), abs=1e-4), (name, previous)
                assert (_decode(ours.rle) == ref_mask).mean() >= 0.999, (name, previous)
            best = int(np.argmax(scores))
            np.testing.assert_allclose(got_low[0, 0], low[best], atol=1e-4 * np.abs(low).max())


def _encoder_executions(client):
    stats = client.get_inference_statistics("sam_image_encoder", as_json=True)["model_stats"][0]
    return int(stats.get("execution_count", 0))


def test_clicks_reuse_the_embedding_and_apsam_tokens_are_used(tiny_server, client):
    image = _image(41, 120, 160)
    before = _encoder_executions(client)
    with XsynClient(tiny_server.options.grpc_url) as sdk:
        first = sdk.embed(image)
        again = sdk.embed(image)
        apsam = sdk.segment(first.key, [[50.0, 40.0]], [1], adaptive_points=False)
        with pytest.raises(InvalidArgument, match="APSAM, which has none"):
            sdk.segment(first.key, [[50.0, 40.0]], [1], adaptive_points=False, tokens="sam")
        adaptive = sdk.segment(first.key, [[50.0, 40.0]], [1], seed=3)
        adaptive_again = sdk.segment(first.key, [[50.0, 40.0]], [1], seed=3)
    assert _encoder_executions(client) - before == 1
    assert first.mode == "apsam" and again.cached and again.key == first.key
    assert apsam.response.mode == "apsam" and apsam.low_res_mask.shape == (1, 1, 128, 128)
    assert len(adaptive.response.adaptive_points) == 2 and len(adaptive.response.points) == 3
    assert adaptive.response == adaptive_again.response  # seeded, deterministic
    assert adaptive.response.masks[0].polygons and adaptive.response.masks[0].rle["size"] == [120, 160]


def test_eviction_respects_the_budget_and_sessions_re_embed(tiny_server):
    images = [_image(100 + k, 150, 200) for k in range(3)]  # 90 kB each + 131 kB embedding; budget 600 kB
    per_entry = images[0].nbytes + 32 * 32 * 32 * 4
    assert 2 * per_entry < APSAM_TEST_CACHE_BYTES < 4 * per_entry
    with XsynClient(tiny_server.options.grpc_url) as sdk:
        session = AnnotationSession(sdk, images[0])
        session.click(60, 50)
        keys = [sdk.embed(im).key for im in images[1:]] + [sdk.embed(_image(200, 150, 200)).key]
        with pytest.raises(NotFound, match="not cached"):
            sdk.segment(session.key, [[60.0, 50.0]], [1])
        result = session.click(80, 70, positive=False)  # NOT_FOUND inside: re-embedded, click repeated
        assert session.reembeds == 1 and len(result.response.points) == 2
        assert sdk.segment(keys[-1], [[10.0, 10.0]], [1]).response.key == keys[-1]


def test_concurrent_sessions_on_different_images_stay_separate(tiny_server):
    images = [_image(300 + k, 100, 130) for k in range(3)]
    with XsynClient(tiny_server.options.grpc_url) as sdk:
        alone = [AnnotationSession(sdk, im).click(40, 30).response for im in images]
    together, errors = [None] * 3, []

    def run(k):
        try:
            with XsynClient(tiny_server.options.grpc_url) as sdk:
                together[k] = AnnotationSession(sdk, images[k]).click(40, 30).response
        except Exception as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and together == alone


def test_bad_annotation_input(tiny_server, client):
    with XsynClient(tiny_server.options.grpc_url) as sdk:
        key = sdk.embed(_image(7, 80, 100)).key
        cases = [
            (lambda: sdk.segment(key, [[150.0, 10.0]], [1]), InvalidArgument, "points.0"),
            (lambda: sdk.segment(key, [[float("nan"), 10.0]], [1]), InvalidArgument, "points"),
            (lambda: sdk.segment(key, [[10.0, 10.0]], [2]), InvalidArgument, "labels"),
            (lambda: sdk.segment(key), InvalidArgument, "at least one point or a box"),
            (lambda: sdk.segment(key, box=[10.0, 10.0, 5.0, 50.0]), InvalidArgument, "box"),
            (lambda: sdk.segment(key, [[10.0, 10.0]], [1, 0]), InvalidArgument, "labels"),
            (lambda: sdk.segment("0" * 32, [[10.0, 10.0]], [1]), NotFound, "key"),
            (lambda: sdk.segment(key, [[10.0, 10.0]], [1], mask_input=np.zeros((1, 1, 8, 8), np.float32)),
             InvalidArgument, "mask_input"),
            (lambda: sdk.embed(b"\x89PNG\r\n\x1a\nbroken"), InvalidArgument, "image"),
            (lambda: sdk.embed(np.zeros((50, 50, 3), np.float32)), InvalidArgument, "image"),
            (lambda: sdk.embed(np.zeros((50, 50), np.uint8)), InvalidArgument, "image"),
            (lambda: sdk._call(*annotation_call({"op": "erase"})), InvalidArgument, "op"),
        ]
        for call, error, field in cases:
            with pytest.raises(error) as info:
                call()
            assert field in str(info.value), (field, str(info.value))
            assert client.is_server_ready()
        assert sdk.segment(key, [[10.0, 10.0]], [1]).response.masks


def test_a_plain_sam_export_runs_in_sam_mode(tiny_sam_export):
    from xsyn.api.annotation import SegmentRequest
    from xsyn.ensembles.annotation import Annotator
    from xsyn.ensembles.assets import ANNOTATION_GRAPHS, PipelineAssets
    from xsyn.ensembles.embedding_cache import EmbeddingCache
    from xsyn.ensembles.runner import LocalRunner

    repo, _ = tiny_sam_export
    assets = PipelineAssets.load(repo, ANNOTATION_GRAPHS)
    annotator = Annotator(LocalRunner(repo), assets, EmbeddingCache(10**7))
    embedded = annotator.embed(_image(9, 90, 120))
    response, low = annotator.segment(SegmentRequest(key=embedded.key, points=[[30.0, 30.0]], labels=[1]))
    assert assets.sam_input == "sam" and assets.sam_mask_tokens.shape == (1, 4, 32)
    assert embedded.mode == "sam" and response.mode == "sam" and low.shape == (1, 1, 32, 32)
