"""A real tritonserver on free loopback ports serving the tiny export, shared by the serving tests."""

from __future__ import annotations

import pytest

from xsyn.serving.repository import write_repository
from xsyn.serving.server import ServerOptions, TritonServer, free_port


@pytest.fixture(scope="session")
def tiny_repo(tiny_export):
    out, proc, _ = tiny_export
    assert proc.returncode == 0, proc.stderr[-2000:]
    write_repository(out, "embedded")
    return out


@pytest.fixture(scope="session")
def tiny_server(tiny_repo, tmp_path_factory):
    options = ServerOptions(repository=tiny_repo, grpc_port=free_port(), http_port=free_port(),
                            metrics_port=free_port(), log_path=tmp_path_factory.mktemp("logs") / "triton.log")
    with TritonServer(options) as server:
        yield server


@pytest.fixture
def client(tiny_server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(tiny_server.options.grpc_url)
