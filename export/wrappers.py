"""Export wrappers: one ``nn.Module`` per graph, tensors in and out, no data-dependent branching.

Each wrapper's ``forward`` signature is the graph's input list (same order as its spec) and it
returns the spec's outputs in order. The specs in :mod:`xsyn.export.networks` document shapes.
"""

from __future__ import annotations

import torch
from segment_anything.utils.onnx import SamOnnxModel
from torch import nn
from torch.nn import functional as F

from xsyn.export.attention_capture import install_capture


class TextEncoderExport(nn.Module):
    """``input_ids`` int32 ``[B, 77]`` -> last hidden state ``[B, 77, D]``, pooled output ``[B, D]``."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor):
        out = self.text_encoder(input_ids=input_ids.long(), return_dict=True)
        return out.last_hidden_state, out.pooler_output


class UNetExport(nn.Module):
    """GLIGEN inpainting UNet step with cross-attention capture outputs.

    Inputs: sample ``[B, 9, h, w]`` (noisy latent, masked image latent, mask), timestep ``[B]``
    float32, encoder_hidden_states ``[B, 77, D]``, boxes ``[B, 30, 4]`` (xyxy normalised 0..1),
    phrase_embeddings ``[B, 30, D]``, box_masks ``[B, 30]`` (1 = box present).
    Outputs: noise prediction ``[B, 4, h, w]``, then per capture layer ``[B, 77, h_l, w_l]``: the
    head-averaged cross-attention probabilities of each text token over the layer's grid.
    """

    def __init__(self, unet: nn.Module, capture_sides: dict[str, int]) -> None:
        """``capture_sides``: capture layer path -> side of its (square) attention grid."""
        super().__init__()
        self.unet = unet
        self.capture_sides = dict(capture_sides)
        self.capture_layers = tuple(capture_sides)
        self._sink = install_capture(unet, self.capture_layers)

    def forward(self, sample, timestep, encoder_hidden_states, boxes, phrase_embeddings, box_masks):
        self._sink.clear()
        gligen = {"boxes": boxes, "positive_embeddings": phrase_embeddings, "masks": box_masks}
        noise = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                          cross_attention_kwargs={"gligen": gligen}, return_dict=False)[0]
        maps = []
        for name in self.capture_layers:
            probs = torch.stack(self._sink[name], dim=0).mean(dim=0)  # [B, N, T]
            side = self.capture_sides[name]
            maps.append(probs.transpose(1, 2).reshape(probs.shape[0], probs.shape[2], side, side))
        return (noise, *maps)


class VaeEncoderExport(nn.Module):
    """image ``[B, 3, H, W]`` in [-1, 1] -> latent mean and std ``[B, 4, H/8, W/8]``, both scaled.

    Scaled means multiplied by the VAE's ``scaling_factor`` (0.18215): a latent sample is
    ``mean + std * eps`` in the space the UNet works in.
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)

    def forward(self, image):
        dist = self.vae.encode(image).latent_dist
        return dist.mean * self.scale, dist.std * self.scale


