"""The original GLIGEN checkpoint (gligen/GLIGEN ``trainer.py``) -> the diffusers modules we export.

The file is a dict: ``model`` (``ldm.modules.diffusionmodules.openaimodel.UNetModel`` with
gated self-attention fusers and the ``position_net`` grounding tokenizer), ``autoencoder``
(``ldm.models.autoencoder.AutoencoderKL``), ``text_encoder`` (``FrozenCLIPEmbedder``: a
``transformers.CLIPTextModel`` under ``transformer.``), ``diffusion`` (the DDPM schedule
buffers), training state (``opt``, ``scheduler``, ``iters``, optional ``ema``) and the pickled
OmegaConf ``config_dict``. Sizes come from ``config_dict`` when present (SD-1.4 defaults
otherwise) and are checked against the tensor shapes by the strict load.

Every tensor is accounted for: each is renamed to exactly one diffusers parameter, or is a
schedule buffer checked against the scaled-linear schedule the pipelines use, or is one of
the derived buffers listed below. A key left over or missing is an error naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xsyn.errors import CheckpointError
from xsyn.export.checkpoint_files import plain_config

#: the schedule the orchestrators use (``ensembles/denoise.py``): SD-1.x scaled-linear.
SCHEDULE = dict(linear_start=0.00085, linear_end=0.012, timesteps=1000)
TRAINING_STATE = ("opt", "scheduler", "iters", "ema", "config_dict")

SD14_UNET = dict(model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=2, attention_resolutions=[4, 2, 1],
                 num_heads=8, transformer_depth=1, context_dim=768, fuser_type="gatedSA")
SD14_VAE = dict(ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, z_channels=4, embed_dim=4, scale_factor=0.18215,
                resolution=256)


# ----------------------------------------------------------------------------- UNet

def unet_config(state: dict, params: dict) -> dict:
    """``UNet2DConditionModel`` kwargs for an inpainting GLIGEN UNet of the given ldm params."""
    p = dict(SD14_UNET, **{k: v for k, v in params.items() if k in SD14_UNET})
    if p["fuser_type"] != "gatedSA":
        raise CheckpointError(f"GLIGEN fuser_type {p['fuser_type']!r}: only gatedSA (gated self-attention) is served")
    mult, ds, attn_levels = p["channel_mult"], 1, []
    for level in range(len(mult)):
        attn_levels.append(ds in p["attention_resolutions"])
        ds *= 2
    if not all(attn_levels[:-1]) or attn_levels[-1]:
        raise CheckpointError(f"GLIGEN attention_resolutions {p['attention_resolutions']}: expected attention at every "
                              f"level but the last (SD-1.x layout)")
    in_ch = state["input_blocks.0.0.weight"].shape[1]
    if in_ch != 9:
        raise CheckpointError(f"GLIGEN UNet input_blocks.0.0.weight: {in_ch} input channels, expected 9 (inpainting: "
                              f"latent 4 + masked latent 4 + mask 1)")
    c = p["model_channels"]
    return dict(
        sample_size=int(params.get("image_size", 64)), in_channels=9, out_channels=int(params.get("out_channels", 4)),
        down_block_types=("CrossAttnDownBlock2D",) * (len(mult) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(mult) - 1),
        block_out_channels=tuple(c * m for m in mult), layers_per_block=p["num_res_blocks"],
        cross_attention_dim=p["context_dim"], attention_head_dim=p["num_heads"], norm_num_groups=32,
        transformer_layers_per_block=p["transformer_depth"], attention_type="gated", flip_sin_to_cos=True,
        freq_shift=0,
    )


_RESBLOCK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def _sub(key: str, prefix: str, new_prefix: str, table: dict[str, str] | None = None) -> str | None:
    """``prefix.rest`` -> ``new_prefix.rest`` (rest's head renamed by ``table``), else None."""
    if not key.startswith(prefix + "."):
        return None
    rest = key[len(prefix) + 1:]
    if table:
        for old, new in table.items():
            if rest.startswith(old + "."):
                return f"{new_prefix}.{new}.{rest[len(old) + 1:]}"
        raise CheckpointError(f"model.{key}: unexpected tensor in a residual block")
    return f"{new_prefix}.{rest}"


def unet_key_map(cfg: dict) -> list[tuple[str, str, dict | None]]:
    """(ldm prefix, diffusers prefix, sub-table) for every block of the UNet."""
    n, layers = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    m: list[tuple[str, str, dict | None]] = [
        ("time_embed.0", "time_embedding.linear_1", None), ("time_embed.2", "time_embedding.linear_2", None),
        ("input_blocks.0.0", "conv_in", None), ("out.0", "conv_norm_out", None), ("out.2", "conv_out", None),
        ("position_net", "position_net", None),
        ("middle_block.0", "mid_block.resnets.0", _RESBLOCK), ("middle_block.1", "mid_block.attentions.0", None),
        ("middle_block.2", "mid_block.resnets.1", _RESBLOCK),
    ]
    for level in range(n):
        has_attn = level < n - 1
        for j in range(layers):
            idx = 1 + level * (layers + 1) + j
            m.append((f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{j}", _RESBLOCK))
            if has_attn:
                m.append((f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{j}", None))
        if level < n - 1:
            m.append((f"input_blocks.{1 + level * (layers + 1) + layers}.0.op", f"down_blocks.{level}.downsamplers.0.conv", None))
    for up in range(n):
        has_attn = up > 0
        for j in range(layers + 1):
            idx = up * (layers + 1) + j
            m.append((f"output_blocks.{idx}.0", f"up_blocks.{up}.resnets.{j}", _RESBLOCK))
            if has_attn:
                m.append((f"output_blocks.{idx}.1", f"up_blocks.{up}.attentions.{j}", None))
            if j == layers and up < n - 1:
                m.append((f"output_blocks.{idx}.{2 if has_attn else 1}.conv", f"up_blocks.{up}.upsamplers.0.conv", None))
    return m


def convert_unet(state: dict, params: dict, check_only: bool = False) -> nn.Module:
    """The ldm GLIGEN UNet state dict -> ``UNet2DConditionModel(attention_type="gated")``.
    ``check_only``: build on the meta device and only check names and shapes (no memory)."""
    from diffusers import UNet2DConditionModel

    cfg = unet_config(state, params)
    table = unet_key_map(cfg)
    renamed, origin = {}, {}
    for key, tensor in state.items():
        new = next((r for prefix, target, sub in table if (r := _sub(key, prefix, target, sub)) is not None), None)
        if new is None:
            raise CheckpointError(f"model.{key}: no counterpart in the diffusers UNet (unexpected key)")
        renamed[new], origin[new] = tensor, f"model.{key}"
    with torch.device("meta" if check_only else "cpu"):
        unet = UNet2DConditionModel(**cfg)
    _load_strict(unet, renamed, "GLIGEN UNet (model)", check_only, origin)
    return unet.eval()


# ----------------------------------------------------------------------------- VAE

_VAE_RES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _vae_key(key: str, levels: int) -> str:
    parts = key.split(".")
    head = parts[0]
    if head in ("quant_conv", "post_quant_conv"):
        return key
    side, rest = parts[0], parts[1:]
    if rest[0] in ("conv_in", "conv_out"):
        return key
    if rest[0] == "norm_out":
        return ".".join([side, "conv_norm_out", *rest[1:]])
    if rest[0] == "mid":
        if rest[1] in ("block_1", "block_2"):
            return ".".join([side, "mid_block", "resnets", "0" if rest[1] == "block_1" else "1",
                             _VAE_RES[rest[2]], *rest[3:]])
        if rest[1] == "attn_1":
            return ".".join([side, "mid_block", "attentions", "0", _VAE_ATTN[rest[2]], *rest[3:]])
    if rest[0] in ("down", "up"):
        level = int(rest[1])
        block = f"down_blocks.{level}" if rest[0] == "down" else f"up_blocks.{levels - 1 - level}"
        if rest[2] == "block":
            return ".".join([side, block, "resnets", rest[3], _VAE_RES[rest[4]], *rest[5:]])
        if rest[2] in ("downsample", "upsample"):
            return ".".join([side, block, "downsamplers" if rest[2] == "downsample" else "upsamplers", "0", *rest[3:]])
    raise KeyError(key)


def convert_vae(state: dict, params: dict, check_only: bool = False) -> nn.Module:
    """ldm ``AutoencoderKL`` state dict -> diffusers ``AutoencoderKL`` (1x1 attention convs -> linears)."""
    from diffusers import AutoencoderKL

    dd = dict(SD14_VAE, **{k: v for k, v in (params.get("ddconfig") or {}).items() if k in SD14_VAE})
    levels = len(dd["ch_mult"])
    renamed, origin = {}, {}
    for key, tensor in state.items():
        try:
            new = _vae_key(key, levels)
        except (KeyError, IndexError, ValueError):
            raise CheckpointError(f"autoencoder.{key}: no counterpart in the diffusers VAE (unexpected key)") from None
        if ".attentions." in new and new.endswith("weight") and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]
        renamed[new], origin[new] = tensor, f"autoencoder.{key}"
    with torch.device("meta" if check_only else "cpu"):
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=int(params.get("embed_dim", 4)),
            down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(dd["ch"] * m for m in dd["ch_mult"]), layers_per_block=dd["num_res_blocks"],
            norm_num_groups=32, sample_size=int(dd["resolution"]) if "resolution" in dd else 256,
            scaling_factor=float(params.get("scale_factor", SD14_VAE["scale_factor"])),
        )
    _load_strict(vae, renamed, "GLIGEN autoencoder", check_only, origin)
    return vae.eval()


# ----------------------------------------------------------------------------- text encoder

def convert_text_encoder(state: dict, ids: dict[str, int], check_only: bool = False) -> nn.Module:
    """``FrozenCLIPEmbedder`` state (``transformer.text_model.*``) -> ``CLIPTextModel``.

    The file holds no text config: sizes are read off the shapes, heads are 64 wide and the
    activation is quick-GELU, as in CLIP ViT-L/14 (SD-1.x); the special-token ids come from the
    tokenizer given with the checkpoint.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    renamed, position_ids, origin = {}, None, {}
    for key, tensor in state.items():
        # transformers 4.x saved ``transformer.text_model.*``; 5.x drops ``text_model.``
        if not key.startswith("transformer."):
            raise CheckpointError(f"text_encoder.{key}: expected transformer.* (FrozenCLIPEmbedder)")
        new = key[len("transformer."):]
        new = new[len("text_model."):] if new.startswith("text_model.") else new
        if new == "embeddings.position_ids":  # a saved arange buffer of older transformers
            position_ids = (key, tensor)
            continue
        renamed[new], origin[new] = tensor, f"text_encoder.{key}"
    if position_ids is not None and not torch.equal(position_ids[1].flatten().long(), torch.arange(position_ids[1].numel())):
        raise CheckpointError(f"GLIGEN text_encoder {position_ids[0]}: expected 0..{position_ids[1].numel() - 1}")
    try:
        emb = renamed["embeddings.token_embedding.weight"]
        hidden = emb.shape[1]
        layers = len({k.split(".")[2] for k in renamed if k.startswith("encoder.layers.")})
        config = CLIPTextConfig(
            vocab_size=emb.shape[0], hidden_size=hidden, num_hidden_layers=layers,
            intermediate_size=renamed["encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_attention_heads=max(hidden // 64, 1),
            max_position_embeddings=renamed["embeddings.position_embedding.weight"].shape[0],
            hidden_act="quick_gelu", projection_dim=hidden,
            **{k: v for k, v in ids.items() if k != "vocab_size"})
    except KeyError as exc:
        raise CheckpointError(f"GLIGEN text_encoder: missing tensor transformer.text_model.{exc.args[0]}") from None
    if ids["vocab_size"] > emb.shape[0]:
        raise CheckpointError(f"tokenizer: {ids['vocab_size']} tokens, but the text encoder embeds only {emb.shape[0]}")
    with torch.device("meta" if check_only else "cpu"):
        model = CLIPTextModel(config)
    if all(k.startswith("text_model.") for k in model.state_dict()):
        renamed = {"text_model." + k: v for k, v in renamed.items()}
        origin = {"text_model." + k: v for k, v in origin.items()}
    _load_strict(model, renamed, "GLIGEN text_encoder", check_only, origin)
    return model.eval()


# ----------------------------------------------------------------------------- schedule

def check_schedule(state: dict, params: dict, path: Path) -> None:
    """The ``diffusion`` buffers must be the scaled-linear schedule the pipelines sample with."""
    for k, v in SCHEDULE.items():
        if k in params and not np.isclose(float(params[k]), v):
            raise CheckpointError(f"{path}: config diffusion.{k} = {params[k]}, the pipelines use {v}")
    betas = np.linspace(SCHEDULE["linear_start"] ** 0.5, SCHEDULE["linear_end"] ** 0.5, SCHEDULE["timesteps"],
                        dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    expected = {"betas": betas, "alphas_cumprod": alphas_cumprod}
    known = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
             "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
             "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"}
    unknown = sorted(set(state) - known)
    if unknown:
        raise CheckpointError(f"{path}: diffusion tensor(s) {unknown[:3]} are not DDPM schedule buffers")
    for name, want in expected.items():
        if name not in state:
            raise CheckpointError(f"{path}: diffusion.{name} missing")
        got = state[name].double().numpy()
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-8):
            raise CheckpointError(f"{path}: diffusion.{name} is not the scaled-linear schedule "
                                  f"({SCHEDULE}) the pipelines sample with")


# ----------------------------------------------------------------------------- whole file

@dataclass
class PreparedGligen:
    """A checked original GLIGEN checkpoint: ``loaders`` build ``unet``/``vae``/``text_encoder``
    one at a time (the export streams them), ``image_size`` in pixels, ``notes`` to print and a
    one-line ``summary`` of what the file holds."""

    loaders: dict
    image_size: int
    notes: list
    summary: str


def prepare_gligen_original(content: dict, path: Path, tokenizer_dir: Path | None) -> PreparedGligen:
    """Check an original GLIGEN checkpoint's layout, config, schedule and tokenizer now; convert
    its networks later, each when its loader is called. ``tokenizer_dir``: CLIP
    ``vocab.json``/``merges.txt`` (the file holds none)."""
    from xsyn.export.tokenizer import tokenizer_ids

    unknown = sorted(set(content) - {"model", "autoencoder", "text_encoder", "diffusion", *TRAINING_STATE})
    if unknown:
        raise CheckpointError(f"{path}: unexpected top-level entr{'y' if len(unknown) == 1 else 'ies'} {unknown}")
    if tokenizer_dir is None:
        raise CheckpointError(f"{path}: an original GLIGEN .pth holds no tokenizer; give --tokenizer DIR with the "
                              f"CLIP ViT-L/14 vocab.json and merges.txt")
    for fname in ("vocab.json", "merges.txt"):
        if not (Path(tokenizer_dir) / fname).is_file():
            raise CheckpointError(f"--tokenizer {tokenizer_dir}: {fname} missing")
    ids = tokenizer_ids(Path(tokenizer_dir))
    config = plain_config(content.get("config_dict")) or {}
    notes = [] if config else ["no config_dict: SD-1.4 sizes assumed for the UNet and VAE"]

    def params(part):
        return ((config.get(part) or {}).get("params") or {}) if isinstance(config, dict) else {}

    if "diffusion" in content:
        check_schedule(content["diffusion"], params("diffusion"), path)
    if "ema" in content:
        notes.append("ema weights present and not used: the served UNet is `model`, as gligen_inference.py loads it")
    try:
        unet_cfg = unet_config(content["model"], params("model"))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        text_width = content["text_encoder"][next(k for k in content["text_encoder"]
                                                   if k.endswith("embeddings.token_embedding.weight"))].shape[1]
    except StopIteration:
        raise CheckpointError(f"{path}: text_encoder holds no token embedding (not a FrozenCLIPEmbedder)") from None
    if text_width != unet_cfg["cross_attention_dim"]:
        raise CheckpointError(f"{path}: text encoder width {text_width} != UNet context_dim "
                              f"{unet_cfg['cross_attention_dim']}")
    image_size = 8 * int(unet_cfg["sample_size"])

    def vae():
        module = convert_vae(content["autoencoder"], params("autoencoder"))
        module.register_to_config(sample_size=image_size)
        return module

    # every name and shape checked now (meta device: no memory), so that a bad file stops the
    # export before any graph is written; the loaders convert for real, one part at a time
    try:
        convert_unet(content["model"], params("model"), check_only=True)
        convert_vae(content["autoencoder"], params("autoencoder"), check_only=True)
        convert_text_encoder(content["text_encoder"], ids, check_only=True)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    loaders = {"unet": lambda: convert_unet(content["model"], params("model")), "vae": vae,
               "text_encoder": lambda: convert_text_encoder(content["text_encoder"], ids)}
    layers = len({m.group(1) for k in content["text_encoder"] if (m := re.search(r"encoder\.layers\.(\d+)\.", k))})
    summary = (f"UNet 9-channel inpainting, gated self-attention, position net, widths "
               f"{list(unet_cfg['block_out_channels'])}, context {unet_cfg['cross_attention_dim']}; SD VAE; "
               f"CLIP text {layers}x{text_width}; {image_size} px")
    return PreparedGligen(loaders, image_size, notes, summary)


def _load_strict(model: nn.Module, state: dict, what: str, check_only: bool = False,
                 origin: dict[str, str] | None = None) -> None:
    """Strict load; errors name the checkpoint's own keys (``origin``: our name -> theirs)."""
    origin = origin or {}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{what}: weights do not match the architecture: missing {missing[:4]} (diffusers "
                              f"names), unexpected {[origin.get(k, k) for k in unexpected[:4]]}")
    wrong = [f"{origin.get(k, k)} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{what}: tensor shapes do not match the architecture: {wrong[:3]}")
    if not check_only:
        model.load_state_dict(state, strict=True)
