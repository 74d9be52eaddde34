"""How orchestrators call the leaf graphs: one small interface, two implementations.

``Runner.infer(model, inputs) -> outputs`` with numpy arrays named as in the model's spec, and
``Runner.infer_tensors(model, tensors) -> tensors`` with torch tensors on ``Runner.device``, for
the loops that stay on the device (the denoising loop). :class:`LocalRunner` opens the exported
graphs in-process (ONNX Runtime, TensorRT plans, or ``model.pt2`` programs on a device);
:class:`BlsRunner` sends Triton BLS requests from inside a Python-backend model (device tensors
travel by DLPack, and outputs are asked for in GPU memory when the device is a GPU), checks *that*
response's error (keeping the leaf's status: an INVALID_ARGUMENT from a leaf stays one).
Orchestrators never import Triton themselves.
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
    device: str

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs``; returns the requested outputs (all by default)."""
        ...

    def infer_tensors(self, model: str, tensors: dict, outputs: list[str] | None = None) -> dict:
        """The same with torch tensors on :attr:`device`, outputs on :attr:`device`."""
        ...


def infer_on_device(runner, model: str, tensors: dict, outputs: list[str] | None = None) -> dict:
    """``runner.infer_tensors``, or a host round trip for runners that only take numpy."""
    if hasattr(runner, "infer_tensors"):
        return runner.infer_tensors(model, tensors, outputs)
    return via_host(runner.infer, model, tensors, outputs, next(iter(tensors.values())).device)


def via_host(infer, model: str, tensors: dict, outputs: list[str] | None, device) -> dict:
    """Run a numpy ``infer`` on torch tensors: inputs copied to the host, outputs back to ``device``."""
    import torch

    out = infer(model, {k: v.detach().cpu().numpy() for k, v in tensors.items()}, outputs)
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in out.items()}


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
        self.device = self._settings.device if (runtime or self._settings.runtime) == "torch" else "cpu"
        self._sessions: dict = {}
        self._lock = threading.Lock()

    def _session(self, model: str):
        with self._lock:
            if model not in self._sessions:
                self._sessions[model] = self._open(self.repo / model / "1", self._runtime, self._settings)
            return self._sessions[model]

    def infer(self, model, inputs, outputs=None):
        return self._session(model).run(inputs, outputs)

    def infer_tensors(self, model, tensors, outputs=None):
        session = self._session(model)
        if hasattr(session, "run_tensors"):  # a torch program: stays on its device
            out = session.run_tensors(tensors)
            return {name: out[name] for name in (outputs or list(out))}
        return via_host(self.infer, model, tensors, outputs, self.device)


#: Triton error code names a BLS response can carry (``pb_utils.TritonError.<NAME>``).
TRITON_CODES = ("UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS",
                "CANCELLED")


class BlsRunner:
    """Runner for use inside a Triton Python-backend model (``triton_python_backend_utils``)."""

    def __init__(self, pb_utils, specs: dict[str, NetworkSpec], device: str = "cpu") -> None:
        """``device``: where :meth:`infer_tensors` keeps tensors (``cpu``, ``cuda:N``)."""
        self.pb = pb_utils
        self.specs = specs
        self.device = device
        self._code_names = {getattr(pb_utils.TritonError, n): n for n in TRITON_CODES
                            if hasattr(pb_utils.TritonError, n)}

    def _exec(self, model: str, tensors: list, names: list[str]):
        kwargs = {}
        if self.device.startswith("cuda"):  # outputs in GPU memory: they stay on the device
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            kwargs["preferred_memory"] = self.pb.PreferredMemory(self.pb.TRITONSERVER_MEMORY_GPU, index)
        response = self.pb.InferenceRequest(model_name=model, inputs=tensors, requested_output_names=names,
                                            **kwargs).exec()
        if response.has_error():
            error = response.error()
            code = self._code_names.get(error.code(), "INTERNAL") if hasattr(error, "code") else "INTERNAL"
            raise error_from_wire(code, error.message())  # the leaf's message names the model
        return response

    def infer(self, model, inputs, outputs=None):
        pb = self.pb
        spec = self.specs[model]
        tensors = [pb.Tensor(t.name, np.ascontiguousarray(spec.to_declared_shape(t, inputs[t.name])))
                   for t in spec.inputs]
        names = outputs or [t.name for t in spec.outputs]
        response = self._exec(model, tensors, names)
        return {name: _host_array(pb.get_output_tensor_by_name(response, name)) for name in names}

    def infer_tensors(self, model, tensors, outputs=None):
        import torch

        pb = self.pb
        spec = self.specs[model]
        inputs = [pb.Tensor.from_dlpack(t.name, spec.to_declared_shape(t, tensors[t.name]).contiguous())
                  for t in spec.inputs]
        names = outputs or [t.name for t in spec.outputs]
        response = self._exec(model, inputs, names)
        # clone: the response's memory is Triton's and goes with the response
        return {name: torch.from_dlpack(pb.get_output_tensor_by_name(response, name).to_dlpack()).to(self.device).clone()
                for name in names}


def _host_array(tensor) -> np.ndarray:
    """A BLS output as a host array, whether Triton put it in CPU or GPU memory."""
    if tensor.is_cpu():
        return tensor.as_numpy()
    import torch

    return torch.from_dlpack(tensor.to_dlpack()).cpu().numpy()
