"""Generate the reference-checkpoint fixtures by running the papers' own code (not in this repo).

Usage (each part is skipped when its checkout is not given):

    git clone https://github.com/xi801/APSAM /tmp/ref/APSAM
    git clone https://github.com/gligen/GLIGEN /tmp/ref/GLIGEN
    pip install --target /tmp/refdeps einops omegaconf      # what the reference code imports
    PYTHONPATH=/tmp/refdeps .venv/bin/python scripts/make_reference_fixtures.py \\
        --apsam-repo /tmp/ref/APSAM --gligen-repo /tmp/ref/GLIGEN --out tests/fixtures/reference

For each code base it builds a seeded tiny model *with the reference's own module classes*,
saves its weights exactly as the reference's training script does (APSAM: ``torch.save(
model.state_dict(), ..., _use_new_zipfile_serialization=False)``; GLIGEN: ``trainer.py``'s
checkpoint dict with ``model``, ``autoencoder``, ``text_encoder``, ``diffusion`` and the pickled
OmegaConf ``config_dict``), and records the reference's outputs on fixed inputs as ``.npz``.
Only those numbers and weight files are committed; the tests check that ``xsyn export
--checkpoint`` plus the exported graphs reproduce them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tokenizer writer (data, no model code)
SEED = 0


def _randomise_zero_params(module: torch.nn.Module, seed: int) -> None:
    """Zero-initialised tensors (position tables, gates) get seeded values so they matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.numel() and not torch.any(p):
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.numel() == 1 else 0.05))


# ----------------------------------------------------------------------------- APSAM (xi801/APSAM)

APSAM_TINY = dict(input_size=128, embed_dim=32, depth=2, heads=2, global_attn=[1], window=8, prompt_dim=32,
                  decoder_mlp=64, iou_hidden=32)


def apsam_fixture(repo: Path, out: Path) -> dict:
    """Tiny APSAM built like ``_build_apsam`` (reference classes, tiny widths) + outputs."""
    from functools import partial

    from PIL import Image

    sys.path.insert(0, str(repo))
    from models.segment_anything_samus.modeling.apsam import APSAM
    from models.segment_anything_samus.modeling.image_encoder_sam import ImageEncoderViT_CNN
    from models.segment_anything_samus.modeling.mask_decoder import MaskDecoder_token
    from models.segment_anything_samus.modeling.prompt_encoder import PromptEncoder
    from models.segment_anything_samus.modeling.transformer import TwoWayTransformer

    c = APSAM_TINY
    size, dim = c["input_size"], c["prompt_dim"]
    patch = size // 32
    torch.manual_seed(SEED)
    model = APSAM(
        image_encoder=ImageEncoderViT_CNN(
            depth=c["depth"], embed_dim=c["embed_dim"], img_size=size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=c["heads"], patch_size=patch, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=c["global_attn"], window_size=c["window"], out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // patch, size // patch),
                                     input_image_size=(size, size), mask_in_chans=16),
        mask_decoder=MaskDecoder_token(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=c["decoder_mlp"], num_heads=8),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=c["iou_hidden"]),
    ).eval()
    _randomise_zero_params(model, SEED + 1)
    torch.save(model.state_dict(), out / "apsam_tiny.pth", _use_new_zipfile_serialization=False)

    # Fixed input: an RGB image of another size, run through the reference's data pipeline:
    # cv2.imread gives BGR; JointTransform2D: to_pil_image, resize (S, S) bilinear, to_tensor.
    rng = np.random.default_rng(SEED)
    rgb = np.zeros((96, 120, 3), np.uint8)
    rgb[...] = rng.integers(0, 60, size=rgb.shape)
    rgb[20:70, 30:90] = rng.integers(150, 255, size=(50, 60, 3))
    bgr = rgb[..., ::-1].copy()
    resized = np.asarray(Image.fromarray(bgr).resize((size, size), Image.BILINEAR))
    imgs = torch.from_numpy(resized.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    energy = torch.cat([imgs.amax(dim=1, keepdim=True), imgs.amin(dim=1, keepdim=True)], dim=1)
    points_orig = np.array([[60.0, 45.0], [75.0, 30.0]])  # xy pixels of the original image
    points = points_orig * np.array([size / rgb.shape[1], size / rgb.shape[0]])
    pt = (torch.tensor(points[None], dtype=torch.float32), torch.ones(1, 2))
    with torch.no_grad():
        out_ref = model(imgs, energy, pt)
        emb, cnn_tokens = model.image_encoder(imgs, energy)
        se, de = model.prompt_encoder(points=pt, boxes=None, masks=None)
        all_masks, all_iou = model.mask_decoder.predict_masks(cnn_tokens, emb, model.prompt_encoder.get_dense_pe(), se, de)
    np.savez_compressed(
        out / "apsam_tiny_outputs.npz",
        image_rgb=rgb, encoder_input=imgs.numpy(), points_orig=points_orig.astype(np.float32),
        point_coords=pt[0].numpy(), image_embeddings=emb.numpy(), low_res_logits=out_ref["low_res_logits"].numpy(),
        all_low_res_logits=all_masks.numpy(), iou_predictions=all_iou.numpy(),
    )
    print(f"APSAM: {out / 'apsam_tiny.pth'} ({len(model.state_dict())} tensors), outputs "
          f"low_res {tuple(out_ref['low_res_logits'].shape)}")
    return {"apsam": dict(APSAM_TINY, reference_commit=_commit(repo))}


# ----------------------------------------------------------------------------- GLIGEN (gligen/GLIGEN)

GLIGEN_TINY_YAML = """
diffusion:
  target: ldm.models.diffusion.ldm.LatentDiffusion
  params: {linear_start: 0.00085, linear_end: 0.012, timesteps: 1000}
model:
  target: ldm.modules.diffusionmodules.openaimodel.UNetModel
  params:
    image_size: 32
    in_channels: 4
    out_channels: 4
    model_channels: 32
    attention_resolutions: [4, 2, 1]
    num_res_blocks: 1
    channel_mult: [1, 1, 2, 2]
    num_heads: 4
    transformer_depth: 1
    context_dim: 128
    fuser_type: gatedSA
    use_checkpoint: True
    grounding_tokenizer:
      target: ldm.modules.diffusionmodules.text_grounding_net.PositionNet
      params: {in_dim: 128, out_dim: 128}
autoencoder:
  target: ldm.models.autoencoder.AutoencoderKL
  params:
    scale_factor: 0.18215
    embed_dim: 4
    ddconfig: {double_z: true, z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3, ch: 32,
               ch_mult: [1, 1, 2, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}
text_encoder:
  target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
grounding_tokenizer_input:
  target: grounding_input.text_grounding_tokinzer_input.GroundingNetInput
"""
GLIGEN_TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                   max_position_embeddings=77, hidden_act="quick_gelu")