class VaeDecoderExport(nn.Module):
    """scaled latent ``[B, 4, h, w]`` -> image ``[B, 3, 8h, 8w]``, roughly [-1, 1], unclamped."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)

    def forward(self, latent):
        return self.vae.decode(latent / self.scale, return_dict=False)[0]


class SamImageEncoderExport(nn.Module):
    """SAM-preprocessed image ``[B, 3, S, S]`` -> image embeddings ``[B, C, S/16, S/16]``.

    Preprocessing (outside the graph, as ``Sam.preprocess``): RGB 0..255 resized so the longest
    side is S, normalised with SAM's pixel mean/std, zero-padded at the bottom/right to S x S.
    """

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image):
        return self.image_encoder(image)


class ApsamImageEncoderExport(nn.Module):
    """APSAM reference input ``[B, 3, S, S]`` (BGR, 0..1, square resize) -> image embeddings
    ``[B, C, 32, 32]`` and mask tokens ``[B, M, C]``.

    The mask tokens depend on the image only (the decoder's ``classifier`` and
    ``query_projection`` over the energy CNN's tokens), so they are computed once per image here
    and carried to the decoder graph as its ``mask_tokens`` input.
    """

    def __init__(self, apsam: nn.Module) -> None:
        super().__init__()
        self.image_encoder = apsam.image_encoder
        self.mask_decoder = apsam.mask_decoder

    def forward(self, image):
        embedding, energy_tokens = self.image_encoder(image)
        return embedding, self.mask_decoder.select_mask_tokens(energy_tokens)


class SamDecoderExport(SamOnnxModel):
    """SAM prompt encoder + mask decoder with the ``SamOnnxModel`` interface plus ``mask_tokens``.

    Inputs (P prompt sets of one image, N points each):
      image_embeddings ``[1, C, E, E]``; point_coords ``[P, N, 2]`` float32, xy pixels in the
      resized (longest side = S) frame; point_labels ``[P, N]`` float32 (1 fg, 0 bg, 2/3 box
      corners, -1 padding); mask_input ``[1 or P, 1, 4E, 4E]``; has_mask_input ``[1]``;
      orig_im_size ``[2]`` float32 (H, W); mask_tokens ``[1 or P, M, C]`` replacing SAM's
      learned mask tokens (pass those for plain SAM, the energy encoder's for APSAM).
    Outputs: masks ``[P, M, H, W]`` logits at the original size, iou_predictions ``[P, M]``,
    low_res_masks ``[P, M, 4E, 4E]`` logits. Index 0 is SAM's single-mask output, 1.. the
    multimask outputs (``SamPredictor(multimask_output=True)`` returns ``[1:]``).

    ``square``: the encoder input was the whole image resized to ``S x S`` (APSAM's pipeline):
    masks are resized from ``S x S`` to the original size with no padding to crop.
    """

    def __init__(self, sam: nn.Module, square: bool = False) -> None:
        super().__init__(sam, return_single_mask=False)
        self.square = square

    @torch.no_grad()
    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size,
                mask_tokens):
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        masks, scores = predict_masks_with_tokens(
            self.model.mask_decoder, image_embeddings, self.model.prompt_encoder.get_dense_pe(), sparse, dense,
            mask_tokens,
        )
        return self.mask_postprocessing(masks, orig_im_size), scores, masks

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """Low-res logits -> logits at ``orig_im_size`` (as ``Sam.postprocess_masks``).

        ``SamOnnxModel`` crops the padding with Python ints, which tracing freezes to the sample's
        size; ``index_select`` over ``arange`` keeps the crop dynamic in the graph.
        """
        masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        size = orig_im_size.to(torch.int64)
        if self.square:
            return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)
        unpadded = self.resize_longest_image_size(orig_im_size, self.img_size)
        masks = masks.index_select(2, torch.arange(unpadded[0])).index_select(3, torch.arange(unpadded[1]))
        return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)


def predict_masks_with_tokens(decoder, image_embeddings, image_pe, sparse, dense, mask_tokens):
    """``MaskDecoder.predict_masks`` with the mask tokens given as a tensor ``[1 or P, M, C]``.

    Returns masks ``[P, M, 4E, 4E]`` and IoU predictions ``[P, M]`` (all M tokens, no selection).
    """
    p = sparse.shape[0]
    iou = decoder.iou_token.weight.unsqueeze(0).expand(p, -1, -1)
    tokens = torch.cat([iou, mask_tokens.expand(p, -1, -1), sparse], dim=1)
    src = torch.repeat_interleave(image_embeddings, p, dim=0) + dense
    pos = torch.repeat_interleave(image_pe, p, dim=0)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos, tokens)
    iou_out = hs[:, 0, :]
    token_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack([mlp(token_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
    return masks, decoder.iou_prediction_head(iou_out)
