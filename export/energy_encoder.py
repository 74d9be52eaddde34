"""APSAM's Energy-Aware Encoder (methods.md section 4) and its safetensors file format.

X-ray pseudo-colour encodes high/low energy attenuation; as in the reference code, the two
energy channels are approximated by the per-pixel max and min over RGB. A small CNN embeds that
2-channel image into a token grid of the mask decoder's width; a linear head scores each token
(2-way softmax), and the top-k tokens, projected, replace SAM's learned mask tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from xsyn.errors import CheckpointError
from xsyn.export.weights import load_state_strict, read_safetensors

FORMAT_TAG = "xsyn.apsam_energy_encoder.v1"


@dataclass(frozen=True)
class EnergyEncoderConfig:
    """Sizes of the encoder.

    Attributes:
        dim: token width, equal to the SAM mask decoder's transformer dim (256 for SAM).
        num_tokens: tokens produced, equal to SAM's mask-token count (4).
        input_size: square input side in pixels (256 in the reference); the grid is input/8.
    """

    dim: int = 256
    num_tokens: int = 4
    input_size: int = 256

    @property
    def grid(self) -> int:
        return self.input_size // 8


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a ``[B, C, H, W]`` tensor."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class EnergyAwareEncoder(nn.Module):
    """Image -> (mask tokens, token scores).

    Input: ``image`` float32 ``[B, 3, S, S]``, RGB, values 0..255, ``S = config.input_size``.
    Outputs: ``mask_tokens`` float32 ``[B, num_tokens, dim]`` (top-k tokens by foreground score,
    best first, projected) and ``token_scores`` float32 ``[B, S/8, S/8]`` (foreground
    probability of each token).
    """

    def __init__(self, config: EnergyEncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        widths = [max(d // 4, 8), max(d // 2, 8), d, d]
        self.stem = nn.Conv2d(2, widths[0], kernel_size=3, padding=1)
        stages = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            stages += [nn.MaxPool2d(2), nn.Conv2d(cin, cout, 3, padding=1), _ChannelLayerNorm(cout), nn.GELU()]
        self.stages = nn.Sequential(*stages)
        self.score_head = nn.Linear(d, 2)
        self.token_proj = nn.Linear(d, d)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image / 255.0
        energy = torch.cat([x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)], dim=1)
        feats = self.stages(self.stem(energy))  # [B, C, g, g]
        b, c, gh, gw = feats.shape
        tokens = feats.flatten(2).transpose(1, 2)  # [B, g*g, C]
        scores = torch.softmax(self.score_head(tokens), dim=-1)[..., 1]  # [B, g*g]
        top = torch.topk(scores, self.config.num_tokens, dim=1).indices  # [B, k]
        chosen = torch.gather(tokens, 1, top.unsqueeze(-1).expand(-1, -1, c))
        return self.token_proj(chosen), scores.reshape(b, gh, gw)


def save_energy_encoder(model: EnergyAwareEncoder, path: Path) -> None:
    """Write the encoder as the project's safetensors file (weights + config in the metadata)."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT_TAG, **{k: str(v) for k, v in asdict(model.config).items()}}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def load_energy_encoder(path: Path) -> EnergyAwareEncoder:
    """Read a file written by :func:`save_energy_encoder`; raises CheckpointError naming the file."""
    state, meta = read_safetensors(Path(path), what="energy-encoder checkpoint")
    if meta.get("format") != FORMAT_TAG:
        raise CheckpointError(f"energy-encoder checkpoint {path}: metadata format is {meta.get('format')!r}, expected {FORMAT_TAG!r}")
    config = EnergyEncoderConfig(**{k: int(meta[k]) for k in ("dim", "num_tokens", "input_size")})
    model = EnergyAwareEncoder(config)
    load_state_strict(model, state, path)
    return model.eval()
