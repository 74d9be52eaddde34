"""Typed gRPC client for the ``xsyn`` server (``tritonclient`` underneath); needs no torch.

Installs alone (``pip install xsyn``, without the ``server`` extra) and imports only
:mod:`xsyn.api` and :mod:`xsyn.errors`. Errors come back as the product's exceptions through the
one error table (:data:`xsyn.errors.ERROR_TABLE`): INVALID_ARGUMENT -> :class:`InvalidArgument`,
NOT_FOUND -> :class:`NotFound`, UNAVAILABLE -> :class:`Unavailable`, DEADLINE_EXCEEDED ->
:class:`DeadlineExceeded`, CANCELLED -> :class:`Cancelled`, RESOURCE_EXHAUSTED ->
:class:`ResourceExhausted`, FAILED_PRECONDITION -> :class:`FailedPrecondition`, anything else
-> :class:`InternalError`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np

from xsyn.api.annotation import AnnotationResponse
from xsyn.api.masks import rle_decode
from xsyn.api.models import async_model_states, model_states
from xsyn.api.synthesis import SynthesisRequest, SynthesisResponse, parse_request
from xsyn.api.tensors import array_input, bytes_input, image_input, output_arrays
from xsyn.client.endpoints import Endpoint, EndpointPool, NoServerAvailable
from xsyn.errors import (  # noqa: F401  (re-exported: the SDK's exceptions)
    BY_STATUS, Cancelled, DeadlineExceeded, FailedPrecondition, InternalError, InvalidArgument, NotFound,
    ResourceExhausted, Unavailable, XsynError, error_from_wire,
)


def map_error(exc: Exception) -> XsynError:
    """A ``tritonclient`` exception -> the product exception of its gRPC status."""
    status = str(getattr(exc, "status", lambda: "")() or "")
    message = exc.message() if hasattr(exc, "message") else str(exc)
    return error_from_wire(status, message or "")


# ---------------------------------------------------------------------- requests and results
# One builder per call, shared by the sync and asyncio clients: ``(model, inputs, parse)``.

@dataclass
class SynthesisResult:
    """Final image uint8 ``[H, W, 3]``, the typed response, and the optional extras."""

    image: np.ndarray
    response: SynthesisResponse
    unoccluded_image: np.ndarray | None = None
    attention_maps: np.ndarray | None = None
    endpoint: str = ""  # the server that answered (host:port)


@dataclass
class SegmentResult:
    """A click's answer: masks (RLE + polygons + scores) and the low-res logits for the next click."""

    response: AnnotationResponse
    low_res_mask: np.ndarray

    @property
    def best(self):
        return max(self.response.masks, key=lambda m: m.score)

    def mask(self) -> np.ndarray:
        """The best mask as bool ``[H, W]``."""
        return rle_decode(self.best.rle)


def synthesis_call(request: SynthesisRequest | dict, image: np.ndarray | bytes):
    """``xsyn`` call: the request is validated here, so a bad field fails before any traffic."""
    req = request if isinstance(request, SynthesisRequest) else parse_request(request)
    inputs = [bytes_input("request", req.model_dump_json(exclude_defaults=True).encode()), image_input(image)]

    def parse(result) -> SynthesisResult:
        response = SynthesisResponse.model_validate_json(result.as_numpy("response").reshape(-1)[0])
        return SynthesisResult(
            image=result.as_numpy("image"), response=response,
            unoccluded_image=result.as_numpy("unoccluded_image") if req.return_unoccluded_image else None,
            attention_maps=result.as_numpy("attention_maps") if req.return_attention_maps else None)

    return "xsyn", inputs, parse


def annotation_call(request: dict, image=None, mask_input=None, segment: bool = False):
    inputs = [bytes_input("request", json.dumps(request).encode())]
    if image is not None:
        inputs.append(image_input(image))
    if mask_input is not None:
        inputs.append(array_input("mask_input", mask_input))

    def parse(result):
        response = AnnotationResponse.model_validate_json(result.as_numpy("response").reshape(-1)[0])
        return SegmentResult(response, result.as_numpy("low_res_mask")) if segment else response

    return "apsam", inputs, parse


def embed_call(image: np.ndarray | bytes):
    return annotation_call({"op": "embed"}, image=image)


def segment_call(key: str, points=(), labels=(), box=None, mask_input=None, multimask=False,
                 adaptive_points=True, seed=0, tokens="auto"):
    request = {"op": "segment", "key": key, "points": [list(map(float, p)) for p in points],
               "labels": [int(v) for v in labels], "box": list(map(float, box)) if box is not None else None,
               "multimask": multimask, "adaptive_points": adaptive_points, "seed": seed, "tokens": tokens}
    return annotation_call(request, mask_input=mask_input, segment=True)


