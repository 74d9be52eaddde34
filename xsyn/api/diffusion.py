"""Diffusion constants and the inpainting mask, shared by training (``xsyn train-tiny``) and the
denoising loop."""

import numpy as np

#: SD-1.4's noise schedule, as ``diffusers.DDIMScheduler`` keyword arguments.
SD14_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def inpaint_mask(boxes: np.ndarray, size: int) -> np.ndarray:
    """float32 ``[size, size]``: 1 outside every box (keep), 0 inside (repaint).

    ``boxes``: ``[N, 4]`` xyxy normalised 0..1; corners truncate to latent cells as in diffusers.
    """
    mask = np.ones((size, size), np.float32)
    for x0, y0, x1, y1 in boxes:
        mask[int(y0 * size):int(y1 * size), int(x0 * size):int(x1 * size)] = 0
    return mask
