"""Request limits shared by the API schema, the orchestrators and the exported graphs.

``MAX_OBJECTS`` is the GLIGEN UNet's grounding-token count: the UNet spec declares its
``boxes`` / ``phrase_embeddings`` / ``box_masks`` inputs with it, and the request schema refuses
more boxes than that.
"""

MAX_OBJECTS = 30          # grounding boxes per synthesis request (GLIGEN's 30 grounding tokens)
MAX_SIDE = 4096           # request image side, pixels
MAX_PIXELS = 16_000_000   # request image area, pixels
MIN_SIDE = 32             # request image side, pixels
MAX_CLASS_NAME = 64       # characters
MAX_POINTS = 24           # prompt points per click
MAX_STEPS = 999           # denoising steps: DDIM's 1000 training steps with steps_offset 1 leave 999
                          # (the server's own budget, ServerSettings.max_steps, is lower)
