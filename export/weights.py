"""Safe weight-file reading: safetensors or ``torch.load(weights_only=True)``, never pickled code.

Every failure is a :class:`~xsyn.errors.CheckpointError` naming the file and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xsyn.errors import CheckpointError


def read_safetensors(path: Path, what: str = "weights") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a ``.safetensors`` file."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{what} {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # truncated or corrupt files raise several exception types
        raise CheckpointError(f"{what} {path}: unreadable safetensors file, truncated or corrupt ({exc})") from exc
    return state, meta


def read_torch_weights(path: Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.bin`` file, loaded with ``weights_only=True`` (no code runs)."""
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: no such file")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{what} {path}: unreadable torch file, truncated, corrupt or holding non-tensor objects ({exc})"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} {path}: expected a flat state dict of tensors")
    return state


def read_weights(path: Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file, chosen by suffix."""
    if path.suffix == ".safetensors":
        return read_safetensors(path, what)[0]
    return read_torch_weights(path, what)


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, check_only: bool = False) -> None:
    """``model.load_state_dict(state, strict=True)`` with one error naming the file and keys.
    ``check_only``: compare names and shapes only (``model`` may live on the meta device)."""
    expected, given = set(model.state_dict()), set(state)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the architecture: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    expected_shapes = model.state_dict()
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected_shapes.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{path}: tensor shapes do not match the architecture: {wrong[:3]}")
    if check_only:
        return
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: tensor shapes do not match the architecture: {str(exc)[:400]}") from exc
