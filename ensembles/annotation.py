"""APSAM annotation orchestrator: embed once, click many, automatic masks.

Coordinates: points ``[x, y]`` and boxes ``[x0, y0, x1, y1]`` in pixels of the embedded image;
masks come back at that image's size as COCO RLE and polygons (``[x0, y0, x1, y1, ...]``).
Mode ``apsam``: the exported model is APSAM (the reference's architecture) and its image
encoder gives each image's mask tokens; ``sam``: a plain SAM export, with SAM's learned tokens.
"""

from __future__ import annotations

import numpy as np

from xsyn.api.annotation import AnnotationResponse, GenerateRequest, MaskOut, SegmentRequest
from xsyn.api.masks import mask_box, rle_encode
from xsyn.api.validation import outside
from xsyn.errors import InvalidArgument
from xsyn.ensembles import images
from xsyn.ensembles.apg import adaptive_points
from xsyn.ensembles.assets import PipelineAssets
from xsyn.ensembles.embedding_cache import CachedImage, EmbeddingCache, image_key
from xsyn.ensembles.runner import Runner
from xsyn.ensembles.sam_ops import SamImage, embed_images, generate_masks
from xsyn.ensembles.synthesis import PROFILE_DEFAULTS
from xsyn.settings import ServerSettings


def polygons(mask: np.ndarray, tolerance: float = 1.0) -> list[list[float]]:
    """Outer contours of a bool mask as flat ``[x0, y0, x1, y1, ...]`` polygons (COCO style)."""
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(mask.astype(np.uint8), 1)
    out = []
    for contour in find_contours(padded, 0.5):
        contour = approximate_polygon(contour - 1, tolerance)
        if len(contour) >= 3:
            out.append([round(float(v), 1) for y, x in contour for v in (x, y)])
    return out


class Annotator:
    """Embed / segment / generate over the ``sam_image_encoder`` / ``sam_decoder`` graphs (SAM or APSAM)."""

    def __init__(self, runner: Runner, assets: PipelineAssets, cache: EmbeddingCache,
                 settings: ServerSettings | None = None) -> None:
        """``settings``: the per-request budgets (image pixels, AMG memory), defaults if None."""
        self.runner = runner
        self.assets = assets
        self.cache = cache
        self.settings = settings or ServerSettings()

    @property
    def mode(self) -> str:
        return "apsam" if self.assets.sam_input == "apsam" else "sam"

    def embed(self, image: np.ndarray) -> AnnotationResponse:
        """Run the image encoder (once per image content) and cache the embedding."""
        image = images.check_image(image, self.settings.max_image_pixels)
        key = image_key(image)
        h, w = image.shape[:2]
        if key in self.cache:
            entry = self.cache.get(key)
            return AnnotationResponse(op="embed", key=key, mode=entry.mode, image_size=[w, h], cached=True)
        embedding, tokens = embed_images(self.runner, [image], self.assets)
        self.cache.put(key, CachedImage(image, embedding, tokens, self.mode))
        return AnnotationResponse(op="embed", key=key, mode=self.mode, image_size=[w, h])

    def segment(self, req: SegmentRequest, mask_input: np.ndarray | None = None
                ) -> tuple[AnnotationResponse, np.ndarray]:
        """A click: first pass, APG points, second pass. Returns the response and the low-res
        logits ``[1, 1, 4E, 4E]`` of the returned (best) mask, to send back with the next click."""
        entry = self.cache.get(req.key)
        h, w = entry.image.shape[:2]
        for i, (x, y) in enumerate(req.points):
            if not (0 <= x <= w and 0 <= y <= h):
                raise InvalidArgument(f"points.{i}: {[x, y]} lies outside the {w}x{h} image")
        if req.box is not None and outside(req.box, w, h):
            raise InvalidArgument(f"box: {req.box} lies outside the {w}x{h} image")
        low_side = 4 * self.assets.sam_embedding
        if mask_input is not None:
            if mask_input.shape != (1, 1, low_side, low_side) or mask_input.dtype != np.float32:
                raise InvalidArgument(f"mask_input: {mask_input.dtype} {list(mask_input.shape)}, expected float32 "
                                      f"[1, 1, {low_side}, {low_side}] (the previous low_res_mask)")
            if not np.all(np.isfinite(mask_input)):
                raise InvalidArgument("mask_input: holds NaN or infinite values")
        mode = "sam" if req.tokens == "sam" else entry.mode
        if mode == "sam" and self.assets.sam_mask_tokens is None:
            raise InvalidArgument("tokens: 'sam' asks for SAM's learned mask tokens, and the exported model is APSAM, "
                                  "which has none (its tokens come from the image); use 'auto'")
        tokens = self.assets.sam_mask_tokens if mode == "sam" else entry.mask_tokens
        sam = SamImage.from_embedding(self.runner, entry.embedding, (h, w), self.assets, tokens)
        points, labels = [list(p) for p in req.points], list(req.labels)
        masks, iou, low = self._predict(sam, points, labels, req.box, mask_input)
        extra: list[tuple[int, int]] = []
        if req.adaptive_points and points:
            extra = adaptive_points(entry.image, masks[0, 0] > 0, req.seed)
            if extra:
                points += [[float(x), float(y)] for x, y in extra]
                labels += [1] * len(extra)
                masks, iou, low = self._predict(sam, points, labels, req.box, low[:, :1])
        chosen = list(range(1, masks.shape[1])) if req.multimask else [0]
        outs = []
        for k in chosen:
            m = masks[0, k] > 0
            outs.append(MaskOut(rle=rle_encode(m), polygons=polygons(m), score=float(iou[0, k]), box=mask_box(m) or [0.0, 0.0, 0.0, 0.0],
                                area=int(m.sum())))
        best = chosen[int(np.argmax([iou[0, k] for k in chosen]))]
        response = AnnotationResponse(op="segment", key=req.key, mode=mode, image_size=[w, h], masks=outs,
                                      points=points, labels=labels, adaptive_points=[list(p) for p in extra])
        return response, low[:, best:best + 1].astype(np.float32)

    def _predict(self, sam: SamImage, points, labels, box, mask_input):
        return sam.predict(points=np.asarray([points], np.float64) if points else None,
                           labels=np.asarray([labels], np.float32) if points else None,
                           boxes=np.asarray([box], np.float64) if box is not None else None, mask_input=mask_input)

    def generate(self, req: GenerateRequest) -> AnnotationResponse:
        """Automatic masks for a cached image (the synthesis pipeline's AMG code)."""
        entry = self.cache.get(req.key)
        h, w = entry.image.shape[:2]
        settings = PROFILE_DEFAULTS[self.assets.profile]["amg"].for_request(
            self.settings, req.model_dump(exclude={"op", "key"}))
        sam = SamImage.from_embedding(self.runner, entry.embedding, (h, w), self.assets, entry.mask_tokens)
        found = generate_masks(sam, settings)
        outs = []
        for m in found:  # one full-size mask decoded at a time
            seg = m.segmentation
            outs.append(MaskOut(rle=rle_encode(seg), polygons=polygons(seg), score=m.predicted_iou, box=list(m.box),
                                area=m.area))
        return AnnotationResponse(op="generate", key=req.key, mode=entry.mode, image_size=[w, h], masks=outs)
