"""APSAM as its reference defines it (xi801/APSAM, built on SAMUS), written for export.

The reference model (``APSAM`` = ``ImageEncoderViT_CNN`` + ``PromptEncoder`` +
``MaskDecoder_token``) differs from SAM in four places, all reproduced here with the
reference's parameter names so that its ``state_dict`` loads strictly:

- ``image_encoder.patch_embed``: the input is bilinearly resampled to 264 x 264 and cut by a
  16 x 16 convolution at stride 8 into a 32 x 32 token grid, whatever the input size.
- ``image_encoder.input_Adapter`` after the patch embedding, and ``MLP_Adapter`` (no skip,
  scaled by 0.5, fed the block's second LayerNorm output) in every global-attention block.
- ``image_encoder.pos_embed`` stays SAM's 64 x 64 table; ``post_pos_embed`` (max-pool, conv,
  LayerNorm2d, GELU stages) shrinks it to the 32 x 32 grid.
- ``image_encoder.cnn_embed``: a CNN over the 2-channel energy image (per-pixel max and min over
  the colour channels) giving one token per grid cell, ``[B, 32*32, C]``. The decoder's
  ``classifier`` scores those tokens (2-way softmax; the score is the larger probability), the
  top ``M`` (M = 4 mask tokens) are gathered, best first, and ``query_projection`` turns them
  into the mask tokens that replace SAM's learned ones.

Input pipeline of the reference (train and eval): the image is read with ``cv2`` (BGR channel
order, never converted), resized to ``S x S`` (PIL bilinear), scaled to 0..1 with no mean/std
normalisation and no padding; points are xy pixels of that ``S x S`` frame; the decoder's
``128 x 128`` low-res logits are resized to ``S x S``.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling.common import LayerNorm2d, MLPBlock
from segment_anything.modeling.image_encoder import Attention, window_partition, window_unpartition
from segment_anything.modeling.mask_decoder import MaskDecoder
from torch import nn
from torch.nn import functional as F

GRID = 32  # token grid side, fixed by the reference's patch embedding (264 px, kernel 16, stride 8)
PATCH_INPUT = 264  # side the patch embedding resamples every input to
POS_TABLE = 64  # SAM's absolute position table side (1024 / 16)
CNN_WIDTH = 64  # width of the energy CNN's first stage; it doubles per stage, the last gives C


class Adapter(nn.Module):
    """Bottleneck MLP ``D -> D/4 -> D`` with GELU; ``x + mlp(x)`` when ``skip`` else ``mlp(x)``."""

    def __init__(self, dim: int, hidden: int, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        self.D_fc1 = nn.Linear(dim, hidden)
        self.D_fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.D_fc2(self.act(self.D_fc1(x)))
        return x + out if self.skip else out


class ConvStage(nn.Module):
    """3x3 conv (no bias), LayerNorm2d, GELU, optionally after a 2x2 max-pool.

    The reference names the sequence ``maxpool_conv`` when it pools and ``conv`` when not.
    """

    def __init__(self, cin: int, cout: int, pool: bool) -> None:
        super().__init__()
        layers = [nn.MaxPool2d(2)] if pool else []
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), LayerNorm2d(cout), nn.GELU()]
        setattr(self, "maxpool_conv" if pool else "conv", nn.Sequential(*layers))
        self._body = "maxpool_conv" if pool else "conv"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self._body)(x)


class EnergyCNN(nn.Module):
    """``cnn_embed``: energy image ``[B, 2, S, S]`` -> tokens ``[B, S/2^n, S/2^n, C]`` (channels last).

    A stem (64 channels), then ``n = log2(S / 32)`` pooling stages doubling the width, the last
    one giving ``out_dim``.
    """

    def __init__(self, input_size: int, out_dim: int) -> None:
        super().__init__()
        stages = int(math.log2(input_size // GRID))
        self.inc = ConvStage(2, CNN_WIDTH, pool=False)
        self.downs = nn.ModuleList(
            ConvStage(CNN_WIDTH * 2 ** i, out_dim if i == stages - 1 else CNN_WIDTH * 2 ** (i + 1), pool=True)
            for i in range(stages)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        for down in self.downs:
            x = down(x)
        return x.permute(0, 2, 3, 1)


class PositionResize(nn.Module):
    """``post_pos_embed``: the ``[1, 64, 64, D]`` table -> ``[1, 32, 32, D]`` by one pooling stage."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.downs = nn.ModuleList(ConvStage(dim, dim, pool=True) for _ in range(int(math.log2(POS_TABLE // GRID))))

    def forward(self, table: torch.Tensor) -> torch.Tensor:
        x = table.permute(0, 3, 1, 2)
        for down in self.downs:
            x = down(x)
        return x.permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Any ``[B, 3, S, S]`` -> resampled to 264 px -> 16x16/stride-8 conv -> ``[B, 32, 32, D]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=16, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, (PATCH_INPUT, PATCH_INPUT), mode="bilinear", align_corners=False)
        return self.proj(x).permute(0, 2, 3, 1)


