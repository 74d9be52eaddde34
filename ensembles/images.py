"""Request images: decoding, validation and resizing. Arrays are uint8 ``[H, W, 3]`` RGB."""

from __future__ import annotations

import io

import numpy as np

from xsyn.api.limits import MAX_PIXELS, MAX_SIDE, MIN_SIDE
from xsyn.errors import InvalidArgument


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 RGB array; refuses corrupt data and images over the size limit."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS or max(im.size) > MAX_SIDE:
                raise InvalidArgument(f"image: {im.width}x{im.height} exceeds the limit of {MAX_SIDE} px a side, "
                                      f"{MAX_PIXELS} pixels")
            im.load()
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidArgument(f"image: cannot decode as PNG/JPEG ({type(exc).__name__}: {exc})") from None


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate a uint8 ``[H, W, 3]`` array; returns it C-contiguous."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InvalidArgument(f"image: dtype {getattr(image, 'dtype', type(image).__name__)}, expected uint8")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidArgument(f"image: shape {list(image.shape)}, expected [H, W, 3] RGB")
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE or h * w > MAX_PIXELS:
        raise InvalidArgument(f"image: {w}x{h}, expected sides {MIN_SIDE}..{MAX_SIDE} px and at most {MAX_PIXELS} pixels")
    return np.ascontiguousarray(image)


def resize(image: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    """Resize a uint8 image (or bool/uint8 mask with ``nearest``) with PIL."""
    from PIL import Image

    if image.shape[1] == width and image.shape[0] == height:
        return image
    pil = Image.fromarray(image.astype(np.uint8) * (255 if image.dtype == bool else 1))
    out = np.asarray(pil.resize((width, height), Image.NEAREST if nearest else Image.BILINEAR))
    return out > 127 if image.dtype == bool else out


def to_model_range(image: np.ndarray) -> np.ndarray:
    """uint8 ``[S, S, 3]`` -> float32 ``[1, 3, S, S]`` in [-1, 1] (the VAE's input)."""
    return (image.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]


def from_model_range(x: np.ndarray) -> np.ndarray:
    """float ``[3, S, S]`` ~[-1, 1] -> uint8 ``[S, S, 3]``, rounded as diffusers' postprocessing."""
    return np.round(np.clip(x.transpose(1, 2, 0) / 2 + 0.5, 0, 1) * 255).astype(np.uint8)
