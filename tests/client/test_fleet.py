"""One dataset job over several real tiny servers: the thread pool and the Ray Data actor pool
balance over them, survive a server killed mid-job, stop cleanly when every server is gone, and
give byte for byte what a one-server run gives."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import live_processes, run_env
from xsyn.serving.server import free_port

pytestmark = pytest.mark.slow


def _cli(*args, cache_home, timeout=900):
    return subprocess.run([sys.executable, "-m", "xsyn.client.cli", *map(str, args)], capture_output=True, text=True,
                          env=run_env(cache_home), timeout=timeout)


def _job(sample_set: Path, out: Path, servers: str, *extra) -> list:
    return ["synthesize", "--images", sample_set, "--annotations", sample_set / "annotations.json", "--mode", "modify",
            "--out", out, "--concurrency", 3, "--servers", servers, "--steps", 3, *extra]


def _assert_same_outputs(out: Path, reference: Path) -> None:
    assert (out / "annotations.json").read_bytes() == (reference / "annotations.json").read_bytes()
    images = sorted(p.name for p in (reference / "images").glob("*.png"))
    assert images and sorted(p.name for p in (out / "images").glob("*.png")) == images
    for name in images:
        assert (out / "images" / name).read_bytes() == (reference / "images" / name).read_bytes(), name


def _backends(out: Path) -> set[str]:
    return {json.loads(p.read_text())["backend"] for p in (out / "records").glob("*.json")}


@pytest.fixture(scope="module")
def sample_set(tmp_path_factory, cache_home):
    out = tmp_path_factory.mktemp("fleet_samples")
    assert _cli("sample-data", "--out", out, "--n", 6, cache_home=cache_home).returncode == 0
    return out


@pytest.fixture(scope="module")
def one_server_run(onnxruntime_server, sample_set, tmp_path_factory, cache_home):
    """The reference: the job on one server."""
    out = tmp_path_factory.mktemp("one_server") / "out"
    proc = _cli(*_job(sample_set, out, onnxruntime_server.options.grpc_url), cache_home=cache_home)
    assert proc.returncode == 0 and "6 done now" in proc.stdout, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="module")
def fleet(onnxruntime_server, second_onnxruntime_server):
    return [onnxruntime_server.options.grpc_url, second_onnxruntime_server.options.grpc_url]


def test_a_job_over_two_servers_and_one_down_equals_a_one_server_run(fleet, one_server_run, sample_set, tmp_path,
                                                                     cache_home):
    dead = f"127.0.0.1:{free_port()}"
    proc = _cli(*_job(sample_set, tmp_path / "fleet", ",".join([*fleet, dead])), cache_home=cache_home)
    assert proc.returncode == 0 and "6 done now, 0 already done" in proc.stdout, proc.stdout + proc.stderr
    assert f"server {dead} is unavailable" in proc.stdout and "skipped" in proc.stdout
    _assert_same_outputs(tmp_path / "fleet", one_server_run)
    assert _backends(tmp_path / "fleet") == {f"grpc:{url}" for url in fleet}  # both servers did work
    record = json.loads(next((tmp_path / "fleet" / "records").glob("*.json")).read_text())
    assert record["model_versions"]["servers"] == [*fleet, dead]


def test_annotate_over_two_servers_equals_one_server(fleet, sample_set, tmp_path, cache_home):
    clicks = {"clicks": [{"file_name": f"images/sample_{i:04d}.png", "x": 40 + 9 * i, "y": 50 + 5 * i,
                          "category": "Knife"} for i in range(6)]
              + [{"file_name": "images/sample_0002.png", "points": [[60, 60, 1], [80, 62, 0]], "category": "Gun"}]}
    path = tmp_path / "clicks.json"
    path.write_text(json.dumps(clicks))
    outs = {}
    for name, servers, concurrency in (("one", fleet[0], 1), ("two", ",".join(fleet), 2)):
        proc = _cli("annotate", "--images", sample_set, "--clicks", path, "--out", tmp_path / name,
                    "--servers", servers, "--concurrency", concurrency, cache_home=cache_home)
        assert proc.returncode == 0 and "7 masks on 6 images, 0 problem(s)" in proc.stdout, proc.stdout + proc.stderr
        outs[name] = (tmp_path / name / "annotations.json").read_bytes()
    assert outs["one"] == outs["two"]


def test_the_ray_data_path_on_a_local_runtime_equals_a_one_server_run_and_resumes(fleet, one_server_run, sample_set,
                                                                                tmp_path, cache_home):
    out = tmp_path / "ray"
    servers = ",".join(fleet)
    first = _cli(*_job(sample_set, out, servers, "--ray", "local", "--limit", 2), cache_home=cache_home)
    assert first.returncode == 0 and "2 done now, 0 already done" in first.stdout, first.stdout + first.stderr
    assert "MapBatches(SynthesisActor)" in first.stderr  # Ray Data's own progress reporting

    # the rest, with one actor process killed -9 mid-run: Ray restarts it and retries its item
    rest = subprocess.Popen([sys.executable, "-m", "xsyn.client.cli",
                             *map(str, _job(sample_set, out, servers, "--ray", "local"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(cache_home))
    _wait_for_records(out, 3, rest)
    actors = [pid for pid, cmd in live_processes().items() if cmd.startswith("ray::MapWorker(MapBatches(SynthesisActor))")]
    assert actors
    os.kill(actors[0], signal.SIGKILL)
    stdout, stderr = rest.communicate(timeout=600)
    assert rest.returncode == 0 and "4 done now, 2 already done (resumed)" in stdout, stdout + stderr
    _assert_same_outputs(out, one_server_run)
    assert _backends(out) <= {f"grpc:{url}" for url in fleet}


def _wait_for_records(out: Path, n: int, job: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / "records").glob("*.json"))) < n:
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_server_killed_mid_job_and_then_every_server(fleet, one_server_run, start_serve, sample_set, tmp_path,
                                                       cache_home):
    doomed, lonely = start_serve(), start_serve()
    doomed.wait_for("ready from")
    lonely.wait_for("ready from")

    # 1. kill -9 one of two servers while it has requests in flight: the job finishes on the other
    out = tmp_path / "failover"
    job = subprocess.Popen([sys.executable, "-m", "xsyn.client.cli", *map(str, _job(sample_set, out,
                            f"{fleet[0]},{doomed.url}"))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=run_env(cache_home))
    _wait_for_records(out, 2, job)
    doomed.proc.send_signal(signal.SIGKILL)  # its reaper takes tritonserver down with it
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0 and "0 failed" in stdout, stdout + stderr
    assert f"server {doomed.url} taken out" in stderr
    _assert_same_outputs(out, one_server_run)

    # 2. the only server dies mid-job: one line says so, finished items stay, a rerun finishes
    out = tmp_path / "all_down"
    job = subprocess.Popen([sys.executable, "-m", "xsyn.client.cli", *map(str, _job(sample_set, out, lonely.url))],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(cache_home))
    _wait_for_records(out, 1, job)
    lonely.proc.send_signal(signal.SIGKILL)
    stdout, stderr = job.communicate(timeout=600)
    finished = len(list((out / "records").glob("*.json")))
    assert job.returncode == 1 and finished < 6, stdout + stderr
    stopped = [line for line in stdout.splitlines() if "not done" in line]
    assert len(stopped) == 1 and f"stopped with {6 - finished} item(s) not done" in stopped[0], stdout
    assert "run the same command again" in stopped[0] and "failed  " not in stdout
    resumed = _cli(*_job(sample_set, out, ",".join([lonely.url, doomed.url, fleet[0]])), cache_home=cache_home)
    assert f"{6 - finished} done now, {finished} already done (resumed)" in resumed.stdout, resumed.stdout
    assert f"server {lonely.url} is unavailable" in resumed.stdout and resumed.returncode == 0
    _assert_same_outputs(out, one_server_run)

    # 3. every server down at the start: one clear line naming each, nothing written
    none = _cli(*_job(sample_set, tmp_path / "none", f"{lonely.url},{doomed.url}"), cache_home=cache_home)
    lines = none.stderr.strip().splitlines()
    assert none.returncode == 2 and len(lines) == 1 and lonely.url in lines[0] and doomed.url in lines[0], none.stderr
    assert not list((tmp_path / "none").glob("images/*"))


def test_the_async_client_balances_and_keeps_each_embedding_on_its_server(fleet):
    from xsyn.client.sdk import AsyncXsynClient

    images = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(4)]

    async def run():
        async with AsyncXsynClient(fleet) as client:
            health = await client.health()
            assert set(health["endpoints"]) == set(fleet) and all(r["ready"] for r in health["endpoints"].values())
            keys = [r.key for r in await asyncio.gather(*(client.embed(image) for image in images))]
            where = {key: client.pool._pins[key].url for key in keys}
            masks = await asyncio.gather(*(client.segment(key, [[20, 20]], [1]) for key in keys))
            return where, masks

    where, masks = asyncio.run(run())
    assert set(where.values()) == set(fleet)  # four embeds in flight went to both servers
    assert all(m.mask().shape == (48, 64) for m in masks)  # each click found its embedding


def test_a_dns_name_reaches_the_servers_behind_it(fleet):
    """A headless Service's name resolves to its pods; here localhost resolves to one server."""
    from xsyn.client.sdk import XsynClient

    port = fleet[0].rsplit(":", 1)[1]
    with XsynClient(f"dns:///localhost:{port}") as client:
        assert f"127.0.0.1:{port}" in client.urls
        assert client.health()["endpoints"][f"127.0.0.1:{port}"]["ready"]
        key = client.embed(np.zeros((32, 32, 3), np.uint8)).key
        assert client.pool._pins[key].url == f"127.0.0.1:{port}"