def _gligen_checkpoint(repo: Path, yaml: str, text_config: dict, path: Path):
    """Instantiate the reference's modules from ``yaml`` as ``trainer.py`` does, randomise the
    zero-initialised tensors, save the trainer's checkpoint dict. Returns (UNet, (VAE, text))."""
    import types

    from omegaconf import OmegaConf
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(repo))
    # modules.py imports OpenAI's ``clip`` package for FrozenCLIPTextEmbedder, which GLIGEN's
    # text-grounding config never builds; an empty stand-in lets the module import.
    sys.modules.setdefault("clip", types.ModuleType("clip"))
    import ldm.modules.encoders.modules as encoders
    from ldm.util import instantiate_from_config

    class _Clip:  # FrozenCLIPEmbedder's from_pretrained, without a download
        @staticmethod
        def from_pretrained(_name):
            return CLIPTextModel(CLIPTextConfig(**text_config))

    encoders.CLIPTextModel = _Clip
    encoders.CLIPTokenizer = type("_NoTokenizer", (), {"from_pretrained": staticmethod(lambda _name: None)})
    config = OmegaConf.create(yaml)
    config.update({"inpaint_mode": True, "enable_ema": False, "name": "xsyn_fixture"})  # as main.py does
    config.model.params.inpaint_mode = True
    torch.manual_seed(SEED)
    model = instantiate_from_config(config.model).eval()
    autoencoder = instantiate_from_config(config.autoencoder).eval()
    text_encoder = instantiate_from_config(config.text_encoder).eval()
    diffusion = instantiate_from_config(config.diffusion)
    _randomise_zero_params(model, SEED + 2)  # gates, zero convs, null features
    _randomise_zero_params(autoencoder, SEED + 3)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    ckpt = dict(model=model.state_dict(), text_encoder=text_encoder.state_dict(),
                autoencoder=autoencoder.state_dict(), diffusion=diffusion.state_dict(), opt=opt.state_dict(),
                scheduler={"last_epoch": 0}, iters=1, config_dict=vars(config))
    torch.save(ckpt, path)
    return model, (autoencoder, text_encoder)


