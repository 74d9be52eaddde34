"""The endpoint pool's choices: least outstanding requests, out on failure, back on a passing
probe, embeddings pinned to their server. The probe here is a plain function over a set of
servers that are "up"; the tests with real servers are in test_fleet.py."""

from __future__ import annotations

import time

import pytest

from xsyn.client.endpoints import EndpointPool, NoServerAvailable, parse_endpoints
from xsyn.errors import InvalidArgument, NotFound


class Closeable:
    def close(self) -> None:
        pass


def _pool(urls, up: set[str]) -> EndpointPool:
    def probe(endpoint) -> None:
        if endpoint.url not in up:
            raise ConnectionError("connection refused")

    return EndpointPool.connect(urls, lambda u: Closeable(), lambda u: Closeable(), probe, health_interval=0.05)


def test_endpoint_lists_parse_and_bad_ones_are_named():
    assert parse_endpoints("a:1, b:2,,a:1") == ["a:1", "b:2"]
    assert parse_endpoints(["h:8001"]) == ["h:8001"]
    for bad in ("", "nohost", "h:", "h:99999", ":8001"):
        with pytest.raises(InvalidArgument):
            parse_endpoints(bad)


def test_least_outstanding_then_round_robin():
    pool = _pool("a:1,b:2,c:3", up={"a:1", "b:2", "c:3"})
    first = [pool.acquire() for _ in range(3)]
    assert sorted(e.url for e in first) == ["a:1", "b:2", "c:3"]  # one each while all are busy
    pool.release(first[1])
    assert pool.acquire().url == first[1].url  # the idle one
    for e in first:
        pool.release(e)


def test_down_endpoints_are_skipped_and_come_back_when_the_probe_passes():
    up = {"a:1"}
    pool = _pool("a:1,b:2", up)
    assert pool.check_all() == {"b:2": "connection refused"}
    assert {pool.acquire().url for _ in range(4)} == {"a:1"}
    up.discard("a:1")
    pool.mark_down(pool.endpoints[0], "UNAVAILABLE: restarting")
    with pytest.raises(NoServerAvailable, match=r"a:1 \(UNAVAILABLE: restarting\); b:2 \(connection refused\)"):
        pool.acquire()
    up.add("b:2")
    deadline = time.monotonic() + 5
    while not pool.healthy() and time.monotonic() < deadline:
        time.sleep(0.02)  # the health thread's probe puts b back
    assert [e.url for e in pool.healthy()] == ["b:2"]
    pool.close()


def test_a_key_goes_to_the_server_that_embedded_it():
    up = {"a:1", "b:2"}
    pool = _pool("a:1,b:2", up)
    b = pool.endpoints[1]
    pool.pin("k", b)
    assert all(pool.acquire("k") is b for _ in range(3))
    pool.mark_down(b, "gone")
    with pytest.raises(NotFound, match="embed the image again"):
        pool.acquire("k")  # another server is up: the caller embeds there
    assert pool.acquire("unknown-key").url == "a:1"
    pool.close()


def test_a_dns_entry_stands_for_every_address_of_its_name():
    from xsyn.client.endpoints import resolve

    assert "127.0.0.1:8001" in resolve("dns:///localhost:8001")
    assert resolve("h:1") == ["h:1"]
    assert resolve("dns:///no-such-host.invalid:8001") == []
    with pytest.raises(NoServerAvailable, match="resolve to no address"):
        _pool("dns:///no-such-host.invalid:8001", up=set())
    pool = _pool("dns:///localhost:8001,10.0.0.9:1", up={"127.0.0.1:8001"})
    assert "127.0.0.1:8001" in pool.urls and pool.urls[-1] == "10.0.0.9:1"
    pool.close()


def test_a_single_endpoint_is_used_even_while_out():
    """One server: nowhere else to go, so the call goes there and is itself the probe (the
    one-server client's behaviour: it retries with backoff and raises what the server said)."""
    pool = _pool("a:1", up=set())
    assert pool.check_all() == {"a:1": "connection refused"}
    assert pool.acquire().url == "a:1"
    pool.close()
