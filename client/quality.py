"""Quality of a served tiny preset, measured on the phantom validation split (``xsyn quality``).

Every number comes from the served pipelines over gRPC (``xsyn`` and ``apsam`` models), on
validation bags regenerated from their seeds (:func:`xsyn.client.sample_data.render_scene`,
the images ``xsyn sample-data --val`` writes at 256 x 256), so the truth is exact:

- **Synthesis** (``modify``, BOM off): the items of a validation bag are painted into the *empty*
  bag (the same bag without them), each into its true box loosened by 10% a side. The painted
  region of an item is where the output absorbs clearly more than the empty bag inside its
  grounding box (optical density ``-ln(I/255)`` up by more than :data:`PAINT_DENSITY` in some
  channel). Reported: the share of boxes with a painted item; the share whose painted colour is
  the requested class's (nearest :data:`~xsyn.client.sample_data.ITEM_MU` direction); the IoU
  of CAR's SAM mask with the painted region; and the IoU with the painted region's tight box of
  the grounding box (before) and of CAR's refined box (after), with MPS ``n = 0`` and ``n = 4``.
- **BOM** (``bom_alpha`` 0.3): whether an occluder was placed, whether a placement overlaps
  every item's box, and the box-prompted SAM IoU of each painted item on the occluded output.
- **Annotation**: one click per true object at a random interior pixel; mIoU of the single-mask
  answer of APSAM (served) and of the plain-SAM baseline trained the same way (in-process, when
  given), each with and without adaptive points, against a click-only baseline (the magic-wand
  region: pixels connected to the click within a colour tolerance), over all objects and over
  stacked ones (overlapping another item).
- **AMG**: masks per image and the recall of true objects at mask IoU 0.5.

Coordinates: pixels of the 256 x 256 image; boxes ``[x0, y0, x1, y1]`` with exclusive ends.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xsyn.api.masks import mask_box, rle_decode
from xsyn.ensembles.idle_regions import box_iou

SIZE = 256
PAINT_DENSITY = 0.6
LOOSEN = 0.10
WAND_TOLERANCE = 24
STEPS = 20


@dataclass
class Scene:
    """A validation bag: image and the same bag empty (uint8 ``[S, S, 3]``), its items ``[(class, mask)]``."""

    image: np.ndarray
    empty: np.ndarray
    items: list[tuple[str, np.ndarray]]


def val_scenes(n: int, seed: int = 0) -> list[Scene]:
    """The first ``n`` images of the validation split (as ``xsyn sample-data --val`` draws them)."""
    from xsyn.client.sample_data import SPLITS, render_scene

    scenes = []
    for k in range(n):
        rng = np.random.default_rng([seed, SPLITS["val"], k])
        image, empty, items, _ = render_scene(rng, SIZE, SIZE, threats=int(rng.integers(1, 4)))
        scenes.append(Scene(image, empty, [(cls, mask) for cls, _, mask in items]))
    return scenes


# ----------------------------------------------------------------------------- geometry

def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def loosened(mask: np.ndarray, ratio: float = LOOSEN) -> list[float]:
    x0, y0, x1, y1 = mask_box(mask)
    dx, dy = ratio * (x1 - x0), ratio * (y1 - y0)
    return [max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(SIZE), x1 + dx), min(float(SIZE), y1 + dy)]


def box_region(box) -> np.ndarray:
    region = np.zeros((SIZE, SIZE), bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    region[y0:y1, x0:x1] = True
    return region


def density(image: np.ndarray) -> np.ndarray:
    """Optical density ``-ln(I / 255)`` per channel, float ``[H, W, 3]``."""
    return -np.log((image.astype(np.float64) + 1.0) / 256.0)


def painted_region(output: np.ndarray, empty: np.ndarray, box) -> np.ndarray:
    """bool ``[S, S]``: pixels of ``box`` where ``output`` absorbs more than the empty bag."""
    gain = (density(output) - density(empty)).max(axis=-1)
    return (gain > PAINT_DENSITY) & box_region(box)


def painted_class(output: np.ndarray, empty: np.ndarray, region: np.ndarray) -> str:
    """The item class whose attenuation colour is nearest (cosine) to the region's mean density gain."""
    from xsyn.client.sample_data import ITEM_MU

    gain = (density(output) - density(empty))[region].mean(axis=0)
    names = list(ITEM_MU)
    mu = np.array([ITEM_MU[n] for n in names])
    cos = mu @ gain / (np.linalg.norm(mu, axis=1) * np.linalg.norm(gain) + 1e-9)
    return names[int(np.argmax(cos))]


def magic_wand(image: np.ndarray, x: float, y: float, tolerance: int = WAND_TOLERANCE) -> np.ndarray:
    """The click-only baseline: pixels 4-connected to ``(x, y)`` whose every channel lies within
    ``tolerance`` of the clicked pixel's."""
    from scipy import ndimage

    col, row = int(x), int(y)
    close = np.all(np.abs(image.astype(np.int32) - image[row, col].astype(np.int32)) <= tolerance, axis=-1)
    labels, _ = ndimage.label(close)
    return labels == labels[row, col]


