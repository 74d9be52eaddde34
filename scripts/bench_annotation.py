"""Annotation latency on the tiny preset: embed, and clicks p50/p99, served vs in-process.

Not a test: prints a table. A click is one `segment` call with one point (adaptive points off
and on). The in-process path runs the same Annotator with ONNX Runtime sessions in this process.

    .venv/bin/python scripts/bench_annotation.py [--clicks 200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from xsyn.client.sdk import XsynClient
from xsyn.api.annotation import SegmentRequest
from xsyn.ensembles.annotation import Annotator
from xsyn.ensembles.assets import ANNOTATION_GRAPHS, PipelineAssets
from xsyn.ensembles.embedding_cache import EmbeddingCache
from xsyn.ensembles.runner import LocalRunner
from xsyn.serving.command import prepare_repository
from xsyn.serving.server import ServerOptions, TritonServer, free_port


def percentiles(samples):
    a = np.asarray(samples) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def measure(embed, click, images, clicks, rng):
    embed_times, keys = [], []
    for image in images:
        start = time.perf_counter()
        keys.append(embed(image))
        embed_times.append(time.perf_counter() - start)
    results = {}
    for adaptive in (False, True):
        times = []
        for i in range(clicks):
            image = images[i % len(images)]
            x, y = float(rng.uniform(0, image.shape[1])), float(rng.uniform(0, image.shape[0]))
            start = time.perf_counter()
            click(keys[i % len(keys)], x, y, adaptive)
            times.append(time.perf_counter() - start)
        results[adaptive] = percentiles(times)
    return percentiles(embed_times), results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clicks", type=int, default=200)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args()
    repo, _ = prepare_repository("tiny", args.repository)
    images = [np.random.default_rng(k).integers(0, 256, (240, 320, 3), dtype=np.uint8) for k in range(8)]

    local = Annotator(LocalRunner(repo), PipelineAssets.load(repo, ANNOTATION_GRAPHS), EmbeddingCache(10**9))
    local.embed(images[0])  # warm-up
    local_embed, local_click = measure(
        lambda im: local.embed(im).key,
        lambda k, x, y, a: local.segment(SegmentRequest(key=k, points=[[x, y]], labels=[1], adaptive_points=a)),
        images[1:], args.clicks, np.random.default_rng(0))

    options = ServerOptions(repository=repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(options), XsynClient(options.grpc_url) as client:
        client.segment(client.embed(images[0]).key, [[5.0, 5.0]], [1])  # warm-up
        served_embed, served_click = measure(
            lambda im: client.embed(im).key,
            lambda k, x, y, a: client.segment(k, [[x, y]], [1], adaptive_points=a),
            images[1:], args.clicks, np.random.default_rng(0))

    print(f"tiny preset, {len(images) - 1} images (320x240), {args.clicks} clicks per row; latency in ms")
    print(f"{'':<28} {'in-process p50':>14} {'p99':>7} {'served p50':>11} {'p99':>7} {'served/in-process p50':>22}")
    rows = [("embed", local_embed, served_embed), ("click", local_click[False], served_click[False]),
            ("click + adaptive points", local_click[True], served_click[True])]
    for name, (lp50, lp99), (sp50, sp99) in rows:
        print(f"{name:<28} {lp50:>14.2f} {lp99:>7.2f} {sp50:>11.2f} {sp99:>7.2f} {sp50 / lp50:>22.2f}")


if __name__ == "__main__":
    main()
