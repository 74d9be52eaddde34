"""How well a tiny preset's text encoder tells the phantom class phrases apart.

Usage: .venv/bin/python scripts/phrase_separability.py [--tiny-weights DIR]

For ``tiny-random`` and the trained ``tiny`` weights (default: the committed ones), prints the
pairwise cosine similarity of the six class phrases' pooled features (GLIGEN's grounding
tokens) and of their caption states (``last_hidden_state [77, D]`` flattened, the UNet's
cross-attention context): the largest and mean off-diagonal value, then the pooled matrix.
Values near 1 mean the UNet receives nearly the same conditioning for every class.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def similarities(bundle, classes: list[str]):
    """Cosine matrices ``[C, C]`` of pooled features and of flattened caption states."""
    import torch
    from torch.nn import functional as F

    from xsyn.export.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(bundle.tokenizer_dir)
    ids = tokenizer(classes, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        out = bundle.text_encoder(ids)
    pooled = F.normalize(out.pooler_output, dim=-1)
    states = F.normalize(out.last_hidden_state.flatten(1), dim=-1)
    return pooled @ pooled.T, states @ states.T


def main() -> None:
    import torch

    from xsyn.client.sample_data import THREATS
    from xsyn.export.sources import preset_bundle

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny-weights", type=Path, default=None)
    args = parser.parse_args()
    classes = list(THREATS)
    off = ~torch.eye(len(classes), dtype=torch.bool)
    with tempfile.TemporaryDirectory() as work:
        for name in ("tiny-random", "tiny"):
            bundle = preset_bundle(name, work_dir=Path(work), weights_dir=args.tiny_weights if name == "tiny" else None)
            pooled, states = similarities(bundle, classes)
            print(f"{name}: pooled phrase cosine max {pooled[off].max():.3f} mean {pooled[off].mean():.3f}; "
                  f"caption states cosine max {states[off].max():.3f} mean {states[off].mean():.3f}")
            print("  pooled " + " ".join(f"{c:>8}" for c in classes))
            for c, row in zip(classes, pooled):
                print(f"  {c:>8} " + " ".join(f"{v:8.3f}" for v in row.tolist()))


if __name__ == "__main__":
    main()
