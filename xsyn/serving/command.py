"""``xsyn serve``, ``xsyn health``, ``xsyn repository`` and ``xsyn demo``."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import numpy as np

from xsyn.errors import InvalidArgument, XsynError
from xsyn.api.tensors import array_input
from xsyn.serving.repository import TARGETS, write_repository
from xsyn.serving.server import ServerOptions, TritonServer, require_server
from xsyn.settings import ServerSettings

DEFAULT_REPOSITORY = Path("model_repository")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start Triton on the model repository until Ctrl-C / SIGTERM")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=("tiny", "tiny-random", "full"), help="export the preset into the repository when missing")
    src.add_argument("--repository", type=Path, help="serve this exported repository")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for every model to be ready")
    p.add_argument("--grace", type=float, default=30.0,
                   help="on SIGTERM / Ctrl-C: seconds in-flight requests may take to finish (default 30)")
    p.add_argument("--admin-key-file", type=Path,
                   help="write the key that opens the restricted protocols (model control, configs, shared "
                        "memory, logging, trace) to this file, mode 0600; without it they stay closed")
    add_runtime_arguments(p)
    p.set_defaults(handler=run_serve)

    p = sub.add_parser("health", help="server state, every model with state and version, metrics address")
    p.add_argument("--url", default="127.0.0.1:8001", help="gRPC address (default 127.0.0.1:8001)")
    p.add_argument("--metrics-port", type=int, default=8002)
    p.set_defaults(handler=run_health)

    p = sub.add_parser("repository", help="(re)generate config.pbtxt and shims for an exported repository")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--target", choices=TARGETS, default="embedded")
    p.add_argument("--engine", choices=("onnx", "tensorrt"), default="onnx", help="container target: backend to use")
    add_runtime_arguments(p)
    p.set_defaults(handler=run_repository)


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """``--runtime / --device / --precision / --torch-compile`` of the embedded leaf models."""
    p.add_argument("--runtime", choices=("auto", "onnxruntime", "tensorrt", "torch"), default="auto",
                   help="leaf-graph runtime: auto (TensorRT plan if built, else ONNX Runtime), or torch (model.pt2)")
    p.add_argument("--device", default="cpu", help="torch runtime: cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="torch runtime: auto = fp16 on CUDA, fp32 on the CPU")
    p.add_argument("--torch-compile", action="store_true", help="torch runtime: torch.compile each program at load")


def runtime_settings(args: argparse.Namespace) -> ServerSettings:
    """The runtime choice of the command line, checked: a device that does not exist or cannot run
    the precision, or a runtime that is not installed, fails here with one line."""
    from pydantic import ValidationError

    try:
        settings = ServerSettings(runtime=args.runtime, device=args.device, precision=args.precision,
                                  torch_compile=args.torch_compile,
                                  synthesis_instances=ServerSettings.load().synthesis_instances)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = str(first["loc"][0]).replace("_", "-") if first["loc"] else "runtime"
        raise InvalidArgument(f"--{flag} {first.get('input')!r}: expected cpu, cuda or cuda:N"
                              if flag == "device" else f"--{flag}: {first['msg']}") from None
    if settings.runtime == "torch":
        from xsyn.runtimes import resolve_device

        resolve_device(settings.device, settings.precision)
    elif settings.device != "cpu" or settings.precision != "auto" or settings.torch_compile:
        raise InvalidArgument(f"--device / --precision / --torch-compile choose the torch runtime's device; "
                              f"add --runtime torch (got --runtime {settings.runtime})")
    elif settings.runtime == "tensorrt":
        from xsyn.export.tensorrt_build import require_tensorrt

        require_tensorrt()
    return settings


def prepare_repository(preset: str | None, repository: Path | None, runtime: ServerSettings | None = None
                       ) -> tuple[Path, list]:
    """Export the preset when asked (cached when up to date) and generate the embedded config
    (``runtime``: the leaf models' runtime, device and precision)."""
    networks = []
    repo = repository or DEFAULT_REPOSITORY
    if preset:
        from xsyn.export.build import run_export
        from xsyn.export.networks import select_networks
        from xsyn.export.sources import preset_bundle

        bundle = preset_bundle(preset)
        networks = select_networks(bundle)
        results = run_export(networks, repo, bundle.source, profile=bundle.profile)
        failed = [r.name for r in results if r.status == "failed"]
        if failed:
            raise XsynError(f"export failed for {failed}; see {repo / 'parity_report.json'}")
    write_repository(repo, "embedded", runtime=runtime)
    return repo, networks


def run_serve(args: argparse.Namespace) -> int:
    from xsyn.serving.supervisor import Supervisor

    runtime = runtime_settings(args)
    repo, _ = prepare_repository(args.preset or (None if args.repository else "tiny"), args.repository, runtime)
    options = ServerOptions(repository=repo, host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                            metrics_port=args.metrics_port, startup_timeout=args.timeout, grace=args.grace)
    if args.admin_key_file:
        write_private(args.admin_key_file, options.admin_key + "\n")
    server = TritonServer(options)
    stop = {"requested": False, "serving": False}

    def request_stop(signum, frame):
        """SIGTERM and Ctrl-C alike: once serving, a flag the loop below reads (one path for
        both signals); while starting, an interrupt that abandons the start."""
        stop["requested"] = True
        if not stop["serving"]:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    supervisor, failure = None, None
    try:
        server.start()
        index = server.wait_until_ready()
        supervisor = Supervisor(server).start()
        stop["serving"] = True
        print(f"xsyn serve: {len(index)} model(s) ready from {repo}/")
        print(f"  gRPC {options.grpc_url}   HTTP {options.client_host}:{options.http_port}   metrics {options.metrics_url}")
        key = f"admin key in {args.admin_key_file}" if args.admin_key_file else "admin protocols closed (no --admin-key-file)"
        print(f"  server log: {server.log_path}   {key}   (Ctrl-C or SIGTERM to stop)", flush=True)
        shown = 0
        while not stop["requested"] and supervisor.running:
            for line in supervisor.events[shown:]:
                print(f"xsyn serve: {line}", flush=True)
            shown = len(supervisor.events)
            time.sleep(0.2)
        failure = supervisor.failure
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"xsyn serve: stopping (in-flight requests get up to {options.grace:.0f} s)", flush=True)
        start = time.monotonic()
        (supervisor.stop() if supervisor is not None else server.stop())
        print(f"xsyn serve: stopped after {time.monotonic() - start:.1f} s", flush=True)
    if failure:  # a crash loop: the server, not the command line, is at fault
        print(f"xsyn: error: {failure}\nlog tail:\n{server.log_tail()}", file=sys.stderr)
        return 1
    return 0


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, never world-readable)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def health_lines(url: str, metrics_port: int) -> tuple[list[str], bool]:
    """Human-readable health report and whether every model is ready.

    Each model the product serves is asked for its readiness (the repository index is a
    restricted protocol)."""
    from xsyn.api.models import model_states

    client = require_server(url)
    meta = client.get_server_metadata(as_json=True)
    states = model_states(client)
    ready = client.is_server_ready()
    lines = [f"server {meta.get('name')} {meta.get('version')} at {url}: live, {'ready' if ready else 'NOT ready'}"]
    lines += [f"  {name:<22} {state}" for name, state in states.items()]
    host = url.rsplit(":", 1)[0]
    lines.append(f"metrics: http://{host}:{metrics_port}/metrics")
    return lines, ready and bool(states) and all(state == "READY" for state in states.values())


def run_health(args: argparse.Namespace) -> int:
    lines, ok = health_lines(args.url, args.metrics_port)
    print("\n".join(lines))
    return 0 if ok else 1


def run_repository(args: argparse.Namespace) -> int:
    names = write_repository(args.repository, args.target, args.engine, runtime_settings(args))
    print(f"xsyn repository: {args.target} config for {', '.join(names)} in {args.repository}/")
    return 0


def infer(client, spec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One raw gRPC request to a leaf model; per-sample scalars are sent as ``[batch, 1]``."""
    tensors = [array_input(t.name, spec.to_declared_shape(t, inputs[t.name])) for t in spec.inputs]
    result = client.infer(spec.name, tensors)
    return {t.name: result.as_numpy(t.name) for t in spec.outputs}
