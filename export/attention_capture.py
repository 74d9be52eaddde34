"""Cross-attention capture inside the exported GLIGEN UNet.

Fused attention kernels do not expose probabilities, so only the *capture layers* get
:class:`CaptureCrossAttnProcessor`, an explicit-softmax path that also records the
head-averaged probabilities; every other attention keeps diffusers' default (fused SDPA)
processor. A capture layer is named by its ``Transformer2DModel`` module path
(``"down_blocks.2.attentions.0"``); its blocks' ``attn2`` (text cross-attention) is captured.

Default layers: every cross-attention module at down-sampling level 2, i.e. the 16x16 layers of
a 512x512 SD-1.x UNet (``down_blocks.2.attentions.{0,1}``, ``up_blocks.1.attentions.{0,1,2}``),
as in the Xsyn reference code.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_CAPTURE_LEVEL = 2


def attention_layers(unet: nn.Module) -> dict[str, int]:
    """Every cross-attention ``Transformer2DModel`` path -> its down-sampling level (0 = full latent)."""
    n = len(unet.down_blocks)
    layers = {}
    for prefix, blocks, level_of in (("down_blocks", unet.down_blocks, lambda i: i),
                                     ("up_blocks", unet.up_blocks, lambda i: n - 1 - i)):
        for i, block in enumerate(blocks):
            for j, _ in enumerate(getattr(block, "attentions", None) or []):
                layers[f"{prefix}.{i}.attentions.{j}"] = level_of(i)
    return layers


def default_capture_layers(unet: nn.Module, level: int = DEFAULT_CAPTURE_LEVEL) -> tuple[str, ...]:
    """Cross-attention layers at ``level`` (the 16x16 layers at 512 px for level 2)."""
    return tuple(name for name, lvl in attention_layers(unet).items() if lvl == level)


def output_name(layer: str) -> str:
    """Graph output name of a capture layer: ``down_blocks.2.attentions.0`` -> ``attn_down_blocks_2_attentions_0``."""
    return "attn_" + layer.replace(".", "_")


class CaptureSink:
    """Where the capture processors put their probabilities: ``maps[layer]`` is a list of
    ``[B, N, T]`` tensors (one per transformer block). An object rather than a bare dict, so that
    exporters that snapshot and restore a module's container attributes (``torch.export``) leave
    the processors and the wrapper sharing one sink."""

    def __init__(self) -> None:
        self.maps: dict[str, list[torch.Tensor]] = {}

    def clear(self) -> None:
        self.maps = {}

    def __getitem__(self, layer: str) -> list[torch.Tensor]:
        return self.maps[layer]


class CaptureCrossAttnProcessor:
    """Explicit-softmax cross-attention that stores head-averaged probabilities.

    After a call, ``sink[key]`` holds float32 ``[B, N, T]`` tensors: for each of the ``N`` query pixels
    (row-major over the layer's ``h x w`` grid) the softmax over the ``T`` text tokens, averaged
    over heads. Blocks with several transformer blocks average their probabilities.
    """

    def __init__(self, sink: CaptureSink, key: str) -> None:
        self.sink = sink
        self.key = key

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        b, n, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        heads = attn.heads
        q = attn.to_q(hidden_states)
        k = attn.to_k(context)
        v = attn.to_v(context)
        head_dim = q.shape[-1] // heads
        q = q.view(b, n, heads, head_dim).transpose(1, 2)
        k = k.view(b, -1, heads, head_dim).transpose(1, 2)
        v = v.view(b, -1, heads, head_dim).transpose(1, 2)
        probs = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1)  # [B, heads, N, T]
        out = (probs @ v).transpose(1, 2).reshape(b, n, heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        self.sink.maps.setdefault(self.key, []).append(probs.mean(dim=1))
        return out


def install_capture(unet: nn.Module, layers: tuple[str, ...]) -> CaptureSink:
    """Put :class:`CaptureCrossAttnProcessor` on the ``attn2`` of each layer's blocks.

    Returns the sink the processors append to (clear it before each forward).
    Raises ValueError for unknown layer names or attention configurations the explicit path
    does not reproduce (cross-attention norms, residual connections, attention masks).
    """
    known = attention_layers(unet)
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise ValueError(f"capture layers {unknown} not in the UNet; known: {sorted(known)}")
    sink = CaptureSink()
    for name in layers:
        transformer = unet.get_submodule(name)
        for block in transformer.transformer_blocks:
            attn = block.attn2
            if attn.norm_cross is not None or attn.residual_connection or attn.rescale_output_factor != 1.0:
                raise ValueError(f"capture layer {name}: unsupported cross-attention configuration")
            attn.set_processor(CaptureCrossAttnProcessor(sink, name))
    return sink
