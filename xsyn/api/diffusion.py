"""Diffusion constants shared by training (``xsyn train-tiny``) and the denoising loop."""

#: SD-1.4's noise schedule, as ``diffusers.DDIMScheduler`` keyword arguments.
SD14_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1)
