"""Request images: decoding, validation and resizing. Arrays are uint8 ``[H, W, 3]`` RGB."""

from __future__ import annotations

import io

import numpy as np

from xsyn.api.limits import MAX_PIXELS, MAX_SIDE, MIN_SIDE
from xsyn.errors import InvalidArgument


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 RGB array; refuses corrupt data, and images over the size limit
    from their header, before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            check_size(im.width, im.height, max_pixels)
            im.load()
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as exc:  # Pillow's own header check, at twice its pixel limit
        raise InvalidArgument(f"image: {exc}; the limit is {MAX_SIDE} px a side, {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidArgument(f"image: cannot decode as PNG/JPEG ({type(exc).__name__}: {exc})") from None


def check_size(width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    """InvalidArgument unless sides are ``MIN_SIDE..MAX_SIDE`` and the area at most ``max_pixels``."""
    if min(height, width) < MIN_SIDE or max(height, width) > MAX_SIDE or height * width > max_pixels:
        raise InvalidArgument(f"image: {width}x{height}, expected sides {MIN_SIDE}..{MAX_SIDE} px and at most "
                              f"{max_pixels} pixels")


def check_image_shape(shape, dtype: str, max_pixels: int = MAX_PIXELS) -> None:
    """Check a raw image tensor from its shape and dtype alone (before its bytes are read)."""
    if dtype != "uint8":
        raise InvalidArgument(f"image: dtype {dtype}, expected uint8")
    if len(shape) != 3 or shape[2] != 3:
        raise InvalidArgument(f"image: shape {list(shape)}, expected [H, W, 3] RGB")
    check_size(int(shape[1]), int(shape[0]), max_pixels)


def check_image(image: np.ndarray, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Validate a uint8 ``[H, W, 3]`` array; returns it C-contiguous."""
    if not isinstance(image, np.ndarray):
        raise InvalidArgument(f"image: {type(image).__name__}, expected a uint8 array")
    check_image_shape(image.shape, str(image.dtype), max_pixels)
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
