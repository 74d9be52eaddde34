"""Every leaf model behind a real tritonserver: raw gRPC answers, batching, bad requests."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from xsyn.export.networks import select_networks
from xsyn.runtimes import OnnxRuntimeSession
from xsyn.serving.command import infer

pytestmark = pytest.mark.slow


def test_every_leaf_model_answers_like_in_process_onnxruntime(client, tiny_server, tiny_repo, tiny_bundle):
    index = {m["name"]: m["state"] for m in client.get_model_repository_index(
        headers=tiny_server.admin_headers, as_json=True)["models"]}
    nets = select_networks(tiny_bundle)
    assert index == {**{net.spec.name: "READY" for net in nets}, "xsyn": "READY", "apsam": "READY"}
    for net in nets:
        inputs = net.sample_inputs(np.random.default_rng(11))
        served = infer(client, net.spec, inputs)
        local = OnnxRuntimeSession(tiny_repo / net.spec.name / "1" / "model.onnx", threads=1).run(inputs)
        for name, value in local.items():
            np.testing.assert_allclose(served[name], value, rtol=0, atol=1e-6 * max(1.0, np.abs(value).max()),
                                       err_msg=f"{net.spec.name}.{name}")


def _unet_request(tiny_bundle, seed):
    net = select_networks(tiny_bundle, only=("unet",))[0]
    inputs = {k: v[:1] for k, v in net.sample_inputs(np.random.default_rng(seed)).items()}
    return net.spec, inputs


def _stats(client, model):
    s = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def test_concurrent_unet_requests_meet_in_the_dynamic_batcher(client, tiny_bundle):
    n = 8
    before = _stats(client, "unet")
    requests = [_unet_request(tiny_bundle, seed) for seed in range(n)]
    results, errors = [None] * n, []

    def send(i):
        try:
            results[i] = infer(client, *requests[i])
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    inferences, executions = (a - b for a, b in zip(_stats(client, "unet"), before))
    assert inferences == n
    assert executions < n, f"{n} requests ran in {executions} executions"
    # batching must not mix up requests: each answer equals its own unbatched run
    alone = infer(client, *requests[3])
    np.testing.assert_allclose(results[3]["noise_pred"], alone["noise_pred"], atol=1e-5)


def _raw(client, model, tensors):
    inputs = []
    for name, value, dtype in tensors:
        t = grpcclient.InferInput(name, list(value.shape), dtype)
        t.set_data_from_numpy(value)
        inputs.append(t)
    return client.infer(model, inputs)


def test_bad_requests_get_invalid_argument_and_the_server_stays_ready(client, tiny_bundle):
    image = np.zeros((1, 3, 128, 128), np.float32)
    spec, good_unet = _unet_request(tiny_bundle, 0)
    unet_tensors = [(t.name, good_unet[t.name].reshape(1, 1) if t.name == "timestep" else good_unet[t.name],
                     "FP32") for t in spec.inputs]
    sam = select_networks(tiny_bundle, only=("sam_decoder",))[0]
    sam_in = sam.sample_inputs(np.random.default_rng(0))
    too_many_points = dict(sam_in, point_coords=np.zeros((1, 40, 2), np.float32),
                           point_labels=np.ones((1, 40), np.float32))
    nan_tokens = dict(sam_in, mask_tokens=np.full((1, 4, 32), np.nan, np.float32))
    cases = {
        "wrong dtype": ("sam_image_encoder", [("image", image.astype(np.float64), "FP64")], "FP64"),
        "wrong rank": ("sam_image_encoder", [("image", image[0], "FP32")], "image"),
        "wrong size": ("sam_image_encoder", [("image", np.zeros((1, 3, 129, 128), np.float32), "FP32")], "image"),
        "batch above max": ("unet", [(n, np.repeat(v, 9, axis=0), d) for n, v, d in unet_tensors], "batch"),
        "missing input": ("unet", unet_tensors[:-1], "box_masks"),
        "points above profile": ("sam_decoder", [(k, v, "FP32") for k, v in too_many_points.items()], "point_coords"),
        "NaN": ("sam_decoder", [(k, v, "FP32") for k, v in nan_tokens.items()], "mask_tokens"),
    }
    for case, (model, tensors, named) in cases.items():
        with pytest.raises(InferenceServerException) as info:
            _raw(client, model, tensors)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", (case, info.value)
        assert named in info.value.message(), (case, info.value.message())
        assert client.is_server_ready(), case
    assert _raw(client, "unet", unet_tensors).as_numpy("noise_pred").shape == (1, 4, 32, 32)
