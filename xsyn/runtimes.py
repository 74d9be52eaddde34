"""Pluggable inference runtimes behind one small interface.

A runtime runs one exported graph on numpy arrays: ``run({name: array}) -> {name: array}``.
``onnxruntime`` (CPU, or CUDA / TensorRT execution providers when the installed build has them)
and ``tensorrt`` (a ``model.plan`` through the TensorRT Python runtime, buffers on the GPU via
torch) are chosen by name; each fails at construction with a message naming what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from xsyn.errors import MissingDependency
from xsyn.settings import ServerSettings

RUNTIMES = ("onnxruntime", "tensorrt")


class Runtime(Protocol):
    """One loaded graph."""

    name: str
    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run on host arrays; returns the requested outputs (all by default) as host arrays."""
        ...


class OnnxRuntimeSession:
    """An ONNX Runtime session; prefers TensorRT, then CUDA providers where the build has them."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int | None = None, providers: list[str] | None = None,
                 settings: ServerSettings | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependency("runtime onnxruntime needs the `onnxruntime` package") from None
        available = ort.get_available_providers()
        wanted = providers or [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        wanted = [p for p in wanted if p != "CPUExecutionProvider"] + ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (settings or ServerSettings.load()).threads
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=wanted)
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs, outputs=None):
        names = outputs or self.output_names
        return dict(zip(names, self.session.run(names, inputs)))


class TensorRTEngine:
    """A serialized TensorRT engine run with torch CUDA tensors as I/O buffers."""

    name = "tensorrt"

    def __init__(self, plan_path: Path) -> None:
        try:
            import tensorrt as trt
            import torch
        except ImportError:
            raise MissingDependency("runtime tensorrt needs the `tensorrt` package (NGC container)") from None
        if not torch.cuda.is_available():
            raise MissingDependency("runtime tensorrt needs a CUDA GPU")
        self._trt, self._torch = trt, torch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan_path.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.input_names = [n for n in names if mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if mode(n) == trt.TensorIOMode.OUTPUT]

    def run(self, inputs, outputs=None):
        torch, trt = self._torch, self._trt
        stream = torch.cuda.current_stream()
        keep = []
        for name in self.input_names:
            tensor = torch.from_numpy(np.ascontiguousarray(inputs[name])).cuda()
            keep.append(tensor)
            if self.engine.is_shape_inference_io(name):
                host = tensor.cpu()  # a shape tensor is read from host memory: keep it alive until the run ends
                keep.append(host)
                self.context.set_tensor_address(name, host.data_ptr())
            else:
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
        result = {}
        for name in self.output_names:
            dtype = torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            result[name] = out
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return {n: result[n].cpu().numpy() for n in (outputs or self.output_names)}


def open_runtime(version_dir: Path, prefer: str = "auto", settings: ServerSettings | None = None) -> Runtime:
    """Open the graph in a model version folder.

    ``prefer``: ``auto`` (TensorRT plan when ``model.plan`` exists and TensorRT imports, else
    ONNX Runtime), ``onnxruntime`` or ``tensorrt``. ``settings``: threads (default: from the
    environment, :meth:`ServerSettings.load`).
    """
    if prefer not in ("auto",) + RUNTIMES:
        raise ValueError(f"runtime {prefer!r}: expected auto or one of {RUNTIMES}")
    plan = version_dir / "model.plan"
    if prefer == "tensorrt" or (prefer == "auto" and plan.is_file()):
        try:
            return TensorRTEngine(plan)
        except MissingDependency:
            if prefer == "tensorrt":
                raise
    return OnnxRuntimeSession(version_dir / "model.onnx", settings=settings)
