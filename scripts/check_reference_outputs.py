"""Compare exported graphs with the outputs the reference code gave on the same inputs (full size).

Usage, after ``scripts/make_reference_fixtures.py --full-size DIR`` and ``xsyn export
--checkpoint DIR/gligen_sd14.pth ... --checkpoint DIR/apsam_vit_b.pth --out REPO``::

    .venv/bin/python scripts/check_reference_outputs.py --repo REPO --outputs DIR/full_outputs.npz

Prints, per output, ``max |ours - reference|`` and the reference's scale, and exits 1 when one
is over ``1e-4 x scale`` (the export's parity criterion).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xsyn.export.onnx_export import onnxruntime_outputs  # noqa: E402

TOLERANCE = 1e-4


def _report(name: str, got: np.ndarray, want: np.ndarray) -> bool:
    err, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
    ok = got.shape == want.shape and err <= TOLERANCE * scale
    print(f"{name:28s} {str(list(want.shape)):22s} max abs err {err:.3g}  scale {scale:.3g}  "
          f"err/tol {err / (TOLERANCE * scale):.3f}  {'ok' if ok else 'FAILED'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--outputs", type=Path, required=True)
    args = p.parse_args(argv)
    f = np.load(args.outputs)
    ok = True
    if "unet_noise_pred" in f.files and (args.repo / "unet").is_dir():
        names = ("sample", "timestep", "encoder_hidden_states", "boxes", "phrase_embeddings", "box_masks")
        (noise,) = onnxruntime_outputs(args.repo / "unet" / "1" / "model.onnx",
                                       {n: f[f"unet_{n}"].astype(np.float32) for n in names}, ["noise_pred"])
        ok &= _report("unet noise_pred", noise, f["unet_noise_pred"])
    if "apsam_low_res" in f.files and (args.repo / "sam_image_encoder").is_dir():
        emb, tokens = onnxruntime_outputs(args.repo / "sam_image_encoder" / "1" / "model.onnx",
                                          {"image": f["apsam_image"]}, ["image_embeddings", "mask_tokens"])
        coords = np.concatenate([f["apsam_points"], np.zeros((1, 1, 2), np.float32)], axis=1)
        low_side = 4 * emb.shape[-1]
        (low,) = onnxruntime_outputs(args.repo / "sam_decoder" / "1" / "model.onnx", {
            "image_embeddings": emb, "point_coords": coords, "point_labels": np.array([[1, 1, -1]], np.float32),
            "mask_input": np.zeros((1, 1, low_side, low_side), np.float32), "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([256, 256], np.float32), "mask_tokens": tokens}, ["low_res_masks"])
        ok &= _report("apsam low-res logits", low[:, :1], f["apsam_low_res"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
