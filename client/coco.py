"""Reading COCO input sets with per-item problems reported instead of fatal.

Boxes in COCO are ``[x, y, w, h]``; the product works in ``[x0, y0, x1, y1]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from xsyn.errors import InvalidArgument


@dataclass
class SourceImage:
    """One input image with the annotations that could be used."""

    image_id: int
    file_name: str
    path: Path
    width: int | None
    height: int | None
    boxes: list[list[float]] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)


@dataclass
class CocoInput:
    images: list[SourceImage]
    problems: list[str]
    categories: list[str]


def xywh_to_xyxy(b) -> list[float]:
    return [float(b[0]), float(b[1]), float(b[0]) + float(b[2]), float(b[1]) + float(b[3])]


def read_coco(images_dir: Path, annotations: Path, allowed_classes: set[str] | None = None) -> CocoInput:
    """Parse a COCO file; malformed entries, unknown image ids and classes outside
    ``allowed_classes`` are dropped and listed in ``problems``. A file that is not a COCO JSON
    at all raises InvalidArgument naming it."""
    try:
        data = json.loads(Path(annotations).read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"--annotations {annotations}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"--annotations {annotations}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InvalidArgument(f"--annotations {annotations}: expected a COCO object with an 'images' list")
    problems: list[str] = []
    categories = {}
    for c in data.get("categories", []):
        try:
            categories[int(c["id"])] = str(c["name"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"category {c!r}: malformed, needs id and name")
    images: dict[int, SourceImage] = {}
    for entry in data["images"]:
        try:
            image_id, name = int(entry["id"]), str(entry["file_name"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"image {entry!r}: malformed, needs id and file_name")
            continue
        images[image_id] = SourceImage(image_id, name, Path(images_dir) / name, entry.get("width"), entry.get("height"))
    for ann in data.get("annotations", []):
        try:
            image_id, category, bbox = int(ann["image_id"]), int(ann["category_id"]), ann["bbox"]
            box = xywh_to_xyxy(bbox)
        except (KeyError, TypeError, ValueError, IndexError):
            problems.append(f"annotation {ann.get('id', '?') if isinstance(ann, dict) else ann!r}: malformed, "
                            "needs image_id, category_id and bbox [x, y, w, h]")
            continue
        if image_id not in images:
            problems.append(f"annotation {ann.get('id', '?')}: refers to unknown image id {image_id}")
            continue
        if category not in categories:
            problems.append(f"annotation {ann.get('id', '?')}: unknown category id {category}")
            continue
        name = categories[category]
        if allowed_classes is not None and name not in allowed_classes:
            problems.append(f"annotation {ann.get('id', '?')}: category {name!r} is not in the class groups")
            continue
        images[image_id].boxes.append(box)
        images[image_id].class_names.append(name)
    return CocoInput(sorted(images.values(), key=lambda s: s.image_id), problems, sorted(set(categories.values())))
