"""SAM and APSAM architectures: the named ViT variants, building from sizes, and reading sizes off a checkpoint.

A SAM ``.pth`` and an APSAM reference ``.pth`` (xi801/APSAM) both hold a flat state dict
(``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``); APSAM's has the energy CNN
(``image_encoder.cnn_embed.*``), adapters and the decoder's ``classifier``/``query_projection``
instead of learned mask tokens. Every size the architecture needs can be read off the tensor
shapes (heads from the relative-position tables, global-attention blocks from their table
length, APSAM's input side from the energy CNN's depth), so the model and variant are
detected, not guessed from the file name; a stated variant is checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from xsyn.errors import CheckpointError
from xsyn.export.weights import load_state_strict, read_weights


@dataclass(frozen=True)
class SamArch:
    """Sizes of a SAM model (image encoder ViT, prompt encoder, mask decoder).

    ``kind``: ``sam`` (Segment Anything: longest-side resize, mean/std normalisation, padding)
    or ``apsam`` (the APSAM reference: adapters, energy CNN, square 0..1 BGR input of side
    ``img_size``, a fixed 32 x 32 token grid; see :mod:`xsyn.export.apsam_arch`).
    """

    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    window_size: int = 14
    img_size: int = 1024
    mlp_ratio: float = 4.0
    prompt_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    kind: str = "sam"

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid (SAM: ``img_size / 16``; APSAM: 32)."""
        from xsyn.export.apsam_arch import GRID

        return GRID if self.kind == "apsam" else self.img_size // 16

    @property
    def variant(self) -> str:
        """``vit_h`` / ``vit_l`` / ``vit_b`` when the encoder matches one, else ``custom``."""
        for name, arch in VARIANTS.items():
            if (self.embed_dim, self.depth) == (arch.embed_dim, arch.depth):
                return name
        return "custom"

    @property
    def label(self) -> str:
        """``SAM vit_h``, ``APSAM vit_b``, ``APSAM custom`` ... for messages and descriptions."""
        return f"{'APSAM' if self.kind == 'apsam' else 'SAM'} {self.variant}"


VARIANTS = {
    "vit_h": SamArch(),
    "vit_l": SamArch(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_b": SamArch(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
}

TINY_SAM = SamArch(
    embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, img_size=128,
    prompt_dim=32, mask_in_chans=16, decoder_depth=2, decoder_mlp_dim=64, decoder_heads=8,
    iou_head_hidden_dim=32,
)

#: APSAM as the reference builds it (``build_apsam_vit_b``, encoder input 256, window 14).
APSAM_VIT_B = SamArch(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), img_size=256,
                      kind="apsam")

#: The tiny preset's segmentation model: APSAM's architecture at tiny widths, 128-px input.
TINY_APSAM = SamArch(
    embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=8, img_size=128,
    prompt_dim=32, mask_in_chans=16, decoder_depth=2, decoder_mlp_dim=64, decoder_heads=8,
    iou_head_hidden_dim=32, kind="apsam",
)


def build_sam(arch: SamArch):
    """An untrained model of the given sizes, in eval mode: ``segment_anything.modeling.Sam``,
    or :class:`~xsyn.export.apsam_arch.Apsam` when ``arch.kind == "apsam"``."""
    if arch.kind == "apsam":
        from xsyn.export.apsam_arch import build_apsam

        return build_apsam(arch)
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    encoder = ImageEncoderViT(
        depth=arch.depth, embed_dim=arch.embed_dim, img_size=arch.img_size, mlp_ratio=arch.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.num_heads, patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=arch.global_attn_indexes,
        window_size=arch.window_size, out_chans=arch.prompt_dim,
    )
    prompt = PromptEncoder(
        embed_dim=arch.prompt_dim, image_embedding_size=(arch.embedding_size, arch.embedding_size),
        input_image_size=(arch.img_size, arch.img_size), mask_in_chans=arch.mask_in_chans,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=arch.num_multimask_outputs,
        transformer=TwoWayTransformer(
            depth=arch.decoder_depth, embedding_dim=arch.prompt_dim, mlp_dim=arch.decoder_mlp_dim,
            num_heads=arch.decoder_heads,
        ),
        transformer_dim=arch.prompt_dim, iou_head_depth=arch.iou_head_depth,
        iou_head_hidden_dim=arch.iou_head_hidden_dim,
    )
    sam = Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder,
              pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return sam.eval()


APSAM_MARKERS = ("image_encoder.cnn_embed.inc.conv.0.weight", "mask_decoder.classifier.weight")
SAM_MARKERS = ("image_encoder.patch_embed.proj.weight", "mask_decoder.mask_tokens.weight")