def gligen_fixture(repo: Path, out: Path) -> dict:
    """Tiny inpainting GLIGEN built by the reference's ``instantiate_from_config`` + outputs.

    ``FrozenCLIPEmbedder`` downloads ``openai/clip-vit-large-patch14``; here its
    ``CLIPTextModel``/``CLIPTokenizer`` names are pointed at a tiny seeded CLIP text model
    (same class, ViT-L/14's activation and 64-wide heads) so that no download happens.
    """
    from xsyn.export.tokenizer import tokenizer_ids, write_tokenizer_files

    # A small CLIP BPE vocabulary (data: vocab.json + merges.txt) stands in for ViT-L/14's.
    ids_info = tokenizer_ids(write_tokenizer_files(out / "gligen_tiny_tokenizer"))
    text_config = dict(GLIGEN_TEXT, vocab_size=ids_info["vocab_size"], bos_token_id=ids_info["bos_token_id"],
                       eos_token_id=ids_info["eos_token_id"], pad_token_id=ids_info["pad_token_id"])

    model, (autoencoder, text_encoder) = _gligen_checkpoint(repo, GLIGEN_TINY_YAML, text_config, out / "gligen_tiny.pth")

    # Fixed inputs, in the reference's own calling convention.
    gen = torch.Generator().manual_seed(SEED)
    latent = 32
    x = torch.randn(2, 4, latent, latent, generator=gen)
    masked_z = torch.randn(2, 4, latent, latent, generator=gen)
    inpaint_mask = (torch.rand(2, 1, latent, latent, generator=gen) > 0.5).float()
    timesteps = torch.tensor([981.0, 301.0])
    context = torch.randn(2, 77, 128, generator=gen)
    boxes = torch.zeros(2, 30, 4)
    boxes[0, :2] = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.4, 0.1, 0.9, 0.5]])
    boxes[1, :1] = torch.tensor([[0.3, 0.3, 0.7, 0.8]])
    masks = torch.zeros(2, 30)
    masks[0, :2] = 1
    masks[1, :1] = 1
    phrases = torch.randn(2, 30, 128, generator=gen) * masks[..., None]
    image = torch.rand(1, 3, 256, 256, generator=gen) * 2 - 1
    z = torch.randn(1, 4, latent, latent, generator=gen)
    ids = torch.full((2, 77), ids_info["eos_token_id"], dtype=torch.long)
    ids[:, 0] = ids_info["bos_token_id"]
    ids[0, 1:6] = torch.tensor([5, 17, 300, 42, 7])
    ids[1, 1:3] = torch.tensor([11, 200])
    with torch.no_grad():
        noise = model({"x": x, "timesteps": timesteps, "context": context,
                       "inpainting_extra_input": torch.cat([masked_z, inpaint_mask], dim=1),
                       "grounding_input": {"boxes": boxes, "masks": masks, "positive_embeddings": phrases}})
        posterior = autoencoder.quant_conv(autoencoder.encoder(image))
        mean, logvar = torch.chunk(posterior, 2, dim=1)
        decoded = autoencoder.decode(z)  # decode divides by scale_factor itself
        text = text_encoder.transformer(input_ids=ids)
    np.savez_compressed(
        out / "gligen_tiny_outputs.npz",
        sample=torch.cat([x, masked_z, inpaint_mask], dim=1).numpy(), timestep=timesteps.numpy(),
        encoder_hidden_states=context.numpy(), boxes=boxes.numpy(), box_masks=masks.numpy(),
        phrase_embeddings=phrases.numpy(), noise_pred=noise.numpy(), vae_image=image.numpy(),
        latent_mean=(mean * 0.18215).numpy(), latent_std=(torch.exp(0.5 * logvar.clamp(-30, 20)) * 0.18215).numpy(),
        latent=z.numpy(), decoded=decoded.numpy(), input_ids=ids.numpy().astype(np.int32),
        last_hidden_state=text.last_hidden_state.numpy(), pooled_output=text.pooler_output.numpy(),
    )
    print(f"GLIGEN: {out / 'gligen_tiny.pth'} (unet {len(model.state_dict())} tensors), noise_pred {tuple(noise.shape)}")
    return {"gligen": {"yaml": GLIGEN_TINY_YAML, "text_encoder": text_config, "reference_commit": _commit(repo)}}


# ----------------------------------------------------------------------------- full size (not committed)

