"""How orchestrators call the leaf graphs: one small interface, two implementations.

``Runner.infer(model, inputs) -> outputs`` with numpy arrays named as in the model's spec.
:class:`LocalRunner` opens the exported graphs in-process (ONNX Runtime, or TensorRT plans);
:class:`BlsRunner` sends Triton BLS requests from inside a Python-backend model, checks *that*
response's error (keeping the leaf's status: an INVALID_ARGUMENT from a leaf stays one), and
returns host arrays. Orchestrators never import Triton themselves.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from xsyn.errors import error_from_wire
from xsyn.export.specs import NetworkSpec
from xsyn.settings import ServerSettings


class Runner(Protocol):
    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs``; returns the requested outputs (all by default)."""
        ...


class LocalRunner:
    """In-process runner over an exported repository; sessions open lazily, one per graph.

    ``runtime``: ``auto``, ``onnxruntime``, ``tensorrt`` or ``torch`` (default: ``settings.runtime``);
    ``settings``: threads, device and precision (default: from the environment).
    """

    def __init__(self, repo: Path, runtime: str | None = None, settings: ServerSettings | None = None) -> None:
        from xsyn.runtimes import open_runtime

        self.repo = Path(repo)
        self._open = open_runtime
        self._runtime = runtime
        self._settings = settings or ServerSettings.load()
        self._sessions: dict = {}
        self._lock = threading.Lock()

    def infer(self, model, inputs, outputs=None):
        with self._lock:
            if model not in self._sessions:
                self._sessions[model] = self._open(self.repo / model / "1", self._runtime, self._settings)
        return self._sessions[model].run(inputs, outputs)


#: Triton error code names a BLS response can carry (``pb_utils.TritonError.<NAME>``).
TRITON_CODES = ("UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS",
                "CANCELLED")


class BlsRunner:
    """Runner for use inside a Triton Python-backend model (``triton_python_backend_utils``)."""

    def __init__(self, pb_utils, specs: dict[str, NetworkSpec]) -> None:
        self.pb = pb_utils
        self.specs = specs
        self._code_names = {getattr(pb_utils.TritonError, n): n for n in TRITON_CODES
                            if hasattr(pb_utils.TritonError, n)}

    def infer(self, model, inputs, outputs=None):
        pb = self.pb
        spec = self.specs[model]
        tensors = [pb.Tensor(t.name, np.ascontiguousarray(spec.to_declared_shape(t, inputs[t.name])))
                   for t in spec.inputs]
        names = outputs or [t.name for t in spec.outputs]
        response = pb.InferenceRequest(model_name=model, inputs=tensors, requested_output_names=names).exec()
        if response.has_error():
            error = response.error()
            code = self._code_names.get(error.code(), "INTERNAL") if hasattr(error, "code") else "INTERNAL"
            raise error_from_wire(code, error.message())  # the leaf's message names the model
        return {name: pb.get_output_tensor_by_name(response, name).as_numpy() for name in names}
