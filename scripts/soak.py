"""Soak a real tiny server: N clients for some minutes, memory growth, error count, a stub kill.

    .venv/bin/python scripts/soak.py [--clients 4] [--minutes 3] [--kill-stub-at 60]
                                     [--out docs/measurements/soak_tiny_cpu]

Starts ``tritonserver`` on the exported repository (``xsyn export --preset tiny`` first) under
the :class:`~xsyn.serving.supervisor.Supervisor`, as ``xsyn serve`` does, and runs ``--clients``
client threads until the time is up: each alternates a synthesis (add mode, CAR and BOM on,
10 steps) with an embed and two clicks of the annotation pipeline, through the SDK (which
retries UNAVAILABLE). Every 10 s it records the server's memory (RSS and PSS summed over the
server, its reaper and every stub, and per model). With ``--kill-stub-at S`` the UNet's stub is
killed with SIGKILL S seconds in, and the run shows what clients saw while it healed.

Writes ``soak.json`` (every sample) and ``soak.md`` (the summary) to ``--out``. The loop is
bounded by ``--minutes`` and talks only to the loopback server it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def process_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of one process, from ``/proc/<pid>/smaps_rollup``."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key] = int(rest.split()[0]) * 1024
    except OSError:
        return 0, 0
    return values.get("Rss", 0), values.get("Pss", 0)


def server_memory(server) -> dict:
    """Memory of the server's process group: totals and per model (stubs) in MiB."""
    from xsyn.serving.server import group_members

    per_model: Counter = Counter()
    total_rss = total_pss = 0
    for pid in group_members(server.process.pid):
        rss, pss = process_memory(pid)
        total_rss, total_pss = total_rss + rss, total_pss + pss
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = (Path(args[1].decode()).parent.parent.name if len(args) > 8 and b"stub" in args[0]
                else Path(args[0].decode()).name if b"tritonserver" in args[0] else "reaper")
        per_model[name] += pss
    mib = 2**20
    return {"rss_mib": round(total_rss / mib, 1), "pss_mib": round(total_pss / mib, 1),
            "pss_by_model_mib": {k: round(v / mib, 1) for k, v in sorted(per_model.items())}}


def client_loop(url: str, deadline: float, seed: int, stats: dict, lock: threading.Lock) -> None:
    from xsyn.client.sdk import XsynClient

    rng = np.random.default_rng(seed)
    with XsynClient(url, retries=4, backoff=0.5) as client:
        i = 0
        while time.monotonic() < deadline:
            image = rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)
            for kind, call in (
                ("synthesize", lambda: client.synthesize({"mode": "add", "seed": i, "steps": 10}, image)),
                ("annotate", lambda: _annotate(client, image)),
            ):
                start = time.perf_counter()
                try:
                    call()
                    outcome = "ok"
                except Exception as exc:  # counted, the soak goes on
                    outcome = type(exc).__name__
                with lock:
                    stats["outcomes"][f"{kind}:{outcome}"] += 1
                    if outcome == "ok":
                        stats["latency_ms"][kind].append((time.perf_counter() - start) * 1000)
            i += 1


def _annotate(client, image) -> None:
    embedded = client.embed(image)
    result = client.segment(embedded.key, [[60.0, 50.0]], [1])
    client.segment(embedded.key, [[60.0, 50.0], [120.0, 90.0]], [1, 0], mask_input=result.low_res_mask)


def kill_unet_stub(server) -> int:
    pid = next(pid for pid in _stub_pids(server) if _instance(pid) == "unet_0_0")
    os.kill(pid, signal.SIGKILL)
    return pid


def _stub_pids(server) -> list[int]:
    from xsyn.serving.server import group_members

    return [pid for pid in group_members(server.process.pid) if _instance(pid)]


