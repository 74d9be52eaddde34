"""ONNX -> TensorRT plan with the spec's optimisation profile, fp16 and a timing cache.

TensorRT cannot be installed on the CPU build machines (PyPI's ``tensorrt`` only downloads the
libraries from NVIDIA's index); it is present in the NGC Triton container, where this runs.
:func:`require_tensorrt` gives the one-line error every entry point shows when it is absent.

Precision: ``--fp16`` builds allow fp16 kernels everywhere except the layers whose ONNX node
names match the spec's ``fp32_layer_patterns`` (SAM encoder LayerNorms overflow in fp16);
those are pinned to fp32 with ``OBEY_PRECISION_CONSTRAINTS``.
"""

from __future__ import annotations

import re
from pathlib import Path

from xsyn.errors import MissingDependency, XsynError
from xsyn.export.specs import NetworkSpec

PLAN_NAME = "model.plan"
#: values for shape-tensor inputs (TensorRT needs their value ranges): name -> (min, opt, max)
SHAPE_INPUT_VALUES = {"orig_im_size": ((1, 1), (768, 1024), (8192, 8192))}


def require_tensorrt():
    """Import ``tensorrt`` or raise MissingDependency with one clear line."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        raise MissingDependency(
            "--engine tensorrt needs the `tensorrt` Python package (TensorRT 10, e.g. inside the NGC "
            "tritonserver container); it is not installed here. Use --engine onnx on this machine."
        ) from None
    return trt


def build_plan(onnx_path: Path, spec: NetworkSpec, plan_path: Path, timing_cache: Path,
               fp16: bool = True, workspace_gib: float = 8.0) -> dict:
    """Build a serialized engine from ``onnx_path`` into ``plan_path``; returns build facts.

    The profile is the spec's min/opt/max for every dynamic input dimension. The timing cache
    file is read when present and written back after the build, so rebuilds are faster.
    """
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise XsynError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    pinned = []
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = _pin_fp32_layers(trt, network, spec.fp32_layer_patterns)
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)

    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        spec_tensor = next(t for t in spec.inputs if t.name == tensor.name)
        if tensor.is_shape_tensor:
            lo, opt, hi = SHAPE_INPUT_VALUES[tensor.name]
            profile.set_shape_input(tensor.name, lo, opt, hi)
        shapes = [spec.concrete_shape(spec_tensor, w) for w in ("min", "opt", "max")]
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)

    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise XsynError(f"TensorRT build of {spec.name} failed (see the TensorRT log above)")
    plan_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"fp16": fp16, "fp32_layers": len(pinned), "trt_version": trt.__version__}


def _pin_fp32_layers(trt, network, patterns: tuple[str, ...]) -> list[str]:
    """Set precision and output types to fp32 on layers whose names match any pattern."""
    regexes = [re.compile(p) for p in patterns]
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if any(r.search(layer.name) for r in regexes):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output(j).dtype in (trt.float32, trt.float16):
                    layer.set_output_type(j, trt.float32)
            pinned.append(layer.name)
    return pinned
