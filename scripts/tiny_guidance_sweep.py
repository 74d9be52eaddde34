"""Contact sheet of the served synthesis pipeline (in-process, ONNX Runtime) on validation bags
at several DDIM step counts and guidance scales: which sampling settings suit a tiny preset.

Usage: .venv/bin/python scripts/tiny_guidance_sweep.py REPOSITORY OUT.png [--images 4]

Rows: the first validation bags (``xsyn quality``'s scenes). Columns: the bag with its items,
the empty bag (the input), then ``modify`` outputs (BOM and CAR off, seed = row) painting each
item into its true box loosened by 10% a side, one column per ``(steps, guidance)`` of CONFIGS.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CONFIGS = [(20, 1.0), (20, 2.0), (20, 4.0), (20, 7.5), (50, 3.0)]


def main() -> None:
    from PIL import Image

    from xsyn.api.synthesis import parse_request
    from xsyn.client.quality import loosened, val_scenes
    from xsyn.ensembles.assets import PipelineAssets
    from xsyn.ensembles.runner import LocalRunner
    from xsyn.ensembles.synthesis import Synthesizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    synthesizer = Synthesizer(LocalRunner(args.repository, "onnxruntime"), PipelineAssets.load(args.repository))
    rows = []
    for k, scene in enumerate(val_scenes(args.images)):
        row = [scene.image, scene.empty]
        for steps, guidance in CONFIGS:
            request = parse_request({"mode": "modify", "seed": k, "steps": steps, "guidance": guidance,
                                     "bom_alpha": 0.0, "car": False, "class_names": [c for c, _ in scene.items],
                                     "boxes": [loosened(mask) for _, mask in scene.items]})
            row.append(synthesizer.run(request, scene.empty).image)
        rows.append(np.concatenate(row, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out)
    print(f"wrote {args.out}: columns bag, empty bag, then (steps, guidance) {CONFIGS}")


if __name__ == "__main__":
    main()
