"""``xsyn export``: argument handling, progress lines and the summary table."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from xsyn.errors import InvalidArgument
from xsyn.export.build import GraphResult, run_export
from xsyn.export.networks import PART_OF, NETWORK_NAMES, parse_only, parts_in_order, select_networks
from xsyn.export.sources import PRESETS, checkpoint_bundle, preset_bundle

DEFAULT_OUT = Path("model_repository")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export every network to ONNX (and TensorRT), with parity checks",
                       description="Export the networks to ONNX graphs (and TensorRT plans) in a Triton model "
                                   "repository, checking each graph against PyTorch right after export.")
    p.add_argument("--preset", choices=PRESETS, help="seeded random weights of the real architectures")
    p.add_argument("--checkpoint", type=Path, action="append", default=[], metavar="PATH",
                   help="a checkpoint, recognised by content (repeatable): original GLIGEN .pth, diffusers GLIGEN "
                        "folder, SAM .pth (vit_b/l/h) or APSAM reference .pth")
    p.add_argument("--tokenizer", type=Path, help="CLIP tokenizer folder (vocab.json, merges.txt) for an original "
                                                  "GLIGEN .pth, which holds none")
    p.add_argument("--checkpoint-dir", type=Path, help="same as --checkpoint, for a diffusers GLIGEN folder")
    p.add_argument("--sam-checkpoint", type=Path, help="same as --checkpoint, for a SAM or APSAM .pth")
    p.add_argument("--sam-variant", choices=("vit_h", "vit_l", "vit_b"), help="insist on this SAM variant")
    p.add_argument("--seed", type=int, default=0, help="preset weight seed (default 0)")
    p.add_argument("--tiny-weights", type=Path, metavar="DIR",
                   help="--preset tiny: a weights folder `xsyn train-tiny` wrote (default: the committed weights)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output repository (default {DEFAULT_OUT}/)")
    p.add_argument("--engine", choices=("onnx", "tensorrt"), default="onnx", help="onnx, or onnx + TensorRT plans")
    p.add_argument("--fp32-engine", action="store_true", help="TensorRT plans in fp32 instead of fp16")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(NETWORK_NAMES)}")
    p.add_argument("--capture-layers", help="UNet cross-attention layers to capture (default: the 16x16 layers)")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache is up to date")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    only = parse_only(args.only)
    if args.engine == "tensorrt":
        from xsyn.export.tensorrt_build import require_tensorrt

        require_tensorrt()  # fail before any work
    paths = [*args.checkpoint, *(p for p in (args.checkpoint_dir, args.sam_checkpoint) if p)]
    if args.preset is None and not paths:
        raise InvalidArgument("give --preset, or --checkpoint PATH (repeatable)")
    if args.tiny_weights and args.preset != "tiny":
        raise InvalidArgument("--tiny-weights goes with --preset tiny")
    if args.preset and paths:
        raise InvalidArgument(f"--preset {args.preset} brings its own weights; drop the checkpoint options")
    started = time.perf_counter()
    if args.preset:
        bundle = preset_bundle(args.preset, args.seed, weights_dir=args.tiny_weights)
    else:
        bundle = checkpoint_bundle(paths, args.sam_variant, args.tokenizer)
    layers = tuple(x.strip() for x in args.capture_layers.split(",")) if args.capture_layers else None
    select_networks(bundle, only, layers, build=False)  # every named graph has its source (or a clear error)
    names = [n for n in NETWORK_NAMES if (only is None or n in only) and bundle.has(PART_OF[n])]
    for line in bundle.found:
        print(f"found {line}", flush=True)
    print(f"xsyn export: {len(names)} graph(s) from {bundle.source} -> {args.out}/", flush=True)
    for note in bundle.notes:
        print(f"  note: {note}", flush=True)
    results: list[GraphResult] = []
    for part, group in parts_in_order(names):  # one part's weights in memory at a time
        done = len(results)
        networks = select_networks(bundle, tuple(group), layers)
        results += run_export(networks, args.out, bundle.source, engine=args.engine, fp16=not args.fp32_engine,
                              profile=bundle.profile, force=args.force,
                              on_progress=lambda i, n, name, r: _progress(done + i, len(names), name, r))
        del networks
        bundle.release(part)
    print(summary_table(results))
    print(f"parity report: {args.out / 'parity_report.json'}   total {time.perf_counter() - started:.1f} s")
    failed = [r for r in results if r.status == "failed"]
    return 1 if failed else 0


def _progress(i: int, n: int, name: str, result: GraphResult | None) -> None:
    if result is None:
        print(f"[{i}/{n}] {name}: exporting ...", flush=True)
    elif result.status == "failed":
        print(f"[{i}/{n}] {name}: FAILED {result.error}", flush=True)
    else:
        detail = f"{result.seconds:.1f} s" if result.status == "built" else "up to date"
        print(f"[{i}/{n}] {name}: {result.status} ({detail}), worst error {result.worst_error_ratio:.3f} of tolerance",
              flush=True)


def summary_table(results: list[GraphResult]) -> str:
    """Fixed-width table: graph, status, time, ONNX size, worst max-abs error / allowed for the
    ONNX graph and the ``model.pt2`` program, plan."""
    rows = [("graph", "status", "time", "onnx", "err/tol", "pt2 err/tol", "plan")]
    for r in results:
        rows.append((r.name, r.status, f"{r.seconds:.1f}s", _size(r.onnx_bytes),
                     f"{r.worst_error_ratio:.3f}" if r.parity else "-",
                     f"{r.worst_torch_ratio:.3f}" if r.parity_torch else "-", r.plan or "-"))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `xsyn export` command")
