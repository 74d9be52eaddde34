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
    p.add_argument("--servers", "--server", dest="server", default="127.0.0.1:8001", metavar="HOST:PORT[,...]",
                   help="gRPC address, or several comma-separated (each image goes to the least busy healthy one)")
    p.add_argument("--concurrency", type=int, default=1, help="images in flight (default 1)")
    p.add_argument("--no-adaptive-points", action="store_true", help="single decoder pass per click")
    p.set_defaults(handler=run)


def _points(click: dict) -> tuple[list, list]:
    if "points" in click:
        pts = click["points"]
        return [[float(p[0]), float(p[1])] for p in pts], [int(p[2]) if len(p) > 2 else 1 for p in pts]
    return [[float(click["x"]), float(click["y"])]], [1]


#: Times a click embeds its image again when the embedding is gone (a busy server's cache evicts).
REEMBEDS = 3


def _parse_clicks(clicks: list) -> tuple[dict[str, list], list[str]]:
    """Clicks grouped by image, in order: ``{file_name: [(n, category, points, labels)]}``, and
    the problems of malformed clicks."""
    by_image: dict[str, list] = {}
    problems = []
    for n, click in enumerate(clicks):
        try:
            name, category = str(click["file_name"]), str(click["category"])
            points, labels = _points(click)
        except (KeyError, TypeError, ValueError, IndexError):
            problems.append((n, f"click {n}: malformed, needs file_name, category and x/y or points"))
            continue
        by_image.setdefault(name, []).append((n, category, points, labels))
    return by_image, problems


def _annotate_image(client, path: Path, name: str, clicks: list, adaptive: bool):
    """Embed one image and segment its clicks -> ``(image size (W, H), or None when it was never
    embedded, [(n, category, result or problem)])``.

    A click whose embedding is gone (the server evicted it, or the server that holds it went
    out) embeds the image again and repeats the click, up to ``REEMBEDS`` times.
    """
    from PIL import Image

    from xsyn.errors import NotFound

    if not path.is_file():
        return None, [(n, None, f"click {n} ({name}): image file {path} not found") for n, *_ in clicks]
    image = np.asarray(Image.open(path).convert("RGB"))
    answers = []
    key, embedded = None, False
    for n, category, points, labels in clicks:
        try:
            for attempt in range(REEMBEDS + 1):
                try:
                    key = key or client.embed(image).key
                    embedded = True
                    result = client.segment(key, points, labels, adaptive_points=adaptive)
                    break
                except NotFound:
                    if attempt == REEMBEDS:
                        raise
                    key = None
            answers.append((n, category, result))
        except XsynError as exc:
            answers.append((n, None, f"click {n} ({name}): {exc}"))
    return ((image.shape[1], image.shape[0]) if embedded else None), answers


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from xsyn.client.sdk import XsynClient

    try:
        clicks = json.loads(args.clicks.read_text())["clicks"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"--clicks {args.clicks}: expected JSON with a 'clicks' list ({exc})") from None
    by_image, problems = _parse_clicks(clicks)
    with XsynClient(args.server) as client:
        for url, why in client.check_endpoints().items():
            print(f"  server {url} is unavailable ({why}): skipped, probed again in the background")
        with ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool:
            futures = {name: pool.submit(_annotate_image, client, args.images / name, name, image_clicks,
                                         not args.no_adaptive_points)
                       for name, image_clicks in by_image.items()}
            answered = {name: future.result() for name, future in futures.items()}
    coco = _coco(answered, problems)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "annotations.json", json.dumps(coco, indent=1).encode())
    print(f"xsyn annotate: {len(coco['annotations'])} masks on {len(coco['images'])} images, "
          f"{len(problems)} problem(s) -> {args.out / 'annotations.json'}")
    for _, problem in sorted(problems):
        print(f"  {problem}")
    return 1 if problems and not coco["annotations"] else 0


def _coco(answered: dict[str, tuple], problems: list) -> dict:
    """One COCO file in click order (the same whichever server answered, however many in flight);
    adds the failed clicks to ``problems``."""
    coco = {"images": [], "annotations": [], "categories": []}
    categories: dict[str, int] = {}
    image_ids: dict[str, int] = {}
    first_click = {name: min(n for n, *_ in answers) for name, (_, answers) in answered.items() if answers}
    for name in sorted(first_click, key=first_click.get):
        size = answered[name][0]
        if size is not None:  # an image that was read and embedded
            image_ids[name] = len(coco["images"]) + 1
            coco["images"].append({"id": image_ids[name], "file_name": name, "width": size[0], "height": size[1]})
    results = sorted((n, name, category, result) for name, (_, answers) in answered.items()
                     for n, category, result in answers)
    for n, name, category, result in results:
        if isinstance(result, str):
            problems.append((n, result))
            continue
        if category not in categories:
            categories[category] = len(categories) + 1
            coco["categories"].append({"id": categories[category], "name": category})
        best = result.best
        x0, y0, x1, y1 = best.box
        coco["annotations"].append({
            "id": len(coco["annotations"]) + 1, "image_id": image_ids[name], "category_id": categories[category],
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": best.area, "iscrowd": 0,
            "segmentation": best.polygons or best.rle, "score": best.score, "xsyn_mode": result.response.mode,
            "xsyn_points": result.response.points,
        })
    return coco
