"""One contract per network: tensor names, dtypes, shapes, profiles and batching.

The same :class:`NetworkSpec` drives ONNX export (names, dynamic axes), the parity check
(tolerance), the TensorRT build (min/opt/max profiles, fp32 layers) and the Triton
``config.pbtxt`` (``max_batch_size``, dynamic batching). Specs are frozen, JSON-serialisable
dataclasses; their JSON is part of every build-cache key.

Shape convention: a dimension is either a fixed ``int`` or a symbolic ``str``. Symbolic names
that appear in an input get a min/opt/max entry in :attr:`NetworkSpec.profile`; output-only
symbols (e.g. ``"masks_h"``) are data-dependent. When ``max_batch_size > 0`` the first
dimension of every tensor is the batch dimension ``"batch"`` (Triton's implicit batch).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

DTYPES = ("float32", "float16", "int32", "int64", "bool", "uint8", "bytes")  # bytes: Triton BYTES (JSON, PNG)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    Attributes:
        name: tensor name in the ONNX graph, the TensorRT engine and Triton's config.
        dtype: numpy dtype name, one of :data:`DTYPES`.
        shape: fixed ints and symbolic dimension names.
        doc: meaning, layout, value range and coordinate convention.
        values: inclusive ``(min, max)`` every element of an input must lie in (checked by the
            leaf model before the graph runs: out-of-range token ids, sizes or timesteps are the
            client's mistake, not an internal error), or None.
        choices: the only values an input's elements may take (e.g. SAM's point labels), or ().
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    doc: str = ""
    values: tuple[float, float] | None = None
    choices: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"tensor {self.name!r}: dtype {self.dtype!r} not in {DTYPES}")

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> symbolic name, for ``torch.onnx.export(dynamic_axes=...)``."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class DynamicBatching:
    """Triton dynamic batcher settings for a leaf model."""

    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int


@dataclass(frozen=True)
class NetworkSpec:
    """The contract of one exported network.

    Attributes:
        name: model name (ONNX folder, engine file, Triton model).
        inputs / outputs: tensor contracts, in graph order.
        profile: ``(symbol, min, opt, max)`` for every symbolic input dimension; TensorRT builds
            one optimisation profile from it and sample inputs use the ``opt`` values.
        max_batch_size: Triton ``max_batch_size``; 0 means the graph's first dimension is not a
            request batch (the SAM decoder batches prompt sets of one image instead).
        dynamic_batching: Triton dynamic batcher settings, or None.
        instance_count: Triton instance-group count.
        tolerance: allowed max abs error as a fraction of the output's scale (max |reference|).
        fp32_layer_patterns: regexes over ONNX node names kept in fp32 in TensorRT fp16 builds.
        opset: ONNX opset used for export.
        description: one line for the summary table and the model config.
        broadcast: ``(symbol, target)`` pairs: an input axis named ``symbol`` is either 1 or the
            size of ``target`` (numpy broadcasting, e.g. the SAM decoder's mask input for 1 or
            every prompt set). ONNX graphs broadcast inside; exported programs take the target
            size and their runtime expands a size-1 axis.
        value_dims: ``(symbol, input, index)``: an output dimension whose size is element
            ``index`` of an input's value (the SAM decoder's masks are ``orig_im_size``), so that
            a request's output bytes are known before the graph runs.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profile: tuple[tuple[str, int, int, int], ...]
    max_batch_size: int = 0
    dynamic_batching: DynamicBatching | None = None
    instance_count: int = 1
    tolerance: float = 1e-4
    fp32_layer_patterns: tuple[str, ...] = ()
    opset: int = 18
    description: str = ""
    extra: tuple[tuple[str, str], ...] = field(default=())
    broadcast: tuple[tuple[str, str], ...] = ()
    value_dims: tuple[tuple[str, str, int], ...] = ()

    def __post_init__(self) -> None:
        names = [t.name for t in self.inputs + self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"network {self.name!r}: duplicate tensor names {names}")
        profiled = {p[0] for p in self.profile}
        for t in self.inputs:
            for d in t.shape:
                if isinstance(d, str) and d not in profiled:
                    raise ValueError(f"network {self.name!r}: input dim {d!r} of {t.name!r} has no profile")
        for sym, target in self.broadcast:
            if sym not in profiled or target not in profiled:
                raise ValueError(f"network {self.name!r}: broadcast {sym!r} -> {target!r} names an unprofiled dim")
        for sym, lo, opt, hi in self.profile:
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"network {self.name!r}: profile {sym} needs 1 <= min <= opt <= max")
        if self.max_batch_size > 0:
            for t in self.inputs + self.outputs:
                if not t.shape or t.shape[0] != "batch":
                    raise ValueError(f"network {self.name!r}: batched tensor {t.name!r} must start with 'batch'")

    def dims(self, which: str = "opt") -> dict[str, int]:
        """Symbol -> size at the ``min``, ``opt`` or ``max`` profile point."""
        col = {"min": 1, "opt": 2, "max": 3}[which]
        return {p[0]: p[col] for p in self.profile}

    def is_per_sample_scalar(self, tensor: TensorSpec) -> bool:
        """True for a batched ``[batch]`` tensor: Triton declares it ``[1]`` (reshaped to ``[]``)."""
        return self.max_batch_size > 0 and len(tensor.shape) == 1

    def declared_dims(self, tensor: TensorSpec) -> list[int]:
        """The tensor's dims as Triton's config declares them: symbols are -1, the batch axis is
        implicit when ``max_batch_size > 0``, and a per-sample scalar (``[batch]``) is ``[1]``."""
        if self.is_per_sample_scalar(tensor):
            return [1]
        dims = config_dims(tensor.shape)
        return dims[1:] if self.max_batch_size > 0 else dims

    def to_declared_shape(self, tensor: TensorSpec, value):
        """A request array in the declared shape: per-sample scalars ``[batch]`` -> ``[batch, 1]``."""
        return value.reshape(-1, 1) if self.is_per_sample_scalar(tensor) else value

    @staticmethod
    def from_declared_shape(tensor: TensorSpec, value):
        """Inverse of :meth:`to_declared_shape` (``[batch, 1]`` as it arrives -> ``[batch]``)."""
        if value.ndim == len(tensor.shape) + 1 and value.shape[-1] == 1:
            return value.reshape(value.shape[:-1])
        return value

    def concrete_shape(self, tensor: TensorSpec, which: str = "opt") -> tuple[int, ...]:
        """The input's shape at a profile point."""
        dims = self.dims(which)
        return tuple(dims[d] if isinstance(d, str) else d for d in tensor.shape)

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkSpec":
        """Inverse of ``dataclasses.asdict`` (e.g. a version folder's ``network.json``)."""
        data = dict(data)
        data["inputs"] = tuple(_tensor_from_dict(t) for t in data["inputs"])
        data["outputs"] = tuple(_tensor_from_dict(t) for t in data["outputs"])
        data["profile"] = tuple(tuple(p) for p in data["profile"])
        if data.get("dynamic_batching"):
            db = data["dynamic_batching"]
            data["dynamic_batching"] = DynamicBatching(tuple(db["preferred_batch_sizes"]), db["max_queue_delay_us"])
        data["fp32_layer_patterns"] = tuple(data.get("fp32_layer_patterns", ()))
        data["extra"] = tuple(tuple(e) for e in data.get("extra", ()))
        data["broadcast"] = tuple(tuple(b) for b in data.get("broadcast", ()))
        data["value_dims"] = tuple(tuple(v) for v in data.get("value_dims", ()))
        return cls(**data)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), used in build-cache keys and manifests."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass(frozen=True)
