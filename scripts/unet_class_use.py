"""How much a tiny preset's UNet uses the class phrase and box it is given (issue 13).

Usage: .venv/bin/python scripts/unet_class_use.py [--tiny-weights DIR] [--images 48] [--seed 0]

On the validation bags of ``xsyn sample-data --val`` (regenerated in memory: image ``k`` of seed
``s`` is drawn from ``(s, val, k)``, 256 x 256), every item's box is masked as the pipeline masks
it, the bag's VAE latent ``z0`` ``[4, 32, 32]`` (times the manifest's scaling factor) is noised to
step ``t`` with fixed noise, and the UNet's eps is turned into its estimate of ``z0``. Printed per
``t``: the mean squared error of that estimate over the masked latent cells (per cell and
channel) when the UNet is given

- ``true``: each box's class phrase (grounding token + caption, as the pipeline prompts),
- ``wrong``: every class replaced by the one three places on in ``THREATS``,
- ``none``: no grounding and an empty caption (only the mask says where to paint),

and the ratios ``wrong / true`` and ``none / true``: near 1 means the UNet paints the same thing
whatever it is told. For scale, the last line gives the item's own share of the masked latent: the
mean squared difference between the bag's latent and the same bag's without its items, which a
UNet that knew the items exactly could remove from its error.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

STEPS = (300, 500, 700, 900)


def val_bags(count: int, seed: int):
    """``(image, empty_bag, boxes, classes)`` per bag: uint8 ``[256, 256, 3]`` twice, xyxy boxes
    normalised 0..1 ``[N, 4]`` (tight boxes of the item masks) and the N class names."""
    import numpy as np

    from xsyn.api.masks import mask_box
    from xsyn.client.sample_data import SPLITS, render_scene

    for k in range(count):
        rng = np.random.default_rng([seed, SPLITS["val"], k])
        image, empty, items, _ = render_scene(rng, 256, 256, threats=int(rng.integers(1, 4)))
        boxes = np.array([mask_box(mask) for _, _, mask in items], np.float32) / 256
        yield image, empty, boxes, [name for name, _, _ in items]


def main() -> None:
    import numpy as np
    import torch
    from diffusers import DDIMScheduler

    from xsyn.api.diffusion import SD14_SCHEDULER, inpaint_mask
    from xsyn.api.limits import MAX_OBJECTS
    from xsyn.client.sample_data import THREATS
    from xsyn.export.sources import TINY_WEIGHTS, preset_bundle
    from xsyn.export.tiny_training import PhraseEncoder, _to_unit
    from xsyn.export.tiny_weights import read_manifest
    from xsyn.export.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny-weights", type=Path, default=None)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    classes = list(THREATS)
    scaling = float(read_manifest(args.tiny_weights or TINY_WEIGHTS)["vae_scaling_factor"])
    alphas = DDIMScheduler(**SD14_SCHEDULER).alphas_cumprod.float()
    gen = torch.Generator().manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as work:
        bundle = preset_bundle("tiny", work_dir=Path(work), weights_dir=args.tiny_weights)
        unet, vae = bundle.unet.float().eval(), bundle.vae.float().eval()
        phrases = PhraseEncoder(bundle.text_encoder, load_tokenizer(bundle.tokenizer_dir))
        dim = phrases("")[1].shape[0]

        def conditioning(boxes, names):
            """Caption states ``[1, 77, D]`` and GLIGEN kwargs for ``names`` (None: unconditional)."""
            grounding = {"boxes": torch.zeros(1, MAX_OBJECTS, 4), "positive_embeddings": torch.zeros(1, MAX_OBJECTS, dim),
                         "masks": torch.zeros(1, MAX_OBJECTS)}
            for k, name in enumerate(names or []):
                grounding["boxes"][0, k] = torch.from_numpy(boxes[k])
                grounding["positive_embeddings"][0, k] = phrases(name)[1]
                grounding["masks"][0, k] = 1
            return phrases(" ".join(names or []))[0][None], {"gligen": grounding}

        errors = {t: {"true": 0.0, "wrong": 0.0, "none": 0.0} for t in STEPS}
        item_share = cells = 0.0
        with torch.no_grad():
            for image, empty, boxes, names in val_bags(args.images, args.seed):
                z_full, z_empty = vae.encode(_to_unit(np.stack([image, empty]))).latent_dist.mean * scaling
                hole = 1 - torch.from_numpy(inpaint_mask(boxes, z_full.shape[-1]))[None]  # [1, 32, 32]
                cells += float(hole.sum()) * 4
                item_share += float(((z_full - z_empty) ** 2 * hole).sum())
                z0 = z_full[None]
                told = {"true": names, "wrong": [classes[(classes.index(n) + 3) % len(classes)] for n in names],
                        "none": None}
                for t in STEPS:
                    a = alphas[t]
                    zt = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn(z0.shape, generator=gen)
                    for mode, given in told.items():
                        states, kwargs = conditioning(boxes, given)
                        eps = unet(torch.cat([zt, z0 * (1 - hole), (1 - hole)[None]], 1), torch.tensor([t]),
                                   states, cross_attention_kwargs=kwargs).sample
                        z0_hat = (zt - (1 - a).sqrt() * eps) / a.sqrt()
                        errors[t][mode] += float(((z0_hat - z0) ** 2 * hole).sum())
    print(f"{args.images} validation bags, seed {args.seed}; z0 estimate MSE over the masked latent cells")
    for t, e in errors.items():
        true, wrong, none = (e[m] / cells for m in ("true", "wrong", "none"))
        print(f"  t={t:3d}  true {true:.4f}  wrong {wrong:.4f}  none {none:.4f}  "
              f"wrong/true {wrong / true:.3f}  none/true {none / true:.3f}")
    print(f"  the items' own share: mean (z_bag - z_empty_bag)^2 over the same cells {item_share / cells:.4f}")


if __name__ == "__main__":
    main()
