"""Shared fixtures: one real `xsyn export --preset tiny` run per session, fresh tiny bundles."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from xsyn.serving.repository import write_repository
from xsyn.serving.server import ServerOptions, TritonServer, free_port


APSAM_TEST_CACHE_BYTES = 600_000


@pytest.fixture(scope="session")
def cache_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xdg_cache")


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, cache_home):
    """Run the real CLI once: returns (repository folder, completed process, seconds)."""
    out = tmp_path_factory.mktemp("tiny_repo")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "xsyn.client.cli", "export", "--preset", "tiny", "--out", str(out)],
        capture_output=True, text=True, env=_env(cache_home), timeout=600,
    )
    return out, proc, time.perf_counter() - start


@pytest.fixture
def tiny_bundle(tmp_path):
    """A freshly built tiny preset (trained weights), untouched by any export wrapper."""
    from xsyn.export.sources import preset_bundle

    return preset_bundle("tiny", seed=0, work_dir=tmp_path)




@pytest.fixture(scope="session")
def tiny_sam_export(tmp_path_factory, cache_home):
    """Plain SAM keeps working: ``xsyn export --sam-checkpoint`` of a seeded tiny SAM ``.pth``
    (the tiny preset serves APSAM). Returns (repository with the two SAM graphs, the SAM module)."""
    import torch

    from xsyn.export.sam_arch import TINY_SAM, build_sam
    from xsyn.export.sources import _seeded

    folder = tmp_path_factory.mktemp("sam")
    sam = _seeded(3, lambda: build_sam(TINY_SAM))
    torch.save(sam.state_dict(), folder / "sam_tiny.pth")
    proc = subprocess.run([sys.executable, "-m", "xsyn.client.cli", "export", "--sam-checkpoint",
                           str(folder / "sam_tiny.pth"), "--out", str(folder / "repo")],
                          capture_output=True, text=True, env=run_env(cache_home), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "sam_tiny.pth: SAM custom checkpoint" in proc.stdout
    return folder / "repo", sam


@pytest.fixture(scope="session")
def tiny_repo(tiny_export):
    out, proc, _ = tiny_export
    assert proc.returncode == 0, proc.stderr[-2000:]
    write_repository(out, "embedded")
    return out


def _test_server(repo: Path, tmp_path_factory, logs: str) -> TritonServer:
    """A server (started by ``with``) on ``repo`` with free ports, the tests' small APSAM cache
    (so eviction is testable) and its log in a fresh folder named ``logs``."""
    os.environ["XSYN_APSAM_CACHE_BYTES"] = str(APSAM_TEST_CACHE_BYTES)
    return TritonServer(ServerOptions(repository=repo, grpc_port=free_port(), http_port=free_port(),
                                      metrics_port=free_port(), log_path=tmp_path_factory.mktemp(logs) / "triton.log"))


def _repository_copy(tiny_repo: Path, tmp_path_factory, name: str) -> Path:
    import shutil

    repo = tmp_path_factory.mktemp(name) / "repo"
    shutil.copytree(tiny_repo, repo)
    return repo


@pytest.fixture(scope="session")
def onnxruntime_server(tiny_repo, tmp_path_factory):
    """The tiny repository served with the default (ONNX Runtime) leaf models."""
    with _test_server(tiny_repo, tmp_path_factory, "logs") as server:
        yield server


@pytest.fixture(scope="session")
def second_onnxruntime_server(tiny_repo, tmp_path_factory):
    """A second real server like :func:`onnxruntime_server` on a copy of its repository: the fleet
    tests balance over the two and compare with a one-server run."""
    repo = _repository_copy(tiny_repo, tmp_path_factory, "tiny_repo_second")
    with _test_server(repo, tmp_path_factory, "logs_second") as server:
        yield server


@pytest.fixture
def tiny_server(onnxruntime_server):
    """The tiny server (modules that run every served test on both runtimes override this)."""
    return onnxruntime_server


@pytest.fixture(scope="session")
def tiny_server_torch(tiny_repo, tmp_path_factory):
    """A second real server on a copy of the tiny repository whose leaf models run the exported
    ``model.pt2`` programs with the torch runtime (fp32, CPU): ``xsyn serve --runtime torch``."""
    from xsyn.settings import ServerSettings

    repo = _repository_copy(tiny_repo, tmp_path_factory, "tiny_repo_torch")
    write_repository(repo, "embedded", runtime=ServerSettings(runtime="torch", device="cpu"))
    with _test_server(repo, tmp_path_factory, "logs_torch") as server:
        yield server


@pytest.fixture(params=["onnxruntime", "torch"])
def any_server(request):
    """The tiny server with each leaf runtime: tests using it pass on both (issue: torch runtime)."""
    return request.getfixturevalue("onnxruntime_server" if request.param == "onnxruntime" else "tiny_server_torch")


@pytest.fixture
def client(tiny_server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(tiny_server.options.grpc_url)


def _env(cache_home: Path) -> dict:
    import os

    return dict(os.environ, XDG_CACHE_HOME=str(cache_home))


run_env = _env


def live_processes() -> dict[int, str]:
    """Every live (non-zombie) process on this machine: pid -> command line (space-joined)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                found[int(entry.name)] = cmd
    return found


class Serve:
    """`xsyn serve` as a child process, its output collected line by line."""

    def __init__(self, repo: Path, cache_home: Path, *extra: str) -> None:
        self.ports = [free_port() for _ in range(3)]
        self.url = f"127.0.0.1:{self.ports[0]}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xsyn.client.cli", "serve", "--repository", str(repo),
             "--grpc-port", str(self.ports[0]), "--http-port", str(self.ports[1]), "--metrics-port", str(self.ports[2]),
             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=run_env(cache_home))
        self.lines: list[str] = []
        threading.Thread(target=lambda: [self.lines.append(line) for line in self.proc.stdout], daemon=True).start()

    def wait_for(self, text: str, timeout: float = 150.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None or any(text in line for line in self.lines), "".join(self.lines)
            assert time.monotonic() < deadline, f"no {text!r} in:\n{''.join(self.lines)}"
            time.sleep(0.2)

    def processes(self) -> dict[int, str]:
        """Live processes of this server: its reaper, tritonserver and every stub."""
        return {pid: cmd for pid, cmd in live_processes().items()
                if f"--grpc-port={self.ports[0]}" in cmd or f"_{self.proc.pid}_" in cmd}

    def shm(self) -> list[str]:
        return [name for name in os.listdir("/dev/shm") if name.startswith(f"xsyn_{self.proc.pid}_")]

    def stub_pids(self, instance: str) -> list[int]:
        return [pid for pid, cmd in self.processes().items()
                if "triton_python_backend_stub" in cmd and cmd.split(" ")[8] == instance]


@pytest.fixture
def start_serve(tiny_repo, cache_home):
    """Start `xsyn serve` children; any still running when the test ends (a failed assertion) is
    SIGKILLed, and its reaper stops the server and removes its shared memory."""
    started = []

    def start(*extra: str) -> Serve:
        started.append(Serve(tiny_repo, cache_home, *extra))
        return started[-1]

    yield start
    for serve in started:
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait()
