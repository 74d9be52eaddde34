"""Fault injection on a real `xsyn serve`: killed stubs heal, a killed tritonserver is restarted,
SIGTERM drains, and no stop (SIGTERM, kill -9 of tritonserver, kill -9 of `xsyn serve`) leaves a
process or a /dev/shm region behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import live_processes
from xsyn.client.sdk import Unavailable, XsynClient
from xsyn.serving.server import free_port

pytestmark = pytest.mark.slow
IMAGE = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
QUICK = {"boxes": [[8.0, 8.0, 40.0, 40.0]], "class_names": ["Knife"], "steps": 2, "car": False, "bom_alpha": 0.0}


def _gone(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while check() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not check()


def _synthesize_until_it_works(client: XsynClient, timeout: float = 60.0) -> list[str]:
    """Keep sending a quick synthesis; returns the error classes seen before the first success."""
    seen, deadline = [], time.monotonic() + timeout
    while True:
        try:
            client.synthesize(QUICK, IMAGE)
            return seen
        except Exception as exc:
            seen.append(type(exc).__name__)
            assert time.monotonic() < deadline, seen
            time.sleep(0.3)


def test_killed_stubs_and_server_heal_and_sigterm_drains(start_serve):
    serve = start_serve()
    serve.wait_for("ready from")
    raw = grpcclient.InferenceServerClient(serve.url)
    with XsynClient(serve.url, retries=0) as client:
        client.synthesize(QUICK, IMAGE)
        for instance, model in (("unet_0_0", "unet"), ("xsyn_0_0", "xsyn"), ("apsam_0_0", "apsam")):
            before = serve.stub_pids(instance)
            os.kill(before[0], signal.SIGKILL)
            serve.wait_for(f"model {model}: ready again", timeout=90)
            assert serve.stub_pids(instance) and serve.stub_pids(instance) != before
            assert raw.is_server_ready() and raw.is_model_ready(model)  # health tells the truth again
            assert set(_synthesize_until_it_works(client)) <= {"Unavailable"}
        embedded = client.embed(IMAGE)  # the reloaded apsam serves clicks
        assert client.segment(embedded.key, [[30.0, 30.0]], [1]).response.masks

        # a request in flight while a leaf's stub dies is answered UNAVAILABLE (retryable), never INTERNAL
        call = client.submit({**QUICK, "steps": 200}, IMAGE)
        time.sleep(1.0)
        os.kill(serve.stub_pids("unet_0_0")[0], signal.SIGKILL)
        with pytest.raises(Unavailable):
            call.result(timeout=60)
        serve.wait_for("model unet: ready again", timeout=90)

        # tritonserver killed: the reaper removes its stubs and shared memory, xsyn serve restarts it
        triton = [pid for pid, cmd in serve.processes().items() if cmd.split(" ")[0].endswith("/bin/tritonserver")]
        old_shm = serve.shm()
        os.kill(triton[0], signal.SIGKILL)
        serve.wait_for("tritonserver restarted", timeout=150)
        assert not set(old_shm) & set(serve.shm())
        assert set(_synthesize_until_it_works(client)) <= {"Unavailable"}

        # SIGTERM with a request in flight: it finishes (within the grace), then everything is gone
        call = client.submit({**QUICK, "steps": 30}, IMAGE)
        time.sleep(0.5)
        serve.proc.send_signal(signal.SIGTERM)
        assert call.result(timeout=60).image.shape == IMAGE.shape
    assert serve.proc.wait(timeout=60) == 0
    assert _gone(serve.processes), serve.processes()
    assert serve.shm() == []


def test_sigterm_past_the_grace_answers_unavailable_and_exits_promptly(start_serve):
    serve = start_serve("--grace", "1")
    serve.wait_for("ready from")
    with XsynClient(serve.url, retries=0) as client:
        client.synthesize(QUICK, IMAGE)
        call = client.submit({**QUICK, "steps": 200}, IMAGE)  # the most a request may ask for: much longer than the grace
        time.sleep(1.0)
        start = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        with pytest.raises(Unavailable):
            call.result(timeout=60)
    assert serve.proc.wait(timeout=60) == 0
    assert time.monotonic() - start < 1 + 15, "exit within the grace and a few seconds"
    assert _gone(serve.processes), serve.processes()
    assert serve.shm() == []


def test_kill_9_of_xsyn_serve_leaves_no_orphans_and_no_shm(start_serve):
    serve = start_serve()
    serve.wait_for("ready from")
    assert len(serve.processes()) >= 10 and serve.shm()
    serve.proc.kill()
    serve.proc.wait()
    assert _gone(serve.processes, timeout=30), serve.processes()
    assert serve.shm() == []


def test_a_crash_loop_gives_up_with_a_clear_line_and_leaves_nothing(tiny_repo, tmp_path):
    from xsyn.serving.server import ServerOptions, TritonServer, group_members
    from xsyn.serving.supervisor import Supervisor

    options = ServerOptions(repository=tiny_repo, grpc_port=free_port(), http_port=free_port(),
                            metrics_port=free_port(), log_path=tmp_path / "triton.log")
    server = TritonServer(options)
    server.start()
    server.wait_until_ready()
    supervisor = Supervisor(server, max_restarts=0).start()  # the first exit already counts as a loop
    try:
        group, prefix = server.process.pid, server.shm_prefix
        triton = [pid for pid in group_members(group)
                  if live_processes().get(pid, "").split(" ")[0].endswith("tritonserver")]
        os.kill(triton[0], signal.SIGKILL)
        assert _gone(lambda: supervisor.running, timeout=30)
        assert supervisor.failure and "giving up" in supervisor.failure and str(options.log_path) in supervisor.failure
        assert group_members(group) == []
        assert list(Path("/dev/shm").glob(prefix + "*")) == []
    finally:
        supervisor.stop(grace=0)
