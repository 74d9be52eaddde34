"""Real checkpoint paths on files the tests write from tiny models, and the bad-input cases."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import run_env
from xsyn.errors import CheckpointError, InvalidArgument
from xsyn.export.networks import parse_only
from xsyn.export.sam_arch import TINY_APSAM, TINY_SAM, VARIANTS, build_sam, infer_sam_arch, load_sam_checkpoint
from xsyn.export.sources import _seeded, checkpoint_bundle


@pytest.fixture
def tiny_sam():
    """A seeded plain SAM at tiny widths (the tiny preset serves APSAM)."""
    return _seeded(7, lambda: build_sam(TINY_SAM))


def _write_diffusers_folder(bundle, folder, safe=True):
    bundle.unet.save_pretrained(folder / "unet", safe_serialization=safe)
    bundle.vae.save_pretrained(folder / "vae", safe_serialization=safe)
    bundle.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=safe)
    shutil.copytree(bundle.tokenizer_dir, folder / "tokenizer")
    return folder


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "torch-bin"])
def test_diffusers_folder_loads_the_same_weights(tmp_path, tiny_bundle, safe):
    folder = _write_diffusers_folder(tiny_bundle, tmp_path / "ckpt", safe)
    loaded = checkpoint_bundle([folder])
    for part in ("unet", "vae", "text_encoder"):
        assert _same(getattr(loaded, part), getattr(tiny_bundle, part)), part
    assert loaded.image_size == 256 and loaded.sam is None


def test_sam_and_apsam_pth_load_with_detected_architecture(tmp_path, tiny_bundle, tiny_sam):
    path = tmp_path / "sam_tiny.pth"
    torch.save(tiny_sam.state_dict(), path)
    sam, arch = load_sam_checkpoint(path)
    assert arch == TINY_SAM and arch.variant == "custom" and arch.kind == "sam"
    assert _same(sam, tiny_sam)
    torch.save(tiny_bundle.sam.state_dict(), tmp_path / "apsam_tiny.pth")
    apsam, arch = load_sam_checkpoint(tmp_path / "apsam_tiny.pth")
    assert arch == TINY_APSAM and arch.label == "APSAM custom"
    assert _same(apsam, tiny_bundle.sam)


def _fake_vit_state(variant):
    """Only the tensors whose shapes identify a SAM variant (zeros; enough for detection)."""
    a = VARIANTS[variant]
    e = a.img_size // 16
    head = a.embed_dim // a.num_heads
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(a.embed_dim, 3, 1, 1),
             "image_encoder.pos_embed": torch.zeros(1, e, 1, 1),
             "image_encoder.neck.0.weight": torch.zeros(256, 1, 1, 1),
             "image_encoder.blocks.0.mlp.lin1.weight": torch.zeros(4 * a.embed_dim, 1),
             "prompt_encoder.mask_downscaling.3.weight": torch.zeros(16, 1, 1, 1),
             "mask_decoder.transformer.layers.0.mlp.lin1.weight": torch.zeros(2048, 1),
             "mask_decoder.transformer.layers.1.mlp.lin1.weight": torch.zeros(2048, 1),
             "mask_decoder.mask_tokens.weight": torch.zeros(4, 256),
             "mask_decoder.iou_prediction_head.layers.0.weight": torch.zeros(256, 1),
             "mask_decoder.iou_prediction_head.layers.1.weight": torch.zeros(256, 1),
             "mask_decoder.iou_prediction_head.layers.2.weight": torch.zeros(4, 1)}
    for i in range(a.depth):
        size = 2 * e - 1 if i in a.global_attn_indexes else 2 * a.window_size - 1
        state[f"image_encoder.blocks.{i}.attn.rel_pos_h"] = torch.zeros(size, head)
    return state


@pytest.mark.parametrize("variant", ["vit_h", "vit_l", "vit_b"])
def test_sam_variant_is_read_off_the_weights(tmp_path, variant):
    arch = infer_sam_arch(_fake_vit_state(variant), tmp_path / "x.pth")
    assert arch == VARIANTS[variant]
    assert arch.variant == variant


def test_sam_file_of_another_variant_than_asked(tmp_path):
    path = tmp_path / "sam_vit_b.pth"
    torch.save(_fake_vit_state("vit_b"), path)
    with pytest.raises(CheckpointError, match=r"sam_vit_b.pth: holds SAM vit_b .* expected vit_h"):
        load_sam_checkpoint(path, "vit_h")


def test_truncated_and_foreign_sam_files(tmp_path, tiny_sam):
    good = tmp_path / "sam.pth"
    torch.save(tiny_sam.state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pth: unreadable torch file"):
        load_sam_checkpoint(cut)
    with pytest.raises(CheckpointError, match="not a SAM or APSAM state dict"):
        torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
        load_sam_checkpoint(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        load_sam_checkpoint(tmp_path / "missing.pth")


class Payload:  # a pickled object: weights_only loading must refuse to run its code
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"image_encoder.x": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_sam_checkpoint(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_partial_and_broken_diffusers_folders(tmp_path, tiny_bundle):
    with pytest.raises(CheckpointError, match="nope: no such file or folder"):
        checkpoint_bundle([tmp_path / "nope"])
    folder = _write_diffusers_folder(tiny_bundle, tmp_path / "ckpt")
    shutil.rmtree(folder / "vae")
    with pytest.raises(CheckpointError, match=r"missing sub-folder\(s\) \['vae'\]"):
        checkpoint_bundle([folder])

    folder = _write_diffusers_folder(tiny_bundle, tmp_path / "ckpt2")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors: unreadable safetensors"):
        checkpoint_bundle([folder])
    weights.unlink()
    with pytest.raises(CheckpointError, match="unet: no weights file"):
        checkpoint_bundle([folder])

    folder = _write_diffusers_folder(tiny_bundle, tmp_path / "ckpt3")
    (folder / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match="merges.txt: missing"):
        checkpoint_bundle([folder])


def test_a_plain_sd_unet_is_not_taken_for_gligen_inpainting(tmp_path, tiny_bundle):
    import json

    folder = _write_diffusers_folder(tiny_bundle, tmp_path / "ckpt")
    cfg_path = folder / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["in_channels"] = 4
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="expected a GLIGEN inpainting UNet"):
        checkpoint_bundle([folder])


def test_unknown_only_name():
    with pytest.raises(InvalidArgument, match=r"unknown graph name\(s\) \['unett'\]"):
        parse_only("unet,unett")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "xsyn.client.cli", "export", *args],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_cli_exports_from_checkpoint_files(tmp_path, tiny_bundle, tiny_sam, cache_home):
    folder = _write_diffusers_folder(tiny_bundle, tmp_path / "ckpt")
    torch.save(tiny_sam.state_dict(), tmp_path / "sam.pth")
    out = tmp_path / "repo"
    proc = _cli("--checkpoint-dir", str(folder), "--sam-checkpoint", str(tmp_path / "sam.pth"),
                "--out", str(out), "--only", "text_encoder,sam_decoder", env=run_env(cache_home))
    assert proc.returncode == 0, proc.stderr
    assert (out / "text_encoder/1/model.onnx").is_file() and (out / "sam_decoder/1/model.onnx").is_file()
    assert not (out / "unet").exists()


def test_cli_bad_input_is_one_clear_line(tmp_path, cache_home, tiny_sam):
    env = run_env(cache_home)
    torch.save(tiny_sam.state_dict(), tmp_path / "sam.pth")
    cases = [
        (["--preset", "tiny", "--only", "unet,bogus"], "unknown graph name(s) ['bogus']"),
        (["--preset", "tiny", "--engine", "tensorrt"], "needs the `tensorrt` Python package"),
        (["--checkpoint-dir", str(tmp_path / "missing")], "missing: no such file or folder"),
        (["--sam-checkpoint", str(tmp_path / "none.pth")], "none.pth: no such file"),
        (["--sam-checkpoint", str(tmp_path / "sam.pth"), "--only", "unet"], "graph unet needs --checkpoint (a GLIGEN .pth"),
        (["--checkpoint", str(tmp_path / "sam.pth"), "--checkpoint", str(tmp_path / "sam.pth")],
         "a second segmentation checkpoint"),
        (["--sam-checkpoint", str(tmp_path / "sam.pth"), "--sam-variant", "vit_h"], "holds SAM custom"),
        (["--preset", "tiny", "--sam-checkpoint", str(tmp_path / "sam.pth")], "brings its own weights"),
    ]
    for args, message in cases:
        proc = _cli(*args, "--out", str(tmp_path / "o"), env=env)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("xsyn: error:") and message in lines[0], (args, proc.stderr)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("export_manifest.json"))


# ----------------------------------------------------------------------------- reference layouts: bad input

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


def _gligen_content():
    """The GLIGEN fixture as plain Python (its OmegaConf config as dicts), to alter and re-save."""
    from xsyn.export.checkpoint_files import plain_config, read_torch_file

    content = read_torch_file(REFERENCE / "gligen_tiny.pth")
    content["config_dict"] = plain_config(content["config_dict"])
    return content


def _bundle(*paths, tokenizer=REFERENCE / "gligen_tiny_tokenizer"):
    return checkpoint_bundle(list(paths), tokenizer_dir=tokenizer)


def test_reference_layouts_are_recognised_and_converted_lazily():
    bundle = _bundle(REFERENCE / "gligen_tiny.pth", REFERENCE / "apsam_tiny.pth")
    assert [line.split(": ", 1)[1].split(" (")[0] for line in bundle.found] == [
        "original GLIGEN checkpoint", "APSAM custom checkpoint"]
    assert bundle.image_size == 256 and bundle.sam_arch.kind == "apsam"
    assert not bundle._modules  # checked, not built: the export builds one part at a time
    assert bundle.unet.config.in_channels == 9 and set(bundle._modules) == {"unet"}
    bundle.release("unet")
    assert not bundle._modules


@pytest.mark.parametrize("case", ["truncated", "shape", "extra key", "missing key", "schedule", "no tokenizer",
                                  "runs code", "another model", "apsam shape"])
def test_bad_reference_checkpoints_are_one_line_naming_file_and_key(tmp_path, case):
    path = tmp_path / f"{case.replace(' ', '_')}.pth"
    tokenizer = REFERENCE / "gligen_tiny_tokenizer"
    if case == "truncated":
        data = (REFERENCE / "gligen_tiny.pth").read_bytes()
        path.write_bytes(data[: len(data) // 3])
        expected = "unreadable torch file, truncated or corrupt"
    elif case in ("shape", "extra key", "missing key", "schedule", "no tokenizer", "runs code"):
        content = _gligen_content()
        key = "output_blocks.2.1.transformer_blocks.0.fuser.linear.weight"
        if case == "shape":
            content["model"][key] = torch.zeros(3, 3)
            expected = "tensor shapes do not match"
        elif case == "extra key":
            content["model"]["position_net.extra.weight"] = torch.zeros(2)
            expected = "unexpected ['model.position_net.extra.weight']"
        elif case == "missing key":
            del content["model"][key]
            expected = "missing ["
        elif case == "schedule":
            content["diffusion"]["betas"] = content["diffusion"]["betas"] * 2
            expected = "diffusion.betas is not the scaled-linear schedule"
        elif case == "no tokenizer":
            tokenizer = None
            expected = "give --tokenizer DIR"
        else:
            content["iters"] = Payload()
            expected = "refused: the pickle would import __builtin__.print"
        torch.save(content, path)
    elif case == "another model":
        torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), path)
        expected = "neither SAM, APSAM nor GLIGEN"
    else:
        state = torch.load(REFERENCE / "apsam_tiny.pth", weights_only=True)
        state["mask_decoder.query_projection.weight"] = torch.zeros(5, 5)
        torch.save(state, path)
        expected = "mask_decoder.query_projection.weight (5, 5) vs (32, 32)"
    with pytest.raises(CheckpointError) as info:
        _bundle(path, tokenizer=tokenizer)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and expected in message, message
    if case == "shape":
        assert "fuser.linear.weight (3, 3)" in message
    if case == "missing key":
        assert "fuser.linear.weight" in message


def test_cli_bad_reference_checkpoint_leaves_nothing_in_the_repository(tmp_path, cache_home):
    content = _gligen_content()
    content["model"]["out.2.weight"] = torch.zeros(1)
    torch.save(content, tmp_path / "bad.pth")
    out = tmp_path / "repo"
    proc = _cli("--checkpoint", str(tmp_path / "bad.pth"), "--tokenizer", str(REFERENCE / "gligen_tiny_tokenizer"),
                "--checkpoint", str(REFERENCE / "apsam_tiny.pth"), "--out", str(out), env=run_env(cache_home))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "out.2.weight" in lines[0] and "bad.pth" in lines[0], proc.stderr
    assert not out.exists() or not any(out.rglob("*.onnx"))
