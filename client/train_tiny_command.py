"""``xsyn train-tiny``: train the tiny preset on phantom X-ray data (see :mod:`xsyn.export.tiny_training`).

Without ``--data`` the phantom training split is generated first (``WORK/data``, what
``xsyn sample-data --width 256 --height 256 --background`` writes: the images, their items, and
``background.json`` with the bag and clutter objects that SAM learns too). A run killed part way resumes from its
last checkpoint in ``--work`` when started again with the same arguments; the weights folder
``--out`` is only written, whole, at the end.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from xsyn.errors import InvalidArgument

DEFAULT_WORK = Path("build/train_tiny")
TRAIN_IMAGES = 1600


def add_parser(sub) -> None:
    p = sub.add_parser("train-tiny", help="train the tiny preset's VAE, GLIGEN UNet and APSAM on phantom X-ray data",
                       description="Train the tiny preset's networks on a COCO folder (default: phantom X-ray bags), "
                                   "seeded and resumable, and write a weights folder for `xsyn export --preset tiny "
                                   "--tiny-weights DIR`.")
    p.add_argument("--data", type=Path, help="COCO dataset folder (annotations.json + images); default: generate "
                                             f"{TRAIN_IMAGES} phantom training images into WORK/data")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"checkpoints and loss logs (default {DEFAULT_WORK}/)")
    p.add_argument("--out", type=Path, help="weights folder to write (default WORK/preset)")
    p.add_argument("--seed", type=int, default=0, help="training seed: batches, noise, dropout (default 0)")
    p.add_argument("--images", type=int, default=TRAIN_IMAGES, help="phantom images to generate without --data")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply every stage's steps (e.g. 0.05 for a smoke run; the committed weights use 1)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xsyn.client.sample_data import write_sample_set
    from xsyn.export.tiny_training import SIZE, scaled_plan, train_tiny
    from xsyn.export.training_data import load_training_set

    if args.steps_scale <= 0 or args.checkpoint_every < 1 or args.images < 1:
        raise InvalidArgument("--steps-scale must be > 0, --checkpoint-every and --images >= 1")
    data_dir = args.data
    if data_dir is None:
        data_dir = args.work / "data"
        if not (data_dir / "annotations.json").is_file():
            print(f"xsyn train-tiny: writing {args.images} phantom training images to {data_dir} ...", flush=True)
            write_sample_set(data_dir, args.images, seed=0, width=SIZE, height=SIZE, split="train", background=True)
    data = load_training_set(data_dir, SIZE)
    out = args.out or args.work / "preset"
    command = "xsyn " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "xsyn train-tiny"
    train_tiny(data, out, args.work, seed=args.seed, plan=scaled_plan(args.steps_scale),
               checkpoint_every=args.checkpoint_every, log=lambda line: print(line, flush=True), command=command)
    print(f"xsyn train-tiny: done. Export with: xsyn export --preset tiny --tiny-weights {out}")
    return 0