def generate_call(key: str, **overrides):
    return annotation_call({"op": "generate", "key": key, **overrides})


def health_report(live: bool, ready: bool, states: dict[str, str]) -> dict:
    """``{"live", "ready", "models": {name: state}}`` from the server's answers."""
    return {"live": live, "ready": ready, "models": states}


def _grpc_options(ssl, root_certificates, private_key, certificate_chain) -> dict:
    return dict(ssl=ssl, root_certificates=root_certificates, private_key=private_key,
                certificate_chain=certificate_chain)


def _ready_probe(timeout: float):
    """A pool probe: Triton's ServerReady on the endpoint's probe client, within ``timeout`` s."""

    def probe(endpoint: Endpoint) -> None:
        if not endpoint.probe_client.is_server_ready(client_timeout=timeout):
            raise Unavailable("server is live but not ready")

    return probe


def _connect_pool(url, client_module, options: dict, health_interval: float, probe_timeout: float) -> EndpointPool:
    import tritonclient.grpc as grpcclient

    return EndpointPool.connect(url, lambda u: client_module.InferenceServerClient(u, **options),
                                lambda u: grpcclient.InferenceServerClient(u, **options),
                                _ready_probe(probe_timeout), health_interval)


def _fleet_health(reports: dict[str, dict], errors: dict[str, XsynError]) -> dict:
    """One endpoint's health report (the first that answered) plus ``endpoints``: every one's
    (``errors``: the endpoints that did not answer, also reported with ``error``)."""
    answered = [r for url, r in reports.items() if url not in errors]
    if not answered:
        if len(errors) == 1:
            raise next(iter(errors.values()))
        raise NoServerAvailable("no server answered: " + "; ".join(f"{u} ({e})" for u, e in errors.items()))
    return {**answered[0], "endpoints": reports}


def _failed_report(error: XsynError) -> dict:
    return {"live": False, "ready": False, "models": {}, "error": str(error)}


@dataclass
class SynthesisCall:
    """An in-flight synthesis started with :meth:`XsynClient.submit`."""

    parse: object
    event: object
    context: object = None
    result_: object = None
    error_: XsynError | None = None

    def cancel(self) -> None:
        """Cancel the call; the server stops the request between denoising steps."""
        self.context.cancel()

    def result(self, timeout: float | None = None) -> SynthesisResult:
        """Wait for the answer; raises the mapped error (e.g. :class:`Cancelled`)."""
        if not self.event.wait(timeout):
            raise DeadlineExceeded(f"no answer within {timeout} s")
        if self.error_ is not None:
            raise self.error_
        return self.parse(self.result_)


# ---------------------------------------------------------------------- clients

