"""``xsyn bench``: one command, one run, one report (JSON + Markdown) on whatever device it finds.

Side by side, on the same weights (a preset's seeded modules, exported into the repository):

- reference: diffusers ``StableDiffusionGLIGENPipeline`` (inpainting, DDIM, CFG 7.5; fp16 + SDPA
  on CUDA, fp32 on the CPU) plus ``segment_anything`` for the SAM stages (automatic masks on the
  input, ``SamPredictor`` on the output, one box prompt per item) - what a user would pick instead;
- the bare UNet program's forward at batch 2 (CFG), times the steps: the floor of the loop;
- the xsyn pipeline in-process and served over gRPC (a real tritonserver): Xsyn-A (``add``) with
  CAR and BOM, end-to-end and per denoising step, and served throughput at each concurrency with
  the mean UNet batch size (Triton's own inference / execution counts);
- annotation: embed time, and click round trips p50 / p99 over gRPC on a cached embedding, idle
  and again while synthesis streams saturate the server;
- memory: peak GPU memory in this process (CUDA only), peak host RSS of this process and of the
  server's process group.

Targets (ratios from the same run): served end-to-end <= 0.6x the reference, served per step
<= 1.10x the bare UNet, throughput at the highest concurrency >= 2.5x single-stream, click p50
<= 10 ms and p99 <= 25 ms, click p99 under synthesis load <= 2x its idle p99. On the CPU with
the tiny preset they are reported, not expected.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import threading
import time
from pathlib import Path

import numpy as np

TARGETS = {"served_vs_reference": 0.6, "served_step_vs_bare_unet": 1.10, "throughput_scaling": 2.5,
           "click_p50_ms": 10.0, "click_p99_ms": 25.0, "loaded_vs_idle_p99": 2.0}
BOXES = [[40.0, 40.0, 120.0, 120.0]]  # the request image's existing annotation (add mode avoids it)
CLASSES = ["Knife"]


def add_parser(sub) -> None:
    from xsyn.serving.command import DEFAULT_REPOSITORY, add_runtime_arguments

    p = sub.add_parser("bench", help="benchmark reference vs in-process vs served on this machine's device")
    p.add_argument("--preset", choices=("tiny", "tiny-random", "full"), default="tiny")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--requests", type=int, default=3, help="timed requests per single-stream measurement")
    p.add_argument("--concurrency", default="1,2,4,8", help="served throughput at these concurrencies")
    p.add_argument("--clicks", type=int, default=200)
    p.add_argument("--load-clients", type=int, default=4,
                   help="synthesis streams saturating the server while clicks are timed again (0: skip)")
    p.add_argument("--out", type=Path, default=Path("bench_output"), help="bench.json and bench.md go here")
    p.add_argument("--skip-reference", action="store_true", help="leave out the diffusers / segment_anything run")
    add_runtime_arguments(p)
    p.set_defaults(handler=run_bench)


def _request(seed: int, steps: int) -> dict:
    return {"mode": "add", "boxes": BOXES, "class_names": CLASSES, "seed": seed, "steps": steps, "guidance": 7.5}


def _image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _median_ms(samples: list[float]) -> float:
    return round(1000 * statistics.median(samples), 3)


def _timed(call, repeats: int) -> list[float]:
    call()  # warm-up: sessions, allocations, first-call compilation
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ---------------------------------------------------------------------- the measurements

def bench_reference(bundle, device: str, precision: str, size: int, steps: int, repeats: int) -> dict:
    """diffusers GLIGEN inpainting + segment_anything AMG and SamPredictor, as a user would run them."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionGLIGENPipeline
    from PIL import Image
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    from xsyn.ensembles.denoise import SD14_SCHEDULER
    from xsyn.export.tokenizer import load_tokenizer

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    pipe = StableDiffusionGLIGENPipeline(
        vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=load_tokenizer(bundle.tokenizer_dir),
        unet=bundle.unet, scheduler=DDIMScheduler(**SD14_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    sam = bundle.sam.to(device)
    if bundle.sam_arch.kind == "apsam":
        segment_grid, segment_box = _apsam_reference(sam, device)
    else:
        amg, predictor = SamAutomaticMaskGenerator(sam, points_per_side=8), SamPredictor(sam)
        segment_grid = amg.generate

        def segment_box(picture, box_px):
            predictor.set_image(picture)
            predictor.predict(box=np.array(box_px), multimask_output=False)
    image = _image(size)
    box = [v / size for v in BOXES[0]]

    def run_once():
        segment_grid(image)  # idle regions / occluders on the input
        out = pipe(prompt=CLASSES[0], gligen_phrases=CLASSES, gligen_boxes=[box],
                   gligen_inpaint_image=Image.fromarray(image), gligen_scheduled_sampling_beta=1.0,
                   num_inference_steps=steps, guidance_scale=7.5, output_type="np", height=size, width=size).images[0]
        segment_box((out * 255).astype(np.uint8), BOXES[0])  # CAR's SAM pass on the generated image
        _sync(device)

    with torch.inference_mode():
        times = _timed(run_once, repeats)
    seg = ("APSAM PyTorch: encoder + 8x8 point grid, encoder + box" if bundle.sam_arch.kind == "apsam"
           else "SamAutomaticMaskGenerator (8x8 points) + SamPredictor")
    return {"end_to_end_ms": _median_ms(times), "what": f"StableDiffusionGLIGENPipeline + {seg}, same weights",
            "dtype": str(dtype).replace("torch.", "")}


def _apsam_reference(apsam, device: str):
    """APSAM's reference code has no mask generator or predictor: the same work in plain PyTorch.

    Returns ``(grid, box)``: ``grid(image)`` runs the encoder and an 8x8 point grid through the
    decoder (what automatic masks cost); ``box(image, xyxy)`` the encoder and one box prompt.
    """
    import torch

    from xsyn.export.wrappers import predict_masks_with_tokens

    side = apsam.image_encoder.img_size

    def encode(picture):
        bgr = torch.from_numpy(np.ascontiguousarray(picture[..., ::-1])).permute(2, 0, 1)[None].float().to(device)
        x = torch.nn.functional.interpolate(bgr, (side, side), mode="bilinear", align_corners=False) / 255.0
        embedding, energy = apsam.image_encoder(x)
        return embedding, apsam.mask_decoder.select_mask_tokens(energy)

    def decode(embedding, tokens, coords, labels, boxes=None):
        sparse, dense = apsam.prompt_encoder(points=(coords, labels) if coords is not None else None, boxes=boxes,
                                             masks=None)
        return predict_masks_with_tokens(apsam.mask_decoder, embedding, apsam.prompt_encoder.get_dense_pe(), sparse,
                                         dense, tokens)

    def grid(picture):
        embedding, tokens = encode(picture)
        g = (np.arange(8) + 0.5) / 8 * side
        coords = torch.tensor(np.stack(np.meshgrid(g, g), -1).reshape(-1, 1, 2), dtype=torch.float32, device=device)
        decode(embedding, tokens, coords, torch.ones(64, 1, device=device))

    def box(picture, xyxy):
        embedding, tokens = encode(picture)
        h, w = picture.shape[:2]
        scaled = torch.tensor([[xyxy[0] * side / w, xyxy[1] * side / h, xyxy[2] * side / w, xyxy[3] * side / h]],
                              device=device)
        decode(embedding, tokens, None, None, scaled)

    return grid, box


def bench_bare_unet(repo: Path, settings, steps: int, repeats: int) -> dict:
    """The UNet program alone at batch 2 (the CFG pair), per call and times ``steps``."""
    from xsyn.export.specs import exported_specs
    from xsyn.runtimes import open_runtime

    spec = exported_specs(repo)["unet"]
    runtime = open_runtime(repo / "unet" / "1", settings=settings)
    rng = np.random.default_rng(0)
    inputs = {t.name: rng.standard_normal((2, *spec.concrete_shape(t)[1:])).astype(np.float32) for t in spec.inputs}
    inputs["timestep"] = np.full((2,), 500.0, np.float32)
    inputs["box_masks"] = np.zeros_like(inputs["box_masks"])
    times = _timed(lambda: runtime.run(inputs), max(repeats, 5))
    per_call = _median_ms(times)
    return {"per_call_ms": per_call, "loop_floor_ms": round(per_call * steps, 3), "runtime": runtime.name}


def bench_in_process(repo: Path, settings, size: int, steps: int, repeats: int) -> dict:
    from xsyn.api.synthesis import parse_request
    from xsyn.ensembles.assets import PipelineAssets
    from xsyn.ensembles.runner import LocalRunner
    from xsyn.ensembles.synthesis import Synthesizer

    synth = Synthesizer(LocalRunner(repo, settings=settings), PipelineAssets.load(repo))
    image, seen = _image(size), {}

    def call():
        seen["out"] = synth.run(parse_request(_request(0, steps)), image).response

    times = _timed(call, repeats)
    response = seen["out"]
    return {"end_to_end_ms": _median_ms(times), "per_step_ms": response.timings_ms.get("per_step"),
            "status": response.status, "stages_ms": response.timings_ms}


def _unet_counts(client) -> tuple[int, int]:
    stats = client.get_inference_statistics("unet", as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def bench_served(url: str, size: int, steps: int, repeats: int, concurrencies: list[int]) -> dict:
    import tritonclient.grpc as grpcclient

    from xsyn.client.sdk import XsynClient

    raw = grpcclient.InferenceServerClient(url)
    image, seen = _image(size), {}
    with XsynClient(url) as client:
        def call():
            seen["out"] = client.synthesize(_request(0, steps), image).response

        times = _timed(call, repeats)
    response = seen["out"]
    result = {"end_to_end_ms": _median_ms(times), "per_step_ms": response.timings_ms.get("per_step"),
              "status": response.status, "stages_ms": response.timings_ms, "throughput": {}}
    for n in concurrencies:
        per_client = max(1, repeats)
        before = _unet_counts(raw)
        errors: list[Exception] = []

        def worker(k: int) -> None:
            try:
                with XsynClient(url) as c:
                    for i in range(per_client):
                        c.synthesize(_request(100 * k + i, steps), image)
            except Exception as exc:  # counted in the report
                errors.append(exc)

        start = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        inferences, executions = (a - b for a, b in zip(_unet_counts(raw), before))
        result["throughput"][str(n)] = {
            "requests": n * per_client, "errors": len(errors), "requests_per_s": round(n * per_client / seconds, 4),
            "mean_unet_batch_samples": round(inferences / executions, 3) if executions else None,
            "mean_requests_per_unet_execution": round(inferences / executions / 2, 3) if executions else None}
    return result


def _click_times(client, keys: list[str], size: int, clicks: int, seed: int) -> np.ndarray:
    """Round-trip milliseconds of ``clicks`` single-point clicks on cached embeddings."""
    rng = np.random.default_rng(seed)
    times = []
    for i in range(clicks):
        x, y = (float(v) for v in rng.uniform(0, size, 2))
        start = time.perf_counter()
        client.segment(keys[i % len(keys)], [[x, y]], [1], adaptive_points=False)
        times.append(time.perf_counter() - start)
    return np.asarray(times) * 1000


def _percentiles(ms: np.ndarray, prefix: str) -> dict:
    return {f"{prefix}p50_ms": round(float(np.percentile(ms, 50)), 3),
            f"{prefix}p99_ms": round(float(np.percentile(ms, 99)), 3)}


def bench_annotation(url: str, size: int, clicks: int, load_clients: int, steps: int) -> dict:
    """Embed time; click p50 / p99 on an idle server, then with ``load_clients`` synthesis
    streams saturating it (the clicks' priority)."""
    from xsyn.client.sdk import XsynClient

    with XsynClient(url) as client:
        images = [_image(size, seed) for seed in range(1, 5)]
        client.segment(client.embed(_image(size, 99)).key, [[5.0, 5.0]], [1])  # warm-up
        embed, keys = [], []
        for image in images:
            start = time.perf_counter()
            keys.append(client.embed(image).key)
            embed.append(time.perf_counter() - start)
        result = {"embed_ms": _median_ms(embed), "clicks": clicks,
                  **_percentiles(_click_times(client, keys, size, clicks, 1), "click_")}
        if load_clients:
            stop = threading.Event()

            def load(k: int) -> None:
                with XsynClient(url) as c:
                    while not stop.is_set():
                        c.synthesize(_request(1000 + k, steps), _image(size, k))

            threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(load_clients)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            loaded = _click_times(client, keys, size, clicks, 2)
            stop.set()
            for t in threads:
                t.join()
            result.update(load_clients=load_clients, **_percentiles(loaded, "loaded_click_"))
            result["loaded_vs_idle_p99"] = round(result["loaded_click_p99_ms"] / result["click_p99_ms"], 3)
    return result


def group_peak_rss_mb(pgid: int) -> float:
    """Sum of the peak RSS (VmHWM) of every live process in a process group, MiB."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if os.getpgid(int(status.parent.name)) != pgid:
                continue
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, ProcessLookupError):
            continue
    return round(total / 1024, 1)


# ---------------------------------------------------------------------- the report

def ratios(report: dict) -> dict:
    """The targets' ratios from one report (None where a part was not measured)."""
    served, ref, bare = report.get("served", {}), report.get("reference", {}), report.get("bare_unet", {})
    tp = served.get("throughput", {})
    lo, hi = (tp[min(tp, key=int)], tp[max(tp, key=int)]) if tp else (None, None)
    ann = report.get("annotation", {})

    def div(a, b):
        return round(a / b, 3) if a is not None and b else None

    return {"served_vs_reference": div(served.get("end_to_end_ms"), ref.get("end_to_end_ms")),
            "served_vs_in_process": div(served.get("end_to_end_ms"), report.get("in_process", {}).get("end_to_end_ms")),
            "served_step_vs_bare_unet": div(served.get("per_step_ms"), bare.get("per_call_ms")),
            "throughput_scaling": div(hi and hi["requests_per_s"], lo and lo["requests_per_s"]),
            "click_p50_ms": ann.get("click_p50_ms"), "click_p99_ms": ann.get("click_p99_ms"),
            "loaded_vs_idle_p99": ann.get("loaded_vs_idle_p99")}


def markdown(report: dict) -> str:
    env, r = report["environment"], report["ratios"]
    lines = [f"# xsyn bench: {env['device_name']}", "",
             f"Command: `{report['command']}`", "",
             f"Preset `{env['preset']}`, {env['steps']} steps, {env['size']}x{env['size']}, runtime "
             f"`{env['runtime']}` on `{env['device']}` at `{env['precision']}`; torch {env['torch']}, "
             f"{env['cpus']} CPUs. Times are medians of {env['requests']} requests after a warm-up.", "",
             "| measurement | value |", "|---|---|"]
    for part in ("reference", "bare_unet", "in_process", "served", "annotation"):
        for key, value in report.get(part, {}).items():
            if key not in ("stages_ms", "throughput", "what"):
                lines.append(f"| {part}.{key} | {value} |")
    lines += ["", "| concurrency | requests/s | mean UNet batch (samples; one request's CFG pair = 2) | "
              "requests per UNet execution | errors |", "|---|---|---|---|---|"]
    for n, row in report.get("served", {}).get("throughput", {}).items():
        lines.append(f"| {n} | {row['requests_per_s']} | {row['mean_unet_batch_samples']} | "
                     f"{row['mean_requests_per_unet_execution']} | {row['errors']} |")
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for name, goal in TARGETS.items():
        value = r.get(name)
        met = None if value is None else (value >= goal if name == "throughput_scaling" else value <= goal)
        lines.append(f"| {name} | {value} | {'>=' if name == 'throughput_scaling' else '<='} {goal} | "
                     f"{'-' if met is None else 'yes' if met else 'no'} |")
    lines += ["", f"served / in-process end-to-end: {r.get('served_vs_in_process')}",
              f"memory: {json.dumps(report.get('memory', {}))}", ""]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    import sys

    import torch

    from xsyn.export.sources import preset_bundle
    from xsyn.runtimes import resolve_device
    from xsyn.serving.command import prepare_repository, runtime_settings
    from xsyn.serving.server import ServerOptions, TritonServer, free_port

    if args.runtime == "auto" and args.device == "cpu" and torch.cuda.is_available():
        args.runtime, args.device = "torch", "cuda:0"  # whatever device it finds
    settings = runtime_settings(args)
    device, precision = resolve_device(settings.device, settings.precision) if settings.runtime == "torch" \
        else ("cpu", "fp32")
    concurrencies = sorted({int(v) for v in args.concurrency.split(",") if v.strip()})
    repo, _ = prepare_repository(args.preset, args.repository, settings)
    bundle = preset_bundle(args.preset)
    size = bundle.image_size
    report: dict = {"command": "xsyn " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("xsyn") else "xsyn bench",
                    "environment": {
                        "device": device, "precision": precision, "runtime": settings.runtime, "preset": args.preset,
                        "steps": args.steps, "size": size, "requests": args.requests, "torch": torch.__version__,
                        "cpus": os.cpu_count(), "platform": platform.platform(),
                        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda")
                        else f"CPU ({platform.processor() or platform.machine()})"}}
    print(f"xsyn bench: {report['environment']['device_name']}, preset {args.preset}, {args.steps} steps", flush=True)
    if not args.skip_reference:
        print("  reference (diffusers + segment_anything) ...", flush=True)
        report["reference"] = bench_reference(bundle, device, precision, size, args.steps, args.requests)
    print("  bare UNet ...", flush=True)
    report["bare_unet"] = bench_bare_unet(repo, settings, args.steps, args.requests)
    print("  in-process pipeline ...", flush=True)
    report["in_process"] = bench_in_process(repo, settings, size, args.steps, args.requests)
    options = ServerOptions(repository=repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(options) as server:
        print(f"  served pipeline, concurrency {concurrencies} ...", flush=True)
        report["served"] = bench_served(options.grpc_url, size, args.steps, args.requests, concurrencies)
        print("  annotation clicks ...", flush=True)
        report["annotation"] = bench_annotation(options.grpc_url, size, args.clicks, args.load_clients, args.steps)
        server_rss = group_peak_rss_mb(server.process.pid)
    report["memory"] = {"bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                        "server_group_peak_rss_mb": server_rss}
    if device.startswith("cuda"):
        report["memory"]["bench_process_peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    report["ratios"] = ratios(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    (args.out / "bench.md").write_text(markdown(report))
    print(markdown(report))
    print(f"xsyn bench: report in {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 0
