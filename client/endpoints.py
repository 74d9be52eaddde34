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

An endpoint written ``dns:///name:port`` stands for every address ``name`` resolves to: a
Kubernetes headless Service lists one address per ready pod. The pool resolves it at the start
and again every ``resolve_interval`` seconds, adding new pods and dropping addresses that are
both out and no longer listed.

No torch here: this module belongs to the thin client.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from xsyn.errors import InvalidArgument, NotFound, Unavailable

log = logging.getLogger(__name__)


class NoServerAvailable(Unavailable):
    """Every endpoint of the client is out (down, restarting or unreachable)."""


DNS_PREFIX = "dns:///"


def parse_endpoints(urls: str | Iterable[str]) -> list[str]:
    """``"h1:8001,h2:8001"`` or a list of ``host:port`` (or ``dns:///name:port``) -> the distinct
    entries, in order."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    found: list[str] = []
    for raw in items:
        url = str(raw).strip()
        if not url:
            continue
        host, sep, port = url.removeprefix(DNS_PREFIX).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"server {url!r}: expected host:port or dns:///name:port (e.g. 127.0.0.1:8001)")
        if url not in found:
            found.append(url)
    if not found:
        raise InvalidArgument("no server given: expected host:port[,host:port...]")
    return found


def resolve(entry: str) -> list[str]:
    """One entry -> its endpoints: ``host:port`` as given; ``dns:///name:port`` -> ``ip:port`` for
    every address of ``name`` (sorted; none when it does not resolve)."""
    if not entry.startswith(DNS_PREFIX):
        return [entry]
    host, _, port = entry.removeprefix(DNS_PREFIX).rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("server %s: %s does not resolve (%s)", entry, host, exc)
        return []
    ips = sorted({info[4][0] for info in infos})
    return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]


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
    entries: list[str] = field(default_factory=list)
    make_clients: Callable[[str], tuple[object, object]] | None = None
    resolve_interval: float = 30.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pins: OrderedDict = field(default_factory=OrderedDict)
    _turn: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def connect(cls, urls: str | Iterable[str], make_client: Callable[[str], object],
                make_probe_client: Callable[[str], object], probe: Callable[[Endpoint], None],
                health_interval: float = 2.0) -> "EndpointPool":
        entries = parse_endpoints(urls)
        pool = cls([], probe, health_interval, entries=entries,
                   make_clients=lambda url: (make_client(url), make_probe_client(url)))
        pool.refresh()
        if not pool.endpoints:
            raise NoServerAvailable("no server: " + ", ".join(entries) + " resolve to no address")
        if any(e.startswith(DNS_PREFIX) for e in entries):
            pool._start_thread()
        return pool

    def refresh(self) -> None:
        """Resolve the entries again: add new addresses; drop those out and no longer listed."""
        listed = list(dict.fromkeys(url for entry in self.entries for url in resolve(entry)))
        with self._lock:
            known = {e.url for e in self.endpoints}
            gone = [e for e in self.endpoints if e.url not in listed and not e.healthy]
            self.endpoints = [e for e in self.endpoints if e not in gone]
            for key in [k for k, e in self._pins.items() if e in gone]:
                del self._pins[key]
            for url in listed:
                if url not in known:
                    client, probe_client = self.make_clients(url)
                    self.endpoints.append(Endpoint(url, client, probe_client, len(self.endpoints)))
            for i, endpoint in enumerate(self.endpoints):
                endpoint.index = i
        for endpoint in gone:
            log.warning("server %s left the fleet (no longer resolved)", endpoint.url)
            _close_quietly(endpoint.probe_client)

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
        :class:`NoServerAvailable` when every endpoint of several is out; a single endpoint is
        used even while out (as a one-server client always did).
        """
        with self._lock:
            pinned = self._pins.get(affinity) if affinity is not None else None
            candidates = [e for e in self.endpoints if e.healthy]
            if pinned is not None and pinned.healthy:
                chosen = pinned
            elif pinned is not None and candidates:
                raise NotFound(f"key {affinity}: the server that embedded it ({pinned.url}) is out "
                               f"({pinned.reason}); embed the image again")
            elif not candidates and len(self.endpoints) == 1:
                chosen = self.endpoints[0]  # nowhere else to go: the call itself probes it
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
        if was_healthy:
            (log.info if quiet else log.warning)("server %s taken out: %s", endpoint.url, reason)
        self._start_thread()

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._health_loop, name="xsyn-endpoint-health", daemon=True)
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
        import time

        resolves = any(e.startswith(DNS_PREFIX) for e in self.entries)
        next_resolve = time.monotonic() + self.resolve_interval
        while not self._stop.wait(self.health_interval):
            if resolves and time.monotonic() >= next_resolve:
                self.refresh()
                next_resolve = time.monotonic() + self.resolve_interval
            for endpoint in [e for e in self.endpoints if not e.healthy]:
                if self._stop.is_set():
                    return
                self._probe_one(endpoint)

    def close(self) -> None:
        """Stop the health thread (the caller closes the request clients)."""
        self._stop.set()
        for endpoint in self.endpoints:
            _close_quietly(endpoint.probe_client)


def _close_quietly(client) -> None:
    try:
        client.close()
    except Exception:  # closing a channel that never connected
        pass


def _short_reason(exc: Exception) -> str:
    message = exc.message() if hasattr(exc, "message") else str(exc)
    return " ".join(str(message or type(exc).__name__).split())[:160]
