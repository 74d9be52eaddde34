"""The real `xsyn export --preset tiny`: all seven graphs, parity report, caching, atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xsyn.export.build import MANIFEST, export_graph, run_export
from xsyn.export.networks import NETWORK_NAMES, select_networks
from xsyn.export.onnx_export import compare_outputs, onnxruntime_outputs, torch_outputs

pytestmark = pytest.mark.slow


def test_cli_writes_all_graphs_and_a_passing_parity_report(tiny_export):
    out, proc, seconds = tiny_export
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert seconds < 180, f"tiny export took {seconds:.0f} s"
    for name in NETWORK_NAMES:
        assert (out / name / "1" / "model.onnx").is_file()
        assert (out / name / "1" / MANIFEST).is_file()
        assert f"{name}: built" in proc.stdout
    assert "graph" in proc.stdout and "err/tol" in proc.stdout  # summary table
    report = json.loads((out / "parity_report.json").read_text())
    assert set(report["graphs"]) == set(NETWORK_NAMES)
    for name, graph in report["graphs"].items():
        assert graph["status"] == "ok"
        for output, entry in graph["outputs"].items():
            assert entry["tolerance"] == 1e-4
            assert entry["max_abs"] <= 1e-4 * entry["scale"], (name, output, entry)
            assert entry["scale"] > 0, (name, output)
    assert (out / "text_encoder" / "1" / "tokenizer" / "vocab.json").is_file()
    # the tiny preset serves APSAM: its encoder gives the mask tokens, there are no learned ones
    assert not (out / "sam_decoder" / "1" / "sam_mask_tokens.npy").exists()
    encoder = json.loads((out / "sam_image_encoder" / "1" / "network.json").read_text())
    assert [o["name"] for o in encoder["outputs"]] == ["image_embeddings", "mask_tokens"]


def _other_inputs(net, rng):
    """Inputs at sizes other than the export sample (exercises the dynamic axes)."""
    inputs = net.sample_inputs(rng)
    name = net.spec.name
    if name == "text_encoder":
        inputs["input_ids"] = np.concatenate([inputs["input_ids"], inputs["input_ids"][:1]], 0)
    elif name == "unet":
        inputs = {k: v[:1] for k, v in inputs.items()}
    elif name in ("vae_encoder", "vae_decoder", "sam_image_encoder"):
        inputs = {k: np.concatenate([v, v[::-1] * 0.5], 0).astype(v.dtype) for k, v in inputs.items()}
    elif name == "sam_decoder":
        p, n = 5, 7
        size = 128
        inputs.update(
            point_coords=rng.uniform(0, size, (p, n, 2)).astype(np.float32),
            point_labels=rng.choice(np.array([-1, 0, 1, 2, 3], np.float32), (p, n)),
            mask_input=rng.standard_normal((p, 1, 128, 128)).astype(np.float32),
            orig_im_size=np.array([50, 93], np.float32),
            mask_tokens=rng.standard_normal((p, 4, 32)).astype(np.float32),
        )
    return inputs


def test_every_graph_matches_pytorch_on_other_inputs(tiny_export, tiny_bundle):
    out, proc, _ = tiny_export
    assert proc.returncode == 0
    rng = np.random.default_rng(123)
    for net in select_networks(tiny_bundle):
        inputs = _other_inputs(net, rng)
        names = [t.name for t in net.spec.outputs]
        ref = torch_outputs(net, inputs)
        got = onnxruntime_outputs(out / net.spec.name / "1" / "model.onnx", inputs, names)
        report = compare_outputs(names, ref, got, net.spec.tolerance)
        assert all(v["ok"] for v in report.values()), (net.spec.name, report)


def test_rerun_rebuilds_nothing_and_changed_weights_rebuild_only_dependents(tmp_path, tiny_bundle):
    nets = select_networks(tiny_bundle)
    first = run_export(nets, tmp_path, "test")
    assert [r.status for r in first] == ["built"] * len(NETWORK_NAMES)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("model.onnx")}
    again = run_export(nets, tmp_path, "test")
    assert [r.status for r in again] == ["cached"] * len(NETWORK_NAMES)
    assert mtimes == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("model.onnx")}

    with torch.no_grad():
        tiny_bundle.vae.decoder.conv_out.bias.add_(0.1)
    changed = run_export(select_networks(tiny_bundle), tmp_path, "test")
    status = {r.name: r.status for r in changed}
    assert status == {n: ("built" if n in ("vae_encoder", "vae_decoder") else "cached") for n in NETWORK_NAMES}


def test_damaged_outputs_are_not_taken_as_complete(tmp_path, tiny_bundle):
    net = select_networks(tiny_bundle, only=("text_encoder",))[0]
    assert export_graph(net, tmp_path, "test").status == "built"
    graph = tmp_path / "text_encoder" / "1" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:100])  # truncated by a crash or a disk-full
    assert export_graph(net, tmp_path, "test").status == "built"
    (tmp_path / "text_encoder" / "1" / MANIFEST).unlink()  # interrupted before the manifest
    assert export_graph(net, tmp_path, "test").status == "built"
    assert export_graph(net, tmp_path, "test").status == "cached"


def test_a_graph_failing_parity_is_reported_and_left_incomplete(tmp_path, tiny_bundle):
    import dataclasses

    net = select_networks(tiny_bundle, only=("vae_decoder",))[0]
    assert export_graph(net, tmp_path, "test").status == "built"
    net.spec = dataclasses.replace(net.spec, tolerance=0.0)  # no fp32 export is bit-exact
    results = run_export([net], tmp_path, "test")
    assert results[0].status == "failed" and "beyond tolerance" in results[0].error
    version_dir = tmp_path / "vae_decoder" / "1"
    assert not (version_dir / MANIFEST).exists()  # the old graph no longer looks current
    assert not list((tmp_path / "vae_decoder").glob(".staging-*"))
    report = json.loads((tmp_path / "parity_report.json").read_text())
    assert report["graphs"]["vae_decoder"]["status"] == "failed"
