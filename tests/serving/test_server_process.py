"""`xsyn serve` as a user runs it: ports, readiness, health, clean stop with no orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import live_processes, run_env
from xsyn.serving.server import ServerError, ServerOptions, TritonServer, free_port, group_members

pytestmark = pytest.mark.slow


def _processes_mentioning(text: str) -> list[str]:
    """Live tritonserver / Python-backend stub processes whose command line names ``text``."""
    return [f"{pid}: {cmd[:120]}" for pid, cmd in live_processes().items()
            if text in cmd and ("tritonserver" in cmd or "triton_python_backend_stub" in cmd)]


def _serve(repo, ports, cache_home):
    return subprocess.Popen(
        [sys.executable, "-m", "xsyn.client.cli", "serve", "--repository", str(repo), "--grpc-port", str(ports[0]),
         "--http-port", str(ports[1]), "--metrics-port", str(ports[2])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(cache_home))


def _health(url, metrics_port, cache_home):
    return subprocess.run([sys.executable, "-m", "xsyn.client.cli", "health", "--url", url,
                           "--metrics-port", str(metrics_port)], capture_output=True, text=True,
                          env=run_env(cache_home), timeout=60)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_runs_until_signalled_and_leaves_no_process_behind(tiny_repo, cache_home, sig):
    ports = [free_port() for _ in range(3)]
    proc = _serve(tiny_repo, ports, cache_home)
    url = f"127.0.0.1:{ports[0]}"
    deadline = time.monotonic() + 120
    while True:
        health = _health(url, ports[2], cache_home)
        if health.returncode == 0 or time.monotonic() > deadline or proc.poll() is not None:
            break
        time.sleep(1)
    assert health.returncode == 0, (health.stdout, health.stderr, proc.poll())
    assert "unet" in health.stdout and "READY" in health.stdout
    assert f"metrics: http://127.0.0.1:{ports[2]}/metrics" in health.stdout
    server = [p for p in _processes_mentioning(f"--grpc-port={ports[0]}") if "tritonserver" in p]
    pgid = os.getpgid(int(server[0].split(":")[0]))
    assert len(group_members(pgid)) >= 8, "tritonserver and one stub per leaf model"

    proc.send_signal(sig)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert "stopped" in out
    time.sleep(0.5)
    assert group_members(pgid) == []


def test_a_port_in_use_fails_with_a_clear_message(tiny_repo, cache_home):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        options = ServerOptions(repository=tiny_repo, grpc_port=port, http_port=free_port(), metrics_port=free_port())
        with pytest.raises(ServerError, match=rf"--grpc-port {port}: 127.0.0.1:{port} is already in use"):
            TritonServer(options).start()
        proc = _serve(tiny_repo, [free_port(), port, free_port()], cache_home)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [f"xsyn: error: --http-port {port}: 127.0.0.1:{port} is already in use; pick another port"]


def test_health_without_a_server_is_one_clear_line(cache_home):
    health = _health(f"127.0.0.1:{free_port()}", free_port(), cache_home)
    assert health.returncode == 2
    assert health.stderr.startswith("xsyn: error: no Triton server answers at 127.0.0.1:")


def test_a_model_that_fails_to_load_is_named(tiny_repo, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    (repo / "vae_decoder" / "1" / "model.onnx").write_bytes(b"not a graph")
    options = ServerOptions(repository=repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server = TritonServer(options)
    server.start()
    with pytest.raises(ServerError, match="models that failed: vae_decoder"):
        server.wait_until_ready()
    assert server.process is None
    assert _processes_mentioning(str(repo)) == []
