"""The SAM / APSAM image encoders' input, shared by the served pipelines and ``xsyn train-tiny``.

``sam`` is SAM's own pipeline (``ResizeLongestSide`` to the encoder size, pixel mean/std
normalisation, zero padding bottom/right); ``apsam`` is the APSAM reference's (the whole image
resized to ``S x S`` with PIL bilinear, BGR channel order as ``cv2.imread`` gives it, 0..1, no
normalisation).
"""

from __future__ import annotations

import numpy as np

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)


def encoder_input(image: np.ndarray, size: int, pipeline: str = "sam") -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB -> float32 ``[3, size, size]`` encoder input (see the module doc)."""
    from PIL import Image
    from segment_anything.utils.transforms import ResizeLongestSide

    if pipeline == "apsam":
        bgr = np.ascontiguousarray(image[..., ::-1])
        if bgr.shape[:2] != (size, size):
            bgr = np.asarray(Image.fromarray(bgr).resize((size, size), Image.BILINEAR))
        return (bgr.astype(np.float32) / 255.0).transpose(2, 0, 1)

    resized = ResizeLongestSide(size).apply_image(image).astype(np.float32)
    normed = (resized - PIXEL_MEAN) / PIXEL_STD
    out = np.zeros((size, size, 3), np.float32)
    out[: normed.shape[0], : normed.shape[1]] = normed
    return out.transpose(2, 0, 1)