def _mean(values) -> float | None:
    values = list(values)
    return round(float(np.mean(values)), 4) if values else None


# ----------------------------------------------------------------------------- the measurements

def synthesis_quality(client, scenes: list[Scene], pictures: list | None = None) -> dict:
    """Painting, CAR (MPS n = 0 and 4) and SAM-on-generated metrics (BOM off). ``pictures``, if
    given, receives per scene ``[bag with items, empty bag, output, output with CAR boxes and masks]``."""
    from xsyn.client.preview import overlay

    rows = []
    for k, scene in enumerate(scenes):
        boxes = [loosened(mask) for _, mask in scene.items]
        request = {"mode": "modify", "seed": k, "steps": STEPS, "bom_alpha": 0.0,
                   "class_names": [cls for cls, _ in scene.items], "boxes": boxes}
        answers = {n: client.synthesize(dict(request, mps_divisions=n), scene.empty) for n in (0, 4)}
        output = answers[4].image
        if pictures is not None:
            pictures.append([scene.image, scene.empty, output, overlay(output, answers[4].response)])
        for j, (cls, _) in enumerate(scene.items):
            region = painted_region(output, scene.empty, boxes[j])
            row = {"painted": bool(region.sum() >= 20), "class_ok": False, "sam_iou": 0.0,
                   "box_before": 0.0, "box_after_n0": 0.0, "box_after_n4": 0.0}
            if row["painted"]:
                truth = mask_box(region)
                row["class_ok"] = painted_class(output, scene.empty, region) == cls
                item4 = [i for i in answers[4].response.items if i.source == "generated"][j]
                item0 = [i for i in answers[0].response.items if i.source == "generated"][j]
                row["sam_iou"] = mask_iou(rle_decode(item4.mask), region) if item4.mask else 0.0
                row["box_before"] = box_iou(boxes[j], truth)
                row["box_after_n0"] = box_iou(item0.box, truth)
                row["box_after_n4"] = box_iou(item4.box, truth)
            rows.append(row)
    return {"boxes": len(rows),
            "painted_rate": _mean(r["painted"] for r in rows),
            "class_accuracy": _mean(r["class_ok"] for r in rows),
            "sam_iou_with_painted": _mean(r["sam_iou"] for r in rows),
            "car_box_iou_before": _mean(r["box_before"] for r in rows),
            "car_box_iou_after_mps0": _mean(r["box_after_n0"] for r in rows),
            "car_box_iou_after_mps4": _mean(r["box_after_n4"] for r in rows)}


def bom_quality(client, scenes: list[Scene]) -> dict:
    """Occlusion applied, placements overlapping every box, SAM IoU of occluded painted items."""
    applied, overlaps, found, found_clear = [], [], [], []
    for k, scene in enumerate(scenes):
        boxes = [loosened(mask) for _, mask in scene.items]
        result = client.synthesize({"mode": "modify", "seed": k, "steps": STEPS, "bom_alpha": 0.3,
                                    "class_names": [cls for cls, _ in scene.items], "boxes": boxes,
                                    "return_unoccluded_image": True}, scene.empty)
        occlusion = result.response.occlusion
        applied.append(bool(occlusion.get("applied")))
        if not occlusion.get("applied"):
            continue
        f = SIZE // 32
        cells = [[x0 * f, y0 * f, x1 * f, y1 * f] for x0, y0, x1, y1 in occlusion["placements_latent"]]
        overlaps.append(all(any(box_iou(c, b) > 0 for c in cells) for b in boxes))
        key = client.embed(result.image).key
        for box in boxes:
            region = painted_region(result.unoccluded_image, scene.empty, box)
            if region.sum() < 20:
                continue
            answer = client.segment(key, box=box, adaptive_points=False)
            found.append(mask_iou(answer.mask(), region))
            found_clear.append(found[-1] >= 0.5)
    return {"images": len(scenes), "applied_rate": _mean(applied), "occluder_overlaps_every_box": _mean(overlaps),
            "occluded_sam_iou": _mean(found), "occluded_found_rate": _mean(found_clear)}


class InProcessAnnotator:
    """The SDK's ``embed`` / ``segment`` / ``generate_masks`` over the annotation orchestrator run
    in-process on an exported repository (the same code the ``apsam`` model serves), for the
    plain-SAM baseline, which the tiny preset does not serve."""

    def __init__(self, repo: Path) -> None:
        from xsyn.ensembles.annotation import Annotator
        from xsyn.ensembles.assets import ANNOTATION_GRAPHS, PipelineAssets
        from xsyn.ensembles.embedding_cache import EmbeddingCache
        from xsyn.ensembles.runner import LocalRunner

        self.annotator = Annotator(LocalRunner(repo), PipelineAssets.load(repo, ANNOTATION_GRAPHS), EmbeddingCache(10**8))

    def embed(self, image: np.ndarray):
        return self.annotator.embed(image)

    def segment(self, key: str, points=(), labels=(), box=None, adaptive_points: bool = True, seed: int = 0):
        from xsyn.api.annotation import SegmentRequest
        from xsyn.client.sdk import SegmentResult

        request = SegmentRequest(key=key, points=[list(p) for p in points], labels=list(labels), box=box,
                                 adaptive_points=adaptive_points, seed=seed)
        return SegmentResult(*self.annotator.segment(request))


