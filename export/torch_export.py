"""torch -> ``model.pt2`` (``torch.export``) for one network, and its parity check.

The exported program is the graph the ``torch`` runtime serves (:class:`xsyn.runtimes.TorchProgram`):
weights inside, dynamic axes from the same :class:`~xsyn.export.specs.NetworkSpec` as the ONNX
graph (one ``torch.export.Dim`` per profile symbol, with its min and max).

Two details of ``torch.export``:

- a dynamic dimension traced at size 1 is specialised to 1, so the program is traced on
  *trace inputs*: the sample inputs grown (tiled) to at least 2 along every dynamic axis whose
  profile allows it;
- "1 or N" broadcasting (``NetworkSpec.broadcast``, e.g. the SAM decoder's mask input) cannot
  be one graph without a guard, so a broadcast symbol is traced as its target symbol and the
  runtime expands a size-1 axis before the call.

Parity is checked like the ONNX graph's: the program against the PyTorch module, on the sample
inputs and on the trace inputs, within the spec's tolerance.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from xsyn.export.networks import Network
from xsyn.export.onnx_export import compare_outputs, sample_inputs, torch_outputs
from xsyn.export.specs import NetworkSpec

PT2_NAME = "model.pt2"


def trace_sizes(spec: NetworkSpec, inputs: dict[str, np.ndarray]) -> dict[str, int]:
    """Symbol -> size to trace at: the sample's, raised to 2 where the profile allows; broadcast
    symbols take their target's size."""
    sample = {d: inputs[t.name].shape[axis] for t in spec.inputs for axis, d in enumerate(t.shape)
              if isinstance(d, str)}
    limits = {sym: hi for sym, _, _, hi in spec.profile}
    sizes = {sym: max(size, min(2, limits[sym])) for sym, size in sample.items()}
    for sym, target in spec.broadcast:
        sizes[sym] = sizes[target]
    return sizes


def _grow(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    """``array`` tiled along ``axis`` and cut to ``size``."""
    reps = [1] * array.ndim
    reps[axis] = -(-size // array.shape[axis])
    return np.tile(array, reps).take(np.arange(size), axis=axis)


def trace_inputs(net: Network, seed: int = 0) -> dict[str, np.ndarray]:
    """The sample inputs at :func:`trace_sizes` (same dtypes, values tiled)."""
    inputs = sample_inputs(net, seed)
    sizes = trace_sizes(net.spec, inputs)
    out = {}
    for t in net.spec.inputs:
        array = inputs[t.name]
        for axis, d in enumerate(t.shape):
            if isinstance(d, str) and array.shape[axis] != sizes[d]:
                array = _grow(array, axis, sizes[d])
        out[t.name] = np.ascontiguousarray(array)
    return out


def dynamic_shapes(spec: NetworkSpec) -> tuple:
    """``torch.export`` dynamic shapes in input order: one ``Dim`` per profile symbol (broadcast
    symbols share their target's)."""
    dims = {sym: torch.export.Dim(sym, min=lo, max=hi) for sym, lo, _, hi in spec.profile}
    for sym, target in spec.broadcast:
        dims[sym] = dims[target]
    return tuple({axis: dims[d] for axis, d in enumerate(t.shape) if isinstance(d, str)} or None
                 for t in spec.inputs)


def export_pt2(net: Network, folder: Path, seed: int = 0) -> Path:
    """Export ``net`` to ``folder/model.pt2``; returns the path."""
    inputs = trace_inputs(net, seed)
    args = tuple(torch.from_numpy(inputs[t.name]) for t in net.spec.inputs)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(net.module, args, dynamic_shapes=dynamic_shapes(net.spec), strict=False)
    target = folder / PT2_NAME
    torch.export.save(program, str(target))
    return target


def check_pt2_parity(net: Network, pt2_path: Path, seed: int = 0) -> dict[str, dict]:
    """The loaded program (through the ``torch`` runtime, fp32 on the CPU) against the PyTorch
    module, on the sample inputs and the trace inputs; the worse of the two per output."""
    from xsyn.runtimes import TorchProgram

    program = TorchProgram(pt2_path, net.spec, device="cpu", precision="fp32")
    names = [t.name for t in net.spec.outputs]
    report: dict[str, dict] = {}
    for inputs in (sample_inputs(net, seed), trace_inputs(net, seed)):
        got = program.run(inputs)
        for name, entry in compare_outputs(names, torch_outputs(net, inputs), [got[n] for n in names],
                                           net.spec.tolerance).items():
            worse = name not in report or not entry["ok"] or entry.get("max_abs", 0) > report[name].get("max_abs", 0)
            if worse and report.get(name, {}).get("ok", True):
                report[name] = entry
    return report
