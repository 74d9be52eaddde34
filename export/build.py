"""Staged, cached, atomic export of every network into a Triton-style folder.

Layout written under ``out/``::

    <name>/1/model.onnx [+ model.onnx.data]   graph (+ external weights)
    <name>/1/model.pt2                        torch.export program (the torch runtime's graph)
    <name>/1/model.plan                       TensorRT engine (--engine tensorrt)
    <name>/1/network.json                     the spec the graph was built from
    <name>/1/export_manifest.json             cache key, files, parity (written last)
    <name>/1/...                              sidecars (tokenizer/, sam_mask_tokens.npy)
    parity_report.json                        per graph and output: tolerance, errors
    timing.cache                              TensorRT timing cache

Caching: a graph's key hashes its spec, its module's weights, sidecar inputs, tool versions
and this module's format version. A re-run with an unchanged key rebuilds nothing; a graph is
taken as complete only when its manifest exists, matches the key and lists files that exist
with their recorded sizes. Atomicity: each stage is built in ``<name>/.staging-*``; publishing
removes the old manifest first, moves the files in, and writes the new manifest last, so an
interrupted run never leaves a half-written graph that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from xsyn.errors import ParityError
from xsyn.files import write_json_atomic
from xsyn.export.networks import Network
from xsyn.export.onnx_export import EXTERNAL_DATA_NAME, ONNX_NAME, check_parity, export_onnx
from xsyn.export.torch_export import check_pt2_parity, export_pt2

log = logging.getLogger(__name__)

FORMAT_VERSION = "2"  # 2: model.pt2 beside model.onnx
MANIFEST = "export_manifest.json"
PLAN_MANIFEST = "plan_manifest.json"
REPORT = "parity_report.json"


@dataclass
class GraphResult:
    """Outcome of one graph: ``status`` is built / cached / failed; ``parity`` (ONNX Runtime) and
    ``parity_torch`` (the ``model.pt2`` program) per output."""

    name: str
    status: str
    seconds: float = 0.0
    onnx_bytes: int = 0
    parity: dict = field(default_factory=dict)
    plan: str = ""
    error: str = ""
    parity_torch: dict = field(default_factory=dict)

    @property
    def worst_error_ratio(self) -> float:
        """Largest ``max_abs / allowed_abs`` over the ONNX graph's outputs (<= 1 passes)."""
        return worst_ratio(self.parity)

    @property
    def worst_torch_ratio(self) -> float:
        """The same for the ``model.pt2`` program."""
        return worst_ratio(self.parity_torch)


def worst_ratio(parity: dict) -> float:
    """Largest ``max_abs / allowed_abs`` over a parity report's outputs."""
    return max((v.get("max_abs", 0) / v["allowed_abs"] for v in parity.values() if "allowed_abs" in v), default=0.0)


def module_fingerprint(net: Network) -> str:
    """SHA-256 over the module's state dict (names, dtypes, shapes, bytes) and sidecar source files."""
    h = hashlib.sha256()
    for name, tensor in sorted(net.module.state_dict().items()):
        arr = np.ascontiguousarray(tensor.detach().cpu().numpy())
        h.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
        h.update(memoryview(arr).cast("B"))
    for path in net.sidecar_fingerprint:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(net: Network, fingerprint: str, profile: str = "standard") -> str:
    """Key of the ONNX stage: spec JSON + weights fingerprint + profile + tool versions."""
    import onnx
    import torch

    parts = [FORMAT_VERSION, net.spec.to_json(), fingerprint, profile, torch.__version__, onnx.__version__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def read_complete_manifest(version_dir: Path, manifest_name: str, key: str) -> dict | None:
    """The manifest if it matches ``key`` and all its files exist with their sizes, else None."""
    path = version_dir / manifest_name
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("key") != key:
        return None
    for rel, size in manifest.get("files", {}).items():
        f = version_dir / rel
        if not f.is_file() or f.stat().st_size != size:
            return None
    return manifest


def publish(staging: Path, version_dir: Path, manifest_name: str, manifest: dict) -> None:
    """Move every file of ``staging`` into ``version_dir``; the manifest goes last."""
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / manifest_name).unlink(missing_ok=True)
    files = {}
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = src.relative_to(staging)
        dest = version_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        files[str(rel)] = dest.stat().st_size
    shutil.rmtree(staging, ignore_errors=True)
    write_json_atomic(version_dir / manifest_name, dict(manifest, files=files))


def _staging(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))


