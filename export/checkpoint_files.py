"""Reading checkpoint files without running pickled code, and telling their layouts apart.

A torch ``.pth`` is a pickle. Loading one with plain ``pickle`` can import and call anything the
file names; a file from the internet can run code. :func:`read_torch_file` unpickles with a
restricted ``find_class``: only torch's own tensor-rebuilding functions, plain containers
(``dict``, ``list``, ``OrderedDict``, ``defaultdict``...) and ``typing.Any`` resolve. OmegaConf
classes (the original GLIGEN trainer pickles its configuration) resolve to
:class:`ConfigNode`, an inert stand-in that keeps the pickled state and runs none of
OmegaConf's code; :func:`plain_config` turns those into dicts and lists. Any other global (a
``os.system``, a model class, ...) stops the load with a one-line error naming it.

Layouts recognised by content (:func:`detect`):

==================  ===============================================================
``gligen_original``  ``.pth`` dict with ``model``, ``autoencoder``, ``text_encoder`` state
                     dicts (+ ``diffusion``, ``config_dict``), from ``gligen/GLIGEN``
``diffusers_gligen`` folder with ``unet/ vae/ text_encoder/ tokenizer/``
``sam``              flat state dict of ``segment_anything`` (vit_b/l/h)
``apsam``            flat state dict of the APSAM reference (xi801/APSAM, on SAMUS)
==================  ===============================================================
"""

from __future__ import annotations

import builtins
import collections
import pickle
import types
import typing
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from xsyn.errors import CheckpointError

_TORCH_REBUILD = {
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch", "Size"), ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"), ("torch.nn.parameter", "Parameter"),
}
_SAFE_CALLABLES = {
    ("collections", "OrderedDict"): collections.OrderedDict, ("collections", "defaultdict"): collections.defaultdict,
    ("typing", "Any"): typing.Any, ("__builtin__", "long"): int,
    **{(mod, name): getattr(builtins, name)
       for mod in ("builtins", "__builtin__")
       for name in ("dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool", "bytes", "complex")},
}
_CONFIG_MODULES = ("omegaconf",)


class ConfigNode:
    """Inert stand-in for a pickled OmegaConf object: ``qualname`` and the pickled ``state``."""

    qualname = "omegaconf"

    def __init__(self, *args, **kwargs) -> None:
        self.args = args
        self.state = None

    def __setstate__(self, state) -> None:
        self.state = state


_CONFIG_CLASSES: dict[str, type] = {}


def _config_class(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _CONFIG_CLASSES:
        _CONFIG_CLASSES[key] = type(name, (ConfigNode,), {"qualname": key})
    return _CONFIG_CLASSES[key]


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle named a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only the allow-list above."""

    def find_class(self, module: str, name: str):
        if (module, name) in _TORCH_REBUILD:
            return super().find_class(module, name)
        if (module, name) in _SAFE_CALLABLES:
            return _SAFE_CALLABLES[(module, name)]
        if module.split(".")[0] in _CONFIG_MODULES:
            return _config_class(module, name)
        if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise RefusedGlobal(f"{module}.{name}")


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


#: what ``torch.load(pickle_module=...)`` needs: an ``Unpickler`` class and a ``load`` function.
RESTRICTED_PICKLE = types.SimpleNamespace(Unpickler=RestrictedUnpickler, load=_restricted_load,
                                          __name__="xsyn_restricted_pickle")


def read_torch_file(path: Path, what: str = "checkpoint"):
    """Unpickle a torch file (zip or legacy format) with the restricted unpickler, tensors on CPU.

    Zip-format files are memory-mapped: a tensor's bytes are read when it is used, so a
    multi-GB checkpoint is not held in memory while the export works network by network.

    Raises CheckpointError: no such file; a global outside the allow-list ("would import
    X.Y"); truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: no such file")
    try:
        return torch.load(str(path), map_location="cpu", pickle_module=RESTRICTED_PICKLE, weights_only=False,
                          mmap=zipfile.is_zipfile(path))  # zip files: tensors paged in when used
    except RefusedGlobal as exc:
        raise CheckpointError(f"{what} {path}: refused: the pickle would import {exc} (only tensors, containers and "
                              f"OmegaConf configuration load; no pickled code runs)") from None
    except Exception as exc:  # zipfile, EOFError, RuntimeError, UnpicklingError for truncated/corrupt files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{what} {path}: unreadable torch file, truncated or corrupt ({type(exc).__name__}: "
                              f"{first})") from None


def plain_config(obj):
    """OmegaConf stand-ins (and ``vars(DictConfig)`` dicts) -> plain dicts, lists and values."""
    if isinstance(obj, ConfigNode):
        state = obj.state if isinstance(obj.state, dict) else {}
        if "_content" in state:
            return plain_config(state["_content"])
        if "_val" in state:
            return plain_config(state["_val"])
        return None
    if isinstance(obj, dict):
        if "_content" in obj and "_metadata" in obj:
            return plain_config(obj["_content"])
        return {k: plain_config(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_config(v) for v in obj]
    return obj


def is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


@dataclass
class Detected:
    """What a path holds: ``kind`` (see the module table) and the loaded ``content``
    (a state dict, the GLIGEN checkpoint dict, or None for a folder)."""

    kind: str
    path: Path
    content: object = None


GLIGEN_PARTS = ("model", "autoencoder", "text_encoder")


def detect(path: Path) -> Detected:
    """Read ``path`` once and say which layout it is; CheckpointError for anything else."""
    from xsyn.export.sam_arch import model_kind
    from xsyn.export.weights import read_safetensors

    path = Path(path)
    if path.is_dir():
        if any((path / p).is_dir() for p in ("unet", "vae", "text_encoder", "tokenizer")):
            return Detected("diffusers_gligen", path)  # the folder loader names what is missing
        raise CheckpointError(f"{path}: a folder, but not a diffusers GLIGEN folder (expected unet/ vae/ "
                              f"text_encoder/ tokenizer/)")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    content = read_safetensors(path)[0] if path.suffix == ".safetensors" else read_torch_file(path)
    if isinstance(content, dict) and all(k in content for k in GLIGEN_PARTS):
        for part in GLIGEN_PARTS:
            if not is_state_dict(content[part]):
                raise CheckpointError(f"{path}: GLIGEN checkpoint entry {part!r} is not a state dict of tensors")
        return Detected("gligen_original", path, content)
    if isinstance(content, dict) and is_state_dict(content.get("state_dict")):
        content = content["state_dict"]
    if is_state_dict(content):
        kind = model_kind(content)
        if kind:
            return Detected(kind, path, content)
        sample = sorted(content)[:3]
        raise CheckpointError(f"{path}: a state dict of {len(content)} tensors that is neither SAM, APSAM nor GLIGEN "
                              f"(first keys {sample})")
    keys = sorted(content)[:8] if isinstance(content, dict) else type(content).__name__
    raise CheckpointError(f"{path}: not a checkpoint xsyn knows (top level {keys}); expected a GLIGEN .pth "
                          f"(model/autoencoder/text_encoder), a SAM or APSAM state dict, or a diffusers folder")
