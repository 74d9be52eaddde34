"""The torch runtime: ``model.pt2`` programs written by the export, served by the leaf models.

References are the PyTorch export wrappers (the modules the graphs were exported from), never
our own output. fp32 on the CPU must match within each spec's tolerance; bf16 (the lower
precision the CPU runs) within the stated looser bound. fp16 / bf16 on a GPU are not checked
here (no GPU on the CI machine); ``xsyn bench`` reports them where a GPU exists.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from xsyn.errors import FailedPrecondition, InvalidArgument
from xsyn.export.networks import select_networks
from xsyn.export.onnx_export import torch_outputs
from xsyn.runtimes import TorchProgram, open_runtime, resolve_device
from xsyn.serving.command import infer
from xsyn.settings import ServerSettings

BF16_TOLERANCE = 0.08  # max abs error / max |fp32 output|, every output of the tiny UNet


def test_export_writes_a_parity_checked_program_per_network(tiny_repo):
    report = json.loads((tiny_repo / "parity_report.json").read_text())["graphs"]
    for name, entry in report.items():
        assert (tiny_repo / name / "1" / "model.pt2").is_file(), name
        outputs = entry["torch_program"]
        assert outputs and all(v["ok"] for v in outputs.values()), (name, outputs)


def test_programs_match_the_pytorch_modules_at_other_shapes(tiny_repo, tiny_bundle):
    """Shapes the export never traced: batch 3, 5 prompt sets with one shared mask input, an
    image size whose masks come back at 37 x 300 (a data-dependent output shape)."""
    for net in select_networks(tiny_bundle):
        program = open_runtime(tiny_repo / net.spec.name / "1", "torch", ServerSettings())
        assert isinstance(program, TorchProgram) and program.precision == "fp32"
        inputs = net.sample_inputs(np.random.default_rng(7))
        if net.spec.max_batch_size:
            inputs = {k: np.concatenate([v, v, v])[:3] for k, v in inputs.items()}
        if net.spec.name == "sam_decoder":
            inputs.update(point_coords=inputs["point_coords"][:5], point_labels=inputs["point_labels"][:5],
                          orig_im_size=np.array([37.0, 300.0], np.float32))
        got = program.run(inputs)
        for t, ref in zip(net.spec.outputs, torch_outputs(net, inputs)):
            scale = max(float(np.abs(ref).max()), 1e-12)
            assert got[t.name].shape == ref.shape, (net.spec.name, t.name)
            assert np.abs(got[t.name] - ref).max() <= net.spec.tolerance * scale, (net.spec.name, t.name)


def test_bf16_on_the_cpu_stays_near_fp32_attention_maps_included(tiny_repo, tiny_bundle):
    net = select_networks(tiny_bundle, only=("unet",))[0]
    fp32 = TorchProgram(tiny_repo / "unet" / "1" / "model.pt2", net.spec, "cpu", "fp32")
    bf16 = TorchProgram(tiny_repo / "unet" / "1" / "model.pt2", net.spec, "cpu", "bf16")
    inputs = net.sample_inputs(np.random.default_rng(3))
    ref, low = fp32.run(inputs), bf16.run(inputs)
    assert set(low) == {t.name for t in net.spec.outputs} and any(n.startswith("attn_") for n in low)
    for name, value in ref.items():
        assert low[name].dtype == np.float32
        err = np.abs(low[name] - value).max() / max(float(np.abs(value).max()), 1e-12)
        assert 0 < err <= BF16_TOLERANCE, (name, err)  # > 0: bf16 really ran


def test_bad_devices_precisions_and_runtimes_fail_with_one_line(tiny_repo, tmp_path):
    with pytest.raises(FailedPrecondition, match="CUDA is not available"):
        resolve_device("cuda:0", "auto")
    with pytest.raises(FailedPrecondition, match="fp16"):
        resolve_device("cpu", "fp16")
    with pytest.raises(InvalidArgument, match="device 'tpu'"):
        resolve_device("tpu", "auto")
    assert resolve_device("cpu", "auto") == ("cpu", "fp32")
    with pytest.raises(InvalidArgument, match="runtime 'jax'"):
        open_runtime(tiny_repo / "unet" / "1", "jax")
    folder = tmp_path / "unet" / "1"
    folder.mkdir(parents=True)
    (folder / "network.json").write_text((tiny_repo / "unet" / "1" / "network.json").read_text())
    with pytest.raises(FailedPrecondition, match="no exported program"):
        open_runtime(folder, "torch", ServerSettings())


def test_served_torch_leaf_models_match_the_pytorch_modules(tiny_server_torch, tiny_bundle):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(tiny_server_torch.options.grpc_url)
    config = client.get_model_config("unet", headers=tiny_server_torch.admin_headers, as_json=True)["config"]["parameters"]
    assert config["runtime"]["string_value"] == "torch" and config["device"]["string_value"] == "cpu"
    for net in select_networks(tiny_bundle):
        inputs = net.sample_inputs(np.random.default_rng(11))
        served = infer(client, net.spec, inputs)
        for t, ref in zip(net.spec.outputs, torch_outputs(net, inputs)):
            scale = max(float(np.abs(ref).max()), 1e-12)
            assert np.abs(served[t.name] - ref).max() <= net.spec.tolerance * scale, (net.spec.name, t.name)


def test_in_process_pipeline_keeps_its_loop_on_the_runtime_device_and_matches_onnxruntime(tiny_repo):
    """The same request through LocalRunner on the torch runtime (device tensors through the
    denoising loop: ``infer_tensors``) and on ONNX Runtime (host arrays): same image within one
    grey level, same items."""
    from xsyn.api.synthesis import parse_request
    from xsyn.ensembles.assets import PipelineAssets
    from xsyn.ensembles.runner import LocalRunner
    from xsyn.ensembles.synthesis import Synthesizer

    assets = PipelineAssets.load(tiny_repo)
    torch_runner = LocalRunner(tiny_repo, "torch", ServerSettings(runtime="torch"))
    assert torch_runner.device == "cpu"
    calls = []
    infer_tensors = torch_runner.infer_tensors
    torch_runner.infer_tensors = lambda model, tensors, outputs=None: calls.append(model) or infer_tensors(
        model, tensors, outputs)
    request = parse_request({"boxes": [[30, 30, 120, 110]], "class_names": ["Gun"], "steps": 4, "seed": 2})
    image = np.random.default_rng(4).integers(0, 256, (160, 200, 3), dtype=np.uint8)
    on_torch = Synthesizer(torch_runner, assets).run(request, image)
    on_ort = Synthesizer(LocalRunner(tiny_repo, "onnxruntime"), assets).run(request, image)
    assert calls.count("unet") == 4
    assert np.abs(on_torch.image.astype(int) - on_ort.image.astype(int)).max() <= 1
    assert [i.class_name for i in on_torch.response.items] == [i.class_name for i in on_ort.response.items]
