"""Checkpoints written by the papers' own code reproduce that code's outputs through xsyn.

The fixtures in ``tests/fixtures/reference/`` were made by ``scripts/make_reference_fixtures.py``
running the reference implementations (gligen/GLIGEN and xi801/APSAM) outside this project:
tiny seeded models saved as their training scripts save them, and their outputs on fixed
inputs. Here they go through ``xsyn export --checkpoint`` and the exported graphs, then the
served models, and must give the reference's numbers.

Tolerance: ``max |ours - reference| <= 1e-4 * max |reference|`` per output (fp32 on CPU; the
graphs differ from the reference only in operator order).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_env
from xsyn.export.onnx_export import onnxruntime_outputs

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
GLIGEN = FIXTURES / "gligen_tiny.pth"
APSAM = FIXTURES / "apsam_tiny.pth"
TOKENIZER = FIXTURES / "gligen_tiny_tokenizer"
RELATIVE = 1e-4


def assert_close(name: str, got: np.ndarray, want: np.ndarray, relative: float = RELATIVE) -> None:
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
    assert err <= relative * scale, f"{name}: max error {err:.3g} > {relative} x {scale:.3g}"


def _export(*args, env):
    return subprocess.run([sys.executable, "-m", "xsyn.client.cli", "export", *args], capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.fixture(scope="module")
def reference_repo(tmp_path_factory, cache_home):
    out = tmp_path_factory.mktemp("reference") / "repo"
    proc = _export("--checkpoint", str(GLIGEN), "--tokenizer", str(TOKENIZER), "--checkpoint", str(APSAM),
                   "--out", str(out), env=run_env(cache_home))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out, proc.stdout


def test_export_says_what_it_found(reference_repo):
    _, stdout = reference_repo
    found = [line for line in stdout.splitlines() if line.startswith("found ")]
    assert len(found) == 2
    assert "gligen_tiny.pth: original GLIGEN checkpoint (UNet 9-channel inpainting, gated self-attention" in found[0]
    assert "apsam_tiny.pth: APSAM custom checkpoint (ViT 32x2, input 128 px square BGR 0..1" in found[1]


def test_gligen_graphs_reproduce_the_reference(reference_repo):
    out, _ = reference_repo
    f = np.load(FIXTURES / "gligen_tiny_outputs.npz")
    unet_in = {k: f[k].astype(np.float32) for k in
               ("sample", "timestep", "encoder_hidden_states", "boxes", "phrase_embeddings", "box_masks")}
    (noise,) = onnxruntime_outputs(out / "unet" / "1" / "model.onnx", unet_in, ["noise_pred"])
    assert_close("unet noise_pred", noise, f["noise_pred"])
    mean, std = onnxruntime_outputs(out / "vae_encoder" / "1" / "model.onnx", {"image": f["vae_image"]},
                                    ["latent_mean", "latent_std"])
    assert_close("vae latent_mean", mean, f["latent_mean"])
    assert_close("vae latent_std", std, f["latent_std"])
    (image,) = onnxruntime_outputs(out / "vae_decoder" / "1" / "model.onnx", {"latent": f["latent"]}, ["image"])
    assert_close("vae decoded", image, f["decoded"])
    hidden, pooled = onnxruntime_outputs(out / "text_encoder" / "1" / "model.onnx", {"input_ids": f["input_ids"]},
                                         ["last_hidden_state", "pooled_output"])
    assert_close("text last_hidden_state", hidden, f["last_hidden_state"])
    assert_close("text pooled_output", pooled, f["pooled_output"])


def test_apsam_graphs_reproduce_the_reference(reference_repo):
    out, _ = reference_repo
    f = np.load(FIXTURES / "apsam_tiny_outputs.npz")
    emb, tokens = onnxruntime_outputs(out / "sam_image_encoder" / "1" / "model.onnx", {"image": f["encoder_input"]},
                                      ["image_embeddings", "mask_tokens"])
    assert_close("apsam image_embeddings", emb, f["image_embeddings"])
    coords = np.concatenate([f["point_coords"], np.zeros((1, 1, 2), np.float32)], axis=1)  # + "not a point"
    decoder_in = {"image_embeddings": emb, "point_coords": coords,
                  "point_labels": np.array([[1, 1, -1]], np.float32), "mask_input": np.zeros((1, 1, 128, 128), np.float32),
                  "has_mask_input": np.zeros(1, np.float32), "orig_im_size": np.array([96, 120], np.float32),
                  "mask_tokens": tokens}
    low, iou = onnxruntime_outputs(out / "sam_decoder" / "1" / "model.onnx", decoder_in,
                                   ["low_res_masks", "iou_predictions"])
    assert_close("apsam low-res logits (4 tokens)", low, f["all_low_res_logits"])
    assert_close("apsam iou", iou, f["iou_predictions"])
    assert not (out / "sam_decoder" / "1" / "sam_mask_tokens.npy").exists()  # APSAM learns none


def test_served_models_reproduce_the_reference(reference_repo, tmp_path):
    """A real tritonserver on the exported repository: the UNet leaf, and APSAM end to end (the
    RGB image and original-pixel click go through the served input pipeline)."""
    import tritonclient.grpc as grpcclient

    from xsyn.client.sdk import XsynClient
    from xsyn.serving.repository import write_repository
    from xsyn.serving.server import ServerOptions, TritonServer, free_port

    out, _ = reference_repo
    repo = tmp_path / "served"
    shutil.copytree(out, repo)
    write_repository(repo, "embedded")
    f_gligen = np.load(FIXTURES / "gligen_tiny_outputs.npz")
    f_apsam = np.load(FIXTURES / "apsam_tiny_outputs.npz")
    options = ServerOptions(repository=repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                            log_path=tmp_path / "triton.log")
    with TritonServer(options) as server:
        raw = grpcclient.InferenceServerClient(options.grpc_url)
        names = ("sample", "timestep", "encoder_hidden_states", "boxes", "phrase_embeddings", "box_masks")
        inputs = []
        for name in names:
            arr = f_gligen[name].astype(np.float32)
            arr = arr[:, None] if name == "timestep" else arr  # served config: per-sample dims [1]
            inputs.append(grpcclient.InferInput(name, list(arr.shape), "FP32"))
            inputs[-1].set_data_from_numpy(arr)
        result = raw.infer("unet", inputs, outputs=[grpcclient.InferRequestedOutput("noise_pred")])
        assert_close("served unet noise_pred", result.as_numpy("noise_pred"), f_gligen["noise_pred"])

        with XsynClient(options.grpc_url) as client:
            key = client.embed(f_apsam["image_rgb"]).key
            seg = client.segment(key, points=f_apsam["points_orig"].tolist(), labels=[1, 1], adaptive_points=False,
                                 multimask=False)
    assert seg.response.mode == "apsam"
    assert_close("served apsam low-res logits", seg.low_res_mask, f_apsam["low_res_logits"], relative=1e-3)


def test_fixtures_record_their_reference_commits():
    info = json.loads((FIXTURES / "fixtures.json").read_text())
    assert len(info["apsam"]["reference_commit"]) == 40 and len(info["gligen"]["reference_commit"]) == 40