def model_kind(state: dict) -> str | None:
    """``apsam`` / ``sam`` when the state dict carries that model's marker tensors, else None."""
    if all(k in state for k in APSAM_MARKERS):
        return "apsam"
    if all(k in state for k in SAM_MARKERS):
        return "sam"
    return None


def infer_sam_arch(state: dict[str, torch.Tensor], path: Path) -> SamArch:
    """Read a :class:`SamArch` (SAM or APSAM) off a state dict's tensor shapes."""
    from xsyn.export.apsam_arch import GRID

    kind = model_kind(state) or "sam"
    try:
        embed_dim = state["image_encoder.patch_embed.proj.weight"].shape[0]
        depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
        if kind == "apsam":
            img_size = GRID * 2 ** len({k.split(".")[3] for k in state if k.startswith("image_encoder.cnn_embed.downs.")})
            grid = GRID
        else:
            img_size = state["image_encoder.pos_embed"].shape[1] * 16
            grid = img_size // 16
        head_dim = state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
        table = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] for i in range(depth)]
        global_len = 2 * grid - 1
        global_idx = tuple(i for i, n in enumerate(table) if n == global_len)
        windowed = [n for n in table if n != global_len]
        window = (windowed[0] + 1) // 2 if windowed else 0
        mlp_ratio = state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim
        prompt_dim = state["image_encoder.neck.0.weight"].shape[0]
        mask_in = state["prompt_encoder.mask_downscaling.3.weight"].shape[0]
        dec_depth = len({k.split(".")[3] for k in state if k.startswith("mask_decoder.transformer.layers.")})
        dec_mlp = state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]
        n_tokens = (state["mask_decoder.mask_tokens.weight"].shape[0] if kind == "sam" else  # APSAM learns none
                    len({k.split(".")[2] for k in state if k.startswith("mask_decoder.output_hypernetworks_mlps.")}))
        iou_layers = len({k.split(".")[3] for k in state if k.startswith("mask_decoder.iou_prediction_head.layers.")})
        iou_hidden = state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"{path}: not a SAM or APSAM state dict (missing tensor {exc.args[0]})") from exc
    return SamArch(
        embed_dim=embed_dim, depth=depth, num_heads=embed_dim // head_dim, global_attn_indexes=global_idx,
        window_size=window, img_size=img_size, mlp_ratio=mlp_ratio, prompt_dim=prompt_dim,
        mask_in_chans=mask_in, decoder_depth=dec_depth, decoder_mlp_dim=dec_mlp,
        decoder_heads=SamArch.decoder_heads, num_multimask_outputs=n_tokens - 1,
        iou_head_depth=iou_layers, iou_head_hidden_dim=iou_hidden, kind=kind,
    )


def load_sam_checkpoint(path: Path, variant: str | None = None, state: dict | None = None, check_only: bool = False):
    """Build SAM or APSAM from a ``.pth`` (or ``.safetensors``) state dict.

    Args:
        path: checkpoint file (e.g. ``sam_vit_h_4b8939.pth``, or an APSAM reference ``.pth``).
        variant: ``vit_h``/``vit_l``/``vit_b`` to insist on, or None to accept what is detected.
        state: the state dict when already read (format detection reads it once).
        check_only: build on the meta device and only check names and shapes.

    Returns:
        ``(sam, arch)``. Raises CheckpointError for missing, truncated, foreign or
        other-variant files.
    """
    state = read_weights(Path(path), what="SAM checkpoint") if state is None else state
    arch = check_sam_checkpoint(path, variant, state)
    with torch.device("meta" if check_only else "cpu"):
        sam = build_sam(arch)
    load_state_strict(sam, state, path, check_only)
    return sam.eval(), arch


def check_sam_checkpoint(path: Path, variant: str | None, state: dict) -> SamArch:
    """The architecture of a SAM/APSAM state dict, checked against an insisted ``variant``."""
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(f"--sam-variant {variant!r}: expected one of {sorted(VARIANTS)}")
    if model_kind(state) is None:
        raise CheckpointError(f"{path}: not a SAM or APSAM state dict (none of {SAM_MARKERS + APSAM_MARKERS} present)")
    arch = infer_sam_arch(state, path)
    if variant is not None and arch.variant != variant:
        raise CheckpointError(
            f"SAM checkpoint {path}: holds {arch.label} (embed dim {arch.embed_dim}, depth {arch.depth}), "
            f"expected {variant} (embed dim {VARIANTS[variant].embed_dim}, depth {VARIANTS[variant].depth})"
        )
    return arch


__all__ = ["SamArch", "VARIANTS", "TINY_SAM", "TINY_APSAM", "APSAM_VIT_B", "build_sam", "infer_sam_arch",
           "load_sam_checkpoint", "check_sam_checkpoint", "model_kind"]