class PipelineSpec:
    """The contract of one Python-backend (BLS) pipeline model over leaf graphs.

    Config generation, the model's shim and its asset loading read it, as the leaf models read
    their :class:`NetworkSpec`.

    Attributes:
        name: Triton model name.
        module: the ``xsyn.serving`` module whose ``TritonPythonModel`` serves it.
        inputs / outputs: tensors as Triton declares them (``max_batch_size 0``: one request per
            execution); symbolic dims are -1 in the config.
        optional_inputs: names of inputs a request may leave out.
        needs: leaf graphs it calls; the model is generated only when all were exported.
        instance_count: Triton instance-group count (several let concurrent requests' UNet
            steps meet in the UNet's dynamic batcher).
        instances_setting: the :class:`~xsyn.settings.ServerSettings` field that overrides
            ``instance_count`` when non-zero (each instance is a stub process of ~1 GB), or "".
        parameters: config parameters (``name``, default value) the model reads at start-up;
            :class:`xsyn.settings.ServerSettings` documents them.
        optional_graphs: leaf graphs it calls when they were exported (APSAM's energy encoder).
        interactive: a person waits on it (clicks): it and every leaf graph it calls keep the
            normal CPU priority, while the other models run at ``ServerSettings.batch_nice``.
        description: one line for the config and the docs.
    """

    name: str
    module: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    optional_inputs: tuple[str, ...]
    needs: tuple[str, ...]
    instance_count: int = 1
    instances_setting: str = ""
    parameters: tuple[tuple[str, str], ...] = ()
    optional_graphs: tuple[str, ...] = ()
    interactive: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        names = {t.name for t in self.inputs}
        unknown = set(self.optional_inputs) - names
        if unknown:
            raise ValueError(f"pipeline {self.name!r}: optional inputs {sorted(unknown)} are not inputs")

    @staticmethod
    def declared_dims(tensor: TensorSpec) -> list[int]:
        """The tensor's dims in the config: symbols are -1 (no implicit batch axis)."""
        return config_dims(tensor.shape)


def _tensor_from_dict(t: dict) -> TensorSpec:
    values = tuple(t["values"]) if t.get("values") is not None else None
    return TensorSpec(**dict(t, shape=tuple(t["shape"]), values=values, choices=tuple(t.get("choices", ()))))


def config_dims(shape: tuple[int | str, ...]) -> list[int]:
    """A spec shape as Triton config dims: symbolic dimensions become -1."""
    return [-1 if isinstance(d, str) else int(d) for d in shape]


def exported_specs(repo) -> dict[str, NetworkSpec]:
    """Specs of the graphs exported into a repository folder (each ``<model>/1/network.json``)."""
    from pathlib import Path

    return {p.parent.parent.name: NetworkSpec.from_dict(json.loads(p.read_text()))
            for p in sorted(Path(repo).glob("*/1/network.json"))}