def export_graph(net: Network, out: Path, source: str, force: bool = False, profile: str = "standard") -> GraphResult:
    """ONNX stage of one graph: cached, or exported + parity-checked + published.

    ``profile``: ``tiny``, ``tiny-random`` or ``standard``, stated in the manifest for the orchestrators.
    """
    name = net.spec.name
    version_dir = out / name / "1"
    fingerprint = module_fingerprint(net)
    key = cache_key(net, fingerprint, profile)
    manifest = None if force else read_complete_manifest(version_dir, MANIFEST, key)
    if manifest is not None:
        return GraphResult(name, "cached", onnx_bytes=_onnx_bytes(manifest), parity=manifest["parity"],
                           parity_torch=manifest.get("parity_torch", {}))

    start = time.perf_counter()
    (version_dir / MANIFEST).unlink(missing_ok=True)  # stale: whatever is there no longer matches
    staging = _staging(out / name)
    try:
        onnx_path = export_onnx(net, staging)
        parity = check_parity(net, onnx_path)
        _require_parity(name, "ONNX Runtime", parity)
        (staging / "network.json").write_text(json.dumps(json.loads(net.spec.to_json()), indent=2))
        parity_torch = check_pt2_parity(net, export_pt2(net, staging))
        _require_parity(name, "the torch.export program", parity_torch)
        if net.write_sidecars:
            net.write_sidecars(staging)
        manifest = {"key": key, "network": name, "source": source, "profile": profile, "weights_sha256": fingerprint,
                    "parity": parity, "parity_torch": parity_torch, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        publish(staging, version_dir, MANIFEST, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest = json.loads((version_dir / MANIFEST).read_text())
    return GraphResult(name, "built", time.perf_counter() - start, _onnx_bytes(manifest), parity,
                       parity_torch=parity_torch)


def _require_parity(name: str, what: str, parity: dict) -> None:
    if not all(v["ok"] for v in parity.values()):
        bad = {k: v for k, v in parity.items() if not v["ok"]}
        raise ParityError(f"{name}: {what} disagrees with PyTorch beyond tolerance: {json.dumps(bad)}")


def _onnx_bytes(manifest: dict) -> int:
    files = manifest.get("files", {})
    return files.get(ONNX_NAME, 0) + files.get(EXTERNAL_DATA_NAME, 0)


def build_plan_stage(net: Network, out: Path, fp16: bool = True, force: bool = False) -> str:
    """TensorRT stage of one graph (after its ONNX stage); returns built / cached."""
    from xsyn.export.tensorrt_build import PLAN_NAME, build_plan

    version_dir = out / net.spec.name / "1"
    onnx_key = json.loads((version_dir / MANIFEST).read_text())["key"]
    key = hashlib.sha256(f"{onnx_key}|fp16={fp16}|{net.spec.fp32_layer_patterns}".encode()).hexdigest()
    if not force and read_complete_manifest(version_dir, PLAN_MANIFEST, key) is not None:
        return "cached"
    staging = _staging(out / net.spec.name)
    try:
        facts = build_plan(version_dir / ONNX_NAME, net.spec, staging / PLAN_NAME, out / "timing.cache", fp16=fp16)
        publish(staging, version_dir, PLAN_MANIFEST, {"key": key, **facts})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return "built"


def run_export(networks: list[Network], out: Path, source: str, engine: str = "onnx", fp16: bool = True,
               force: bool = False, profile: str = "standard", on_progress: Callable[[int, int, str, GraphResult | None], None] | None = None,
               ) -> list[GraphResult]:
    """Export every network (ONNX, then TensorRT when ``engine == "tensorrt"``) and write the report.

    A graph that fails parity or export is reported as ``failed`` and left unpublished; the
    others go on. ``parity_report.json`` merges this run's results into the existing report.
    ``on_progress(i, n, name, result)`` is called before each graph (result None) and after it.
    """
    if engine == "tensorrt":
        from xsyn.export.tensorrt_build import require_tensorrt

        require_tensorrt()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, net in enumerate(networks, 1):
        if on_progress:
            on_progress(i, len(networks), net.spec.name, None)
        try:
            result = export_graph(net, out, source, force, profile)
            if engine == "tensorrt":
                result.plan = build_plan_stage(net, out, fp16, force)
        except Exception as exc:  # reported per graph; the run goes on
            log.debug("export of %s failed", net.spec.name, exc_info=True)
            result = GraphResult(net.spec.name, "failed", error=f"{type(exc).__name__}: {exc}")
        results.append(result)
        if on_progress:
            on_progress(i, len(networks), net.spec.name, result)
    write_report(out, results, source)
    return results


def write_report(out: Path, results: list[GraphResult], source: str) -> None:
    """Merge these results into ``out/parity_report.json`` (graphs not in this run are kept)."""
    path = out / REPORT
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        report = {"graphs": {}}
    import onnxruntime
    import torch

    report.update(source=source, torch=torch.__version__, onnxruntime=onnxruntime.__version__,
                  criterion="max_abs <= tolerance * scale, scale = max |PyTorch output|; fp32 on CPU")
    for r in results:
        if r.status == "failed":
            report["graphs"][r.name] = {"status": "failed", "error": r.error}
        else:
            report["graphs"][r.name] = {"status": "ok", "outputs": r.parity, "torch_program": r.parity_torch}
    write_json_atomic(path, report)
