"""Where the networks come from: seeded presets or real checkpoints, as one :class:`ModelBundle`.

Presets:
    ``tiny``: the real architectures (GLIGEN inpainting UNet, SD VAE, CLIP text model, APSAM as
    its reference defines it) at tiny widths, with the weights ``xsyn train-tiny`` trained on
    phantom X-ray data (``xsyn/data/presets/tiny``, checked against their manifest's sha256);
    the text encoder is tiny-random's, frozen during training.
    ``tiny-random``: the same architectures with seeded random weights; same seed -> identical
    weights.
    ``full``: SD-1.4 and APSAM ViT-B shapes with seeded random weights (full-size export, timing).

Checkpoints (recognised by content, :mod:`xsyn.export.checkpoint_files`):
    an original GLIGEN ``.pth`` (gligen/GLIGEN trainer; with a CLIP tokenizer folder), a
    diffusers-format GLIGEN inpainting folder (``unet/ vae/ text_encoder/ tokenizer/``), a SAM
    ``.pth`` (vit_b/l/h) or an APSAM reference ``.pth`` (xi801/APSAM). Weights are read with
    safetensors or a restricted unpickler: loading never executes pickled code.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from xsyn.errors import CheckpointError
from xsyn.export import tokenizer as tok
from xsyn.export.sam_arch import APSAM_VIT_B, TINY_APSAM, SamArch, build_sam, load_sam_checkpoint

PRESETS = ("tiny", "tiny-random", "full")


PARTS = ("text_encoder", "unet", "vae", "sam")


@dataclass
class ModelBundle:
    """The PyTorch modules every graph is exported from (None where a source lacks one).

    The modules (``text_encoder``, ``unet``, ``vae``, ``sam``) are built on first access from
    ``loaders`` (part -> function returning the module), and :meth:`release` drops one again:
    the export streams the weights part by part instead of holding every full-size module at
    once. Assigning a part sets it directly.

    Attributes:
        source: human-readable origin ("preset tiny (seed 0)", "checkpoint DIR + FILE").
        image_size: generation resolution in pixels (square), 8x the UNet latent side.
        tokenizer_dir: folder with ``vocab.json``/``merges.txt`` matching ``text_encoder``.
        sam: the segmentation model, SAM or APSAM (``sam_arch.kind``).
        sam_arch: its sizes (``img_size`` is the encoder input side).
        profile: ``tiny`` for the trained tiny preset, ``tiny-random`` for its untrained weights
            (the orchestrators size their defaults for each), else ``standard``; the export
            manifests state it.
    """

    source: str
    image_size: int
    profile: str = "standard"
    tokenizer_dir: Path | None = None
    sam_arch: SamArch | None = None
    notes: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)
    loaders: dict[str, Callable[[], nn.Module]] = field(default_factory=dict)
    _modules: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    def has(self, part: str) -> bool:
        """Whether the source provides ``part`` (loaded or loadable)."""
        return self._modules.get(part) is not None or part in self.loaders

    def release(self, part: str) -> None:
        """Drop the loaded module of ``part`` (its loader stays: a later access rebuilds it)."""
        self._modules.pop(part, None)
        gc.collect()


def _part_property(part: str) -> property:
    def get(self: ModelBundle):
        if self._modules.get(part) is None and part in self.loaders:
            self._modules[part] = self.loaders[part]()
        return self._modules.get(part)

    def set_(self: ModelBundle, module) -> None:
        self._modules[part] = module

    return property(get, set_, doc=f"the {part} module (built on first access)")


for _part in PARTS:
    setattr(ModelBundle, _part, _part_property(_part))


# ----------------------------------------------------------------------------- presets

def _unet_config(tiny: bool) -> dict:
    common = dict(in_channels=9, out_channels=4, attention_type="gated", flip_sin_to_cos=True, freq_shift=0,
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    if tiny:
        return dict(common, sample_size=32, block_out_channels=(32, 32, 64, 64), layers_per_block=1,
                    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    return dict(common, sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)


def _vae_config(tiny: bool) -> dict:
    common = dict(in_channels=3, out_channels=3, latent_channels=4, scaling_factor=0.18215,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    if tiny:
        return dict(common, sample_size=256, block_out_channels=(8, 16, 16, 32), layers_per_block=1, norm_num_groups=8)
    return dict(common, sample_size=512, block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)


def _clip_config(tiny: bool, ids: dict[str, int]):
    from transformers import CLIPTextConfig

    if tiny:
        return CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=tok.MAX_LENGTH, projection_dim=32, **ids)
    # CLIP ViT-L/14 text tower (SD-1.x); the full vocabulary size, project token ids.
    return CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          max_position_embeddings=tok.MAX_LENGTH, projection_dim=768, hidden_act="quick_gelu",
                          **dict(ids, vocab_size=49408))


def _seeded(seed: int, build):
    """Build a module under a fixed seed, then give every all-zero parameter seeded random values.

    Zero-initialised parameters (GLIGEN's gates and null features, SAM's position tables) would
    make the random preset blind to some inputs; filling them makes parity tests meaningful.
    """
    torch.manual_seed(seed)
    module = build()
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.numel() and not torch.any(p):
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.numel() == 1 else 0.05))
    return module.eval()


#: the committed trained weights of the ``tiny`` preset (``xsyn train-tiny`` output)
TINY_WEIGHTS = Path(__file__).resolve().parent / "data" / "presets" / "tiny"


def default_work_dir() -> Path:
    """Scratch folder for generated inputs (the preset tokenizer): ``$XDG_CACHE_HOME/xsyn``."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xsyn"


