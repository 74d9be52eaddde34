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
from xsyn.serving.stub import prepare_stub
from xsyn.settings import ServerSettings


def _dtype_name(a) -> str:
    """numpy dtype name of a numpy array or a torch tensor (``float32``, ``int32`` ...)."""
    return str(a.dtype).replace("torch.", "")


def _all_finite(a) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.all(np.isfinite(a)))
    import torch

    return bool(torch.isfinite(a).all())


def validate_inputs(spec: NetworkSpec, arrays: dict, max_output_bytes: int | None = None) -> None:
    """Raise InvalidArgument unless ``arrays`` (numpy arrays or torch tensors) fit the spec: names,
    dtypes, ranks, fixed sizes, profile ranges, one size per shape symbol across inputs (and
    broadcast axes of 1 or their target's size), finite values, each input's value range or
    choices, and at most ``max_output_bytes`` of outputs (sizes known from the inputs)."""
    limits = {sym: (lo, hi) for sym, lo, _, hi in spec.profile}
    sizes: dict[str, tuple[int, str]] = {}
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
            if isinstance(want, str):
                first = sizes.setdefault(want, (int(size), t.name))
                if first[0] != size:
                    raise InvalidArgument(f"{spec.name}: input {t.name!r} axis {axis} ({want}) is {size}, but "
                                          f"{first[1]!r} has {want} = {first[0]}")
        _check_values(spec, t, a)
    for sym, target in spec.broadcast:
        if sym in sizes and target in sizes and sizes[sym][0] not in (1, sizes[target][0]):
            raise InvalidArgument(f"{spec.name}: input {sizes[sym][1]!r} has {sym} = {sizes[sym][0]}, expected 1 or "
                                  f"{target} = {sizes[target][0]}")
    if max_output_bytes is not None:
        _check_output_bytes(spec, arrays, {k: v for k, (v, _) in sizes.items()}, max_output_bytes)


def _check_values(spec: NetworkSpec, t, a) -> None:
    """Finite floats, then the input's value range or choices (one reduction each)."""
    if _dtype_name(a).startswith("float") and not _all_finite(a):
        raise InvalidArgument(f"{spec.name}: input {t.name!r} holds NaN or infinite values")
    if (a.numel() if hasattr(a, "numel") else a.size) == 0:  # torch tensor or numpy array
        return
    if t.values is not None:
        lo, hi = (float(v) for v in (a.min(), a.max()))
        if lo < t.values[0] or hi > t.values[1]:
            raise InvalidArgument(f"{spec.name}: input {t.name!r} has values {lo:g}..{hi:g}, expected "
                                  f"{t.values[0]:g}..{t.values[1]:g}")
    if t.choices:
        values = np.unique(a.cpu().numpy() if hasattr(a, "cpu") else a)
        bad = sorted(set(values.tolist()) - set(t.choices))
        if bad:
            raise InvalidArgument(f"{spec.name}: input {t.name!r} holds {bad[:5]}, expected values in {list(t.choices)}")


def _check_output_bytes(spec: NetworkSpec, arrays: dict, sizes: dict[str, int], budget: int) -> None:
    """InvalidArgument when the outputs this request asks for would exceed ``budget`` bytes."""
    for sym, name, index in spec.value_dims:
        sizes[sym] = int(float(arrays[name].reshape(-1)[index]))
    total = 0
    for t in spec.outputs:
        dims = [d if isinstance(d, int) else sizes.get(d) for d in t.shape]
        if all(d is not None for d in dims):
            total += int(np.prod(dims, dtype=np.int64)) * np.dtype(t.dtype).itemsize
    if total > budget:
        raise InvalidArgument(f"{spec.name}: this request's outputs would be {total / 2**20:.0f} MiB, over the "
                              f"server's budget of {budget / 2**20:.0f} MiB a request (max_output_bytes)")


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
        prepare_stub(settings)
        self.runtime = open_runtime(version_dir, settings=settings)
        self.max_output_bytes = settings.max_output_bytes
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
                validate_inputs(self.spec, found, self.max_output_bytes)
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
