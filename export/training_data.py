"""A COCO dataset folder (``xsyn sample-data`` layout) read into arrays for ``xsyn train-tiny``.

Layout: ``FOLDER/annotations.json`` (COCO: images, annotations with ``segmentation`` as RLE or
polygons, categories) and the image files it names, relative to ``FOLDER``. Every image is
resized to the tiny preset's generation size ``S x S`` (as the synthesis pipeline resizes a
request image) and every mask with it. Each problem is a :class:`~xsyn.errors.InvalidArgument`
naming the file and what was expected; nothing is trained on a partial read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xsyn.errors import InvalidArgument


@dataclass
class Item:
    """One annotated object: class name, bool mask ``[S, S]`` and its tight box ``(x0, y0, x1, y1)``
    in pixels (exclusive ends)."""

    class_name: str
    mask: np.ndarray
    box: tuple[int, int, int, int]


@dataclass
class TrainingSet:
    """Images uint8 ``[N, S, S, 3]`` RGB, their items, the class names, the folder read, and per
    image its background objects (bag, clutter; empty lists when the folder has none)."""

    images: np.ndarray
    items: list[list[Item]]
    classes: tuple[str, ...]
    folder: Path
    background: list[list[Item]]

    def __len__(self) -> int:
        return len(self.images)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    from xsyn.api.masks import mask_box

    return tuple(int(v) for v in mask_box(mask))


def _decode_segmentation(seg, height: int, width: int, where: str) -> np.ndarray:
    from pycocotools import mask as mask_utils

    try:
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), str):
            rle = dict(seg, counts=seg["counts"].encode())
        else:
            raise ValueError("neither polygons nor RLE")
        mask = mask_utils.decode(rle).astype(bool)
    except Exception as exc:  # pycocotools raises several types on malformed data
        raise InvalidArgument(f"{where}: unreadable segmentation ({type(exc).__name__}: {exc})") from None
    if mask.shape != (height, width):
        raise InvalidArgument(f"{where}: segmentation is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}")
    return mask


def _read_coco(path: Path) -> tuple[list[dict], list[dict], dict[int, str]]:
    try:
        coco = json.loads(path.read_text())
        return coco["images"], coco["annotations"], {c["id"]: c["name"] for c in coco["categories"]}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"{path}: not a COCO file with images, annotations and categories ({exc})") from None


def _objects(path: Path, images: list[dict], annotations: list[dict], categories: dict[int, str], sizes,
             size: int) -> list[list[Item]]:
    """Per image (in ``images`` order) its annotated objects resized to ``size x size``."""
    from PIL import Image

    by_image: dict[int, list[dict]] = {}
    for ann in annotations:
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    out = []
    for entry, (width, height) in zip(images, sizes):
        found = []
        for ann in by_image.get(entry.get("id"), []):
            where = f"{path} annotation {ann.get('id')}"
            if ann.get("category_id") not in categories:
                raise InvalidArgument(f"{where}: category_id {ann.get('category_id')!r} is not among the categories")
            mask = _decode_segmentation(ann.get("segmentation"), height, width, where)
            resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)) > 127
            if resized.any():
                found.append(Item(categories[ann["category_id"]], resized, _box(resized)))
        out.append(found)
    return out


def load_training_set(folder: Path, size: int) -> TrainingSet:
    """Every image of ``folder`` at ``size x size`` with its instance masks, and the background
    objects of ``background.json`` when the folder has one (same images; ``xsyn sample-data
    --background`` writes it).

    Raises InvalidArgument for a missing folder or ``annotations.json``, invalid JSON, no images
    or no annotated objects, an unreadable image file, or a malformed segmentation.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    path = folder / "annotations.json"
    if not folder.is_dir():
        raise InvalidArgument(f"--data {folder}: no such folder (make one with `xsyn sample-data --out {folder}`)")
    if not path.is_file():
        raise InvalidArgument(f"{path}: missing; expected a COCO dataset folder (annotations.json + images)")
    images, annotations, categories = _read_coco(path)
    if not images or not annotations:
        raise InvalidArgument(f"{path}: {len(images)} images and {len(annotations)} annotations; training needs both")
    pixels, sizes = [], []
    for entry in images:
        file = folder / str(entry.get("file_name", ""))
        try:
            with Image.open(file) as im:
                im.load()
                rgb = im.convert("RGB")
        except (FileNotFoundError, UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InvalidArgument(f"{file}: unreadable image ({type(exc).__name__}: {exc})") from None
        sizes.append(rgb.size)
        pixels.append(np.asarray(rgb.resize((size, size), Image.BILINEAR)))
    items = _objects(path, images, annotations, categories, sizes, size)
    if not any(items):
        raise InvalidArgument(f"{path}: no annotated object survives resizing to {size}x{size}")
    background = [[] for _ in images]
    if (folder / "background.json").is_file():
        b_images, b_annotations, b_categories = _read_coco(folder / "background.json")
        if [e.get("id") for e in b_images] != [e.get("id") for e in images]:
            raise InvalidArgument(f"{folder / 'background.json'}: lists other images than {path}")
        background = _objects(folder / "background.json", images, b_annotations, b_categories, sizes, size)
    return TrainingSet(np.stack(pixels), items, tuple(sorted(set(categories.values()))), folder, background)
