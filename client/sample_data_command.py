"""``xsyn sample-data``: write a small COCO set of baggage-like pseudo-colour X-ray images."""

from __future__ import annotations

import argparse
from pathlib import Path

from xsyn.errors import InvalidArgument


def add_parser(sub) -> None:
    p = sub.add_parser("sample-data", help="write N synthetic X-ray baggage images with a COCO file")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=256)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xsyn.client.sample_data import write_sample_set

    if args.n < 1 or min(args.width, args.height) < 64:
        raise InvalidArgument("--n must be >= 1 and --width/--height >= 64")
    path = write_sample_set(args.out, args.n, args.seed, args.width, args.height)
    print(f"xsyn sample-data: {args.n} images and {path}")
    return 0
