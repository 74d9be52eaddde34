"""A real ``tritonserver`` child process from the ``nvidia-pytriton`` wheel.

The wheel ships the server binary, its libraries and Python-backend stubs for several Python
versions. :func:`triton_install` makes a copy whose ``backends/python`` holds the stub of the
running interpreter (once per Python version, in the user cache). :class:`TritonServer` starts
the binary in its own process group with model control mode ``none`` (no remote loading),
waits until every model is ready, and stops the whole group (server and stubs) cleanly.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from xsyn.errors import Unavailable, XsynError


class ServerError(XsynError):
    """The server could not start, or a model failed to load."""

    status = "UNAVAILABLE"


def _wheel_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent


def triton_install(cache: Path | None = None) -> Path:
    """Folder with ``bin/tritonserver`` and ``backends/python`` set up for this Python; reused when present."""
    from xsyn.export.sources import default_work_dir

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    src = _wheel_root() / "tritonserver"
    stub = src / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    dest = (cache or default_work_dir()) / f"tritonserver-py{version}"
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    shutil.copytree(src, tmp / "t", ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy2(stub, tmp / "t" / "backends" / "python" / "triton_python_backend_stub")
    (tmp / "t" / ".complete").touch()
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp / "t", dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def port_in_use(host: str, port: int) -> bool:
    """True when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ServerOptions:
    """How to run the server. Ports bind on ``host`` (loopback unless asked otherwise)."""

    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    log_path: Path | None = None
    startup_timeout: float = 180.0

    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self.client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.client_host}:{self.metrics_port}/metrics"


class TritonServer:
    """Start, wait for, and stop one ``tritonserver`` process group. Usable as a context manager."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.process: subprocess.Popen | None = None
        self.log_path = options.log_path or Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])

    def command(self, install: Path) -> list[str]:
        o = self.options
        return [
            str(install / "bin" / "tritonserver"),
            f"--model-repository={Path(o.repository).resolve()}",
            f"--backend-directory={install / 'backends'}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--disable-auto-complete-config",
            f"--grpc-address={o.host}", f"--grpc-port={o.grpc_port}",
            f"--http-address={o.host}", f"--http-port={o.http_port}",
            f"--metrics-address={o.host}", f"--metrics-port={o.metrics_port}",
            "--allow-gpu-metrics=false",
            "--log-verbose=0",
        ]

    def environment(self) -> dict[str, str]:
        """The server's environment: the wheel's libraries, and this interpreter's ``libpython``.

        The stub links ``libpython3.X.so.1.0`` dynamically; without this interpreter's library
        first on the path it may pick up the system's (another patch release), whose C API does
        not match this environment's extension modules (e.g. ``_ssl``: undefined symbol).
        """
        env = dict(os.environ)
        paths = [str(_wheel_root().parent / "nvidia_pytriton.libs")]
        libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
        if libdir and soname and (Path(libdir) / soname).is_file():
            paths.insert(0, libdir)
        env["LD_LIBRARY_PATH"] = ":".join(paths + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []))
        env["PATH"] = str(Path(sys.executable).parent) + ":" + env.get("PATH", "")
        return env

    def start(self) -> None:
        """Check the ports, then launch the server in a new process group."""
        o = self.options
        for flag, port in (("--grpc-port", o.grpc_port), ("--http-port", o.http_port), ("--metrics-port", o.metrics_port)):
            if port_in_use(o.host, port):
                raise ServerError(f"{flag} {port}: {o.host}:{port} is already in use; pick another port")
        if not Path(o.repository).is_dir():
            raise ServerError(f"model repository {o.repository}: no such folder")
        install = triton_install()
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command(install), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.environment(), start_new_session=True)
        log.close()

    def wait_until_ready(self) -> list[dict]:
        """Block until the server and every model are ready; returns the repository index.

        On failure (process exit or timeout) stops the server and raises ServerError with the
        models that failed and the log's tail.
        """
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.options.grpc_url)
        deadline = time.monotonic() + self.options.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"tritonserver exited with code {self.process.returncode} during start-up")
            try:
                if client.is_server_ready():
                    index = client.get_model_repository_index(as_json=True).get("models", [])
                    if all(m.get("state") == "READY" for m in index):
                        return index
            except Exception:  # not listening yet
                pass
            time.sleep(0.25)
        self._fail(f"server not ready after {self.options.startup_timeout:.0f} s")

    def _fail(self, why: str):
        self.stop()
        failed = self.failed_models()
        detail = f"; models that failed: {', '.join(failed)}" if failed else ""
        raise ServerError(f"{why}{detail}\n--- server log errors and tail ({self.log_path}) ---\n{self.log_digest()}")

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def failed_models(self) -> list[str]:
        """Models the log reports as failed to load or unavailable."""
        text = self._log_text()
        names = re.findall(r"(?:failed to load|failed for model directory) '([^']+)'", text)
        names += re.findall(r"^\|\s*(\w+)\s*\|\s*\d+\s*\|\s*UNAVAILABLE", text, flags=re.M)
        return sorted(set(names))

    def log_digest(self, errors: int = 15, tail: int = 8) -> str:
        """The log's error lines (``E...``) followed by its last lines."""
        lines = self._log_text().splitlines()
        error_lines = [line[:400] for line in lines if line.startswith("E")][-errors:]
        return "\n".join(error_lines + ["..."] + [line[:400] for line in lines[-tail:]])

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self._log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group (server + stubs), wait, then SIGKILL what is left."""
        if self.process is None:
            return
        pgid = self.process.pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if group_members(pgid):
            _signal_group(pgid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> "TritonServer":
        self.start()
        try:
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) process ids in process group ``pgid`` (Linux ``/proc``)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def require_server(url: str):
    """A connected gRPC client, or Unavailable naming the URL."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        client.is_server_live()
    except Exception as exc:
        raise Unavailable(f"no Triton server answers at {url} ({type(exc).__name__})") from None
    return client
