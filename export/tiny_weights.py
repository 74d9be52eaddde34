"""The trained ``tiny`` preset's weights folder: ``manifest.json`` + ``{vae,unet,sam}.safetensors``.

``xsyn train-tiny`` writes the folder (:func:`xsyn.export.tiny_training.train_tiny`); the
committed copy is :data:`xsyn.export.sources.TINY_WEIGHTS`. Every file is checked against the
manifest's sha256 before it is used: a changed, truncated or missing file is a
:class:`~xsyn.errors.CheckpointError` naming it and saying how to get a good copy back. Tensors
are stored in float16 and loaded (strictly) into float32 modules of the tiny architectures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from xsyn.errors import CheckpointError

PARTS = ("vae", "unet", "sam")
_RESTORE = "restore it (git checkout -- export/data/presets/tiny) or train again with `xsyn train-tiny`"


@dataclass
class TrainedWeights:
    """Loaders replacing the random preset's for the trained parts, and a one-line summary."""

    loaders: dict[str, Callable[[], nn.Module]]
    summary: str
    manifest: dict


def read_manifest(folder: Path) -> dict:
    """The folder's manifest after checking every listed file's sha256 (CheckpointError otherwise)."""
    from xsyn.export.tiny_training import file_sha256

    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise CheckpointError(f"tiny preset weights {path}: missing; {_RESTORE}")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"tiny preset weights {path}: unreadable manifest ({exc}); {_RESTORE}") from None
    missing = [f"{p}.safetensors" for p in PARTS if f"{p}.safetensors" not in files]
    if missing:
        raise CheckpointError(f"tiny preset weights {path}: lists no {missing}; {_RESTORE}")
    for name, digest in files.items():
        file = Path(folder) / name
        if not file.is_file():
            raise CheckpointError(f"tiny preset weights {file}: missing; {_RESTORE}")
        actual = file_sha256(file)
        if actual != digest:
            raise CheckpointError(f"tiny preset weights {file}: sha256 {actual[:12]}... does not match the manifest's "
                                  f"{digest[:12]}... (changed or truncated); {_RESTORE}")
    return manifest


def _load_into(build: Callable[[], nn.Module], file: Path) -> nn.Module:
    from xsyn.export.weights import load_state_strict, read_safetensors

    module = build()
    state = {k: v.float() for k, v in read_safetensors(file, "tiny preset weights")[0].items()}
    load_state_strict(module, state, file)
    return module.eval()


def trained_loaders(folder: Path, random_loaders: dict[str, Callable[[], nn.Module]]) -> TrainedWeights:
    """Loaders that build each part as the random preset does, then load its trained weights.

    The VAE gets the manifest's latent scaling factor (training sets it to ``1 / std`` of the
    latents). Checksums are verified here, before any export work starts.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    scaling = float(manifest["vae_scaling_factor"])
    random_vae = random_loaders["vae"]  # taken now: the caller replaces its loaders with these

    def vae():
        module = random_vae()
        module.register_to_config(scaling_factor=scaling)
        return module

    builders = {"vae": vae, "unet": random_loaders["unet"], "sam": random_loaders["sam"]}
    loaders = {part: (lambda part=part: _load_into(builders[part], folder / f"{part}.safetensors")) for part in PARTS}
    summary = f"train-tiny seed {manifest.get('seed')}, sha256 {manifest['files']['unet.safetensors'][:8]}"
    return TrainedWeights(loaders, summary, manifest)
