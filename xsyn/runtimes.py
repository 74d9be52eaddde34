"""Pluggable inference runtimes behind one small interface.

A runtime runs one exported graph on numpy arrays: ``run({name: array}) -> {name: array}``.
``onnxruntime`` (CPU, or CUDA / TensorRT execution providers when the installed build has them),
``tensorrt`` (a ``model.plan`` through the TensorRT Python runtime, buffers on the GPU via
torch) and ``torch`` (the ``torch.export`` program ``model.pt2`` on a device, at a precision)
are chosen by name; each fails at construction with a message naming what is missing.
Device and precision are properties of the runtime, never of the orchestrators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from xsyn.errors import FailedPrecondition, InvalidArgument, MissingDependency, ResourceExhausted
from xsyn.settings import ServerSettings

RUNTIMES = ("onnxruntime", "tensorrt", "torch")
PRECISIONS = ("fp32", "fp16", "bf16")


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
        # Idle intra-op threads sleep instead of spinning: several sessions share the cores (one per
        # leaf model, and the in-process runner's), and spinning ones starve each other.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


def resolve_device(device: str = "cpu", precision: str = "auto") -> tuple[str, str]:
    """Check that ``device`` exists and can run ``precision``; returns ``(device, precision)``
    with ``auto`` resolved (fp16 on CUDA, fp32 on the CPU).

    Raises FailedPrecondition with one line naming what is missing: no CUDA in this torch build
    or no GPU, a device index past the GPUs present, fp16 on the CPU, bf16 on a GPU without it.
    """
    try:
        import torch
    except ImportError:
        raise MissingDependency("runtime torch needs the `torch` package (pip install 'xsyn[server]')") from None
    if precision not in ("auto",) + PRECISIONS:
        raise InvalidArgument(f"precision {precision!r}: expected auto or one of {PRECISIONS}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FailedPrecondition(f"device {device}: CUDA is not available here (torch {torch.__version__}, "
                                     f"CUDA build {torch.version.cuda or 'none'}, {torch.cuda.device_count()} GPUs)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise FailedPrecondition(f"device {device}: only {torch.cuda.device_count()} GPU(s) present")
        precision = "fp16" if precision == "auto" else precision
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise FailedPrecondition(f"device {device}: {torch.cuda.get_device_name(index)} cannot run bf16")
    elif device == "cpu":
        precision = "fp32" if precision == "auto" else precision
        if precision == "fp16":
            raise FailedPrecondition("device cpu: fp16 is a GPU precision here; use fp32 or bf16 on the CPU")
    else:
        raise InvalidArgument(f"device {device!r}: expected cpu, cuda or cuda:N")
    return device, precision


def _drop_dtype_asserts(module) -> None:
    """Remove ``aten._assert_tensor_metadata`` checks from an unlifted program: ``torch.export``
    records the traced dtype (fp32) of every ``.to()`` input, which autocast legitimately changes.
    They are checks only; the computation is untouched."""
    import torch

    graph = module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten._assert_tensor_metadata.default:
            graph.erase_node(node)
    module.recompile()


class TorchProgram:
    """A ``torch.export`` program (``model.pt2``) on a device, at a precision.

    Weights stay as exported (fp32); fp16 / bf16 run the program under ``torch.autocast``, which
    keeps the exported graph's own dtype casts (timestep embeddings, softmax) valid. Inputs of
    a spec's ``broadcast`` symbols arrive as 1 or the target size; a size-1 axis is expanded.
    ``compile``: wrap the program in ``torch.compile`` (first calls are slow).
    """

    name = "torch"

    def __init__(self, pt2_path: Path, spec, device: str = "cpu", precision: str = "auto",
                 compile: bool = False) -> None:
        self.device, self.precision = resolve_device(device, precision)
        import torch

        if not Path(pt2_path).is_file():
            raise FailedPrecondition(f"{pt2_path}: no exported program; run `xsyn export` (it writes model.pt2)")
        self._torch = torch
        self.spec = spec
        self.module = torch.export.load(str(pt2_path)).module().to(self.device)
        if self.precision != "fp32":
            _drop_dtype_asserts(self.module)
        if compile:
            self.module = torch.compile(self.module)
        self.dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        self.input_names = [t.name for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs]
        self._expand = {sym: target for sym, target in spec.broadcast}

    def _broadcast(self, tensors: dict) -> dict:
        """Expand size-1 axes of broadcast symbols to their target's size (a view, no copy)."""
        if not self._expand:
            return tensors
        sizes = {d: tensors[t.name].shape[axis] for t in self.spec.inputs for axis, d in enumerate(t.shape)
                 if isinstance(d, str) and d not in self._expand}
        for t in self.spec.inputs:
            shape = list(tensors[t.name].shape)
            for axis, d in enumerate(t.shape):
                if d in self._expand and shape[axis] == 1:
                    shape[axis] = sizes[self._expand[d]]
            tensors[t.name] = tensors[t.name].expand(*shape)
        return tensors

    def run_tensors(self, tensors: dict) -> dict:
        """Run on torch tensors already on :attr:`device`; outputs stay on the device (float32)."""
        torch = self._torch
        args = [self._broadcast(dict(tensors))[n] for n in self.input_names]
        try:
            with torch.inference_mode():
                if self.dtype is None:
                    out = self.module(*args)
                else:
                    with torch.autocast(device_type=self.device.split(":")[0], dtype=self.dtype):
                        out = self.module(*args)
        except torch.cuda.OutOfMemoryError as exc:  # that request fails; the model and server stay up
            torch.cuda.empty_cache()
            raise ResourceExhausted(f"{self.spec.name}: out of GPU memory on {self.device} ({exc})") from None
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {name: o.float() if o.is_floating_point() else o for name, o in zip(self.output_names, out)}

    def run(self, inputs, outputs=None):
        torch = self._torch
        tensors = {n: torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in self.input_names}
        out = self.run_tensors(tensors)
        return {n: out[n].cpu().numpy() for n in (outputs or self.output_names)}


def open_runtime(version_dir: Path, prefer: str | None = None, settings: ServerSettings | None = None) -> Runtime:
    """Open the graph in a model version folder.

    ``prefer``: ``auto`` (TensorRT plan when ``model.plan`` exists and TensorRT imports, else
    ONNX Runtime), ``onnxruntime``, ``tensorrt`` or ``torch``; default ``settings.runtime``.
    ``settings``: threads, device, precision (default: from the environment,
    :meth:`ServerSettings.load`).
    """
    settings = settings or ServerSettings.load()
    prefer = prefer or settings.runtime
    if prefer not in ("auto",) + RUNTIMES:
        raise InvalidArgument(f"runtime {prefer!r}: expected auto or one of {RUNTIMES}")
    if prefer == "torch":
        import json

        from xsyn.export.specs import NetworkSpec

        spec = NetworkSpec.from_dict(json.loads((version_dir / "network.json").read_text()))
        return TorchProgram(version_dir / "model.pt2", spec, settings.device, settings.precision,
                            settings.torch_compile)
    plan = version_dir / "model.plan"
    if prefer == "tensorrt" or (prefer == "auto" and plan.is_file()):
        try:
            return TensorRTEngine(plan)
        except MissingDependency:
            if prefer == "tensorrt":
                raise
    return OnnxRuntimeSession(version_dir / "model.onnx", settings=settings)
