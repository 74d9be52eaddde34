"""``xsyn demo``: the whole product on the tiny preset, end to end, with pictures.

Exports the tiny preset (cached), serves it from a real ``tritonserver`` on free loopback
ports, shows health, sends one raw request per leaf model (compared with in-process ONNX
Runtime), synthesizes sample X-ray images in ``modify`` and ``add`` mode through the ``xsyn``
pipeline model, writes the results, their COCO annotations and a contact sheet, and stops.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from xsyn.serving.command import DEFAULT_REPOSITORY, health_lines, infer, prepare_repository
from xsyn.serving.server import ServerOptions, TritonServer, free_port


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="export + serve the tiny preset, query every model, synthesize samples, stop")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="results folder (default demo_output/)")
    p.add_argument("--images", type=int, default=3, help="sample images to synthesize (default 3)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import tritonclient.grpc as grpcclient
    from PIL import Image

    from xsyn.client.preview import contact_sheet, overlay
    from xsyn.client.sample_data import write_sample_set
    from xsyn.client.sdk import XsynClient
    from xsyn.runtimes import OnnxRuntimeSession

    print("xsyn demo: exporting the tiny preset ...", flush=True)
    repo, networks = prepare_repository("tiny", args.repository)
    coco_path = write_sample_set(args.out / "samples", args.images, seed=0)
    coco = json.loads(coco_path.read_text())
    options = ServerOptions(repository=repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    print(f"xsyn demo: starting tritonserver on {options.grpc_url} ...", flush=True)
    with TritonServer(options):
        print("\n".join(health_lines(options.grpc_url, options.metrics_port)[0]))
        client = grpcclient.InferenceServerClient(options.grpc_url)
        print(f"\n{'leaf model':<22} {'served vs in-process max |diff|':>32}  outputs")
        for net in networks:
            inputs = net.sample_inputs(np.random.default_rng(0))
            served = infer(client, net.spec, inputs)
            local = OnnxRuntimeSession(repo / net.spec.name / "1" / "model.onnx").run(inputs)
            diff = max(float(np.abs(served[k] - local[k]).max()) for k in local)
            shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in list(served.items())[:2])
            print(f"{net.spec.name:<22} {diff:>32.2e}  {shapes}{' ...' if len(served) > 2 else ''}")

        print(f"\nxsyn demo: synthesizing {len(coco['images'])} sample images ({args.steps} steps) ...", flush=True)
        rows, labels, results = [], [], []
        with XsynClient(options.grpc_url) as sdk:
            for k, entry in enumerate(coco["images"]):
                image = np.asarray(Image.open(args.out / "samples" / entry["file_name"]).convert("RGB"))
                anns = [a for a in coco["annotations"] if a["image_id"] == entry["id"]]
                names = {c["id"]: c["name"] for c in coco["categories"]}
                mode = "modify" if k % 2 == 0 else "add"
                request = {"mode": mode, "seed": k, "steps": args.steps, "class_names": [names[a["category_id"]] for a in anns],
                           "boxes": [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                     for a in anns],
                           "return_attention_maps": True, "return_mps_points": True, "return_unoccluded_image": True}
                start = time.perf_counter()
                result = sdk.synthesize(request, image)
                seconds = time.perf_counter() - start
                r = result.response
                stem = Path(entry["file_name"]).stem
                Image.fromarray(result.image).save(args.out / f"{stem}_{mode}.png")
                (args.out / f"{stem}_{mode}.json").write_text(r.model_dump_json(indent=1))
                generated = [i for i in r.items if i.source == "generated"]
                print(f"  {stem} {mode:<6} {r.status:<24} generated {', '.join(i.class_name for i in generated) or '-':<22}"
                      f" occlusion {'yes' if r.occlusion.get('applied') else 'no ':<3}  {seconds:5.1f} s")
                rows.append([image, result.unoccluded_image, result.image,
                             overlay(result.unoccluded_image, r, result.attention_maps)])
                labels.append(f"{stem} {mode}: input | generated | occluded (output) | CAR boxes, masks, points, attention")
                results.append(r)
    sheet = contact_sheet(rows, labels)
    Image.fromarray(sheet).save(args.out / "contact_sheet.png")
    print(f"\nxsyn demo: server stopped. Results, annotations and contact_sheet.png in {args.out}/")
    print("  (tiny preset: weights `xsyn train-tiny` trained for ~60 CPU minutes on phantom X-ray bags: small items come"
          " out as class-coloured outlines, large or overlapping boxes as texture, see docs/measurements.md; defaults"
          f" of the {results[0].settings['profile']!r} profile)")
    return 0