class _Balanced:
    """What the sync and asyncio clients share: the endpoint pool and one attempt's bookkeeping."""

    pool: EndpointPool
    retries: int
    backoff: float

    @property
    def urls(self) -> list[str]:
        return self.pool.urls

    def check_endpoints(self) -> dict[str, str]:
        """Probe every endpoint now: ``{url: reason}`` for each that is down (it is skipped and
        probed again in the background until it is back)."""
        return self.pool.check_all()

    def _wait_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` when no endpoint is healthy (0 for the first)."""
        return self.backoff * 2 ** (attempt - 1) if attempt else 0.0

    def _attempt_failed(self, endpoint: Endpoint, exc: Exception) -> XsynError:
        """Release ``endpoint`` after a failed call; an UNAVAILABLE answer takes it out."""
        self.pool.release(endpoint, answered=False)
        error = exc if isinstance(exc, XsynError) else map_error(exc)
        if isinstance(error, Unavailable):
            self.pool.mark_down(endpoint, str(error))
        return error

    def _succeeded(self, endpoint: Endpoint, result, parse, pin: bool):
        self.pool.release(endpoint)
        value = parse(result)
        if isinstance(value, SynthesisResult):
            value.endpoint = endpoint.url
        if pin:
            self.pool.pin(value.key, endpoint)
        return value

    def _final_error(self, last: XsynError) -> XsynError:
        if isinstance(last, Unavailable) and not isinstance(last, NoServerAvailable) and not self.pool.healthy() \
                and len(self.pool.endpoints) > 1:
            return NoServerAvailable(f"{last}; no server is available: "
                                     + "; ".join(e.describe() for e in self.pool.endpoints))
        return last


class XsynClient(_Balanced):
    """Synchronous client over one server or a fleet.

    ``url``: gRPC ``host:port``, or several (a list, or ``"h1:8001,h2:8001"``): each call goes to
    the healthy server with the fewest calls in flight; one that answers UNAVAILABLE is taken
    out, the call is retried on another, and the server is put back when its health probe
    passes (every ``health_interval`` seconds). ``timeout``: seconds per call.

    ``retries``: further attempts after an UNAVAILABLE answer; when no server is healthy the
    client waits (exponential backoff from ``backoff`` seconds) and probes them again first.
    Nothing else is retried: a request the server rejected, timed out or failed would fail
    again or could run twice. When every server is out the call raises :class:`NoServerAvailable`
    (an :class:`Unavailable`) naming each one and why.
    """

    def __init__(self, url: str | list[str] = "127.0.0.1:8001", timeout: float | None = 600.0, ssl: bool = False,
                 root_certificates: str | None = None, private_key: str | None = None,
                 certificate_chain: str | None = None, retries: int = 3, backoff: float = 0.5,
                 health_interval: float = 2.0, probe_timeout: float = 2.0) -> None:
        import tritonclient.grpc as grpcclient

        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.pool = _connect_pool(url, grpcclient, _grpc_options(ssl, root_certificates, private_key, certificate_chain),
                                  health_interval, probe_timeout)
        self.url = self.pool.urls[0]

    def _call(self, model: str, inputs: list, parse, affinity: str | None = None, pin: bool = False):
        last: XsynError | None = None
        for attempt in range(self.retries + 1):
            if not self.pool.healthy():
                time.sleep(self._wait_before(attempt))
                self.pool.revive()
            try:
                endpoint = self.pool.acquire(affinity)
            except NoServerAvailable as exc:
                last = exc
                continue
            try:
                result = endpoint.client.infer(model, inputs, client_timeout=self.timeout)
            except Exception as exc:  # tritonclient raises InferenceServerException for every gRPC status
                last = self._attempt_failed(endpoint, exc)
                if not isinstance(last, Unavailable):
                    raise last from None
                continue
            return self._succeeded(endpoint, result, parse, pin)
        raise self._final_error(last) from None

    def synthesize(self, request: SynthesisRequest | dict, image: np.ndarray | bytes) -> SynthesisResult:
        """Run one synthesis. ``image``: uint8 ``[H, W, 3]`` RGB array or PNG/JPEG bytes."""
        return self._call(*synthesis_call(request, image))

    def embed(self, image: np.ndarray | bytes) -> AnnotationResponse:
        """Encode an image once on a server; the response's ``key`` names it for clicks (which go
        to the same server)."""
        return self._call(*embed_call(image), pin=True)

    def segment(self, key: str, points=(), labels=(), box=None, mask_input: np.ndarray | None = None,
                multimask: bool = False, adaptive_points: bool = True, seed: int = 0, tokens: str = "auto"
                ) -> SegmentResult:
        """Masks for points (``[x, y]`` pixels, labels 1 fg / 0 bg) and/or a box on an embedded image.

        ``mask_input``: the previous result's ``low_res_mask`` (float32 ``[1, 1, 4E, 4E]``).
        Raises :class:`NotFound` when the key is unknown or was evicted, or when the server that
        embedded it is out while others are up (embed again).
        """
        return self._call(*segment_call(key, points, labels, box, mask_input, multimask, adaptive_points, seed, tokens),
                          affinity=key)

    def generate_masks(self, key: str, **overrides) -> AnnotationResponse:
        """Automatic masks for an embedded image (``points_per_side``, thresholds may be overridden)."""
        return self._call(*generate_call(key, **overrides), affinity=key)

    def submit(self, request: SynthesisRequest | dict, image: np.ndarray | bytes) -> SynthesisCall:
        """Start a synthesis without waiting (on the least busy server; not retried); the returned
        call can be waited on or cancelled."""
        model, inputs, parse = synthesis_call(request, image)
        call = SynthesisCall(parse, threading.Event())
        if not self.pool.healthy():
            self.pool.revive()
        endpoint = self.pool.acquire()

        def done(result, error):
            call.result_ = result
            if error is None:
                self.pool.release(endpoint)
            else:
                call.error_ = self._attempt_failed(endpoint, error)
            call.event.set()

        call.context = endpoint.client.async_infer(model, inputs, callback=done, client_timeout=self.timeout)
        return call

    def infer_raw(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request to any model (leaf graphs included) with numpy inputs; all outputs back."""
        return self._call(model, [array_input(name, value) for name, value in inputs.items()], output_arrays)

    def health(self) -> dict:
        """Liveness/readiness and every model's state of the first server that answers, and
        ``endpoints``: each server's report (``error`` for one that did not answer)."""
        reports, errors = {}, {}
        for e in self.pool.endpoints:
            try:
                reports[e.url] = health_report(e.client.is_server_live(), e.client.is_server_ready(),
                                               model_states(e.client))
            except Exception as exc:
                errors[e.url] = map_error(exc)
                reports[e.url] = _failed_report(errors[e.url])
        return _fleet_health(reports, errors)

    def close(self) -> None:
        self.pool.close()
        for e in self.pool.endpoints:
            e.client.close()

    def __enter__(self) -> "XsynClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AnnotationSession:
    """One image in an annotation tool: embed once, click many.

    Clicks accumulate (foreground / background points) and each sends the previous low-res
    mask, as SAM's interactive tools do. When the server has evicted the image's embedding
    (NOT_FOUND) the session embeds the image again and repeats the click, once.
    """

    def __init__(self, client: XsynClient, image: np.ndarray | bytes, adaptive_points: bool = True) -> None:
        self.client = client
        self.image = image
        self.adaptive_points = adaptive_points
        self.key: str | None = None
        self.reembeds = 0
        self.reset()

    def reset(self) -> None:
        """Forget the clicks (keeps the embedding)."""
        self.points: list[list[float]] = []
        self.labels: list[int] = []
        self.low_res: np.ndarray | None = None

    def _ensure_key(self) -> str:
        if self.key is None:
            self.key = self.client.embed(self.image).key
        return self.key

    def click(self, x: float, y: float, positive: bool = True, box=None, multimask: bool = False) -> SegmentResult:
        """Add a point and segment; returns the masks for all points so far."""
        self.points.append([float(x), float(y)])
        self.labels.append(1 if positive else 0)
        for attempt in range(2):
            try:
                result = self.client.segment(self._ensure_key(), self.points, self.labels, box=box,
                                             mask_input=self.low_res, multimask=multimask,
                                             adaptive_points=self.adaptive_points and len(self.points) == 1)
                break
            except NotFound:
                if attempt:
                    raise
                self.key, self.low_res = None, None
                self.reembeds += 1
        self.low_res = result.low_res_mask
        return result


class AsyncXsynClient(_Balanced):
    """asyncio variant over ``tritonclient.grpc.aio``: ``await client.synthesize(...)`` etc.

    Takes one endpoint or several and balances, retries and probes as :class:`XsynClient` does
    (the health probes run on a thread). Cancelling the awaiting task cancels the gRPC call (the
    server stops between steps).
    """

    def __init__(self, url: str | list[str] = "127.0.0.1:8001", timeout: float | None = 600.0, ssl: bool = False,
                 root_certificates: str | None = None, private_key: str | None = None,
                 certificate_chain: str | None = None, retries: int = 3, backoff: float = 0.5,
                 health_interval: float = 2.0, probe_timeout: float = 2.0) -> None:
        import tritonclient.grpc.aio as aioclient

        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.pool = _connect_pool(url, aioclient, _grpc_options(ssl, root_certificates, private_key, certificate_chain),
                                  health_interval, probe_timeout)
        self.url = self.pool.urls[0]

    async def _call(self, model: str, inputs: list, parse, affinity: str | None = None, pin: bool = False):
        import asyncio

        last: XsynError | None = None
        for attempt in range(self.retries + 1):
            if not self.pool.healthy():
                await asyncio.sleep(self._wait_before(attempt))
                await asyncio.to_thread(self.pool.revive)
            try:
                endpoint = self.pool.acquire(affinity)
            except NoServerAvailable as exc:
                last = exc
                continue
            try:
                result = await endpoint.client.infer(model, inputs, client_timeout=self.timeout)
            except asyncio.CancelledError:
                self.pool.release(endpoint, answered=False)
                raise
            except Exception as exc:
                last = self._attempt_failed(endpoint, exc)
                if not isinstance(last, Unavailable):
                    raise last from None
                continue
            return self._succeeded(endpoint, result, parse, pin)
        raise self._final_error(last) from None

    async def synthesize(self, request: SynthesisRequest | dict, image: np.ndarray | bytes) -> SynthesisResult:
        return await self._call(*synthesis_call(request, image))

    async def embed(self, image: np.ndarray | bytes) -> AnnotationResponse:
        return await self._call(*embed_call(image), pin=True)

    async def segment(self, key: str, points=(), labels=(), box=None, mask_input=None, multimask=False,
                      adaptive_points=True, seed=0, tokens="auto") -> SegmentResult:
        return await self._call(*segment_call(key, points, labels, box, mask_input, multimask, adaptive_points,
                                              seed, tokens), affinity=key)

    async def generate_masks(self, key: str, **overrides) -> AnnotationResponse:
        return await self._call(*generate_call(key, **overrides), affinity=key)

    async def health(self) -> dict:
        reports, errors = {}, {}
        for e in self.pool.endpoints:
            try:
                reports[e.url] = health_report(await e.client.is_server_live(), await e.client.is_server_ready(),
                                               await async_model_states(e.client))
            except Exception as exc:
                errors[e.url] = map_error(exc)
                reports[e.url] = _failed_report(errors[e.url])
        return _fleet_health(reports, errors)

    async def close(self) -> None:
        self.pool.close()
        for e in self.pool.endpoints:
            await e.client.close()

    async def __aenter__(self) -> "AsyncXsynClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
