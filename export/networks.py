"""The six networks of the product: spec + export module + sample inputs, built from a bundle.

=======================  ==========================================================
``text_encoder``         CLIP text model: last hidden state and pooled output
``unet``                 GLIGEN inpainting UNet + cross-attention capture outputs
``vae_encoder``          image -> scaled latent mean/std
``vae_decoder``          scaled latent -> image
``sam_image_encoder``    SAM ViT image encoder; for APSAM also its mask tokens (energy CNN)
``sam_decoder``          prompt encoder + mask decoder, mask tokens as an input
=======================  ==========================================================

The segmentation pair is SAM or APSAM (the reference's architecture); the specs' ``extra``
``input_pipeline`` (``sam`` or ``apsam``) tells the orchestrators how to prepare images and
points for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from xsyn.api.limits import MAX_OBJECTS, MAX_SIDE  # the UNet spec declares its grounding tokens with it
from xsyn.errors import InvalidArgument
from xsyn.export.attention_capture import attention_layers, default_capture_layers, output_name
from xsyn.export.sources import ModelBundle, copy_tokenizer
from xsyn.export.specs import DynamicBatching, NetworkSpec, TensorSpec
from xsyn.export.tokenizer import MAX_LENGTH
from xsyn.export.wrappers import (
    ApsamImageEncoderExport,
    SamDecoderExport,
    SamImageEncoderExport,
    TextEncoderExport,
    UNetExport,
    VaeDecoderExport,
    VaeEncoderExport,
)

NETWORK_NAMES = ("text_encoder", "unet", "vae_encoder", "vae_decoder", "sam_image_encoder", "sam_decoder")

SampleFn = Callable[[np.random.Generator], dict[str, np.ndarray]]


@dataclass
class Network:
    """What export needs for one graph.

    Attributes:
        spec: the contract.
        module: export wrapper (forward args = spec inputs, returns spec outputs).
        sample_inputs: seeded generator of inputs at the profile's ``opt`` point.
        write_sidecars: writes extra files the orchestrators need beside the graph, or None.
        sidecar_fingerprint: files whose content the sidecars copy (part of the cache key).
    """

    spec: NetworkSpec
    module: nn.Module
    sample_inputs: SampleFn
    write_sidecars: Callable[[Path], None] | None = None
    sidecar_fingerprint: tuple[Path, ...] = ()


def _t(name: str, shape, doc: str, dtype: str = "float32", values=None, choices=()) -> TensorSpec:
    return TensorSpec(name=name, dtype=dtype, shape=tuple(shape), doc=doc, values=values, choices=tuple(choices))


def _f32(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ----------------------------------------------------------------------------- one builder per network

def text_encoder_network(bundle: ModelBundle) -> Network:
    te = bundle.text_encoder
    d = te.config.hidden_size
    bos, eos, vocab = te.config.bos_token_id, te.config.eos_token_id, te.config.vocab_size
    spec = NetworkSpec(
        name="text_encoder",
        inputs=(_t("input_ids", ("batch", MAX_LENGTH), "CLIP token ids, BOS ... EOS then EOS padding", "int32",
                   values=(0, vocab - 1)),),
        outputs=(_t("last_hidden_state", ("batch", MAX_LENGTH, d), "prompt embeddings"),
                 _t("pooled_output", ("batch", d), "pooled (EOS-token) embedding: GLIGEN phrase embedding")),
        profile=(("batch", 1, 2, 32),),
        max_batch_size=32,
        description="CLIP text encoder",
    )

    def sample(rng):
        ids = np.full((2, MAX_LENGTH), eos, dtype=np.int32)
        for row, length in enumerate((5, 12)):
            ids[row, 0] = bos
            ids[row, 1:length] = rng.integers(0, min(vocab, bos), size=length - 1)
            ids[row, length] = eos
        return {"input_ids": ids}

    def sidecars(folder: Path) -> None:
        copy_tokenizer(bundle, folder / "tokenizer")

    files = tuple(bundle.tokenizer_dir / f for f in ("vocab.json", "merges.txt"))
    return Network(spec, TextEncoderExport(te), sample, sidecars, files)


def unet_network(bundle: ModelBundle, capture_layers: tuple[str, ...] | None = None) -> Network:
    unet = bundle.unet
    layers = tuple(capture_layers) if capture_layers else default_capture_layers(unet)

    levels = attention_layers(unet)
    unknown = [name for name in layers if name not in levels]
    if unknown:
        raise InvalidArgument(f"--capture-layers: unknown layer(s) {unknown}; known: {sorted(levels)}")
    s = bundle.image_size // 8
    d = unet.config.cross_attention_dim
    outputs = [_t("noise_pred", ("batch", 4, s, s), "predicted noise (epsilon)")]
    for name in layers:
        side = s // (2 ** levels[name])
        outputs.append(_t(output_name(name), ("batch", MAX_LENGTH, side, side),
                          f"{name}: head-averaged softmax over the 77 tokens, per token a {side}x{side} map"))
    spec = NetworkSpec(
        name="unet",
        inputs=(
            _t("sample", ("batch", 9, s, s), "concat(noisy latent z_t, masked image latent z*m, mask m)"),
            _t("timestep", ("batch",), "diffusion timestep (0..999) per sample", values=(0, 999)),
            _t("encoder_hidden_states", ("batch", MAX_LENGTH, d), "prompt embeddings"),
            _t("boxes", ("batch", MAX_OBJECTS, 4), "grounding boxes, xyxy normalised 0..1, zero-padded"),
            _t("phrase_embeddings", ("batch", MAX_OBJECTS, d), "pooled text embedding per grounding phrase"),
            _t("box_masks", ("batch", MAX_OBJECTS), "1 where a grounding box is present, else 0", choices=(0, 1)),
        ),
        outputs=tuple(outputs),
        profile=(("batch", 1, 2, 8),),
        max_batch_size=8,
        dynamic_batching=DynamicBatching(preferred_batch_sizes=(2, 4, 8), max_queue_delay_us=2000),
        description="GLIGEN inpainting UNet + attention capture",
        extra=(("capture_layers", ",".join(layers)), ("latent_size", str(s))),
    )

    def sample(rng):
        b = 2
        boxes = np.sort(rng.uniform(0, 1, size=(b, MAX_OBJECTS, 2, 2)), axis=2).transpose(0, 1, 3, 2)
        boxes = boxes.reshape(b, MAX_OBJECTS, 4)[..., [0, 2, 1, 3]].astype(np.float32)
        masks = np.zeros((b, MAX_OBJECTS), np.float32)
        masks[0, :3] = 1
        masks[1, :1] = 1
        boxes *= masks[..., None]
        return {
            "sample": _f32(rng, (b, 9, s, s)),
            "timestep": rng.uniform(0, 999, size=(b,)).astype(np.float32),
            "encoder_hidden_states": _f32(rng, (b, MAX_LENGTH, d)),
            "boxes": boxes,
            "phrase_embeddings": _f32(rng, (b, MAX_OBJECTS, d)),
            "box_masks": masks,
        }

    sides = {name: s // (2 ** levels[name]) for name in layers}
    return Network(spec, UNetExport(unet, sides), sample)


def vae_encoder_network(bundle: ModelBundle) -> Network:
    size = bundle.image_size
    s = size // 8
    spec = NetworkSpec(
        name="vae_encoder",
        inputs=(_t("image", ("batch", 3, size, size), "RGB image scaled to [-1, 1]"),),
        outputs=(_t("latent_mean", ("batch", 4, s, s), "posterior mean x scaling_factor"),
                 _t("latent_std", ("batch", 4, s, s), "posterior std x scaling_factor")),
        profile=(("batch", 1, 1, 4),),
        max_batch_size=4,
        dynamic_batching=DynamicBatching(preferred_batch_sizes=(2, 4), max_queue_delay_us=1000),
        description="SD VAE encoder",
    )
    return Network(spec, VaeEncoderExport(bundle.vae),
                   lambda rng: {"image": rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)})


def vae_decoder_network(bundle: ModelBundle) -> Network:
    size = bundle.image_size
    s = size // 8
    spec = NetworkSpec(
        name="vae_decoder",
        inputs=(_t("latent", ("batch", 4, s, s), "latent in the UNet's (scaled) space"),),
        outputs=(_t("image", ("batch", 3, size, size), "RGB image, roughly [-1, 1], unclamped"),),
        profile=(("batch", 1, 1, 4),),
        max_batch_size=4,
        dynamic_batching=DynamicBatching(preferred_batch_sizes=(2, 4), max_queue_delay_us=1000),
        description="SD VAE decoder",
    )
    return Network(spec, VaeDecoderExport(bundle.vae), lambda rng: {"latent": _f32(rng, (1, 4, s, s))})


def sam_image_encoder_network(bundle: ModelBundle) -> Network:
    arch = bundle.sam_arch
    size, e, c = arch.img_size, arch.embedding_size, arch.prompt_dim
    outputs = [_t("image_embeddings", ("batch", c, e, e), f"{arch.label} image embedding")]
    if arch.kind == "apsam":
        image_doc = "BGR 0..1, the whole image resized to S x S (APSAM reference pipeline, no normalisation)"
        m = arch.num_multimask_outputs + 1
        outputs.append(_t("mask_tokens", ("batch", m, c), "energy-CNN tokens: classifier top-k, query_projection"))
        module = ApsamImageEncoderExport(bundle.sam)
        sample = lambda rng: {"image": rng.uniform(0, 1, (1, 3, size, size)).astype(np.float32)}  # noqa: E731
    else:
        image_doc = "RGB, longest side resized to S, SAM-normalised, zero-padded bottom/right"
        module = SamImageEncoderExport(bundle.sam)
        sample = lambda rng: {"image": _f32(rng, (1, 3, size, size))}  # noqa: E731
    spec = NetworkSpec(
        name="sam_image_encoder",
        inputs=(_t("image", ("batch", 3, size, size), image_doc),),
        outputs=tuple(outputs),
        profile=(("batch", 1, 1, 4),),
        max_batch_size=4,
        dynamic_batching=DynamicBatching(preferred_batch_sizes=(2, 4), max_queue_delay_us=1000),
        # TensorRT fp16: the ViT LayerNorms and the neck's LayerNorm2d overflow; keep them fp32.
        fp32_layer_patterns=(r"LayerNormalization", r"/norm\d?/", r"/neck/neck\.[13]/"),
        description=f"{arch.label} image encoder",
        extra=(("input_pipeline", arch.kind),),
    )
    return Network(spec, module, sample)


def sam_decoder_network(bundle: ModelBundle) -> Network:
    arch = bundle.sam_arch
    e, c, m = arch.embedding_size, arch.prompt_dim, arch.num_multimask_outputs + 1
    low = 4 * e
    spec = NetworkSpec(
        name="sam_decoder",
        inputs=(
            _t("image_embeddings", (1, c, e, e), "embedding of one image (sam_image_encoder output)"),
            _t("point_coords", ("num_prompts", "num_points", 2),
               "xy pixels in the encoder's S x S frame (SAM: longest side S; APSAM: whole image S x S)"),
            _t("point_labels", ("num_prompts", "num_points"), "1 fg, 0 bg, 2/3 box corners, -1 padding",
               choices=(-1, 0, 1, 2, 3)),
            _t("mask_input", ("mask_batch", 1, low, low), "previous low-res mask logits (1 or num_prompts)"),
            _t("has_mask_input", (1,), "1 when mask_input is used, else 0", choices=(0, 1)),
            _t("orig_im_size", (2,), f"original image (H, W), 1..{MAX_SIDE} px", values=(1, MAX_SIDE)),
            _t("mask_tokens", ("token_batch", m, c),
               "mask tokens: SAM's learned ones, or APSAM's from sam_image_encoder (1 or num_prompts)"),
        ),
        outputs=(
            _t("masks", ("num_prompts", m, "orig_h", "orig_w"), "mask logits at the original size; 0 = single-mask output"),
            _t("iou_predictions", ("num_prompts", m), "predicted IoU per mask"),
            _t("low_res_masks", ("num_prompts", m, low, low), "low-res mask logits (next click's mask_input)"),
        ),
        profile=(("num_prompts", 1, 64, 256), ("num_points", 1, 3, 32), ("mask_batch", 1, 1, 256),
                 ("token_batch", 1, 1, 256)),
        broadcast=(("mask_batch", "num_prompts"), ("token_batch", "num_prompts")),
        value_dims=(("orig_h", "orig_im_size", 0), ("orig_w", "orig_im_size", 1)),
        max_batch_size=0,
        description=f"{arch.label} prompt encoder + mask decoder (mask tokens as input)",
        extra=(("num_mask_tokens", str(m)), ("input_pipeline", arch.kind)),
    )
    size = arch.img_size

    def sample(rng):
        p, n = 64, 3
        return {
            "image_embeddings": _f32(rng, (1, c, e, e)),
            "point_coords": rng.uniform(0, size, (p, n, 2)).astype(np.float32),
            "point_labels": rng.choice(np.array([-1, 0, 1, 2, 3], np.float32), (p, n)),
            "mask_input": _f32(rng, (1, 1, low, low)),
            "has_mask_input": np.ones((1,), np.float32),
            "orig_im_size": np.array([size * 3 // 4, size], np.float32),
            "mask_tokens": _f32(rng, (1, m, c), 0.5),
        }

    def sidecars(folder: Path) -> None:
        tokens = bundle.sam.mask_decoder.mask_tokens.weight.detach().numpy()[None].astype(np.float32)
        np.save(folder / "sam_mask_tokens.npy", tokens)

    square = arch.kind == "apsam"  # APSAM learns no mask tokens: they come from its image encoder
    return Network(spec, SamDecoderExport(bundle.sam, square=square), sample, None if square else sidecars)


# ----------------------------------------------------------------------------- selection

PART_OF = {
    "text_encoder": "text_encoder", "unet": "unet", "vae_encoder": "vae", "vae_decoder": "vae",
    "sam_image_encoder": "sam", "sam_decoder": "sam",
}
_HINT = {
    "text_encoder": "--checkpoint (a GLIGEN .pth or diffusers folder)", "unet": "--checkpoint (a GLIGEN .pth or diffusers folder)",
    "vae": "--checkpoint (a GLIGEN .pth or diffusers folder)",
    "sam": "--sam-checkpoint (a SAM or APSAM .pth)",
}


def parse_only(only: str | None) -> tuple[str, ...] | None:
    """``--only`` value (comma-separated graph names) -> names; raises InvalidArgument for unknown ones."""
    if only is None:
        return None
    names = tuple(n.strip() for n in only.split(",") if n.strip())
    unknown = [n for n in names if n not in NETWORK_NAMES]
    if unknown or not names:
        raise InvalidArgument(f"--only {only!r}: unknown graph name(s) {unknown}; expected names from {list(NETWORK_NAMES)}")
    return names


def parts_in_order(names) -> list[tuple[str, list[str]]]:
    """Graph names grouped by the bundle part they are exported from, in :data:`NETWORK_NAMES`
    order: ``[("text_encoder", ["text_encoder"]), ("unet", ["unet"]), ("vae", [...]), ...]``."""
    groups: dict[str, list[str]] = {}
    for name in NETWORK_NAMES:
        if name in names:
            groups.setdefault(PART_OF[name], []).append(name)
    return list(groups.items())


def select_networks(bundle: ModelBundle, only: tuple[str, ...] | None = None,
                    capture_layers: tuple[str, ...] | None = None, build: bool = True) -> list[Network]:
    """Networks to export, in :data:`NETWORK_NAMES` order.

    With ``only`` given, every named graph must have its source (else InvalidArgument naming the
    missing option). Without it, graphs whose source is absent are skipped (e.g. only a SAM
    checkpoint: no synthesis graphs). ``build=False`` only checks (no module is loaded).
    """
    builders = {
        "text_encoder": text_encoder_network, "unet": lambda b: unet_network(b, capture_layers),
        "vae_encoder": vae_encoder_network, "vae_decoder": vae_decoder_network,
        "sam_image_encoder": sam_image_encoder_network, "sam_decoder": sam_decoder_network,
    }
    chosen = []
    for name in NETWORK_NAMES:
        if only is not None and name not in only:
            continue
        part = PART_OF[name]
        if not bundle.has(part):
            if only is not None:
                raise InvalidArgument(f"graph {name} needs {_HINT[part]}, which was not given")
            continue
        if build:
            chosen.append(builders[name](bundle))
    return chosen
