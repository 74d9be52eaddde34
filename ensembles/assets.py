"""What the orchestrators need from an exported repository besides the graphs themselves."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xsyn.errors import NotFound
from xsyn.export.specs import NetworkSpec
from xsyn.ensembles.runner import load_specs


@dataclass
class PipelineAssets:
    """Sizes, tokenizer and sidecars of one exported repository.

    Attributes:
        image_size: generation side in pixels (square); latents are ``image_size / 8``.
        sam_size: SAM encoder input side; ``sam_embedding``: side of its embedding grid.
        sam_mask_tokens: SAM's learned mask tokens, float32 ``[1, M, C]``.
        capture_outputs: UNet attention outputs (``attn_*``) and their grid sides.
        profile: ``tiny`` when the repository was exported from the tiny preset (untrained
            weights: relaxed defaults apply), else ``standard``.
    """

    repo: Path
    specs: dict[str, NetworkSpec]
    tokenizer: object
    image_size: int
    sam_size: int
    sam_embedding: int
    sam_mask_tokens: np.ndarray
    capture_outputs: dict[str, int] = field(default_factory=dict)
    profile: str = "standard"

    @classmethod
    def load(cls, repo: Path) -> "PipelineAssets":
        from xsyn.export.tokenizer import load_tokenizer

        repo = Path(repo)
        specs = load_specs(repo)
        needed = ("text_encoder", "unet", "vae_encoder", "vae_decoder", "sam_image_encoder", "sam_decoder")
        missing = [m for m in needed if m not in specs]
        if missing:
            raise NotFound(f"{repo}: exported graphs missing for {missing}; run `xsyn export`")
        unet = specs["unet"]
        captures = {t.name: int(t.shape[-1]) for t in unet.outputs if t.name.startswith("attn_")}
        sam_in = specs["sam_image_encoder"].inputs[0].shape[-1]
        sam_emb = specs["sam_image_encoder"].outputs[0].shape[-1]
        manifest = json.loads((repo / "unet" / "1" / "export_manifest.json").read_text())
        return cls(
            repo=repo, specs=specs,
            tokenizer=load_tokenizer(repo / "text_encoder" / "1" / "tokenizer"),
            image_size=int(specs["vae_decoder"].outputs[0].shape[-1]),
            sam_size=int(sam_in), sam_embedding=int(sam_emb),
            sam_mask_tokens=np.load(repo / "sam_decoder" / "1" / "sam_mask_tokens.npy"),
            capture_outputs=captures,
            profile="tiny" if str(manifest.get("source", "")).startswith("preset tiny") else "standard",
        )

    @property
    def latent_size(self) -> int:
        return self.image_size // 8
