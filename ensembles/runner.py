"""How orchestrators call the leaf graphs: one small interface, two implementations.

``Runner.infer(model, inputs) -> outputs`` with numpy arrays named as in the model's spec.
:class:`LocalRunner` opens the exported graphs in-process (ONNX Runtime, or TensorRT plans);
:class:`BlsRunner` sends Triton BLS requests from inside a Python-backend model, checks *that*
response's error, and returns host arrays. Orchestrators never import Triton themselves.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from xsyn.errors import XsynError
from xsyn.export.specs import NetworkSpec


class Runner(Protocol):
    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs``; returns the requested outputs (all by default)."""
        ...


def load_specs(repo: Path) -> dict[str, NetworkSpec]:
    """Specs of the exported leaf graphs in a repository (``<model>/1/network.json``)."""
    return {p.parent.parent.name: NetworkSpec.from_dict(json.loads(p.read_text()))
            for p in sorted(Path(repo).glob("*/1/network.json"))}


class LocalRunner:
    """In-process runner over an exported repository; sessions open lazily, one per graph."""

    def __init__(self, repo: Path, runtime: str = "auto") -> None:
        from xsyn.runtimes import open_runtime

        self.repo = Path(repo)
        self._open = open_runtime
        self._runtime = runtime
        self._sessions: dict = {}
        self._lock = threading.Lock()

    def infer(self, model, inputs, outputs=None):
        with self._lock:
            if model not in self._sessions:
                self._sessions[model] = self._open(self.repo / model / "1", self._runtime)
        return self._sessions[model].run(inputs, outputs)


class BlsRunner:
    """Runner for use inside a Triton Python-backend model (``triton_python_backend_utils``)."""

    def __init__(self, pb_utils, specs: dict[str, NetworkSpec]) -> None:
        self.pb = pb_utils
        self.specs = specs

    def infer(self, model, inputs, outputs=None):
        from xsyn.serving.repository import to_config_shape

        pb = self.pb
        spec = self.specs[model]
        tensors = []
        for t in spec.inputs:
            value = to_config_shape(spec, t, inputs[t.name])
            tensors.append(pb.Tensor(t.name, np.ascontiguousarray(value)))
        names = outputs or [t.name for t in spec.outputs]
        response = pb.InferenceRequest(model_name=model, inputs=tensors, requested_output_names=names).exec()
        if response.has_error():
            raise XsynError(f"{model}: {response.error().message()}")
        return {name: pb.get_output_tensor_by_name(response, name).as_numpy() for name in names}