def _instance(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    return args[8].decode() if len(args) > 8 and b"triton_python_backend_stub" in args[0] else ""


def main(argv: list[str] | None = None) -> int:
    from xsyn.serving.repository import write_repository
    from xsyn.serving.server import ServerOptions, TritonServer, free_port, group_members
    from xsyn.serving.supervisor import Supervisor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--kill-stub-at", type=float, default=None, help="seconds in: SIGKILL the unet stub")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/measurements/soak_tiny_cpu")
    args = ap.parse_args(argv)

    write_repository(args.repository, "embedded")
    options = ServerOptions(repository=args.repository, grpc_port=free_port(), http_port=free_port(),
                            metrics_port=free_port(), log_path=Path(tempfile.mkdtemp()) / "triton.log")
    server = TritonServer(options)
    server.start()
    server.wait_until_ready()
    supervisor = Supervisor(server).start()
    samples = [{"t_s": 0.0, **server_memory(server)}]
    print(f"soak: server ready; PSS {samples[0]['pss_mib']} MiB, RSS {samples[0]['rss_mib']} MiB", flush=True)
    stats = {"outcomes": Counter(), "latency_ms": {"synthesize": [], "annotate": []}}
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + args.minutes * 60
    threads = [threading.Thread(target=client_loop, args=(options.grpc_url, deadline, k, stats, lock), daemon=True)
               for k in range(args.clients)]
    for t in threads:
        t.start()
    killed = None
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        now = time.monotonic() - start
        if args.kill_stub_at is not None and killed is None and now >= args.kill_stub_at:
            killed = {"t_s": round(now, 1), "pid": kill_unet_stub(server)}
        if now - samples[-1]["t_s"] >= 10:
            samples.append({"t_s": round(now, 1), **server_memory(server)})
            print(f"soak: {now:5.0f} s  PSS {samples[-1]['pss_mib']} MiB  {dict(stats['outcomes'])}", flush=True)
    for t in threads:
        t.join(120)
    samples.append({"t_s": round(time.monotonic() - start, 1), **server_memory(server)})
    prefix, group = server.shm_prefix, server.process.pid
    stop_start = time.monotonic()
    supervisor.stop()
    stopped = {"seconds": round(time.monotonic() - stop_start, 1),
               "processes_left": len(group_members(group)),
               "shm_left": len(list(Path("/dev/shm").glob(prefix + "*")))}

    # warm-up: the first third of the run (and the minute after a stub kill: the model reloads)
    settle = max(args.minutes * 60 / 3, (killed["t_s"] + 60) if killed else 0)
    warm = next((x for x in samples if x["t_s"] >= settle), samples[-1])
    report = {
        "clients": args.clients, "minutes": args.minutes, "cpu_count": os.cpu_count(),
        "outcomes": dict(stats["outcomes"]),
        "errors": sum(n for k, n in stats["outcomes"].items() if not k.endswith(":ok")),
        "latency_ms": {k: {"p50": round(float(np.percentile(v, 50)), 1), "p99": round(float(np.percentile(v, 99)), 1),
                           "n": len(v)} for k, v in stats["latency_ms"].items() if v},
        "memory_at_start": samples[0], "memory_after_warmup": warm, "memory_at_end": samples[-1],
        "pss_growth_after_warmup_mib": round(samples[-1]["pss_mib"] - warm["pss_mib"], 1),
        "stub_killed": killed, "supervisor_events": supervisor.events, "stop": stopped, "samples": samples,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    (args.out / "soak.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    start, warm, end = r["memory_at_start"], r["memory_after_warmup"], r["memory_at_end"]
    lines = [f"# Soak: {r['clients']} clients, {r['minutes']} min, {r['cpu_count']} CPU cores, tiny preset", "",
             "| | value |", "|---|---|",
             f"| requests by outcome | {r['outcomes']} |",
             f"| errors seen by clients (after SDK retries) | {r['errors']} |"]
    for kind, row in r["latency_ms"].items():
        lines.append(f"| {kind} latency p50 / p99 | {row['p50']} / {row['p99']} ms (n = {row['n']}) |")
    lines += [f"| server PSS at start / after warm-up / at end | {start['pss_mib']} / {warm['pss_mib']} / "
              f"{end['pss_mib']} MiB |",
              f"| PSS growth from {warm['t_s']:.0f} s to the end | {r['pss_growth_after_warmup_mib']} MiB |",
              f"| server RSS (summed, shared pages counted per process) at start | {start['rss_mib']} MiB |"]
    if r["stub_killed"]:
        lines.append(f"| unet stub SIGKILLed at | {r['stub_killed']['t_s']} s |")
    stop = r["stop"]
    lines.append(f"| stop (drain, idle by then) | {stop['seconds']} s; {stop['processes_left']} processes and "
                 f"{stop['shm_left']} /dev/shm regions left |")
    lines += ["", "PSS at start by model (MiB):", "",
              "| model | PSS |", "|---|---|"] + [f"| {k} | {v} |" for k, v in start["pss_by_model_mib"].items()]
    if r["supervisor_events"]:
        lines += ["", "Supervisor:", ""] + [f"- {e}" for e in r["supervisor_events"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
