"""What the orchestrators need from an exported repository besides the graphs themselves."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xsyn.errors import NotFound
from xsyn.export.pipelines import ANNOTATION_GRAPHS, SYNTHESIS_GRAPHS  # noqa: F401  (re-exported)
from xsyn.export.specs import NetworkSpec, exported_specs


@dataclass
class PipelineAssets:
    """Sizes, tokenizer and sidecars of one exported repository.

    Attributes:
        image_size: generation side in pixels (square); latents are ``image_size / 8``.
        sam_size: SAM encoder input side; ``sam_embedding``: side of its embedding grid.
        sam_input: ``sam`` (longest-side resize, mean/std, padding) or ``apsam`` (the APSAM
            reference's square BGR 0..1 input; the encoder also returns the mask tokens).
        sam_mask_tokens: SAM's learned mask tokens, float32 ``[1, M, C]``; None for APSAM,
            whose tokens come from its image encoder, per image.
        capture_outputs: UNet attention outputs (``attn_*``) and their grid sides.
        profile: ``tiny`` (trained tiny preset) or ``tiny-random`` (its untrained weights: relaxed
            defaults apply), else ``standard``; the export manifest states it.
        max_objects: grounding boxes per request, from the UNet spec's ``boxes`` input.
    """

    repo: Path
    specs: dict[str, NetworkSpec]
    sam_size: int
    sam_embedding: int
    sam_mask_tokens: np.ndarray | None
    sam_input: str = "sam"
    tokenizer: object = None
    image_size: int = 0
    capture_outputs: dict[str, int] = field(default_factory=dict)
    profile: str = "standard"
    max_objects: int = 0

    @classmethod
    def load(cls, repo: Path, needs: tuple[str, ...] = SYNTHESIS_GRAPHS) -> "PipelineAssets":
        """Read a repository; raises NotFound when a graph in ``needs`` was not exported."""
        from xsyn.export.tokenizer import load_tokenizer

        repo = Path(repo)
        specs = exported_specs(repo)
        missing = [m for m in needs if m not in specs]
        if missing:
            raise NotFound(f"{repo}: exported graphs missing for {missing}; run `xsyn export`")
        encoder = specs["sam_image_encoder"]
        tokens_file = repo / "sam_decoder" / "1" / "sam_mask_tokens.npy"
        assets = cls(
            repo=repo, specs=specs,
            sam_size=int(encoder.inputs[0].shape[-1]),
            sam_embedding=int(encoder.outputs[0].shape[-1]),
            sam_mask_tokens=np.load(tokens_file) if tokens_file.is_file() else None,
            sam_input=dict(encoder.extra).get("input_pipeline", "sam"),
        )
        if "unet" in specs:
            assets.max_objects = int(next(t for t in specs["unet"].inputs if t.name == "boxes").shape[1])
            assets.capture_outputs = {t.name: int(t.shape[-1]) for t in specs["unet"].outputs if t.name.startswith("attn_")}
            assets.image_size = int(specs["vae_decoder"].outputs[0].shape[-1])
            assets.tokenizer = load_tokenizer(repo / "text_encoder" / "1" / "tokenizer")
        manifest = json.loads((repo / "sam_decoder" / "1" / "export_manifest.json").read_text())
        assets.profile = manifest.get("profile", "standard")
        return assets

    @property
    def latent_size(self) -> int:
        return self.image_size // 8