def preset_bundle(name: str, seed: int = 0, work_dir: Path | None = None, weights_dir: Path | None = None
                  ) -> ModelBundle:
    """The modules of a preset: ``tiny`` (trained), ``tiny-random`` or ``full`` (seeded random).

    ``work_dir`` receives the generated tokenizer files (default :func:`default_work_dir`).
    ``weights_dir``: the trained ``tiny`` weights folder (default: the committed one,
    :data:`TINY_WEIGHTS`), e.g. one ``xsyn train-tiny`` just wrote; ``seed`` then applies to the
    text encoder only, which must be the one the weights were trained with (seed 0).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    if name not in PRESETS:
        raise CheckpointError(f"--preset {name!r}: expected one of {PRESETS}")
    trained = name == "tiny"
    if trained and seed != 0:
        raise CheckpointError(f"--seed {seed}: the tiny preset's weights were trained with the seed-0 text "
                              "encoder; --seed applies to --preset tiny-random and full")
    tiny = name in ("tiny", "tiny-random")
    tok_dir = tok.write_tokenizer_files(Path(work_dir or default_work_dir()) / f"tokenizer_{'tiny' if tiny else name}")
    ids = tok.tokenizer_ids(tok_dir)
    arch = TINY_APSAM if tiny else APSAM_VIT_B
    loaders = {
        "text_encoder": lambda: _seeded(seed, lambda: CLIPTextModel(_clip_config(tiny, ids))),
        "unet": lambda: _seeded(seed + 1, lambda: UNet2DConditionModel(**_unet_config(tiny))),
        "vae": lambda: _seeded(seed + 2, lambda: AutoencoderKL(**_vae_config(tiny))),
        "sam": lambda: _seeded(seed + 3, lambda: build_sam(arch)),
    }
    source = f"preset {name} (seed {seed})"
    if trained:
        from xsyn.export.tiny_weights import trained_loaders

        weights = trained_loaders(weights_dir or TINY_WEIGHTS, loaders)
        loaders.update(weights.loaders)
        source = f"preset tiny (trained: {weights.summary})"
    return ModelBundle(source=source, image_size=256 if tiny else 512,
                       profile=("tiny" if trained else "tiny-random") if tiny else "standard", tokenizer_dir=tok_dir, sam_arch=arch, loaders=loaders)


# ----------------------------------------------------------------------------- checkpoints

DIFFUSERS_PARTS = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}


def _weights_file(folder: Path) -> Path:
    """The part's weights file (or shard index) that ``from_pretrained`` will read."""
    for fname in DIFFUSERS_PARTS[folder.name]:
        for candidate in (folder / fname, folder / (fname + ".index.json")):
            if candidate.is_file():
                return candidate
    raise CheckpointError(f"{folder}: no weights file, expected one of {list(DIFFUSERS_PARTS[folder.name])}")


def _part_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing, expected the {folder.name} config of a diffusers folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def _from_pretrained(model_cls, folder: Path, part: str) -> nn.Module:
    """``model_cls.from_pretrained(folder, subfolder=part)``, strict: a weight left over, missing
    or of another shape is an error naming it; an unreadable file is one line naming the file.
    Weights are read as safetensors or with ``torch.load(weights_only=True)``: no pickled code runs."""
    weights = _weights_file(folder / part)
    _part_config(folder / part)
    kind = "safetensors" if ".safetensors" in weights.name else "torch"
    try:
        model, info = model_cls.from_pretrained(folder, subfolder=part, output_loading_info=True)
    except Exception as exc:  # the libraries raise OSError, ValueError, RuntimeError, SafetensorError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{part} weights {weights}: unreadable {kind} file, truncated, corrupt or of "
                              f"another shape ({type(exc).__name__}: {first[:300]})") from None
    leftovers = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    leftovers = {k: v for k, v in leftovers.items() if v}
    if leftovers:
        raise CheckpointError(f"{weights}: weights do not match the {part} architecture: "
                              + "; ".join(f"{k.replace('_', ' ')} {v[:5]}" for k, v in leftovers.items()))
    return model.eval()


