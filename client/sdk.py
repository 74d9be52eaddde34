"""Typed gRPC client for the ``xsyn`` server (``tritonclient`` underneath).

Errors come back as the product's exceptions, mapped from the real gRPC status codes:
INVALID_ARGUMENT -> :class:`InvalidArgument`, NOT_FOUND -> :class:`NotFound`, UNAVAILABLE ->
:class:`Unavailable`, DEADLINE_EXCEEDED -> :class:`DeadlineExceeded`, CANCELLED ->
:class:`Cancelled`, anything else -> :class:`InternalError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from xsyn.errors import InvalidArgument, NotFound, Unavailable, XsynError
from xsyn.ensembles.schema import SynthesisRequest, SynthesisResponse


class DeadlineExceeded(XsynError):
    status = "DEADLINE_EXCEEDED"


class Cancelled(XsynError):
    status = "CANCELLED"


class InternalError(XsynError):
    status = "INTERNAL"


_BY_STATUS = {"INVALID_ARGUMENT": InvalidArgument, "NOT_FOUND": NotFound, "UNAVAILABLE": Unavailable,
              "DEADLINE_EXCEEDED": DeadlineExceeded, "CANCELLED": Cancelled}


def map_error(exc: Exception) -> XsynError:
    """A ``tritonclient`` exception -> the product exception of its gRPC status."""
    status = str(getattr(exc, "status", lambda: "")() or "").replace("StatusCode.", "")
    message = exc.message() if hasattr(exc, "message") else str(exc)
    return _BY_STATUS.get(status, InternalError)(message)


@dataclass
class SynthesisResult:
    """Final image uint8 ``[H, W, 3]``, the typed response, and the optional extras."""

    image: np.ndarray
    response: SynthesisResponse
    unoccluded_image: np.ndarray | None = None
    attention_maps: np.ndarray | None = None


class XsynClient:
    """Synchronous client. ``url``: gRPC ``host:port``; ``timeout``: seconds per call."""

    def __init__(self, url: str = "127.0.0.1:8001", timeout: float | None = 600.0, ssl: bool = False,
                 root_certificates: str | None = None, private_key: str | None = None,
                 certificate_chain: str | None = None) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.url = url
        self.timeout = timeout
        self._client = grpcclient.InferenceServerClient(url, ssl=ssl, root_certificates=root_certificates,
                                                        private_key=private_key, certificate_chain=certificate_chain)

    def synthesize(self, request: SynthesisRequest | dict, image: np.ndarray | bytes) -> SynthesisResult:
        """Run one synthesis. ``image``: uint8 ``[H, W, 3]`` RGB array or PNG/JPEG bytes."""
        req = request if isinstance(request, SynthesisRequest) else SynthesisRequest.model_validate(request)
        inputs = [self._bytes_input("request", req.model_dump_json(exclude_defaults=True).encode())]
        if isinstance(image, (bytes, bytearray)):
            inputs.append(self._bytes_input("image_bytes", bytes(image)))
        else:
            arr = np.ascontiguousarray(image)
            tensor = self._grpc.InferInput("image", list(arr.shape), "UINT8" if arr.dtype == np.uint8 else "FP32")
            tensor.set_data_from_numpy(arr)
            inputs.append(tensor)
        result = self._infer("xsyn", inputs)
        response = SynthesisResponse.model_validate_json(result.as_numpy("response").reshape(-1)[0])
        extras = {name: result.as_numpy(name) for name in ("unoccluded_image", "attention_maps")}
        return SynthesisResult(
            image=result.as_numpy("image"), response=response,
            unoccluded_image=extras["unoccluded_image"] if req.return_unoccluded_image else None,
            attention_maps=extras["attention_maps"] if req.return_attention_maps else None,
        )

    def _bytes_input(self, name: str, data: bytes):
        tensor = self._grpc.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
        return tensor

    def _infer(self, model: str, inputs):
        try:
            return self._client.infer(model, inputs, client_timeout=self.timeout)
        except Exception as exc:  # tritonclient raises InferenceServerException for every gRPC status
            raise map_error(exc) from None

    def health(self) -> dict:
        """Server liveness/readiness and every model's state."""
        try:
            index = self._client.get_model_repository_index(as_json=True).get("models", [])
            return {"live": self._client.is_server_live(), "ready": self._client.is_server_ready(),
                    "models": {m["name"]: m.get("state", "UNKNOWN") for m in index}}
        except Exception as exc:
            raise map_error(exc) from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "XsynClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def response_json(result: SynthesisResult) -> str:
    return json.dumps(result.response.model_dump(), indent=2)