def annotation_quality(client, scenes: list[Scene], seed: int = 0, baseline=None) -> dict:
    """One-click mIoU of APSAM (``client``) and the plain-SAM ``baseline`` (if given), each with
    and without adaptive points, vs the magic-wand baseline; AMG masks and recall (APSAM)."""
    rng = np.random.default_rng([seed, 7])
    models = {"apsam": client, **({"sam": baseline} if baseline is not None else {})}
    rows, amg_counts, amg_hits = [], [], []
    for scene in scenes:
        keys = {name: model.embed(scene.image).key for name, model in models.items()}
        masks = [m for _, m in scene.items]
        for j, mask in enumerate(masks):
            rows_, cols_ = np.nonzero(mask)
            pick = int(rng.integers(len(rows_)))
            x, y = float(cols_[pick]) + 0.5, float(rows_[pick]) + 0.5
            row = {"stacked": any(np.logical_and(mask, other).any() for i, other in enumerate(masks) if i != j),
                   "click_only": mask_iou(magic_wand(scene.image, x, y), mask)}
            for name, model in models.items():
                for apg in (False, True):
                    answer = model.segment(keys[name], points=[[x, y]], labels=[1], adaptive_points=apg, seed=j)
                    row[name + ("_apg" if apg else "")] = mask_iou(answer.mask(), mask)
            rows.append(row)
        found = [rle_decode(m.rle) for m in client.generate_masks(keys["apsam"]).masks]
        amg_counts.append(len(found))
        amg_hits += [any(mask_iou(f, mask) >= 0.5 for f in found) for mask in masks]
    columns = [c for c in ("apsam", "apsam_apg", "sam", "sam_apg", "click_only") if rows and c in rows[0]]

    def miou(subset):
        return {name: _mean(r[name] for r in subset) for name in columns}

    stacked = [r for r in rows if r["stacked"]]
    return {"objects": len(rows), "stacked_objects": len(stacked), "miou": miou(rows), "miou_stacked": miou(stacked),
            "amg_masks_per_image": _mean(amg_counts), "amg_recall_at_0.5": _mean(amg_hits)}


def measure(client, images: int = 8, seed: int = 0, baseline=None, sheet: Path | None = None) -> dict:
    """Every measurement on the first ``images`` validation bags (``baseline``: an annotator
    for the plain-SAM comparison, e.g. :class:`InProcessAnnotator`; ``sheet``: a PNG contact
    sheet of the synthesis cases to write)."""
    scenes = val_scenes(images, seed)
    pictures: list = []
    report = {"images": images, "seed": seed, "steps": STEPS, "synthesis": synthesis_quality(client, scenes, pictures),
              "bom": bom_quality(client, scenes), "annotation": annotation_quality(client, scenes, seed, baseline)}
    if sheet is not None:
        from PIL import Image

        from xsyn.client.preview import contact_sheet

        labels = [f"val {k}: bag with items | empty bag (input) | items painted into the empty bag | CAR boxes and masks"
                  for k in range(len(pictures))]
        Image.fromarray(contact_sheet(pictures, labels)).save(sheet)
    return report


# ----------------------------------------------------------------------------- command

def add_parser(sub) -> None:
    p = sub.add_parser("quality", help="measure a served tiny preset on the phantom validation split",
                       description="Synthesis, CAR, BOM, APSAM and AMG quality of a served tiny preset, on "
                                   "phantom validation bags (exact truth).")
    p.add_argument("--server", default="127.0.0.1:8001", help="gRPC endpoint(s) (default 127.0.0.1:8001)")
    p.add_argument("--images", type=int, default=8, help="validation bags (default 8)")
    p.add_argument("--seed", type=int, default=0, help="validation split seed (default 0)")
    p.add_argument("--baseline-repository", type=Path, metavar="DIR",
                   help="a repository with a plain SAM export (e.g. of the preset's sam_baseline.safetensors), "
                        "run in-process as the annotation baseline")
    p.add_argument("--out", type=Path, help="also write the report as JSON")
    p.add_argument("--sheet", type=Path, help="also write a contact sheet (PNG) of the synthesis cases")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xsyn.client.sdk import XsynClient

    baseline = InProcessAnnotator(args.baseline_repository) if args.baseline_repository else None
    with XsynClient(args.server) as client:
        report = measure(client, args.images, args.seed, baseline, args.sheet)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0
