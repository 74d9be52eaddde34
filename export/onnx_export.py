"""torch -> ONNX for one :class:`~xsyn.export.networks.Network`, and the ONNX Runtime parity check.

Export uses the TorchScript exporter (``dynamo=False``) at the spec's opset. Graphs whose
weights exceed what one protobuf can hold (2 GB) are stored with one external-data file,
``model.onnx.data``, beside ``model.onnx``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from xsyn.export.networks import Network

ONNX_NAME = "model.onnx"
EXTERNAL_DATA_NAME = "model.onnx.data"
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of parameters; protobuf's hard limit is 2 GiB


def sample_inputs(net: Network, seed: int = 0) -> dict[str, np.ndarray]:
    """The network's seeded sample inputs, checked against the spec's names and dtypes."""
    inputs = net.sample_inputs(np.random.default_rng(seed))
    for t in net.spec.inputs:
        assert t.name in inputs and inputs[t.name].dtype == np.dtype(t.dtype), (net.spec.name, t.name)
    return inputs


def torch_outputs(net: Network, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the export wrapper in PyTorch on numpy inputs; outputs as float32/int numpy arrays."""
    args = [torch.from_numpy(inputs[t.name]) for t in net.spec.inputs]
    with torch.no_grad():
        out = net.module(*args)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in out]


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.state_dict().values())


def export_onnx(net: Network, folder: Path, seed: int = 0) -> Path:
    """Export ``net`` to ``folder/model.onnx`` (+ ``model.onnx.data`` when large); returns the path."""
    import onnx

    spec = net.spec
    inputs = sample_inputs(net, seed)
    args = tuple(torch.from_numpy(inputs[t.name]) for t in spec.inputs)
    dynamic_axes = {t.name: t.dynamic_axes for t in spec.inputs + spec.outputs if t.dynamic_axes}
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / ONNX_NAME
    large = _param_bytes(net.module) > EXTERNAL_DATA_THRESHOLD
    scratch = Path(tempfile.mkdtemp(prefix="onnx-", dir=folder)) if large else folder
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about constant shapes are expected
        torch.onnx.export(
            net.module, args, str(scratch / ONNX_NAME),
            input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
            dynamic_axes=dynamic_axes, opset_version=spec.opset, do_constant_folding=True, dynamo=False,
        )
    if large:  # the exporter writes one file per tensor; consolidate into one data file
        model = onnx.load(str(scratch / ONNX_NAME), load_external_data=True)
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=EXTERNAL_DATA_NAME, size_threshold=1024)
        del model
        shutil.rmtree(scratch)
    return target


def onnxruntime_outputs(onnx_path: Path, inputs: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
    """Run a graph in ONNX Runtime on the CPU with all graph optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, (os.cpu_count() or 1))
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    return sess.run(output_names, inputs)


def compare_outputs(names: list[str], reference: list[np.ndarray], candidate: list[np.ndarray],
                    tolerance: float) -> dict[str, dict]:
    """Per output: scale (max |reference|), max abs / max rel error, allowed abs error, pass/fail.

    ``max_rel`` divides by ``|reference| + 1e-3 * scale`` so near-zero values do not dominate.
    An output passes when shapes agree and ``max_abs <= tolerance * scale``.
    """
    report = {}
    for name, ref, got in zip(names, reference, candidate):
        entry: dict = {"shape": list(ref.shape)}
        if ref.shape != got.shape:
            entry.update(ok=False, error=f"shape {list(got.shape)} != reference {list(ref.shape)}")
        else:
            ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
            scale = float(np.max(np.abs(ref64))) if ref.size else 0.0
            diff = np.abs(ref64 - got64)
            max_abs = float(diff.max()) if ref.size else 0.0
            max_rel = float((diff / (np.abs(ref64) + 1e-3 * scale + 1e-30)).max()) if ref.size else 0.0
            allowed = tolerance * max(scale, 1e-12)
            finite = bool(np.all(np.isfinite(got64)))
            entry.update(scale=scale, max_abs=max_abs, max_rel=max_rel, tolerance=tolerance, allowed_abs=allowed,
                         ok=finite and max_abs <= allowed)
        report[name] = entry
    return report


def check_parity(net: Network, onnx_path: Path, seed: int = 0) -> dict[str, dict]:
    """Compare ONNX Runtime with the PyTorch module on the sample inputs (see :func:`compare_outputs`)."""
    inputs = sample_inputs(net, seed)
    names = [t.name for t in net.spec.outputs]
    reference = torch_outputs(net, inputs)
    candidate = onnxruntime_outputs(onnx_path, inputs, names)
    return compare_outputs(names, reference, candidate, net.spec.tolerance)
