"""``xsyn sample-data``: phantom pseudo-colour X-ray baggage images with exact COCO masks; one
set, or train / val splits (``--val``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xsyn.errors import InvalidArgument


def add_parser(sub) -> None:
    p = sub.add_parser("sample-data", help="write N phantom X-ray baggage images with a COCO file (exact masks)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=6, help="images (the train split's with --val)")
    p.add_argument("--val", type=int, default=0, metavar="M",
                   help="also write a validation split: OUT/train (N images) and OUT/val (M images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--background", action="store_true",
                   help="also write background.json: the bag and clutter objects as COCO (for xsyn train-tiny)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xsyn.client.sample_data import write_sample_set, write_splits

    if args.n < 1 or args.val < 0 or min(args.width, args.height) < 64:
        raise InvalidArgument("--n must be >= 1, --val >= 0 and --width/--height >= 64")
    if args.val:
        splits = write_splits(args.out, args.n, args.val, args.seed, args.width, args.height, args.background)
        for split, path in splits.items():
            print(f"xsyn sample-data: {split}: {args.val if split == 'val' else args.n} images and {path}")
        return 0
    path = write_sample_set(args.out, args.n, args.seed, args.width, args.height, background=args.background)
    print(f"xsyn sample-data: {args.n} images and {path}")
    return 0
