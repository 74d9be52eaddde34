"""Python-backend implementation of a leaf model: one exported graph behind Triton.

The generated shim ``model_repository/<model>/1/model.py`` only imports
:class:`TritonPythonModel` from here. The model reads its contract from ``network.json``
beside the graph, opens the graph with :func:`xsyn.runtimes.open_runtime`, and per
``execute`` call:

- checks every request against the contract (Triton has already checked names, dtypes, ranks
  and the batch limit against ``config.pbtxt``; this adds the profile ranges of dynamic
  dimensions) and answers a bad one with INVALID_ARGUMENT, naming the input;
- concatenates the valid requests whose non-batch shapes agree (dynamic batching), runs the
  graph once per group and splits the outputs back per request;
- with the ``torch`` runtime, keeps tensors on its device: inputs arrive by DLPack (GPU memory
  when the caller sent it), the program runs on them, and outputs leave by DLPack; the other
  runtimes take and give host arrays;
- answers runtime failures per request (status from :data:`xsyn.errors.ERROR_TABLE`); the stub
  never crashes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xsyn.errors import InternalError, InvalidArgument, XsynError
from xsyn.export.specs import NetworkSpec
from xsyn.runtimes import open_runtime
from xsyn.serving.triton_errors import error_response
from xsyn.settings import ServerSettings


def _dtype_name(a) -> str:
    """numpy dtype name of a numpy array or a torch tensor (``float32``, ``int32`` ...)."""
    return str(a.dtype).replace("torch.", "")


def _all_finite(a) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.all(np.isfinite(a)))
    import torch

    return bool(torch.isfinite(a).all())


def validate_inputs(spec: NetworkSpec, arrays: dict) -> None:
    """Raise InvalidArgument unless ``arrays`` (numpy arrays or torch tensors) fit the spec: names,
    dtypes, ranks, fixed sizes, profile ranges, finite values."""
    limits = {sym: (lo, hi) for sym, lo, _, hi in spec.profile}
    for t in spec.inputs:
        if t.name not in arrays:
            raise InvalidArgument(f"{spec.name}: missing input {t.name!r}")
        a = arrays[t.name]
        if _dtype_name(a) != t.dtype:
            raise InvalidArgument(f"{spec.name}: input {t.name!r} has dtype {_dtype_name(a)}, expected {t.dtype}")
        if a.ndim != len(t.shape):
            raise InvalidArgument(f"{spec.name}: input {t.name!r} has shape {list(a.shape)}, expected rank {len(t.shape)}")
        for axis, (size, want) in enumerate(zip(a.shape, t.shape)):
            if isinstance(want, int) and size != want:
                raise InvalidArgument(f"{spec.name}: input {t.name!r} axis {axis} is {size}, expected {want}")
            if isinstance(want, str) and want in limits and not limits[want][0] <= size <= limits[want][1]:
                lo, hi = limits[want]
                raise InvalidArgument(f"{spec.name}: input {t.name!r} axis {axis} ({want}) is {size}, expected {lo}..{hi}")
        if _dtype_name(a).startswith("float") and not _all_finite(a):
            raise InvalidArgument(f"{spec.name}: input {t.name!r} holds NaN or infinite values")


def batch_groups(spec: NetworkSpec, requests: list[dict[str, np.ndarray]]) -> list[list[int]]:
    """Indices of requests that can run as one batch: same shapes apart from the batch axis."""
    if spec.max_batch_size == 0:
        return [[i] for i in range(len(requests))]
    groups: dict[tuple, list[int]] = {}
    for i, arrays in enumerate(requests):
        key = tuple(arrays[t.name].shape[1:] for t in spec.inputs)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def run_batched(runtime, spec: NetworkSpec, requests: list[dict], group: list[int]) -> list[dict]:
    """Run one group (concatenated along the batch axis when batched); outputs per request.

    Requests hold numpy arrays (``runtime.run``) or, for a runtime with ``run_tensors``, torch
    tensors on its device."""
    on_device = hasattr(runtime, "run_tensors")
    run = runtime.run_tensors if on_device else runtime.run
    if len(group) == 1:
        return [run(requests[group[0]])]
    if on_device:
        import torch

        cat, split = torch.cat, lambda value, sizes: torch.split(value, sizes, dim=0)
    else:
        cat, split = np.concatenate, lambda value, sizes: np.split(value, np.cumsum(sizes)[:-1], axis=0)
    merged = {t.name: cat([requests[i][t.name] for i in group], 0) for t in spec.inputs}
    out = run(merged)
    sizes = [int(requests[i][spec.inputs[0].name].shape[0]) for i in group]
    parts = {name: split(value, sizes) for name, value in out.items()}
    return [{name: chunks[k] for name, chunks in parts.items()} for k in range(len(group))]


class TritonPythonModel:
    """Triton Python-backend model serving one exported graph."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        self.pb = pb
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.spec = NetworkSpec.from_dict(json.loads((version_dir / "network.json").read_text()))
        settings = ServerSettings.for_model(args)
        settings.apply_priority()
        self.runtime = open_runtime(version_dir, settings=settings)
        self.on_device = hasattr(self.runtime, "run_tensors")
        self.output_names = [t.name for t in self.spec.outputs]

    def _read(self, tensor):
        """An input as a tensor on the runtime's device (torch runtime) or as a host array."""
        if self.on_device or not tensor.is_cpu():
            import torch

            value = torch.from_dlpack(tensor.to_dlpack())
            return value.to(self.runtime.device) if self.on_device else value.cpu().numpy()
        return tensor.as_numpy()

    def _write(self, name: str, value):
        if isinstance(value, np.ndarray):
            return self.pb.Tensor(name, np.ascontiguousarray(value))
        return self.pb.Tensor.from_dlpack(name, value.contiguous())

    def execute(self, requests):
        pb = self.pb
        responses: list = [None] * len(requests)
        arrays: dict[int, dict[str, np.ndarray]] = {}
        for i, request in enumerate(requests):
            try:
                found = {}
                for t in self.spec.inputs:
                    tensor = pb.get_input_tensor_by_name(request, t.name)
                    if tensor is not None:
                        found[t.name] = self.spec.from_declared_shape(t, self._read(tensor))
                validate_inputs(self.spec, found)
                arrays[i] = found
            except InvalidArgument as exc:
                responses[i] = error_response(pb, exc)
        valid = sorted(arrays)
        for group in batch_groups(self.spec, [arrays[i] for i in valid]):
            indices = [valid[k] for k in group]
            try:
                outputs = run_batched(self.runtime, self.spec, [arrays[i] for i in indices], list(range(len(indices))))
            except Exception as exc:  # answered per request; the stub stays up
                error = exc if isinstance(exc, XsynError) else InternalError(f"{self.spec.name}: runtime error: {exc}")
                for i in indices:
                    responses[i] = error_response(pb, error)
                continue
            for i, out in zip(indices, outputs):
                tensors = [self._write(name, out[name]) for name in self.output_names]
                responses[i] = pb.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self) -> None:
        self.runtime = None
