"""Several servers behind one client: least outstanding requests over the healthy endpoints.

An :class:`EndpointPool` holds one request client per gRPC endpoint (``host:port``) and one
small probe client for health checks. Requests go to the healthy endpoint with the fewest
requests in flight (ties: round robin). An endpoint that answers UNAVAILABLE, or cannot be
reached, is taken out; a background thread probes the endpoints that are out every
``health_interval`` seconds (Triton's ``ServerReady``) and puts each back when its probe passes.

Annotation keys live in one server's embedding cache: :meth:`EndpointPool.pin` remembers which
endpoint embedded a key, and :meth:`acquire` sends later calls for that key there. When that
endpoint is out while others are healthy the call raises :class:`~xsyn.errors.NotFound`, so
that the caller embeds the image again elsewhere (as it does when a cache evicts the key).

No torch here: this module belongs to the thin client.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from xsyn.errors import InvalidArgument, NotFound, Unavailable

log = logging.getLogger(__name__)


class NoServerAvailable(Unavailable):
    """Every endpoint of the client is out (down, restarting or unreachable)."""


def parse_endpoints(urls: str | Iterable[str]) -> list[str]:
    """``"h1:8001,h2:8001"`` or a list of ``host:port`` -> the distinct endpoints, in order."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    found: list[str] = []
    for raw in items:
        url = str(raw).strip()
        if not url:
            continue
        host, sep, port = url.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"server {url!r}: expected host:port (e.g. 127.0.0.1:8001)")
        if url not in found:
            found.append(url)
    if not found:
        raise InvalidArgument("no server given: expected host:port[,host:port...]")
    return found


@dataclass
class Endpoint:
    """One server as the pool sees it. ``outstanding``: requests in flight now."""

    url: str
    client: object
    probe_client: object
    index: int
    outstanding: int = 0
    healthy: bool = True
    reason: str = ""
    answered: int = 0

    def describe(self) -> str:
        return self.url if self.healthy else f"{self.url} ({self.reason})"


@dataclass
class EndpointPool:
    """Balances calls over ``endpoints``; thread-safe. ``probe(endpoint)`` raises when the server
    is not ready (called from the health thread and from :meth:`revive`)."""

    endpoints: list[Endpoint]
    probe: Callable[[Endpoint], None]
    health_interval: float = 2.0
    pin_limit: int = 4096
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pins: OrderedDict = field(default_factory=OrderedDict)
    _turn: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def connect(cls, urls: str | Iterable[str], make_client: Callable[[str], object],
                make_probe_client: Callable[[str], object], probe: Callable[[Endpoint], None],
                health_interval: float = 2.0) -> "EndpointPool":
        endpoints = [Endpoint(url, make_client(url), make_probe_client(url), i)
                     for i, url in enumerate(parse_endpoints(urls))]
        return cls(endpoints, probe, health_interval)

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    def healthy(self) -> list[Endpoint]:
        with self._lock:
            return [e for e in self.endpoints if e.healthy]

    def check_all(self) -> dict[str, str]:
        """Probe every endpoint now; returns ``{url: reason}`` for those that are out (the caller
        reports them)."""
        for endpoint in self.endpoints:
            self._probe_one(endpoint, quiet=True)
        with self._lock:
            return {e.url: e.reason for e in self.endpoints if not e.healthy}

    def acquire(self, affinity: str | None = None) -> Endpoint:
        """The endpoint for the next call (its ``outstanding`` counted up; :meth:`release` it).

        ``affinity``: an annotation key; its pinned endpoint is used while healthy. Raises
        :class:`NoServerAvailable` when every endpoint is out.
        """
        with self._lock:
            pinned = self._pins.get(affinity) if affinity is not None else None
            candidates = [e for e in self.endpoints if e.healthy]
            if pinned is not None and pinned.healthy:
                chosen = pinned
            elif pinned is not None and candidates:
                raise NotFound(f"key {affinity}: the server that embedded it ({pinned.url}) is out "
                               f"({pinned.reason}); embed the image again")
            elif not candidates:
                raise NoServerAvailable("no server is available: "
                                        + "; ".join(e.describe() for e in self.endpoints))
            else:
                n = len(self.endpoints)
                chosen = min(candidates, key=lambda e: (e.outstanding, (e.index - self._turn) % n))
                self._turn = (chosen.index + 1) % n
            chosen.outstanding += 1
            return chosen

    def release(self, endpoint: Endpoint, answered: bool = True) -> None:
        with self._lock:
            endpoint.outstanding -= 1
            endpoint.answered += int(answered)

    def pin(self, key: str, endpoint: Endpoint) -> None:
        """Remember that ``endpoint`` holds ``key``'s embedding (the newest ``pin_limit`` keys)."""
        with self._lock:
            self._pins[key] = endpoint
            self._pins.move_to_end(key)
            while len(self._pins) > self.pin_limit:
                self._pins.popitem(last=False)

    def mark_down(self, endpoint: Endpoint, reason: str, quiet: bool = False) -> None:
        """Take ``endpoint`` out until a health probe passes (logged as a warning unless ``quiet``)."""
        with self._lock:
            was_healthy, endpoint.healthy, endpoint.reason = endpoint.healthy, False, reason
            start = self._thread is None and not self._stop.is_set()
            if start:
                self._thread = threading.Thread(target=self._health_loop, name="xsyn-endpoint-health", daemon=True)
        if was_healthy:
            (log.info if quiet else log.warning)("server %s taken out: %s", endpoint.url, reason)
        if start:
            self._thread.start()

    def revive(self) -> bool:
        """Probe the endpoints that are out now; True when any endpoint is healthy afterwards."""
        for endpoint in [e for e in self.endpoints if not e.healthy]:
            self._probe_one(endpoint)
        return bool(self.healthy())

    def _probe_one(self, endpoint: Endpoint, quiet: bool = False) -> None:
        try:
            self.probe(endpoint)
        except Exception as exc:  # any failure of the probe keeps (or takes) the endpoint out
            reason = _short_reason(exc)
            if endpoint.healthy:
                self.mark_down(endpoint, reason, quiet)
            else:
                with self._lock:
                    endpoint.reason = reason
            return
        with self._lock:
            came_back, endpoint.healthy, endpoint.reason = not endpoint.healthy, True, ""
        if came_back:
            log.warning("server %s is back", endpoint.url)

    def _health_loop(self) -> None:
        while not self._stop.wait(self.health_interval):
            for endpoint in [e for e in self.endpoints if not e.healthy]:
                if self._stop.is_set():
                    return
                self._probe_one(endpoint)

    def close(self) -> None:
        """Stop the health thread (the caller closes the request clients)."""
        self._stop.set()
        for endpoint in self.endpoints:
            try:
                endpoint.probe_client.close()
            except Exception:  # closing a channel that never connected
                pass


def _short_reason(exc: Exception) -> str:
    message = exc.message() if hasattr(exc, "message") else str(exc)
    return " ".join(str(message or type(exc).__name__).split())[:160]
