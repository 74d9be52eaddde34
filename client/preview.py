"""Pictures of results: boxes before/after CAR, masks, MPS points, attention heatmaps, contact sheets.

Images are uint8 ``[H, W, 3]`` RGB; boxes xyxy pixels.
"""

from __future__ import annotations

import numpy as np

GROUNDING = (255, 200, 0)   # box the item was generated in
REFINED = (220, 30, 30)     # box after CAR
ORIGINAL = (30, 160, 255)   # annotation kept from the input
MASK = np.array([255, 40, 200], np.float32)


def overlay(image: np.ndarray, response, attention: np.ndarray | None = None) -> np.ndarray:
    """The image with masks tinted, grounding (yellow) / refined (red) / original (blue) boxes and MPS points."""
    from PIL import Image, ImageDraw

    from xsyn.api.masks import rle_decode

    canvas = image.astype(np.float32).copy()
    if attention is not None and len(attention):
        heat = attention.max(axis=0).astype(np.float32)[..., None] / 255.0
        canvas = canvas * (1 - 0.45 * heat) + np.array([255, 60, 0], np.float32) * 0.45 * heat
    for item in response.items:
        if item.mask:
            m = rle_decode(item.mask)
            canvas[m] = 0.6 * canvas[m] + 0.4 * MASK
    pil = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for item in response.items:
        if item.source == "generated":
            if item.grounding_box:
                draw.rectangle(item.grounding_box, outline=GROUNDING, width=1)
            draw.rectangle(item.box, outline=REFINED, width=2)
        else:
            draw.rectangle(item.box, outline=ORIGINAL, width=2)
        draw.text((item.box[0] + 2, item.box[1] + 1), item.class_name, fill=(255, 255, 255))
        for x, y in item.mps_points or []:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(0, 255, 0))
        if item.background_point:
            x, y = item.background_point
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 0, 0))
    return np.asarray(pil)


def contact_sheet(rows: list[list[np.ndarray]], labels: list[str] | None = None, pad: int = 4) -> np.ndarray:
    """Grid of images (each row a list, same height within a row), padded white, with optional row labels."""
    from PIL import Image, ImageDraw

    height = max(im.shape[0] for row in rows for im in row)
    width = max(sum(im.shape[1] for im in row) + pad * (len(row) + 1) for row in rows)
    label_h = 14 if labels else 0
    sheet = Image.new("RGB", (width, len(rows) * (height + pad + label_h) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for r, row in enumerate(rows):
        if labels:
            draw.text((pad, y), labels[r], fill=(0, 0, 0))
            y += label_h
        x = pad
        for im in row:
            sheet.paste(Image.fromarray(im), (x, y))
            x += im.shape[1] + pad
        y += height + pad
    return np.asarray(sheet)
