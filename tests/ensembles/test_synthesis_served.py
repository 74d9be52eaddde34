"""The `xsyn` pipeline model through a real tritonserver (tiny preset)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from xsyn.api.tensors import bytes_input
from xsyn.client.sdk import XsynClient
from xsyn.errors import InvalidArgument

pytestmark = pytest.mark.slow



@pytest.fixture
def tiny_server(any_server):
    """Every served test of this module runs on both leaf runtimes (ONNX Runtime and torch)."""
    return any_server

def _image(seed=0, h=256, w=256):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_served_image_equals_diffusers_gligen_pipeline(tiny_server, tiny_bundle):
    """Reference: StableDiffusionGLIGENPipeline (inpainting, DDIM with the SD-1.4 constants, eta 0,
    guidance 7.5, scheduled-sampling beta 1, 8 steps) on the same tiny weights, seeded with
    ``torch.manual_seed(seed)`` (it draws the posterior sample and all step noise from the global
    RNG; its own ``generator``, which must be given so that the global RNG is not used for it,
    only makes a 9-channel latent that the loop discards). Its VAE posterior is made contiguous:
    CPU convolutions may return channels-last tensors, and ``torch.randn_like`` would then lay the
    same random numbers out in another order. CAR, BOM and background compositing are off.
    Tolerance: 1 grey level."""
    from diffusers import DDIMScheduler, StableDiffusionGLIGENPipeline
    from PIL import Image

    from xsyn.ensembles.denoise import SD14_SCHEDULER
    from xsyn.export.tokenizer import load_tokenizer

    image, seed, steps = _image(1), 5, 8
    boxes = [[30.0, 40.0, 120.0, 150.0], [140.0, 90.0, 230.0, 200.0]]
    classes = ["Knife", "Gun"]
    with XsynClient(tiny_server.options.grpc_url) as client:
        served = client.synthesize({"boxes": boxes, "class_names": classes, "seed": seed, "steps": steps,
                                    "car": False, "bom_alpha": 0.0, "composite_background": False}, image).image

    b = tiny_bundle
    pipe = StableDiffusionGLIGENPipeline(vae=b.vae, text_encoder=b.text_encoder, tokenizer=load_tokenizer(b.tokenizer_dir),
                                         unet=b.unet, scheduler=DDIMScheduler(**SD14_SCHEDULER), safety_checker=None,
                                         feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    encode = pipe.vae.encode

    def contiguous_posterior(x, *args, **kwargs):
        out = encode(x, *args, **kwargs)
        for name in ("parameters", "mean", "logvar", "std", "var"):
            setattr(out.latent_dist, name, getattr(out.latent_dist, name).contiguous())
        return out

    pipe.vae.encode = contiguous_posterior
    torch.manual_seed(seed)
    reference = pipe(prompt=" ".join(classes), gligen_phrases=classes, gligen_boxes=[[v / 256 for v in bx] for bx in boxes],
                     gligen_inpaint_image=Image.fromarray(image), gligen_scheduled_sampling_beta=1.0,
                     num_inference_steps=steps, guidance_scale=7.5, eta=0.0, output_type="np", height=256,
                     width=256, generator=torch.Generator().manual_seed(0)).images[0]
    reference = np.round(reference * 255).astype(np.int16)
    diff = np.abs(served.astype(np.int16) - reference)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    assert np.abs(served.astype(np.int16) - image).max() > 10  # the boxes were really re-painted


def _check_items(response, w, h):
    for item in response.items:
        x0, y0, x1, y1 = item.box
        assert 0 <= x0 < x1 <= w + 1e-6 and 0 <= y0 < y1 <= h + 1e-6
        if item.mask is not None:
            mask = mask_utils.decode({"size": item.mask["size"], "counts": item.mask["counts"].encode()})
            assert mask.shape == (h, w)


def test_modify_and_add_end_to_end(tiny_server):
    from xsyn.client.sample_data import render

    image = render(np.random.default_rng(2), width=300, height=200)[0]  # a phantom bag: the tiny preset's domain
    boxes, classes = [[20.0, 30.0, 110.0, 120.0], [150.0, 60.0, 260.0, 170.0]], ["Knife", "Wrench"]
    with XsynClient(tiny_server.options.grpc_url) as client:
        request = {"boxes": boxes, "class_names": classes, "mode": "modify", "steps": 6, "seed": 11,
                   "return_attention_maps": True, "return_mps_points": True, "return_unoccluded_image": True}
        first = client.synthesize(request, image)
        again = client.synthesize(request, image)
        added = client.synthesize(dict(request, mode="add"), image)

    r = first.response
    assert r.status == "ok" and [i.source for i in r.items] == ["generated", "generated"]
    assert [i.class_name for i in r.items] == classes and all(i.mask for i in r.items)
    # n = 4 -> 2^4 - 1 points, fewer only when CAR's first mask has fewer pixels than that (the
    # trained tiny SAM's mask for the Wrench box of this bag is a speck: 1 point)
    assert all(1 <= len(i.mps_points) <= 15 for i in r.items) and len(r.items[0].mps_points) == 15
    assert r.occlusion["applied"] and r.settings["profile"] == "tiny"
    assert first.image.shape == first.unoccluded_image.shape == (200, 300, 3)
    assert first.attention_maps.shape == (2, 200, 300)
    assert not np.array_equal(first.image, first.unoccluded_image)  # BOM changed the output
    _check_items(r, 300, 200)
    assert np.array_equal(first.image, again.image)  # same request and seed -> same output
    assert first.response.items == again.response.items

    a = added.response
    assert a.status == "ok" and [i.source for i in a.items] == ["original", "original", "generated"]
    # the tiny profile adds the phantom classes its weights were trained on (class_groups/phantom.json)
    assert a.settings["class_groups"] == "Phantom"
    assert a.items[-1].class_name in ("Knife", "Gun", "Wrench", "Scissors", "Pliers", "Hammer")
    _check_items(a, 300, 200)


def _unet_stats(client):
    s = client.get_inference_statistics("unet", as_json=True)["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def test_four_concurrent_requests_complete_with_batched_unet_steps(tiny_server, client):
    before = _unet_stats(client)
    results, errors = [None] * 4, []

    def run(i):
        try:
            with XsynClient(tiny_server.options.grpc_url) as c:
                results[i] = c.synthesize({"boxes": [[20.0, 20.0, 120.0, 120.0]], "class_names": ["Gun"], "seed": i,
                                           "steps": 12, "car": False, "bom_alpha": 0.0}, _image(i))
        except Exception as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and all(r.response.status == "ok" for r in results)
    inferences, executions = (a - b for a, b in zip(_unet_stats(client), before))
    assert inferences == 4 * 12 * 2  # each step sends the [uncond, cond] pair
    assert executions < 4 * 12, f"{inferences} UNet samples ran in {executions} executions"


BAD_REQUESTS = {
    "box outside the image": ({"boxes": [[10, 10, 300, 50]], "class_names": ["Knife"]}, "boxes.0"),
    "inverted box": ({"boxes": [[50, 10, 10, 50]], "class_names": ["Knife"]}, "boxes"),
    "more than 30 objects": ({"boxes": [[1, 1, 5, 5]] * 31, "class_names": ["Knife"] * 31}, "boxes"),
    "NaN in a box": ({"boxes": [[float("nan"), 1, 5, 5]], "class_names": ["Knife"]}, "boxes"),
    "empty class": ({"boxes": [[1, 1, 50, 50]], "class_names": [" "]}, "class_names"),
    "unknown class": ({"boxes": [[1, 1, 50, 50]], "class_names": ["Banana"]}, "class_names.0"),
    "steps 0": ({"boxes": [[1, 1, 50, 50]], "class_names": ["Knife"], "steps": 0}, "steps"),
    "steps over 1000": ({"boxes": [[1, 1, 50, 50]], "class_names": ["Knife"], "steps": 1001}, "steps"),
    "boxes and classes differ": ({"boxes": [[1, 1, 50, 50]], "class_names": ["Knife", "Gun"]}, "class_names"),
    "modify without boxes": ({"mode": "modify"}, "needs at least one box"),
    "unknown mode": ({"boxes": [[1, 1, 50, 50]], "class_names": ["Knife"], "mode": "remove"}, "mode"),
    "negative guidance": ({"boxes": [[1, 1, 50, 50]], "class_names": ["Knife"], "guidance": -1}, "guidance"),
    "bom_alpha above 1": ({"boxes": [[1, 1, 50, 50]], "class_names": ["Knife"], "bom_alpha": 2}, "bom_alpha"),
    "negative seed": ({"boxes": [[1, 1, 50, 50]], "class_names": ["Knife"], "seed": -1}, "seed"),
    "unknown class groups": ({"mode": "add", "class_groups": "nope"}, "class_groups"),
    "unknown field": ({"mode": "add", "colour": "red"}, "colour"),
    "box with 3 values": ({"boxes": [[1, 1, 50]], "class_names": ["Knife"]}, "boxes"),
}


def _raw(client, request_bytes, image=None, image_bytes=None):
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, value, dtype in (("request", request_bytes, "BYTES"), ("image", image, None), ("image_bytes", image_bytes, "BYTES")):
        if value is None:
            continue
        arr = np.array([value], dtype=np.object_) if dtype == "BYTES" else value
        t = grpcclient.InferInput(name, list(arr.shape), dtype or {"uint8": "UINT8", "float32": "FP32"}[str(arr.dtype)])
        t.set_data_from_numpy(arr)
        inputs.append(t)
    return client.infer("xsyn", inputs)


def test_bad_requests_are_invalid_argument_naming_the_field(tiny_server, client):
    import json

    from tritonclient.utils import InferenceServerException

    image = _image(0, 100, 200)
    cases = {name: (json.dumps(req).encode(), image, None, field) for name, (req, field) in BAD_REQUESTS.items()}
    ok_request = json.dumps({"boxes": [[10, 10, 60, 60]], "class_names": ["Knife"], "steps": 2, "car": False}).encode()
    cases.update({
        "malformed JSON": (b"{boxes: ", image, None, "request"),
        "corrupt image bytes": (ok_request, None, b"\x89PNG\r\n\x1a\nbroken", "image"),
        "oversized image": (ok_request, np.zeros((4097, 40, 3), np.uint8), None, "image"),
        "float image": (ok_request, image.astype(np.float32), None, "image"),
        "no image": (ok_request, None, None, "image"),
    })
    assert len(cases) >= 15
    for name, (payload, array, encoded, field) in cases.items():
        with pytest.raises(InferenceServerException) as info:
            _raw(client, payload, array, encoded)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", (name, info.value.message())
        assert field in info.value.message(), (name, info.value.message())
        assert client.is_server_ready(), name
    done = _raw(client, ok_request, image)
    assert done.as_numpy("image").shape == (100, 200, 3)
    with XsynClient(tiny_server.options.grpc_url) as sdk, pytest.raises(InvalidArgument, match="steps"):
        sdk._call("xsyn", [bytes_input("request", b'{"steps": 0}')], lambda result: result)


def test_a_cancelled_request_stops_between_steps(tiny_server, client):
    import json
    import time

    import tritonclient.grpc as grpcclient

    before = _unet_stats(client)[0]
    payload = json.dumps({"boxes": [[10, 10, 90, 90]], "class_names": ["Knife"], "steps": 200, "car": False,
                          "bom_alpha": 0.0}).encode()
    inputs = []
    for name, value in (("request", np.array([payload], dtype=np.object_)), ("image", _image(3, 128, 128))):
        t = grpcclient.InferInput(name, list(value.shape), "BYTES" if value.dtype == np.object_ else "UINT8")
        t.set_data_from_numpy(value)
        inputs.append(t)
    outcome = {}
    call = client.async_infer("xsyn", inputs, callback=lambda result, error: outcome.update(error=error))
    deadline = time.monotonic() + 60
    while _unet_stats(client)[0] - before < 20 and time.monotonic() < deadline:  # a few steps ran
        time.sleep(0.05)
    call.cancel()
    time.sleep(3)
    settled = _unet_stats(client)[0]
    time.sleep(2)
    assert _unet_stats(client)[0] == settled, "denoising went on after the cancellation"
    assert settled - before < 200 * 2
    assert outcome.get("error") is not None and "CANCELLED" in str(outcome["error"].status())
    assert client.is_server_ready()
    with XsynClient(tiny_server.options.grpc_url) as sdk:
        assert sdk.synthesize({"boxes": [[10.0, 10.0, 90.0, 90.0]], "class_names": ["Knife"], "steps": 2},
                              _image(3, 128, 128)).response.status == "ok"
