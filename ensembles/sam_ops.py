"""SAM through the exported graphs: preprocessing, prompts, and automatic mask generation.

Coordinates: points and boxes are xy pixels of the *original* image (x right, y down); masks
come back at the original size. Preprocessing follows the exported model (``input_pipeline``,
:func:`xsyn.api.sam_input.encoder_input`); with ``apsam``'s square resize, points are scaled by
``S / W`` and ``S / H``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from xsyn.api.sam_input import encoder_input
from xsyn.ensembles.runner import Runner, infer_on_device

ENCODER_MAX_BATCH = 4


def embed_images(runner: Runner, pictures: list[np.ndarray], assets) -> tuple[np.ndarray, np.ndarray]:
    """Image embeddings ``[N, C, E, E]`` and mask tokens ``[N, M, C]`` for uint8 RGB images,
    in encoder batches. ``assets``: :class:`~xsyn.ensembles.assets.PipelineAssets` (encoder
    size, input pipeline, SAM's learned tokens). APSAM's tokens come from its encoder, per
    image; SAM's are its learned ones for every image."""
    apsam = assets.sam_input == "apsam"
    wanted = ["image_embeddings", "mask_tokens"] if apsam else ["image_embeddings"]
    embeddings, tokens = [], []
    for start in range(0, len(pictures), ENCODER_MAX_BATCH):
        chunk = pictures[start:start + ENCODER_MAX_BATCH]
        batch = np.stack([encoder_input(im, assets.sam_size, assets.sam_input) for im in chunk])
        out = runner.infer("sam_image_encoder", {"image": batch}, wanted)
        embeddings.append(out["image_embeddings"])
        tokens.append(out["mask_tokens"] if apsam else np.repeat(assets.sam_mask_tokens, len(chunk), axis=0))
    return np.concatenate(embeddings), np.concatenate(tokens).astype(np.float32)


@dataclass
class SamImage:
    """One image's embedding and what the decoder needs to answer prompts on it."""

    runner: Runner
    embedding: np.ndarray  # [1, C, E, E]
    original_size: tuple[int, int]  # (H, W)
    encoder_size: int
    mask_tokens: np.ndarray  # [1, M, C]
    pipeline: str = "sam"  # the encoder's input_pipeline: how points map into its frame

    @classmethod
    def from_embedding(cls, runner, embedding, original_size, assets, mask_tokens) -> "SamImage":
        """``assets``: the repository's :class:`~xsyn.ensembles.assets.PipelineAssets`;
        ``mask_tokens``: ``[M, C]`` or ``[1, M, C]`` (from :func:`embed_images`)."""
        return cls(runner, embedding[None] if embedding.ndim == 3 else embedding, tuple(original_size),
                   assets.sam_size, mask_tokens[None] if mask_tokens.ndim == 2 else mask_tokens, assets.sam_input)

    def _to_encoder_frame(self, coords: np.ndarray) -> np.ndarray:
        from segment_anything.utils.transforms import ResizeLongestSide

        if self.pipeline == "apsam":
            h, w = self.original_size
            return coords.astype(np.float64) * np.array([self.encoder_size / w, self.encoder_size / h])
        return ResizeLongestSide(self.encoder_size).apply_coords(coords.astype(np.float64), self.original_size)

    def decoder_inputs(self, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                       boxes: np.ndarray | None = None, mask_input: np.ndarray | None = None,
                       mask_tokens: np.ndarray | None = None, full_masks: bool = True) -> dict[str, np.ndarray]:
        """The ``sam_decoder`` inputs for ``P`` prompt sets, as ``SamPredictor.predict_torch`` builds them.

        ``full_masks=False`` asks for 1x1 ``masks``: the graph computes its full-size output
        whether or not it is fetched, and a caller that only reads ``low_res_masks`` should not
        pay ``P x 4 x H x W`` floats for it (at 2048 x 2048 and 64 prompts, 4 GiB).

        Args:
            points: ``[P, N, 2]`` xy pixels; labels ``[P, N]`` (1 fg, 0 bg).
            boxes: ``[P, 4]`` xyxy pixels (becomes two corner points, labels 2 and 3).
            mask_input: ``[1 or P, 1, 4E, 4E]`` previous low-res logits.
            mask_tokens: override of the mask tokens (APSAM), default SAM's learned ones.
        """
        parts_xy, parts_lab = [], []
        p = len(points) if points is not None else len(boxes)
        if points is not None:
            parts_xy.append(self._to_encoder_frame(points.reshape(-1, 2)).reshape(points.shape))
            parts_lab.append(labels.astype(np.float32))
        if boxes is not None:
            parts_xy.append(self._to_encoder_frame(boxes.reshape(-1, 2)).reshape(p, 2, 2))
            parts_lab.append(np.tile(np.array([[2, 3]], np.float32), (p, 1)))
        else:  # SAM pads point-only prompts with one "not a point"
            parts_xy.append(np.zeros((p, 1, 2)))
            parts_lab.append(-np.ones((p, 1), np.float32))
        low = 4 * self.embedding.shape[-1]
        return {
            "image_embeddings": self.embedding.astype(np.float32),
            "point_coords": np.concatenate(parts_xy, axis=1).astype(np.float32),
            "point_labels": np.concatenate(parts_lab, axis=1).astype(np.float32),
            "mask_input": (mask_input if mask_input is not None else np.zeros((1, 1, low, low))).astype(np.float32),
            "has_mask_input": np.array([1.0 if mask_input is not None else 0.0], np.float32),
            "orig_im_size": np.array(self.original_size if full_masks else (1, 1), np.float32),
            "mask_tokens": (mask_tokens if mask_tokens is not None else self.mask_tokens).astype(np.float32),
        }

    def predict(self, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                boxes: np.ndarray | None = None, mask_input: np.ndarray | None = None,
                mask_tokens: np.ndarray | None = None, full_masks: bool = True
                ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """Decoder pass for ``P`` prompt sets (arguments: :meth:`decoder_inputs`), on the host.

        Returns:
            masks ``[P, M, H, W]`` logits (None unless ``full_masks``), iou ``[P, M]``, low-res
            logits ``[P, M, 4E, 4E]``; index 0 is the single-mask output, ``1:`` the multimask ones.
        """
        wanted = ["masks", "iou_predictions", "low_res_masks"] if full_masks else ["iou_predictions", "low_res_masks"]
        out = self.runner.infer("sam_decoder", self.decoder_inputs(points, labels, boxes, mask_input, mask_tokens,
                                                                    full_masks), wanted)
        return out.get("masks"), out["iou_predictions"], out["low_res_masks"]

    def predict_on_device(self, points: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Point prompts' IoU ``[P, M]`` and low-res logits ``[P, M, 4E, 4E]`` as tensors on the
        runner's device (automatic masks: the logits never travel to the host)."""
        device = torch.device(getattr(self.runner, "device", "cpu"))
        inputs = {k: torch.from_numpy(v).to(device)
                  for k, v in self.decoder_inputs(points, labels, full_masks=False).items()}
        out = infer_on_device(self.runner, "sam_decoder", inputs, ["iou_predictions", "low_res_masks"])
        return out["iou_predictions"], out["low_res_masks"]

    def upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits ``[P, M, 4E, 4E]`` -> logits at the original size (``Sam.postprocess_masks``)."""
        from torch.nn import functional as F

        h, w = self.original_size
        scale = self.encoder_size / max(h, w)
        unpadded = (int(h * scale + 0.5), int(w * scale + 0.5))
        masks = F.interpolate(low_res, (self.encoder_size, self.encoder_size), mode="bilinear", align_corners=False)
        masks = masks[..., : unpadded[0], : unpadded[1]]
        return F.interpolate(masks, (h, w), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class AmgSettings:
    """Automatic mask generation settings (``SamAutomaticMaskGenerator``'s, one crop layer)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    #: tiny-random profile only: split every mask into its 8-connected components of at least
    #: ``min_component_area`` pixels (untrained SAM masks are image-wide speckle, whose
    #: bounding box is the whole image; their components still give local candidates).
    split_components: bool = False
    min_component_area: int = 0
    #: tiny-random profile only: binarise each mask at this quantile of its own logits instead of 0.
    binarize_quantile: float | None = None
    #: budget: bytes of full-size mask logits held at once; a large image gets smaller point
    #: batches (same masks, bounded memory); ``ServerSettings.amg_batch_bytes``
    batch_bytes: int = 256 * 2**20
    #: budget: most masks returned, best predicted IoU first; ``ServerSettings.max_masks``
    max_masks: int = 256

    def as_dict(self) -> dict:
        return asdict(self)

    def for_request(self, server, overrides: dict) -> "AmgSettings":
        """These settings with the server's AMG budgets (``ServerSettings.amg_batch_bytes``,
        ``max_masks``) and a request's non-None ``overrides``."""
        return replace(self, batch_bytes=server.amg_batch_bytes, max_masks=server.max_masks,
                       **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class AutoMask:
    """One generated mask: ``box`` xyxy pixels (inclusive max + 1) and its bool ``segmentation [H, W]``.

    The mask is kept as ``rle`` (segment_anything's uncompressed RLE), or as ``crop`` (the bool
    mask inside ``box``, of an image of ``shape`` (H, W)), and built on each access of
    :attr:`segmentation`: 256 full-size masks of a 16 MP image would be 4 GB held at once; built
    one by one, a request needs one mask's worth."""

    area: int
    box: tuple[float, float, float, float]
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]
    rle: dict | None = None
    crop: np.ndarray | None = None
    shape: tuple[int, int] | None = None

    @property
    def segmentation(self) -> np.ndarray:
        if self.crop is not None:
            full = np.zeros(self.shape, bool)
            x0, y0 = int(self.box[0]), int(self.box[1])
            full[y0:y0 + self.crop.shape[0], x0:x0 + self.crop.shape[1]] = self.crop
            return full
        from segment_anything.utils.amg import rle_to_mask

        return rle_to_mask(self.rle)


def generate_masks(sam_image: SamImage, settings: AmgSettings) -> list[AutoMask]:
    """Grid of single-point prompts -> IoU / stability filters -> box NMS (``segment_anything.utils.amg``),
    on the runner's device: the decoder's low-res logits, their upscaling and the filters stay there."""
    from segment_anything.utils.amg import (
        MaskData, area_from_rle, batch_iterator, batched_mask_to_box, build_point_grid, calculate_stability_score,
        is_box_near_crop_edge, mask_to_rle_pytorch,
    )
    from torchvision.ops.boxes import batched_nms

    h, w = sam_image.original_size
    points = build_point_grid(settings.points_per_side) * np.array([[w, h]])
    per_point = 3 * h * w * 4  # three multimask logits at full size, float32
    parts = []
    for (batch,) in batch_iterator(max(1, min(settings.points_per_batch, settings.batch_bytes // per_point)), points):
        # only low-res logits travel back; upscaling here moves 1/(H*W/(4E)^2) of the bytes
        # on the runner's device: only RLE counts, boxes and scores come back to the host
        iou, low = sam_image.predict_on_device(batch[:, None, :], np.ones((len(batch), 1), np.float32))
        masks, iou = sam_image.upscale(low[:, 1:]), iou[:, 1:]
        part = MaskData(masks=masks.flatten(0, 1), iou_preds=iou.flatten(0, 1),
                        points=torch.as_tensor(batch.repeat(masks.shape[1], axis=0), device=masks.device))
        if settings.pred_iou_thresh > 0.0:
            part.filter(part["iou_preds"] > settings.pred_iou_thresh)
        part["stability_score"] = calculate_stability_score(part["masks"], 0.0, settings.stability_score_offset)
        if settings.stability_score_thresh > 0.0:
            part.filter(part["stability_score"] >= settings.stability_score_thresh)
        if settings.binarize_quantile is None:
            part["masks"] = part["masks"] > 0.0
        elif len(part["masks"]):
            flat = part["masks"].flatten(1)
            cut = torch.quantile(flat[:, :: max(1, flat.shape[1] // 16384)], settings.binarize_quantile, dim=1)
            part["masks"] = part["masks"] > cut[:, None, None]
        part["boxes"] = batched_mask_to_box(part["masks"])
        crop = [0, 0, w, h]
        keep = ~is_box_near_crop_edge(part["boxes"], crop, crop)
        if not torch.all(keep):
            part.filter(keep)
        part["rles"] = mask_to_rle_pytorch(part["masks"])
        del part["masks"]
        parts.append(part)
    data = _concat(parts, MaskData)
    if data is None or len(data["rles"]) == 0:
        return []
    keep = batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros_like(data["boxes"][:, 0]),
                       iou_threshold=settings.box_nms_thresh)
    data.filter(keep[: settings.max_masks])  # batched_nms orders by score
    out = []
    for i in range(len(data["rles"])):
        x0, y0, x1, y1 = (float(v) for v in data["boxes"][i])
        out.append(AutoMask(area=int(area_from_rle(data["rles"][i])), box=(x0, y0, x1 + 1, y1 + 1),
                            predicted_iou=float(data["iou_preds"][i]), stability_score=float(data["stability_score"][i]),
                            point=tuple(float(v) for v in data["points"][i]), rle=data["rles"][i]))
    if settings.split_components:  # still at most max_masks masks, best first
        split: list[AutoMask] = []
        for m in out:
            split += _components(m, settings.min_component_area)
            if len(split) >= settings.max_masks:
                break
        out = split[: settings.max_masks]
    return out


def _concat(parts: list, mask_data):
    """Join ``MaskData`` batches (``MaskData.cat`` deep-copies every RLE: most of AMG's time)."""
    if not parts:
        return None
    merged = mask_data()
    for key in parts[0]._stats:
        values = [p[key] for p in parts]
        merged[key] = torch.cat(values) if isinstance(values[0], torch.Tensor) else [v for vs in values for v in vs]
    return merged


def _components(mask: AutoMask, min_area: int) -> list[AutoMask]:
    """The mask's 8-connected components of at least ``min_area`` pixels, as masks of their own
    (each kept as its bounding-box crop: a ragged mask can have hundreds of components)."""
    from scipy import ndimage

    segmentation = mask.segmentation
    labels, n = ndimage.label(segmentation, structure=np.ones((3, 3), int))
    parts = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        ys, xs = found
        crop = labels[ys, xs] == index
        area = int(crop.sum())
        if area >= max(min_area, 1):
            box = (float(xs.start), float(ys.start), float(xs.stop), float(ys.stop))
            parts.append(AutoMask(area=area, box=box, predicted_iou=mask.predicted_iou,
                                  stability_score=mask.stability_score, point=mask.point, crop=crop,
                                  shape=segmentation.shape))
    return parts