def load_diffusers_folder(folder: Path, bundle: ModelBundle) -> None:
    """Fill ``bundle`` with the text encoder, tokenizer, UNet and VAE of a GLIGEN inpainting folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"--checkpoint-dir {folder}: no such folder")
    missing = [p for p in ("unet", "vae", "text_encoder", "tokenizer") if not (folder / p).is_dir()]
    if missing:
        raise CheckpointError(f"--checkpoint-dir {folder}: missing sub-folder(s) {missing}, expected unet/ vae/ text_encoder/ tokenizer/")
    for fname in ("vocab.json", "merges.txt"):
        if not (folder / "tokenizer" / fname).is_file():
            raise CheckpointError(f"{folder / 'tokenizer' / fname}: missing, expected a CLIP tokenizer")

    unet_cfg = _part_config(folder / "unet")
    if unet_cfg.get("attention_type") != "gated" or unet_cfg.get("in_channels") != 9:
        raise CheckpointError(
            f"{folder / 'unet' / 'config.json'}: expected a GLIGEN inpainting UNet (attention_type 'gated', "
            f"in_channels 9), found attention_type {unet_cfg.get('attention_type')!r}, in_channels {unet_cfg.get('in_channels')!r}"
        )
    loaders = dict(
        unet=lambda: _from_pretrained(UNet2DConditionModel, folder, "unet"),
        vae=lambda: _from_pretrained(AutoencoderKL, folder, "vae"),
        text_encoder=lambda: _from_pretrained(CLIPTextModel, folder, "text_encoder"),
    )
    for load in loaders.values():  # every part read once now (then dropped): a bad file stops the
        load()                     # export before any graph is written
        gc.collect()
    bundle.loaders.update(loaders)
    bundle.tokenizer_dir = folder / "tokenizer"
    bundle.image_size = int(_part_config(folder / "vae").get("sample_size", 512))
    bundle.found.append(f"{folder}: diffusers GLIGEN folder (UNet 9-channel inpainting, gated self-attention, widths "
                        f"{list(unet_cfg.get('block_out_channels', []))}, context {unet_cfg.get('cross_attention_dim')})")


def checkpoint_bundle(paths: list[Path], sam_variant: str | None = None, tokenizer_dir: Path | None = None
                      ) -> ModelBundle:
    """Modules from real checkpoint files, each recognised by content (:func:`detect`).

    ``paths``: at most one synthesis checkpoint (original GLIGEN ``.pth`` or diffusers
    folder) and at most one segmentation checkpoint (SAM or APSAM ``.pth``). ``tokenizer_dir``:
    the CLIP tokenizer for an original GLIGEN ``.pth`` (which holds none). The parts not given
    stay None; ``bundle.found`` has one line per path saying what it held.
    """
    from xsyn.export.checkpoint_files import detect
    from xsyn.export.gligen_original import prepare_gligen_original

    bundle = ModelBundle(source="checkpoint " + " + ".join(str(p) for p in paths), image_size=512)
    for path in map(Path, paths):
        found = detect(path)
        if found.kind in ("diffusers_gligen", "gligen_original"):
            if bundle.has("unet"):
                raise CheckpointError(f"{path}: a second synthesis checkpoint; give one GLIGEN .pth or diffusers folder")
            if found.kind == "diffusers_gligen":
                load_diffusers_folder(path, bundle)
            else:
                gligen = prepare_gligen_original(found.content, path, tokenizer_dir)
                bundle.loaders.update(gligen.loaders)
                bundle.tokenizer_dir, bundle.image_size = Path(tokenizer_dir), gligen.image_size
                bundle.notes += gligen.notes
                bundle.found.append(f"{path}: original GLIGEN checkpoint ({gligen.summary})")
        else:
            if bundle.has("sam"):
                raise CheckpointError(f"{path}: a second segmentation checkpoint; give one SAM or APSAM .pth")
            held = {"state": found.content}
            bundle.sam_arch = load_sam_checkpoint(path, sam_variant, held["state"], check_only=True)[1]
            bundle.loaders["sam"] = lambda path=path, held=held: load_sam_checkpoint(path, sam_variant, held.pop("state"))[0]
            a = bundle.sam_arch
            extra = (f"input {a.img_size} px square BGR 0..1, adapters + energy CNN" if a.kind == "apsam"
                     else f"input {a.img_size} px")
            bundle.found.append(f"{path}: {a.label} checkpoint (ViT {a.embed_dim}x{a.depth}, {extra})")
        del found
    if not bundle.has("sam") and not bundle.has("unet"):
        raise CheckpointError("no checkpoint given")
    return bundle


def copy_tokenizer(bundle: ModelBundle, dest: Path) -> None:
    """Copy the tokenizer files the orchestrators need next to the text-encoder graph."""
    dest.mkdir(parents=True, exist_ok=True)
    for fname in ("vocab.json", "merges.txt"):
        shutil.copyfile(bundle.tokenizer_dir / fname, dest / fname)
