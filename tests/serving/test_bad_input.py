"""The bad-input matrix: client mistakes sent with raw tritonclient to every model a client can
reach, leaf graphs included. Each must come back INVALID_ARGUMENT naming the field (never
INTERNAL, never accepted), and the server stays ready after all of them."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from xsyn.api.tensors import array_input, bytes_input
from xsyn.export.networks import select_networks

pytestmark = pytest.mark.slow
IMAGE = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
GOOD_SYNTHESIS = {"boxes": [[8.0, 8.0, 40.0, 40.0]], "class_names": ["Knife"], "steps": 2}


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (valid CRC) over a tiny image's data."""
    buf = io.BytesIO()
    Image.fromarray(IMAGE[:8, :8]).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _leaf_cases(bundle):
    """(label, model, inputs, text the error must contain) for each leaf graph."""
    nets = {n.spec.name: n for n in select_networks(bundle)}
    rng = np.random.default_rng(0)

    def sample(name, **changes):
        spec = nets[name].spec
        inputs = {k: v[:1] if spec.max_batch_size else v for k, v in nets[name].sample_inputs(rng).items()}
        inputs.update(changes)
        return name, {t.name: spec.to_declared_shape(t, inputs[t.name]) for t in spec.inputs}

    vocab = bundle.text_encoder.config.vocab_size
    ids = nets["text_encoder"].sample_inputs(rng)["input_ids"][:1].copy()
    big_ids, negative_ids = ids.copy(), ids.copy()
    big_ids[0, 3], negative_ids[0, 3] = vocab + 7, -1
    dec = nets["sam_decoder"].sample_inputs(rng)
    p = dec["point_coords"].shape[0]
    labels = dec["point_labels"].copy()
    labels[0, 0] = 7
    nan_latent = nets["vae_decoder"].sample_inputs(rng)["latent"][:1].copy()
    nan_latent[0, 0, 0, 0] = np.nan
    return [
        ("token id past the vocabulary", *sample("text_encoder", input_ids=big_ids), "input_ids"),
        ("negative token id", *sample("text_encoder", input_ids=negative_ids), "input_ids"),
        ("timestep out of range", *sample("unet", timestep=np.array([5000.0], np.float32)), "timestep"),
        ("box mask neither 0 nor 1", *sample("unet", box_masks=np.full((1, 30), 0.5, np.float32)), "box_masks"),
        ("NaN latent", *sample("vae_decoder", latent=nan_latent), "NaN"),
        ("unknown point label", *sample("sam_decoder", point_labels=labels), "point_labels"),
        ("orig_im_size zero", *sample("sam_decoder", orig_im_size=np.array([0, 64], np.float32)), "orig_im_size"),
        ("orig_im_size negative", *sample("sam_decoder", orig_im_size=np.array([-5, 64], np.float32)), "orig_im_size"),
        ("orig_im_size huge", *sample("sam_decoder", orig_im_size=np.array([8192, 8192], np.float32)), "orig_im_size"),
        ("outputs over the byte budget", *sample("sam_decoder", orig_im_size=np.array([4096, 4096], np.float32)),
         "max_output_bytes"),
        ("points and labels disagree", *sample("sam_decoder", point_labels=dec["point_labels"][:, :2]), "num_points"),
        ("prompt sets disagree", *sample("sam_decoder", point_labels=dec["point_labels"][: p - 1]), "num_prompts"),
        ("mask batch neither 1 nor P",
         *sample("sam_decoder", mask_input=np.zeros((2,) + dec["mask_input"].shape[1:], np.float32)), "mask_batch"),
        ("has_mask_input 2", *sample("sam_decoder", has_mask_input=np.array([2.0], np.float32)), "has_mask_input"),
        ("wrong image side", "sam_image_encoder",
         {"image": np.zeros((1, 3, 17, 17), np.float32)}, "image"),
        ("NaN encoder input", "sam_image_encoder",
         {"image": np.full((1, 3) + nets["sam_image_encoder"].spec.inputs[0].shape[2:], np.nan, np.float32)}, "NaN"),
    ]


def _pipeline_cases():
    """(label, model, inputs, text the error must contain) for the two pipeline models."""
    def synth(request, image=IMAGE):
        payload = request if isinstance(request, bytes) else json.dumps(request).encode()
        inputs = {"request": payload}
        inputs["image_bytes" if isinstance(image, bytes) else "image"] = image
        return "xsyn", inputs

    return [
        ("steps of the wrong type", *synth({**GOOD_SYNTHESIS, "steps": "many"}), "steps"),
        ("boxes nested wrongly", *synth({**GOOD_SYNTHESIS, "boxes": [[[1, 2, 3, 4]]]}), "boxes"),
        ("JSON nested past the parser", *synth(b"[" * 200000 + b"]" * 200000), "JSON"),
        ("NaN guidance (JSON NaN token)", *synth(b'{"boxes": [[8, 8, 40, 40]], "class_names": ["Knife"], '
                                                 b'"guidance": NaN}'), "guidance"),
        ("steps past the scheduler", *synth({**GOOD_SYNTHESIS, "steps": 1000}), "steps"),
        ("steps over the server's budget", *synth({**GOOD_SYNTHESIS, "steps": 500}), "steps"),
        ("PNG header claiming 60000 x 60000", *synth(GOOD_SYNTHESIS, _png_claiming(60000, 60000)), "image"),
        ("PNG header claiming 5000 x 4000", *synth(GOOD_SYNTHESIS, _png_claiming(5000, 4000)), "image"),
        ("raw array over the pixel limit", *synth(GOOD_SYNTHESIS, np.zeros((4097, 8, 3), np.uint8)), "image"),
        ("corrupt image bytes", *synth(GOOD_SYNTHESIS, b"\x89PNG not really"), "image"),
        ("box outside the image", *synth({**GOOD_SYNTHESIS, "boxes": [[8.0, 8.0, 400.0, 40.0]]}), "boxes.0"),
        ("NaN AMG threshold", "apsam", {"request": json.dumps({"op": "generate", "key": "k"}).replace(
            '"key": "k"', '"key": "k", "pred_iou_thresh": NaN').encode()}, "pred_iou_thresh"),
        ("unknown op", "apsam", {"request": b'{"op": "explode"}'}, "op"),
        ("label outside SAM's set", "apsam",
         {"request": json.dumps({"op": "segment", "key": "k", "points": [[1, 1]], "labels": [4]}).encode()}, "labels"),
        ("key of the wrong type", "apsam",
         {"request": json.dumps({"op": "segment", "key": 5, "points": [[1, 1]], "labels": [1]}).encode()}, "key"),
    ]