class AdapterBlock(nn.Module):
    """SAM's ViT block; global-attention blocks (``window == 0``) add ``0.5 * MLP_Adapter(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, window: int, adapter_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        side = window if window > 0 else GRID
        self.attn = Attention(dim, num_heads=heads, qkv_bias=True, use_rel_pos=True, input_size=(side, side))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=nn.GELU)
        self.window = window
        if window == 0:
            self.MLP_Adapter = Adapter(dim, adapter_hidden, skip=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window)
        x = self.attn(x)
        if self.window > 0:
            x = window_unpartition(x, self.window, pad_hw, (h, w))
        x = shortcut + x
        normed = self.norm2(x)
        x = x + self.mlp(normed)
        if self.window == 0:
            x = x + 0.5 * self.MLP_Adapter(normed)
        return x


class ApsamImageEncoder(nn.Module):
    """``image_encoder``: image ``[B, 3, S, S]`` (0..1) -> embedding ``[B, C, 32, 32]`` and the
    energy CNN's tokens ``[B, 32*32, C]``. The energy image (max and min over the colour
    channels of the same tensor) is computed here, as the reference's data pipeline does."""

    def __init__(self, arch) -> None:
        super().__init__()
        d, c = arch.embed_dim, arch.prompt_dim
        hidden = int(d * 0.25)
        self.img_size = arch.img_size
        self.cnn_embed = EnergyCNN(arch.img_size, c)
        self.patch_embed = PatchEmbed(d)
        self.pos_embed = nn.Parameter(torch.zeros(1, POS_TABLE, POS_TABLE, d))
        self.post_pos_embed = PositionResize(d)
        self.blocks = nn.ModuleList(
            AdapterBlock(d, arch.num_heads, arch.mlp_ratio, 0 if i in arch.global_attn_indexes else arch.window_size,
                         hidden)
            for i in range(arch.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(d, c, kernel_size=1, bias=False), LayerNorm2d(c),
            nn.Conv2d(c, c, kernel_size=3, padding=1, bias=False), LayerNorm2d(c),
        )
        self.input_Adapter = Adapter(d, hidden, skip=True)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        energy = torch.cat([image.amax(dim=1, keepdim=True), image.amin(dim=1, keepdim=True)], dim=1)
        tokens = self.cnn_embed(energy).flatten(1, 2)  # [B, g*g, C]
        x = self.input_Adapter(self.patch_embed(image))
        x = x + self.post_pos_embed(self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2)), tokens


class ApsamMaskDecoder(MaskDecoder):
    """SAM's mask decoder without learned mask tokens; ``classifier`` and ``query_projection``
    turn the energy CNN's tokens into the mask tokens (:meth:`select_mask_tokens`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        del self.mask_tokens
        c = kwargs["transformer_dim"]
        self.query_projection = nn.Linear(c, c)
        self.classifier = nn.Linear(c, 2)

    def select_mask_tokens(self, cnn_tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, C]`` energy tokens -> ``[B, M, C]`` mask tokens (top-M by confidence, best first)."""
        confidence = torch.softmax(self.classifier(cnn_tokens), dim=-1).amax(dim=-1)  # [B, N]
        top = torch.topk(confidence, self.num_mask_tokens, dim=1).indices
        chosen = torch.gather(cnn_tokens, 1, top.unsqueeze(-1).expand(-1, -1, cnn_tokens.shape[-1]))
        return self.query_projection(chosen)


class Apsam(nn.Module):
    """The three parts under the reference's names: ``image_encoder``, ``prompt_encoder``, ``mask_decoder``."""

    def __init__(self, image_encoder: ApsamImageEncoder, prompt_encoder: nn.Module, mask_decoder: ApsamMaskDecoder):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder


def build_apsam(arch) -> Apsam:
    """An untrained APSAM of the given :class:`~xsyn.export.sam_arch.SamArch` (``kind == "apsam"``)."""
    from segment_anything.modeling import PromptEncoder, TwoWayTransformer

    prompt = PromptEncoder(embed_dim=arch.prompt_dim, image_embedding_size=(GRID, GRID),
                           input_image_size=(arch.img_size, arch.img_size), mask_in_chans=arch.mask_in_chans)
    decoder = ApsamMaskDecoder(
        num_multimask_outputs=arch.num_multimask_outputs,
        transformer=TwoWayTransformer(depth=arch.decoder_depth, embedding_dim=arch.prompt_dim,
                                      mlp_dim=arch.decoder_mlp_dim, num_heads=arch.decoder_heads),
        transformer_dim=arch.prompt_dim, iou_head_depth=arch.iou_head_depth,
        iou_head_hidden_dim=arch.iou_head_hidden_dim,
    )
    return Apsam(ApsamImageEncoder(arch), prompt, decoder).eval()
