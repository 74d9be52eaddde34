"""A real ``tritonserver`` child process from the ``nvidia-pytriton`` wheel.

The wheel ships the server binary, its libraries and Python-backend stubs for several Python
versions. :func:`triton_install` makes a copy whose ``backends/python`` holds the stub of the
running interpreter (once per Python version, in the user cache). :class:`TritonServer` starts
the binary under :mod:`xsyn.serving.reaper` in its own process group, waits until every model is
ready, and stops it cleanly:

- model control is ``explicit`` with every model loaded at start; loading, unloading, reading
  configs or the repository index, shared-memory registration, tracing and log settings are
  restricted protocols that answer only requests carrying this server's key
  (:attr:`ServerOptions.admin_key`, random per server unless set) in the header
  ``triton-grpc-protocol-xsyn-admin-key`` (gRPC) or ``xsyn-admin-key`` (HTTP). Health,
  metadata, statistics and inference stay open;
- the Python backend's shared-memory regions are named with a prefix of this server's own
  (:attr:`TritonServer.shm_prefix`), so they can be told apart and removed whatever way the
  server ends;
- :meth:`TritonServer.stop` drains: the pipeline models (``xsyn``, ``apsam``) are unloaded first,
  so new requests are refused while the ones in flight finish, up to ``grace`` seconds; then
  the server is stopped (a request still running then gets UNAVAILABLE from its next leaf call)
  and what is left of its process group is killed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from xsyn.errors import Unavailable, XsynError
# group_members is re-exported: callers and tests find it beside the server
from xsyn.serving.reaper import group_members, remove_shm, set_parent_death_signal  # noqa: F401

#: Header key that opens the restricted protocols: an HTTP request sends it as it is, a gRPC
#: request as ``triton-grpc-protocol-xsyn-admin-key`` (:data:`GRPC_ADMIN_HEADER`; Triton's rule).
ADMIN_HEADER = "xsyn-admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
#: Protocols (Triton's names) that only answer with the admin key.
RESTRICTED_PROTOCOLS = ("shared-memory", "model-config", "model-repository", "trace", "logging")


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
    #: value of the ``xsyn-admin-key`` header that opens the restricted protocols
    admin_key: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    #: seconds a stop waits for in-flight pipeline requests before cancelling them
    grace: float = 30.0
    #: seconds Triton itself waits for in-flight leaf requests once it is told to stop
    exit_timeout: int = 5

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
        self.shm_prefix = ""
        self.log_path = options.log_path or Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])

    @property
    def admin_headers(self) -> dict[str, str]:
        """gRPC headers that open the restricted protocols (model control, configs, index)."""
        return {GRPC_ADMIN_HEADER: self.options.admin_key}

    def admin_client(self):
        """A gRPC client of this server (pass :attr:`admin_headers` to restricted calls)."""
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.options.grpc_url)

    def command(self, install: Path) -> list[str]:
        o = self.options
        restricted = f"{','.join(RESTRICTED_PROTOCOLS)}:{ADMIN_HEADER}={o.admin_key}"
        return [
            str(install / "bin" / "tritonserver"),
            f"--model-repository={Path(o.repository).resolve()}",
            f"--backend-directory={install / 'backends'}",
            "--model-control-mode=explicit", "--load-model=*",
            "--strict-readiness=true",
            "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--exit-timeout-secs={o.exit_timeout}",
            f"--grpc-address={o.host}", f"--grpc-port={o.grpc_port}",
            f"--http-address={o.host}", f"--http-port={o.http_port}",
            f"--metrics-address={o.host}", f"--metrics-port={o.metrics_port}",
            f"--grpc-restricted-protocol={restricted}",
            f"--http-restricted-api={restricted}",
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
        self.shm_prefix = f"xsyn_{os.getpid()}_{secrets.token_hex(4)}_"
        log = open(self.log_path, "ab")
        from xsyn.serving import reaper

        wrapper = [sys.executable, "-I", reaper.__file__, self.shm_prefix, "--"]
        self.process = subprocess.Popen(wrapper + self.command(install), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.environment(), start_new_session=True,
                                        preexec_fn=set_parent_death_signal)
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
                    index = client.get_model_repository_index(headers=self.admin_headers, as_json=True
                                                              ).get("models", [])
                    if all(m.get("state") == "READY" for m in index):
                        return index
            except Exception:  # not listening yet
                pass
            time.sleep(0.25)
        self._fail(f"server not ready after {self.options.startup_timeout:.0f} s")

    def _fail(self, why: str):
        self.stop(grace=0)
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

    def stop(self, grace: float | None = None) -> None:
        """Drain (see the module docstring; ``grace`` defaults to the options'), stop the server,
        kill what is left of its process group and remove its shared-memory regions."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.drain(self.options.grace if grace is None else grace)
        pgid = self.process.pid
        try:
            self.process.send_signal(signal.SIGTERM)  # the reaper passes it on to tritonserver
            self.process.wait(timeout=self.options.exit_timeout + 30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        _signal_group(pgid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        remove_shm(self.shm_prefix)
        self.process = None

    def drain(self, grace: float) -> None:
        """Unload the pipeline models, waiting up to ``grace`` s for their in-flight requests.

        While unloading, Triton refuses new requests to them and lets the running ones finish
        (their leaf models stay loaded). Returns as soon as they are unloaded."""
        from xsyn.export.pipelines import PIPELINES

        client, headers = self.admin_client(), self.admin_headers
        deadline = time.monotonic() + grace
        pipelines = {p.name for p in PIPELINES}
        try:
            loaded = pipelines & self._model_states(client).keys()
        except Exception:  # not answering any more: nothing left to drain
            return
        for name in loaded:
            try:
                client.unload_model(name, headers=headers, client_timeout=max(deadline - time.monotonic(), 0.1))
            except Exception:
                pass
        try:
            while time.monotonic() < deadline:
                states = self._model_states(client)
                if not any(states.get(name) in ("READY", "UNLOADING") for name in pipelines):
                    return
                time.sleep(0.1)
        except Exception:  # not answering any more: nothing left to drain
            return

    def _model_states(self, client) -> dict[str, str]:
        index = client.get_model_repository_index(headers=self.admin_headers, as_json=True)
        return {m["name"]: m.get("state", "") for m in index.get("models", [])}

    def stubs(self) -> dict[str, set[str]]:
        """Live Python-backend stubs of this server: model name -> instance names (``unet_0_0``).

        Read from ``/proc``: a stub's command line is ``stub MODEL_PATH SHM_REGION ... INSTANCE
        ...`` and its shared-memory region starts with :attr:`shm_prefix`."""
        found: dict[str, set[str]] = {}
        if not self.shm_prefix:
            return found
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if len(args) > 8 and state != "Z" and args[2].decode(errors="replace").startswith(self.shm_prefix):
                model = Path(args[1].decode(errors="replace")).parent.parent.name
                found.setdefault(model, set()).add(args[8].decode(errors="replace"))
        return found

    def __enter__(self) -> "TritonServer":
        self.start()
        try:
            self.wait_until_ready()
        except BaseException:
            self.stop(grace=0)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def require_server(url: str):
    """A connected gRPC client, or Unavailable naming the URL."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        client.is_server_live()
    except Exception as exc:
        raise Unavailable(f"no Triton server answers at {url} ({type(exc).__name__})") from None
    return client
