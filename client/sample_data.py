"""Phantom X-ray baggage: pseudo-colour images with exact COCO instance masks, for demos,
tests and training the tiny preset.

Dual-energy scanners colour materials by effective atomic number: organics orange, mixed
materials green, metals blue, dense objects dark. Images here are rendered the same way as a
transmission picture: every object multiplies the transmitted light per channel by
``exp(-mu * thickness)`` over a bright background. A bag outline and random clutter come first,
then one to three items; each item class has its own outline (:data:`SHAPES`) and its own
attenuation colour (:data:`ITEM_MU`), and items may overlap each other and the clutter, which
(as in a transmission image) darkens both.

COCO boxes are ``[x, y, w, h]`` pixels, the tight box of the mask (a pixel ``(col, row)`` covers
``[col, col + 1)``); segmentations are compressed RLE of the exact rendered mask, so ``area``,
box and mask agree to the pixel. Each image is drawn from its own seed ``(seed, split, index)``,
so any image can be regenerated alone and the train and val splits never share one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

#: per-channel attenuation (R, G, B) per unit thickness
MATERIALS = {
    "organic": (0.25, 0.55, 1.10),
    "mixed": (0.90, 0.35, 0.90),
    "metal": (1.40, 1.00, 0.45),
    "dense": (2.50, 2.30, 2.00),
}
THREATS = ("Knife", "Gun", "Wrench", "Scissors", "Pliers", "Hammer")
#: per-channel attenuation (R, G, B) per unit thickness of each item class: distinct hues
#: (blue, grey, green, orange, magenta, cyan), at least 18 degrees apart as RGB directions
ITEM_MU = {
    "Knife": (1.40, 0.98, 0.35),
    "Gun": (1.30, 1.30, 1.30),
    "Wrench": (1.35, 0.34, 1.35),
    "Scissors": (0.40, 0.96, 1.60),
    "Pliers": (0.45, 1.50, 0.45),
    "Hammer": (1.60, 0.48, 0.48),
}
SPLITS = {"all": 0, "train": 1, "val": 2}


def _polygon_mask(size: tuple[int, int], polygon: list[tuple[float, float]]) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("L", size, 0)
    ImageDraw.Draw(img).polygon(polygon, fill=255)
    return np.asarray(img) > 0


def _ellipse_polygon(cx, cy, rx, ry, angle, n=24):
    ca, sa = math.cos(angle), math.sin(angle)
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x, y = rx * math.cos(t), ry * math.sin(t)
        pts.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
    return pts


def _transform(shape: list[tuple[float, float]], cx, cy, scale, angle):
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + scale * (x * ca - y * sa), cy + scale * (x * sa + y * ca)) for x, y in shape]


#: threat outlines in a unit frame (x right, y down), roughly centred on the origin. Every part is
#: at least 0.24 units thick, so that at the smallest scale each part spans about two cells of
#: the tiny preset's latent grid (8 px): thinner strokes are lost by the VAE's downsampling and
#: the UNet can only paint a blotch (docs/measurements.md, "Why the phantom items were redrawn").
SHAPES = {
    "Knife": [(-1.0, -0.16), (-0.2, -0.16), (-0.2, -0.3), (-0.06, -0.3), (-0.06, -0.2), (1.0, -0.2), (0.55, 0.24),
              (-0.06, 0.24), (-0.06, 0.3), (-0.2, 0.3), (-0.2, 0.16), (-1.0, 0.16)],
    "Gun": [(-0.9, -0.45), (0.9, -0.45), (0.9, -0.05), (-0.1, -0.05), (0.0, 0.7), (-0.55, 0.7), (-0.65, -0.05),
            (-0.9, -0.05)],
    "Wrench": [(-1.0, -0.4), (-0.65, -0.4), (-0.6, -0.16), (0.6, -0.16), (0.65, -0.4), (1.0, -0.4), (1.0, -0.13),
               (0.84, -0.13), (0.84, 0.13), (1.0, 0.13), (1.0, 0.4), (0.65, 0.4), (0.6, 0.16), (-0.6, 0.16),
               (-0.65, 0.4), (-1.0, 0.4)],
    "Scissors": [(-1.0, -0.5), (-0.5, -0.5), (0.0, -0.14), (1.0, -0.24), (0.2, 0.0), (1.0, 0.24), (0.0, 0.14),
                 (-0.5, 0.5), (-1.0, 0.5), (-0.65, 0.0)],
    "Pliers": [(-1.0, -0.45), (-0.72, -0.55), (-0.05, -0.16), (1.0, -0.13), (1.0, 0.13), (-0.05, 0.16),
               (-0.72, 0.55), (-1.0, 0.45), (-0.3, 0.0)],
    "Hammer": [(-1.0, -0.15), (0.45, -0.15), (0.45, -0.45), (0.9, -0.45), (0.9, 0.45), (0.45, 0.45), (0.45, 0.15),
               (-1.0, 0.15)],
}


#: an item lies along its box's long side, tilted at most this much (radians, about 15 degrees)
MAX_TILT = 0.26


def _item_angle(rng: np.random.Generator) -> float:
    """An item's rotation: 0 (lying along x) or pi / 2 (along y), tilted by up to :data:`MAX_TILT`,
    never flipped. Then a box and a class phrase name one pose (a wide box holds a horizontal item,
    its blade or head on the same side as in :data:`SHAPES`), as GLIGEN's grounding assumes; with
    free rotation the same box holds four mirror poses and the tiny UNet paints their average, a
    blotch (docs/measurements.md, "Why items lie along their boxes")."""
    return float(rng.choice([0.0, math.pi / 2]) + rng.uniform(-MAX_TILT, MAX_TILT))


def render(rng: np.random.Generator, width: int = 320, height: int = 256, threats: int = 2):
    """One image (uint8 ``[H, W, 3]``) and its items ``[(class, polygon, mask bool [H, W])]``."""
    image, _, items, _ = render_scene(rng, width, height, threats)
    return image, items


def render_scene(rng: np.random.Generator, width: int = 320, height: int = 256, threats: int = 2):
    """:func:`render`'s image, the same bag without its items (same clutter and sensor noise),
    the items, and the background objects ``[(material, mask bool [H, W])]`` (the bag, then each
    piece of clutter, each mask its whole extent): ``(image, empty_bag, items, background)``.
    The quality checks paint items into the empty bag; training teaches SAM the background
    objects too, so that automatic masks find clutter (idle regions, BOM occluders)."""
    transmission = np.ones((height, width, 3), np.float64)
    size = (width, height)

    def absorb(mask: np.ndarray, mu, thickness: float) -> None:
        transmission[mask] *= np.exp(-np.asarray(mu) * thickness)

    bag = [(width * 0.06, height * 0.1), (width * 0.94, height * 0.08), (width * 0.96, height * 0.9),
           (width * 0.05, height * 0.92)]
    background = [("bag", _polygon_mask(size, bag))]
    absorb(background[0][1], MATERIALS["organic"], 0.35)
    for _ in range(int(rng.integers(10, 18))):  # clutter: clothes, bottles, cables, electronics
        material = str(rng.choice(["organic", "organic", "mixed", "mixed", "dense"]))
        poly = _ellipse_polygon(rng.uniform(0.12, 0.88) * width, rng.uniform(0.15, 0.85) * height,
                                rng.uniform(0.04, 0.2) * width, rng.uniform(0.03, 0.15) * height,
                                rng.uniform(0, math.pi))
        background.append((material, _polygon_mask(size, poly)))
        absorb(background[-1][1], MATERIALS[material], rng.uniform(0.2, 0.9))
    empty = transmission.copy()
    items = []
    for _ in range(threats):
        name = str(rng.choice(THREATS))
        scale = rng.uniform(0.11, 0.16) * min(width, height) * (1.6 if name in ("Gun", "Hammer") else 1.2)
        poly = _transform(SHAPES[name], rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height, scale,
                          _item_angle(rng))
        poly = [(min(max(x, 1.0), width - 2.0), min(max(y, 1.0), height - 2.0)) for x, y in poly]
        mask = _polygon_mask(size, poly)
        absorb(mask, ITEM_MU[name], rng.uniform(0.9, 1.4))
        items.append((name, poly, mask))
    noise = rng.normal(0, 0.012, transmission.shape)

    def expose(t):
        return np.clip(255 * (0.97 * t + noise), 0, 255).astype(np.uint8)

    return expose(transmission), expose(empty), items, background


def mask_annotation(mask: np.ndarray) -> dict:
    """COCO ``bbox`` (tight, ``[x, y, w, h]``), ``area`` and compressed-RLE ``segmentation`` of a
    bool ``[H, W]`` mask."""
    from pycocotools import mask as mask_utils

    rows, cols = np.nonzero(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    x0, y0 = int(cols.min()), int(rows.min())
    return {"bbox": [x0, y0, int(cols.max()) + 1 - x0, int(rows.max()) + 1 - y0], "area": int(mask.sum()),
            "segmentation": rle}


def write_sample_set(out: Path, n: int, seed: int = 0, width: int = 320, height: int = 256,
                     split: str = "all", background: bool = False) -> Path:
    """Write ``n`` PNG images and ``annotations.json`` (COCO) into ``out``; returns the COCO path.

    ``split``: ``all``, ``train`` or ``val``; image ``k`` is drawn from the seed ``(seed, split, k)``.
    ``background``: also write ``background.json``, a COCO file of the same images whose objects
    are the bag and its clutter (category per material), for training SAM on everything.
    """
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    categories = {name: i + 1 for i, name in enumerate(THREATS)}
    coco = {"info": {"description": "xsyn phantom X-ray baggage (synthetic pseudo-colour, exact masks)",
                     "seed": seed, "split": split},
            "images": [], "annotations": [],
            "categories": [{"id": i, "name": name, "supercategory": "threat"} for name, i in categories.items()]}
    materials = {name: i + 1 for i, name in enumerate(["bag", *MATERIALS])}
    clutter = {"info": dict(coco["info"], description="the bag and clutter objects of annotations.json's images"),
               "images": coco["images"], "annotations": [],
               "categories": [{"id": i, "name": name, "supercategory": "background"} for name, i in materials.items()]}
    for k in range(n):
        rng = np.random.default_rng([seed, SPLITS[split], k])
        image, _, items, objects = render_scene(rng, width, height, threats=int(rng.integers(1, 4)))
        name = f"images/sample_{k:04d}.png"
        Image.fromarray(image).save(out / name)
        coco["images"].append({"id": k + 1, "file_name": name, "width": width, "height": height})
        for cls, _, mask in items:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": k + 1,
                                        "category_id": categories[cls], "iscrowd": 0, **mask_annotation(mask)})
        for material, mask in objects if background else ():
            if mask.any():
                clutter["annotations"].append({"id": len(clutter["annotations"]) + 1, "image_id": k + 1,
                                               "category_id": materials[material], "iscrowd": 0,
                                               **mask_annotation(mask)})
    if background:
        (out / "background.json").write_text(json.dumps(clutter))
    path = out / "annotations.json"
    path.write_text(json.dumps(coco, indent=1))
    return path


def write_splits(out: Path, n_train: int, n_val: int, seed: int = 0, width: int = 320, height: int = 256,
                 background: bool = False) -> dict[str, Path]:
    """``out/train`` and ``out/val``, each a COCO set; returns ``{split: COCO path}``."""
    return {split: write_sample_set(Path(out) / split, count, seed, width, height, split, background)
            for split, count in (("train", n_train), ("val", n_val))}
