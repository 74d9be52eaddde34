"""Triton Python-backend model ``xsyn``: the synthesis pipeline over BLS calls to the leaf graphs.

Tensors (``max_batch_size 0``, one synthesis per request):

inputs
    ``request`` BYTES ``[1]``: the :class:`~xsyn.ensembles.schema.SynthesisRequest` as JSON;
    ``image`` UINT8 ``[H, W, 3]`` RGB, or ``image_bytes`` BYTES ``[1]`` (PNG/JPEG), one of the two.
outputs
    ``image`` UINT8 ``[H, W, 3]`` final (occluded) image; ``response`` BYTES ``[1]`` the
    :class:`~xsyn.ensembles.schema.SynthesisResponse` JSON; ``unoccluded_image`` UINT8
    ``[H, W, 3]`` and ``attention_maps`` UINT8 ``[N, H, W]``, empty unless asked for.

Errors are answered per request with the status of the product's error (INVALID_ARGUMENT
naming the field, CANCELLED between denoising steps, INTERNAL otherwise); the stub never dies.
Several instances run side by side so that concurrent requests' UNet steps meet in the UNet's
dynamic batcher.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xsyn.errors import InvalidArgument, XsynError

INPUTS = ("request", "image", "image_bytes")
OUTPUTS = ("image", "response", "unoccluded_image", "attention_maps")


def triton_error(pb, exc: Exception):
    """``pb_utils.TritonError`` with the code matching the product error's status."""
    codes = {"INVALID_ARGUMENT": pb.TritonError.INVALID_ARG, "NOT_FOUND": pb.TritonError.NOT_FOUND,
             "CANCELLED": pb.TritonError.CANCELLED, "UNAVAILABLE": pb.TritonError.UNAVAILABLE}
    status = getattr(exc, "status", "INTERNAL")
    message = str(exc) if isinstance(exc, XsynError) else f"internal error: {type(exc).__name__}: {exc}"
    return pb.TritonError(message, codes.get(status, pb.TritonError.INTERNAL))


def read_image(pb, request) -> np.ndarray:
    """The request's image from ``image`` (uint8 array) or ``image_bytes`` (encoded)."""
    from xsyn.ensembles.images import check_image, decode_image

    array = pb.get_input_tensor_by_name(request, "image")
    encoded = pb.get_input_tensor_by_name(request, "image_bytes")
    if (array is None) == (encoded is None):
        raise InvalidArgument("image: send exactly one of `image` (uint8 [H, W, 3]) and `image_bytes` (PNG/JPEG)")
    if array is not None:
        return check_image(array.as_numpy())
    return check_image(decode_image(bytes(encoded.as_numpy().reshape(-1)[0])))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        from xsyn.ensembles.assets import PipelineAssets
        from xsyn.ensembles.runner import BlsRunner
        from xsyn.ensembles.synthesis import Synthesizer, preload

        self.pb = pb
        preload()
        repo = Path(args["model_repository"]).parent
        self.assets = PipelineAssets.load(repo)
        self.synthesizer = Synthesizer(BlsRunner(pb, self.assets.specs), self.assets)

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        from xsyn.ensembles.schema import parse_request

        pb = self.pb
        try:
            payload = pb.get_input_tensor_by_name(request, "request")
            if payload is None:
                raise InvalidArgument("request: missing (JSON SynthesisRequest)")
            req = parse_request(bytes(payload.as_numpy().reshape(-1)[0]))
            image = read_image(pb, request)
            cancelled = getattr(request, "is_cancelled", lambda: False)
            out = self.synthesizer.run(req, image, should_stop=cancelled)
        except Exception as exc:  # answered per request; the stub stays up
            return pb.InferenceResponse(output_tensors=[], error=triton_error(pb, exc))
        h, w = out.image.shape[:2]
        extras = {
            "unoccluded_image": out.unoccluded_image if out.unoccluded_image is not None else np.zeros((0, 0, 3), np.uint8),
            "attention_maps": out.attention_maps if out.attention_maps is not None else np.zeros((0, h, w), np.uint8),
        }
        tensors = [pb.Tensor("image", out.image),
                   pb.Tensor("response", np.array([out.response.model_dump_json().encode()], dtype=np.object_))]
        tensors += [pb.Tensor(name, np.ascontiguousarray(value)) for name, value in extras.items()]
        return pb.InferenceResponse(output_tensors=tensors)