def full_size_files(gligen_repo: Path | None, apsam_repo: Path | None, out: Path) -> None:
    """Full-size checkpoints in each reference layout with seeded random weights, and the
    reference outputs on one fixed input, for the full-size conversion check (GBs: not committed).

    ``gligen_sd14.pth`` (SD-1.4 inpainting GLIGEN, the reference's flickr_text.yaml sizes),
    ``apsam_vit_b.pth`` (``build_apsam_vit_b``, input 256), ``sam_vit_b.pth`` and
    ``sam_vit_h.pth`` (``segment_anything.build_sam_vit_b/h``), plus ``full_outputs.npz``.
    """
    import gc

    out.mkdir(parents=True, exist_ok=True)
    outputs = {}
    if gligen_repo:
        yaml = GLIGEN_TINY_YAML
        for old, new in (("image_size: 32", "image_size: 64"), ("model_channels: 32", "model_channels: 320"),
                         ("num_res_blocks: 1\n    channel_mult: [1, 1, 2, 2]", "num_res_blocks: 2\n    channel_mult: [1, 2, 4, 4]"),
                         ("num_heads: 4", "num_heads: 8"), ("context_dim: 128", "context_dim: 768"),
                         ("{in_dim: 128, out_dim: 128}", "{in_dim: 768, out_dim: 768}"),
                         ("ch: 32,\n               ch_mult: [1, 1, 2, 2], num_res_blocks: 1",
                          "ch: 128,\n               ch_mult: [1, 2, 4, 4], num_res_blocks: 2")):
            assert old in yaml, old
            yaml = yaml.replace(old, new)
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    max_position_embeddings=77, hidden_act="quick_gelu", vocab_size=49408, bos_token_id=49406,
                    eos_token_id=49407, pad_token_id=49407)
        model, _ = _gligen_checkpoint(gligen_repo, yaml, text, out / "gligen_sd14.pth")
        gen = torch.Generator().manual_seed(SEED)
        x = torch.randn(1, 9, 64, 64, generator=gen)
        boxes = torch.zeros(1, 30, 4)
        boxes[0, 0] = torch.tensor([0.2, 0.3, 0.6, 0.7])
        masks = torch.zeros(1, 30)
        masks[0, 0] = 1
        inputs = dict(sample=x, timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 77, 768, generator=gen),
                      boxes=boxes, phrase_embeddings=torch.randn(1, 30, 768, generator=gen) * masks[..., None],
                      box_masks=masks)
        with torch.no_grad():
            noise = model({"x": x[:, :4], "timesteps": inputs["timestep"], "context": inputs["encoder_hidden_states"],
                           "inpainting_extra_input": x[:, 4:],
                           "grounding_input": {"boxes": boxes, "masks": masks,
                                               "positive_embeddings": inputs["phrase_embeddings"]}})
        outputs.update({f"unet_{k}": v.numpy() for k, v in inputs.items()}, unet_noise_pred=noise.numpy())
        del model
        gc.collect()
    if apsam_repo:
        sys.path.insert(0, str(apsam_repo))
        from types import SimpleNamespace

        from models.segment_anything_samus.build_sam_us import build_apsam_vit_b

        torch.manual_seed(SEED)
        model = build_apsam_vit_b(SimpleNamespace(encoder_input_size=256)).eval()
        _randomise_zero_params(model, SEED + 1)
        torch.save(model.state_dict(), out / "apsam_vit_b.pth", _use_new_zipfile_serialization=False)
        imgs = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(SEED))
        energy = torch.cat([imgs.amax(1, keepdim=True), imgs.amin(1, keepdim=True)], 1)
        pt = (torch.tensor([[[100.0, 120.0], [140.0, 90.0]]]), torch.ones(1, 2))
        with torch.no_grad():
            res = model(imgs, energy, pt)
        outputs.update(apsam_image=imgs.numpy(), apsam_points=pt[0].numpy(), apsam_low_res=res["low_res_logits"].numpy())
        del model
        gc.collect()
    from segment_anything import build_sam_vit_b, build_sam_vit_h

    for name, build in (("sam_vit_b", build_sam_vit_b), ("sam_vit_h", build_sam_vit_h)):
        torch.manual_seed(SEED)
        model = build(checkpoint=None).eval()
        _randomise_zero_params(model, SEED + 1)
        torch.save(model.state_dict(), out / f"{name}.pth")
        del model
        gc.collect()
    np.savez(out / "full_outputs.npz", **outputs)
    print(f"full size: {sorted(p.name for p in out.iterdir())}")


def _commit(repo: Path) -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--apsam-repo", type=Path, help="checkout of github.com/xi801/APSAM")
    p.add_argument("--gligen-repo", type=Path, help="checkout of github.com/gligen/GLIGEN")
    p.add_argument("--out", type=Path, default=Path("tests/fixtures/reference"))
    p.add_argument("--full-size", type=Path, metavar="DIR",
                   help="instead: write full-size reference-layout checkpoints (GBs, not committed) into DIR")
    args = p.parse_args(argv)
    if args.full_size:
        full_size_files(args.gligen_repo, args.apsam_repo, args.full_size)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    info_path = args.out / "fixtures.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if args.apsam_repo:
        info.update(apsam_fixture(args.apsam_repo, args.out))
    else:
        print("APSAM: skipped (no --apsam-repo)")
    if args.gligen_repo:
        info.update(gligen_fixture(args.gligen_repo, args.out))
    else:
        print("GLIGEN: skipped (no --gligen-repo)")
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