def _send(client, model, inputs):
    tensors = [bytes_input(name, value) if isinstance(value, bytes) else array_input(name, value)
               for name, value in inputs.items()]
    return client.infer(model, tensors)


def test_every_client_mistake_is_invalid_argument_naming_the_field(tiny_server, tiny_bundle):
    client = grpcclient.InferenceServerClient(tiny_server.options.grpc_url)
    wrong = []
    for label, model, inputs, named in _leaf_cases(tiny_bundle) + _pipeline_cases():
        try:
            _send(client, model, inputs)
            wrong.append(f"{model}: {label}: accepted")
        except InferenceServerException as exc:
            if exc.status() != "StatusCode.INVALID_ARGUMENT" or named not in exc.message():
                wrong.append(f"{model}: {label}: {exc.status()} {exc.message()[:200]}")
    assert wrong == []
    assert client.is_server_ready()
    _send(client, "xsyn", {"request": json.dumps(GOOD_SYNTHESIS).encode(), "image": IMAGE})  # still serves


def test_an_unknown_key_is_not_found_and_restricted_protocols_need_the_key(tiny_server):
    client = grpcclient.InferenceServerClient(tiny_server.options.grpc_url)
    with pytest.raises(InferenceServerException) as found:
        _send(client, "apsam", {"request": json.dumps({"op": "segment", "key": "f" * 32, "points": [[1, 1]],
                                                       "labels": [1]}).encode()})
    assert found.value.status() == "StatusCode.NOT_FOUND"
    for call in (lambda h: client.get_model_repository_index(headers=h),
                 lambda h: client.get_model_config("unet", headers=h),
                 lambda h: client.unload_model("unet", headers=h),
                 lambda h: client.get_system_shared_memory_status(headers=h),
                 lambda h: client.register_system_shared_memory("mine", "/xsyn_probe", 64, headers=h),
                 lambda h: client.update_log_settings({"log_verbose_level": 1}, headers=h),
                 lambda h: client.get_trace_settings(headers=h)):
        with pytest.raises(InferenceServerException, match="This protocol is restricted"):
            call(None)
    assert client.get_model_config("unet", headers=tiny_server.admin_headers)  # the operator's key opens it
    assert client.is_model_ready("unet")  # health, metadata and inference stay open
    assert client.get_model_metadata("xsyn")
    _http_restricted(tiny_server)


def _http_restricted(server) -> None:
    """The HTTP endpoint: the same protocols closed, opened by the ``xsyn-admin-key`` header."""
    import urllib.error
    import urllib.request

    from xsyn.serving.server import ADMIN_HEADER

    base = f"http://127.0.0.1:{server.options.http_port}"
    for path, body in (("/v2/repository/index", b"{}"), ("/v2/logging", b'{"log_verbose_level": 1}')):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(base + path, data=body, method="POST"), timeout=10)
        assert refused.value.code == 403 and b"restricted" in refused.value.read()
    opened = urllib.request.Request(base + "/v2/repository/index", data=b"{}", method="POST",
                                    headers={ADMIN_HEADER: server.options.admin_key})
    with urllib.request.urlopen(opened, timeout=10) as answer:
        assert {m["name"] for m in json.loads(answer.read())} >= {"xsyn", "apsam", "unet"}


def _stub_memory(server, model: str) -> tuple[int, int]:
    """(current RSS, peak RSS) bytes of ``model``'s stub of this server."""
    from pathlib import Path

    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if len(args) > 8 and args[2].decode().startswith(server.shm_prefix) and f"/{model}/1/".encode() in args[1]:
                status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines())
                return int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024
        except (OSError, ValueError):
            continue
    raise AssertionError(f"no {model} stub")


def test_automatic_masks_on_a_large_image_stay_within_the_memory_budget(tiny_server):
    from xsyn.client.sdk import XsynClient

    yy, xx = np.mgrid[0:2048, 0:2048]
    image = np.stack([(xx // 7) % 256, (yy // 5) % 256, ((xx + yy) // 9) % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    rss_before, _ = _stub_memory(tiny_server, "apsam")
    with XsynClient(tiny_server.options.grpc_url) as client:
        key = client.embed(buf.getvalue()).key
        found = client.generate_masks(key)
    _, peak = _stub_memory(tiny_server, "apsam")
    # before the budget, one batch of 64 points held 64 x 3 x 2048 x 2048 float32 logits (3 GiB)
    assert peak - rss_before < 1024 * 2**20, f"apsam stub peaked {(peak - rss_before) / 2**20:.0f} MiB over its RSS"
    assert found.image_size == [2048, 2048] and len(found.masks) <= 256
