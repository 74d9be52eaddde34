"""GLIGEN inpainting denoising: DDIM, classifier-free guidance, known-region restoration,
and accumulation of the UNet's cross-attention capture outputs.

Follows ``diffusers.StableDiffusionGLIGENPipeline`` (inpainting mode, scheduled-sampling beta 1):
per step the known region is restored from the input latent noised to ``t``, the batch is
``[unconditional, conditional]`` (the unconditional half has ``box_masks = 0``), and the
scheduler is diffusers' own ``DDIMScheduler`` with SD-1.4 constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from xsyn.api.diffusion import SD14_SCHEDULER, inpaint_mask
from xsyn.api.limits import MAX_OBJECTS
from xsyn.errors import Cancelled
from xsyn.ensembles.runner import Runner, infer_on_device



class TorchNoise:
    """All of a request's random draws, from one seeded ``torch.Generator``, in a fixed order:
    the VAE posterior sample, the initial latent, then per step the known region's noise (and
    DDIM's variance noise when ``eta > 0``).

    This is the order in which ``StableDiffusionGLIGENPipeline`` (inpainting) draws from torch's
    global RNG (its ``generator`` only makes a 9-channel latent that the loop discards), so a
    reference run after ``torch.manual_seed(seed)`` sees the same numbers.
    """

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator)


def make_scheduler(steps: int):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**SD14_SCHEDULER)
    scheduler.set_timesteps(steps)
    return scheduler


@dataclass
class DenoiseResult:
    """Final latent ``[1, 4, s, s]`` and, per capture output, the conditional half's
    attention summed over steps: float32 ``[77, h_l, w_l]`` (divide by ``steps`` for the mean)."""

    latent: np.ndarray
    attention_sum: dict[str, np.ndarray] = field(default_factory=dict)
    steps: int = 0


def grounding_inputs(phrase_embeddings: np.ndarray, boxes: np.ndarray, dim: int, slots: int) -> dict[str, np.ndarray]:
    """UNet grounding tensors for the CFG batch ``[uncond, cond]``, zero-padded to ``slots``
    objects (the UNet spec's grounding-token count)."""
    n = len(boxes)
    padded_boxes = np.zeros((2, slots, 4), np.float32)
    padded_emb = np.zeros((2, slots, dim), np.float32)
    masks = np.zeros((2, slots), np.float32)
    padded_boxes[:, :n] = boxes
    padded_emb[:, :n] = phrase_embeddings
    masks[1, :n] = 1  # the unconditional half sees no boxes
    return {"boxes": padded_boxes, "phrase_embeddings": padded_emb, "box_masks": masks}


def denoise(runner: Runner, prompt_embeddings: np.ndarray, phrase_embeddings: np.ndarray, boxes: np.ndarray,
            input_latent: np.ndarray, noise: TorchNoise, steps: int, guidance: float, eta: float = 0.0,
            slots: int = MAX_OBJECTS, capture_outputs: tuple[str, ...] = (), should_stop: Callable[[], bool] | None = None,
            on_step: Callable[[int, int], None] | None = None) -> DenoiseResult:
    """Run the inpainting loop on ``runner.device`` (the CPU for runners without one).

    Latents, the scheduler's arithmetic, classifier-free guidance and the attention sums stay on
    the device for the whole loop; the UNet is called with device tensors
    (:func:`~xsyn.ensembles.runner.infer_on_device`); only the final latent and the sums come
    back to the host. Random draws come from the request's CPU generator (same numbers on every
    device) and are moved to the device.

    Args:
        prompt_embeddings: ``[2, 77, D]`` (unconditional, conditional).
        phrase_embeddings: ``[N, D]`` pooled phrase features; ``boxes``: ``[N, 4]`` xyxy 0..1.
        input_latent: scaled latent of the input image ``[1, 4, s, s]`` (posterior sample).
        slots: grounding boxes the UNet takes (its spec's ``boxes`` input ``[B, slots, 4]``).
        capture_outputs: UNet ``attn_*`` outputs to accumulate.
        should_stop: polled before each step; True raises :class:`Cancelled`.
    """
    device = torch.device(getattr(runner, "device", "cpu"))
    s = input_latent.shape[-1]
    scheduler = make_scheduler(steps)
    mask = torch.from_numpy(inpaint_mask(boxes, s))[None, None].to(device)
    z_input = torch.from_numpy(input_latent).to(device)
    addition = torch.cat([z_input * mask, mask], dim=1).expand(2, -1, -1, -1)
    latents = noise.draw((1, 4, s, s)).to(device) * scheduler.init_noise_sigma
    fixed = {name: torch.from_numpy(value).to(device) for name, value in
             grounding_inputs(phrase_embeddings, boxes, prompt_embeddings.shape[-1], slots).items()}
    fixed["encoder_hidden_states"] = torch.from_numpy(prompt_embeddings.astype(np.float32)).to(device)
    sums: dict[str, torch.Tensor] = {}
    wanted = ["noise_pred", *capture_outputs]
    for i, t in enumerate(scheduler.timesteps):
        if should_stop is not None and should_stop():
            raise Cancelled(f"cancelled before denoising step {i + 1}/{steps}")
        noised_input = scheduler.add_noise(z_input, noise.draw(z_input.shape).to(device), torch.tensor([t]))
        latents = noised_input * mask + latents * (1 - mask)
        model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        out = infer_on_device(runner, "unet", {
            "sample": torch.cat([model_in, addition], dim=1).float().contiguous(),
            "timestep": torch.full((2,), float(t), dtype=torch.float32, device=device),
            **fixed,
        }, wanted)
        uncond, cond = out["noise_pred"].chunk(2)
        noise_pred = uncond + guidance * (cond - uncond)
        latents = scheduler.step(noise_pred, t, latents, eta=eta, generator=noise.generator).prev_sample
        for name in capture_outputs:
            sums[name] = sums[name] + out[name][1] if name in sums else out[name][1].clone()
        if on_step is not None:
            on_step(i + 1, steps)
    return DenoiseResult(latent=latents.cpu().numpy().astype(np.float32),
                         attention_sum={k: v.cpu().numpy() for k, v in sums.items()}, steps=steps)
