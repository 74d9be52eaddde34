"""``xsyn synthesize``: a COCO set in, synthetic images + one COCO file out; resumable.

Work items are ``(source image, k)`` for ``k < per_image``, each with a seed derived from the
job seed, the image id and ``k``. An item is finished when its provenance record
``records/<item>.json`` exists, parses, and names an image whose size and SHA-256 match;
records and images are written to a temporary name and renamed, so a killed job never leaves a
half-written item that looks finished. A restarted job skips finished items, redoes (and
reports) an item whose record or image was damaged since, and repeats nothing else;
``annotations.json`` is rebuilt from all records at the end, in item order, so an
interrupted-and-resumed job and an uninterrupted one give the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from xsyn.api.class_groups import ClassGroups, load_class_groups
from xsyn.api.masks import rle_area
from xsyn.client.coco import SourceImage, read_coco
from xsyn.errors import InvalidArgument, MissingDependency
from xsyn.files import write_atomic


def add_parser(sub) -> None:
    p = sub.add_parser("synthesize", help="synthesize a COCO dataset through the server (or --local)")
    p.add_argument("--images", type=Path, required=True, help="folder the COCO file_names are relative to")
    p.add_argument("--annotations", type=Path, required=True, help="COCO JSON with boxes and categories")
    p.add_argument("--mode", choices=("add", "modify"), required=True)
    p.add_argument("--per-image", type=int, default=1, help="synthetic images per source image")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight (default 2)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--servers", "--server", dest="server", default="127.0.0.1:8001", metavar="HOST:PORT[,...]",
                       help="gRPC address, or several comma-separated: requests go to the least busy healthy "
                            "one (default 127.0.0.1:8001)")
    where.add_argument("--local", type=Path, nargs="?", const=Path("model_repository"), metavar="REPOSITORY",
                       help="run in-process on an exported repository instead (default model_repository/)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run the items on a Ray Data actor pool (--concurrency actors, each with a client to "
                        "--servers): a Ray address (ray://head:10001, auto) or 'local' for a Ray runtime here; "
                        "needs the ray extra (pip install 'xsyn[ray]')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--class-groups", default="pidray",
                   help="pidray | opixray | hixray, or a class-group JSON file of your own (same schema)")
    p.add_argument("--request", type=json.loads, default={}, help="extra SynthesisRequest fields as JSON")
    p.add_argument("--preview", action="store_true", help="PNG overlays and a contact sheet in preview/")
    p.add_argument("--limit", type=int, default=None, help="stop after this many items (testing, sampling)")
    p.set_defaults(handler=run)


@dataclass
class WorkItem:
    source: SourceImage
    k: int
    seed: int

    @property
    def name(self) -> str:
        return f"{Path(self.source.file_name).stem}_{self.source.image_id}_{self.k}"


@dataclass(frozen=True)
class Outcome:
    """What became of one work item: ``done``, ``skipped`` (a result, e.g. no idle region),
    ``failed`` (an error; the job goes on) or ``unavailable`` (not run: no server was available;
    the job stops and a rerun does it), with the reason for the last three."""

    state: Literal["done", "skipped", "failed", "unavailable"]
    reason: str = ""


DONE = Outcome("done")


def png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def item_seed(job_seed: int, image_id: int, k: int) -> int:
    return (job_seed * 1_000_003 + image_id * 1_009 + k) % (2**31)


class Backend:
    """Where synthesis runs: the servers (SDK, balanced over the healthy ones) or in-process (same
    orchestrator, needs the server extra). ``quiet``: do not print the servers found down."""

    def __init__(self, args, quiet: bool = False) -> None:
        self.local = args.local
        if args.local is not None:
            try:
                from xsyn.ensembles.assets import PipelineAssets
                from xsyn.ensembles.runner import LocalRunner
                from xsyn.ensembles.synthesis import Synthesizer
            except ImportError as exc:
                raise MissingDependency(f"--local runs the pipeline in-process and needs the server extra "
                                        f"(pip install 'xsyn[server]'): {exc}") from None
            from xsyn.ensembles.synthesis import preload

            preload()  # lazy imports happen here, once, not raced by the worker threads
            self.synthesizer = Synthesizer(LocalRunner(args.local), PipelineAssets.load(args.local))
            self.versions = _repository_versions(Path(args.local))
            self.where = f"local:{args.local}"
        else:
            from xsyn.client.sdk import XsynClient

            self.client = XsynClient(args.server)
            for url, why in self.client.check_endpoints().items() if not quiet else ():
                print(f"  server {url} is unavailable ({why}): skipped, probed again in the background")
            health = self.client.health()
            self.versions = {"servers": self.client.urls, "models": health["models"]}

    def synthesize(self, request: dict, image: np.ndarray):
        """-> ``(result, where)``: ``result`` has ``image``, ``response``, ``unoccluded_image`` and
        ``attention_maps``; ``where`` names the server that answered (or the local repository)."""
        if self.local is not None:
            from xsyn.api.synthesis import parse_request

            return self.synthesizer.run(parse_request(request), image), self.where
        result = self.client.synthesize(request, image)
        return result, f"grpc:{result.endpoint}"

    def fleet_down(self) -> bool:
        """True when every server is out now (probed again first)."""
        return self.local is None and not self.client.pool.revive()


def _repository_versions(repo: Path) -> dict:
    versions = {}
    for manifest in sorted(repo.glob("*/1/export_manifest.json")):
        data = json.loads(manifest.read_text())
        versions[manifest.parent.parent.name] = {"weights_sha256": data.get("weights_sha256", "")[:16],
                                                 "source": data.get("source")}
    return versions


def remove_partial_writes(out: Path) -> None:
    """Delete the temporary files of writes a killed run left unfinished (``.<name>.<random>``
    beside the image, preview or record it was writing; see :func:`xsyn.files.write_atomic`)."""
    for folder in ("images", "preview", "records"):
        for tmp in (out / folder).glob(".*.*.*"):
            tmp.unlink(missing_ok=True)


def resolve_class_groups(value: str):
    """A shipped group name or a user JSON file -> (groups, the request fields that select them)."""
    from pydantic import ValidationError

    path = Path(value)
    if path.suffix == ".json" or path.is_file():
        try:
            groups = ClassGroups.model_validate_json(path.read_text())
        except (OSError, ValidationError) as exc:
            raise InvalidArgument(f"--class-groups {path}: not a readable class-group file ({exc})") from None
        return groups, {"class_groups_data": groups.model_dump()}
    return load_class_groups(value), {"class_groups": value}


class Job:
    """One ``xsyn synthesize`` run: items, where they run, and how each is written."""

    def __init__(self, args: argparse.Namespace, check_finished: bool = True) -> None:
        """``check_finished``: verify the earlier outputs (the driver does; a Ray worker, which is
        handed only unfinished items, does not)."""
        self.args = args
        self.out = args.out
        groups, self.group_fields = resolve_class_groups(args.class_groups)
        self.coco = read_coco(args.images, args.annotations, set(groups.classes))
        self.items = [WorkItem(src, k, item_seed(args.seed, src.image_id, k))
                      for src in self.coco.images for k in range(args.per_image)][: args.limit]
        (self.out / "records").mkdir(parents=True, exist_ok=True)
        self.damaged: dict[str, str] = {}
        self.finished = set()
        if check_finished:
            remove_partial_writes(self.out)
            self.finished = {it.name for it in self.items if self.verify(it)}
        self.backend: Backend | None = None

    def record_path(self, item: WorkItem) -> Path:
        return self.out / "records" / f"{item.name}.json"

    def verify(self, item: WorkItem) -> bool:
        """True when the item's record parses and its image matches the record's size and hash.

        A damaged item (truncated record, missing or changed image) is noted in ``damaged`` and
        its record removed, so that it is redone; an item never started is simply not finished.
        """
        path = self.record_path(item)
        if not path.is_file():
            return False
        try:
            record = json.loads(path.read_text())
            image = self.out / record["file_name"]
            data = image.read_bytes()
            if len(data) != record["image_bytes"] or hashlib.sha256(data).hexdigest() != record["image_sha256"]:
                raise ValueError(f"{image.name} differs from its record (size or SHA-256)")
        except (OSError, ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            self.damaged[item.name] = f"{type(exc).__name__}: {exc}"
            path.unlink(missing_ok=True)
            return False
        return True

    def request_for(self, item: WorkItem) -> dict:
        """The SynthesisRequest fields of one item: ``modify`` re-paints the annotated boxes, ``add``
        keeps them and avoids them when it picks an idle region."""
        args, src = self.args, item.source
        return {**args.request, "mode": args.mode, "seed": item.seed, "steps": args.steps, **self.group_fields,
                "boxes": src.boxes, "class_names": src.class_names,
                "return_attention_maps": args.preview, "return_mps_points": args.preview,
                "return_unoccluded_image": args.preview}

    def synthesize_item(self, item: WorkItem) -> Outcome:
        """Run one item and write its image, preview and record (record last, atomically)."""
        from PIL import Image

        src = item.source
        if not src.path.is_file():
            raise FileNotFoundError(f"image file {src.path} not found")
        if self.args.mode == "modify" and not src.boxes:
            return Outcome("skipped", "no usable annotations to modify")
        image = np.asarray(Image.open(src.path).convert("RGB"))
        request = self.request_for(item)
        start = time.perf_counter()
        result, where = self.backend.synthesize(request, image)
        response = result.response
        if response.status != "ok":
            return Outcome("skipped", response.status)
        png = png_bytes(result.image)
        write_atomic(self.out / "images" / f"{item.name}.png", png)
        if self.args.preview:
            from xsyn.client.preview import overlay

            write_atomic(self.out / "preview" / f"{item.name}.png",
                         png_bytes(overlay(result.unoccluded_image, response, result.attention_maps)))
        record = {"item": item.name, "file_name": f"images/{item.name}.png", "source_image": str(src.file_name),
                  "source_image_id": src.image_id, "k": item.k, "seed": item.seed, "mode": self.args.mode,
                  "request": {k: v for k, v in request.items() if not k.startswith("return_")},
                  "backend": where, "model_versions": self.backend.versions,
                  "seconds": round(time.perf_counter() - start, 3), "response": response.model_dump(),
                  "image_bytes": len(png), "image_sha256": hashlib.sha256(png).hexdigest()}
        write_atomic(self.record_path(item), json.dumps(record, indent=1).encode())
        return DONE

    def attempt(self, item: WorkItem) -> Outcome:
        """:meth:`synthesize_item`, with any error turned into the item's outcome: UNAVAILABLE
        (after the client's retries) while every server is out is ``unavailable``."""
        from xsyn.client.endpoints import NoServerAvailable
        from xsyn.errors import Unavailable

        try:
            return self.synthesize_item(item)
        except Unavailable as exc:
            if isinstance(exc, NoServerAvailable) or self.backend.fleet_down():
                return Outcome("unavailable", str(exc))
            return Outcome("failed", f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # reported per item; the run goes on
            return Outcome("failed", f"{type(exc).__name__}: {exc}")

    def run_items(self, todo: list[WorkItem]) -> dict[str, Outcome]:
        """Run ``todo`` with bounded concurrency and a progress bar; every item gets an outcome.

        When no server is available the items not yet started are not started (``unavailable``).
        """
        from tqdm import tqdm

        outcomes: dict[str, Outcome] = {}
        bar = tqdm(total=len(self.items), initial=len(self.finished), unit="img", desc="synthesize",
                   dynamic_ncols=True)
        with ThreadPoolExecutor(max_workers=max(1, self.args.concurrency)) as pool:
            futures = {pool.submit(self.attempt, it): it for it in todo}
            for future in as_completed(futures):
                outcome = future.result() if not future.cancelled() else Outcome("unavailable", "not started")
                outcomes[futures[future].name] = outcome
                if outcome.state == "unavailable" and self.backend.fleet_down():
                    for other in futures:
                        other.cancel()
                bar.update(1)
        bar.close()
        return outcomes

    def run(self) -> int:
        for problem in self.coco.problems:
            print(f"  input: {problem}")
        for name, why in sorted(self.damaged.items()):
            print(f"  redo {name}: its earlier output was damaged ({why})")
        todo = [it for it in self.items if it.name not in self.finished]
        if self.args.ray is not None:
            from xsyn.client.ray_job import run_on_ray

            outcomes = run_on_ray(self, todo)
        else:
            self.backend = Backend(self.args)
            outcomes = self.run_items(todo)
        coco_path = build_coco(self.out, [it.name for it in self.items], self.coco.categories)
        if self.args.preview:
            write_contact_sheet(self.out)
        return report(outcomes, len(self.finished), coco_path)


def report(outcomes: dict[str, Outcome], resumed: int, coco_path: Path) -> int:
    """Print the summary and every item that was skipped or failed; exit code 1 if any failed."""
    by_state = {state: sorted((n, o.reason) for n, o in outcomes.items() if o.state == state)
                for state in ("done", "skipped", "failed", "unavailable")}
    print(f"xsyn synthesize: {len(by_state['done'])} done now, {resumed} already done (resumed), "
          f"{len(by_state['skipped'])} skipped, {len(by_state['failed'])} failed -> {coco_path}")
    for name, why in by_state["skipped"]:
        print(f"  skipped {name}: {why}")
    for name, why in by_state["failed"]:
        print(f"  failed  {name}: {why}")
    if by_state["unavailable"]:
        why = next((w for _, w in by_state["unavailable"] if w != "not started"), "no server is available")
        print(f"xsyn synthesize: stopped with {len(by_state['unavailable'])} item(s) not done: {why}. "
              f"Nothing finished is lost: run the same command again to finish them.")
    return 1 if by_state["failed"] or by_state["unavailable"] else 0


def run(args: argparse.Namespace) -> int:
    return Job(args).run()


def build_coco(out: Path, item_names: list[str], input_categories: list[str]) -> Path:
    """One COCO file from every finished record, in item order (same content however the job ran)."""
    records = [json.loads((out / "records" / f"{n}.json").read_text()) for n in item_names
               if (out / "records" / f"{n}.json").is_file()]
    names = sorted({i["class_name"] for r in records for i in r["response"]["items"]} | set(input_categories))
    cat_id = {n: k + 1 for k, n in enumerate(names)}
    coco = {"info": {"description": "xsyn synthetic images", "records": "records/"},
            "categories": [{"id": i, "name": n, "supercategory": "threat"} for n, i in cat_id.items()],
            "images": [], "annotations": []}
    for image_id, r in enumerate(records, start=1):
        w, h = r["response"]["image_size"]
        coco["images"].append({"id": image_id, "file_name": r["file_name"], "width": w, "height": h,
                               "source_image": r["source_image"], "seed": r["seed"], "mode": r["mode"]})
        for item in r["response"]["items"]:
            x0, y0, x1, y1 = item["box"]
            ann = {"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": cat_id[item["class_name"]],
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                   "xsyn_source": item["source"], "xsyn_status": item["status"]}
            if item.get("mask"):
                ann["segmentation"] = item["mask"]
                ann["area"] = rle_area(item["mask"])
            coco["annotations"].append(ann)
    path = out / "annotations.json"
    write_atomic(path, json.dumps(coco, indent=1).encode())
    return path


def write_contact_sheet(out: Path, limit: int = 24) -> None:
    from PIL import Image

    from xsyn.client.preview import contact_sheet

    previews = sorted((out / "preview").glob("*.png"))[:limit]
    previews = [p for p in previews if p.name != "contact_sheet.png"]
    if not previews:
        return
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in previews]
    rows = [tiles[i:i + 4] for i in range(0, len(tiles), 4)]
    sheet = contact_sheet(rows, [", ".join(p.stem for p in previews[i:i + 4]) for i in range(0, len(previews), 4)])
    write_atomic(out / "preview" / "contact_sheet.png", png_bytes(sheet))
