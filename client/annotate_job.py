"""``xsyn annotate``: one click per object -> COCO masks, in batch, through the ``apsam`` model.

Clicks file::

    {"clicks": [{"file_name": "images/a.png", "x": 120, "y": 80, "category": "Knife"},
                {"file_name": "images/a.png", "points": [[40, 50, 1], [60, 52, 0]], "category": "Gun"}]}

``x``/``y`` (one positive click) or ``points`` (``[x, y, label]``, label 1 fg / 0 bg), pixels.
Each image is embedded once; every click becomes one COCO annotation (polygon segmentation,
box from the mask, APSAM score). Problems are reported per click and the run goes on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from xsyn.errors import InvalidArgument, XsynError
from xsyn.files import write_atomic


def add_parser(sub) -> None:
    p = sub.add_parser("annotate", help="batch one-click masks to COCO through the apsam model")
    p.add_argument("--images", type=Path, required=True, help="folder the clicks' file_names are relative to")
    p.add_argument("--clicks", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--server", default="127.0.0.1:8001")
    p.add_argument("--no-adaptive-points", action="store_true", help="single decoder pass per click")
    p.set_defaults(handler=run)


def _points(click: dict) -> tuple[list, list]:
    if "points" in click:
        pts = click["points"]
        return [[float(p[0]), float(p[1])] for p in pts], [int(p[2]) if len(p) > 2 else 1 for p in pts]
    return [[float(click["x"]), float(click["y"])]], [1]


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from xsyn.client.sdk import XsynClient

    try:
        clicks = json.loads(args.clicks.read_text())["clicks"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"--clicks {args.clicks}: expected JSON with a 'clicks' list ({exc})") from None
    coco = {"images": [], "annotations": [], "categories": []}
    categories: dict[str, int] = {}
    image_ids: dict[str, int] = {}
    keys: dict[str, str] = {}
    problems = []
    with XsynClient(args.server) as client:
        for n, click in enumerate(clicks):
            try:
                name = str(click["file_name"])
                category = str(click["category"])
                points, labels = _points(click)
            except (KeyError, TypeError, ValueError, IndexError):
                problems.append(f"click {n}: malformed, needs file_name, category and x/y or points")
                continue
            path = args.images / name
            try:
                if name not in keys:
                    if not path.is_file():
                        raise InvalidArgument(f"image file {path} not found")
                    image = np.asarray(Image.open(path).convert("RGB"))
                    keys[name] = client.embed(image).key
                    image_ids[name] = len(coco["images"]) + 1
                    coco["images"].append({"id": image_ids[name], "file_name": name, "width": image.shape[1],
                                           "height": image.shape[0]})
                result = client.segment(keys[name], points, labels, adaptive_points=not args.no_adaptive_points)
            except XsynError as exc:
                problems.append(f"click {n} ({name}): {exc}")
                continue
            best = result.best
            if category not in categories:
                categories[category] = len(categories) + 1
                coco["categories"].append({"id": categories[category], "name": category})
            x0, y0, x1, y1 = best.box
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_ids[name], "category_id": categories[category],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": best.area, "iscrowd": 0,
                "segmentation": best.polygons or best.rle, "score": best.score, "xsyn_mode": result.response.mode,
                "xsyn_points": result.response.points,
            })
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "annotations.json", json.dumps(coco, indent=1).encode())
    print(f"xsyn annotate: {len(coco['annotations'])} masks on {len(coco['images'])} images, "
          f"{len(problems)} problem(s) -> {args.out / 'annotations.json'}")
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems and not coco["annotations"] else 0
