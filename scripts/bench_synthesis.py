"""Per-stage synthesis timings on the tiny preset, served (real tritonserver) vs in-process.

Not a test: prints a table. Stage times come from the orchestrator's own timers (the response's
``timings_ms``); "wall" is what the caller waited. Both paths run the same requests (modify
mode, CAR and BOM on) after one warm-up request each.

    .venv/bin/python scripts/bench_synthesis.py [--requests 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from xsyn.client.sdk import XsynClient
from xsyn.ensembles.assets import PipelineAssets
from xsyn.ensembles.runner import LocalRunner
from xsyn.api.synthesis import parse_request
from xsyn.ensembles.synthesis import Synthesizer
from xsyn.serving.command import prepare_repository
from xsyn.serving.server import ServerOptions, TritonServer, free_port

STAGES = ("sam_embed", "amg", "encode", "denoise", "per_step", "bom", "decode", "car")


def requests(n: int, steps: int):
    rng = np.random.default_rng(0)
    for k in range(n):
        image = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
        yield {"boxes": [[30.0, 40.0, 130.0, 140.0], [170.0, 90.0, 290.0, 210.0]], "class_names": ["Knife", "Gun"],
               "seed": k, "steps": steps}, image


def run(call, n, steps):
    call(*next(requests(1, steps)))  # warm-up: sessions, first-run allocations
    rows = []
    for request, image in requests(n, steps):
        start = time.perf_counter()
        timings = call(request, image)
        rows.append(dict(timings, wall=1000 * (time.perf_counter() - start)))
    return {k: statistics.median(r.get(k, 0.0) for r in rows) for k in (*STAGES, "wall")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args()
    repo, _ = prepare_repository("tiny", args.repository)

    synth = Synthesizer(LocalRunner(repo), PipelineAssets.load(repo))
    local = run(lambda r, im: synth.run(parse_request(r), im).response.timings_ms, args.requests, args.steps)
    options = ServerOptions(repository=repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(options), XsynClient(options.grpc_url) as client:
        served = run(lambda r, im: client.synthesize(r, im).response.timings_ms, args.requests, args.steps)

    print(f"tiny preset, {args.requests} requests of {args.steps} steps after a warm-up, medians in ms")
    print(f"{'stage':<10} {'in-process':>11} {'served':>9} {'served/in-process':>18}")
    for k in (*STAGES, "wall"):
        ratio = served[k] / local[k] if local[k] else float("nan")
        print(f"{k:<10} {local[k]:>11.1f} {served[k]:>9.1f} {ratio:>18.2f}")


if __name__ == "__main__":
    main()
