"""``xsyn train-tiny`` and the trained tiny preset: bad datasets, resume after kill -9, checksums.

The runs here are smoke-sized (``--steps-scale 0.004``: a few steps a stage on 24 phantom
images); the committed weights' full run is in docs/measurements.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_env

SMOKE = ["--steps-scale", "0.004", "--checkpoint-every", "2"]


def _xsyn(cache_home, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "xsyn.client.cli", *args], capture_output=True, text=True,
                          env=run_env(cache_home), timeout=timeout)


@pytest.fixture(scope="module")
def phantom_train(tmp_path_factory) -> Path:
    from xsyn.client.sample_data import write_sample_set

    folder = tmp_path_factory.mktemp("phantom") / "train"
    write_sample_set(folder, 24, seed=3, width=256, height=256, split="train")
    return folder


def _tensors(folder: Path) -> dict[str, dict]:
    """Every weights file's tensors (files are compared by content: safetensors' header order
    is not fixed, so equal weights can be different bytes)."""
    from safetensors.torch import load_file

    return {name: load_file(str(folder / name)) for name in json.loads((folder / "manifest.json").read_text())["files"]}


def _assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        different = [k for k in a[name] if not torch.equal(a[name][k], b[name][k])]
        assert not different, (name, different[:5])


def test_bad_datasets_are_one_clear_line_and_write_nothing(tmp_path, cache_home, phantom_train):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt_json = tmp_path / "json"
    corrupt_json.mkdir()
    (corrupt_json / "annotations.json").write_text("{not json")
    no_images = tmp_path / "none"
    no_images.mkdir()
    (no_images / "annotations.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    truncated = tmp_path / "truncated"
    shutil.copytree(phantom_train, truncated)
    png = truncated / "images" / "sample_0003.png"
    png.write_bytes(png.read_bytes()[:200])
    cases = {
        empty: "annotations.json: missing",
        tmp_path / "nowhere": "no such folder",
        corrupt_json: "not a COCO file",
        no_images: "0 images and 0 annotations",
        truncated: "sample_0003.png: unreadable image",
    }
    for folder, expected in cases.items():
        out = tmp_path / f"out_{folder.name}"
        proc = _xsyn(cache_home, "train-tiny", "--data", str(folder), "--work", str(tmp_path / "work"),
                     "--out", str(out), *SMOKE)
        assert proc.returncode == 2, (folder, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (folder, proc.stderr)
        assert not out.exists()


def test_a_run_killed_mid_training_resumes_to_the_same_weights(tmp_path, cache_home, phantom_train):
    whole = _xsyn(cache_home, "train-tiny", "--data", str(phantom_train), "--work", str(tmp_path / "a"), *SMOKE)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "vae step 12/12" in whole.stdout and "unet step 8/8" in whole.stdout and "sam step 2/2" in whole.stdout
    reference = _tensors(tmp_path / "a" / "preset")

    work = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "xsyn.client.cli", "train-tiny", "--data", str(phantom_train),
                             "--work", str(work), *SMOKE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=run_env(cache_home), start_new_session=True)
    deadline = time.monotonic() + 300
    while not (work / "unet.ckpt").exists():  # the UNet stage has begun (step 2 of 8)
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "preset").exists(), "a killed run must not leave a weights folder"

    resumed = _xsyn(cache_home, "train-tiny", "--data", str(phantom_train), "--work", str(work), *SMOKE)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "vae: already trained" in resumed.stdout
    assert "unet: resuming at step" in resumed.stdout
    _assert_same_weights(_tensors(work / "preset"), reference)


def test_weights_that_do_not_match_their_checksum_are_refused(tmp_path, cache_home):
    from xsyn.export.sources import TINY_WEIGHTS

    for damage in ("flip", "truncate"):
        folder = tmp_path / damage
        shutil.copytree(TINY_WEIGHTS, folder)
        target = folder / "unet.safetensors"
        data = bytearray(target.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0xFF
        else:
            data = data[: len(data) // 3]
        target.write_bytes(bytes(data))
        out = tmp_path / f"repo_{damage}"
        proc = _xsyn(cache_home, "export", "--preset", "tiny", "--tiny-weights", str(folder), "--out", str(out))
        assert proc.returncode == 2, proc.stdout[-2000:]
        assert "unet.safetensors: sha256" in proc.stderr and "does not match the manifest" in proc.stderr
        assert "xsyn train-tiny" in proc.stderr
        assert not any(out.glob("*/1/model.onnx"))


def test_the_committed_weights_are_small_checked_and_trained(tmp_path):
    import torch

    from xsyn.export.sources import TINY_WEIGHTS, preset_bundle
    from xsyn.export.tiny_weights import read_manifest

    manifest = read_manifest(TINY_WEIGHTS)
    total = sum((TINY_WEIGHTS / name).stat().st_size for name in manifest["files"])
    assert total < 8e6, total
    assert manifest["command"].startswith("xsyn train-tiny") and manifest["seed"] == 0
    trained = preset_bundle("tiny", work_dir=tmp_path)
    random = preset_bundle("tiny-random", work_dir=tmp_path)
    assert trained.source.startswith("preset tiny (trained")
    for part in ("unet", "vae", "sam"):
        a, b = getattr(trained, part).state_dict(), getattr(random, part).state_dict()
        assert a.keys() == b.keys()
        assert any(not torch.equal(a[k], b[k]) for k in a), part
    frozen, seeded = trained.text_encoder.state_dict(), random.text_encoder.state_dict()
    assert frozen.keys() == seeded.keys() and all(torch.equal(frozen[k], seeded[k]) for k in frozen)
    assert abs(trained.vae.config.scaling_factor - manifest["vae_scaling_factor"]) < 1e-9
    with pytest.raises(Exception, match="--seed applies to --preset tiny-random"):
        preset_bundle("tiny", seed=1, work_dir=tmp_path)
