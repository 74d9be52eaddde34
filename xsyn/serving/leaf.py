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


def validate_inputs(spec: NetworkSpec, arrays: dict[str, np.ndarray]) -> None:
    """Raise InvalidArgument unless ``arrays`` fit the spec: names, dtypes, ranks, fixed sizes, profile ranges."""
    limits = {sym: (lo, hi) for sym, lo, _, hi in spec.profile}
    for t in spec.inputs:
        if t.name not in arrays:
            raise InvalidArgument(f"{spec.name}: missing input {t.name!r}")
        a = arrays[t.name]
        if a.dtype != np.dtype(t.dtype):
            raise InvalidArgument(f"{spec.name}: input {t.name!r} has dtype {a.dtype}, expected {t.dtype}")
        if a.ndim != len(t.shape):
            raise InvalidArgument(f"{spec.name}: input {t.name!r} has shape {list(a.shape)}, expected rank {len(t.shape)}")
        for axis, (size, want) in enumerate(zip(a.shape, t.shape)):
            if isinstance(want, int) and size != want:
                raise InvalidArgument(f"{spec.name}: input {t.name!r} axis {axis} is {size}, expected {want}")
            if isinstance(want, str) and want in limits and not limits[want][0] <= size <= limits[want][1]:
                lo, hi = limits[want]
                raise InvalidArgument(f"{spec.name}: input {t.name!r} axis {axis} ({want}) is {size}, expected {lo}..{hi}")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
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


def run_batched(runtime, spec: NetworkSpec, requests: list[dict[str, np.ndarray]], group: list[int]) -> list[dict]:
    """Run one group (concatenated along the batch axis when batched); outputs per request."""
    if len(group) == 1:
        return [runtime.run(requests[group[0]])]
    merged = {t.name: np.concatenate([requests[i][t.name] for i in group], axis=0) for t in spec.inputs}
    out = runtime.run(merged)
    sizes = np.cumsum([requests[i][spec.inputs[0].name].shape[0] for i in group])[:-1]
    split = {name: np.split(value, sizes, axis=0) for name, value in out.items()}
    return [{name: parts[k] for name, parts in split.items()} for k in range(len(group))]


class TritonPythonModel:
    """Triton Python-backend model serving one exported graph."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        self.pb = pb
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.spec = NetworkSpec.from_dict(json.loads((version_dir / "network.json").read_text()))
        self.runtime = open_runtime(version_dir, settings=ServerSettings.for_model(args))
        self.output_names = [t.name for t in self.spec.outputs]

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
                        found[t.name] = self.spec.from_declared_shape(t, tensor.as_numpy())
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
                tensors = [pb.Tensor(name, np.ascontiguousarray(out[name])) for name in self.output_names]
                responses[i] = pb.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self) -> None:
        self.runtime = None
