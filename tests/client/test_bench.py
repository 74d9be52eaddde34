"""``xsyn bench`` on the tiny preset: a short run writes its JSON and Markdown report.

Keeps the command from rotting on the CPU machine; the numbers themselves are not asserted
(shared machines are noisy), only that every part was measured and the ratios computed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.conftest import run_env


def test_bench_writes_the_report(tiny_repo, tmp_path, cache_home):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "xsyn.client.cli", "bench", "--preset", "tiny", "--repository",
                           str(repo), "--steps", "2", "--requests", "1", "--concurrency", "1,2", "--clicks", "5", "--load-clients", "1",
                           "--out", str(out)], capture_output=True, text=True, env=run_env(cache_home), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    for part in ("reference", "bare_unet", "in_process", "served", "annotation", "memory", "ratios"):
        assert report[part], part
    assert report["environment"]["device"] == "cpu" and report["environment"]["precision"] == "fp32"
    assert report["served"]["status"] == "ok" and report["in_process"]["status"] == "ok"
    assert set(report["served"]["throughput"]) == {"1", "2"}
    assert all(row["errors"] == 0 and row["requests_per_s"] > 0 for row in report["served"]["throughput"].values())
    assert report["served"]["throughput"]["1"]["mean_unet_batch_samples"] == 2.0  # one request: the CFG pair
    assert all(report["ratios"][k] is not None for k in ("served_vs_reference", "served_step_vs_bare_unet",
                                                         "throughput_scaling", "click_p50_ms"))
    assert report["memory"]["server_group_peak_rss_mb"] > 0
    assert report["annotation"]["loaded_click_p99_ms"] > 0 and report["ratios"]["loaded_vs_idle_p99"] > 0
    markdown = (out / "bench.md").read_text()
    assert "| served_vs_reference |" in markdown and "| 2 |" in markdown


def test_bench_refuses_a_missing_device_with_one_line(tmp_path, cache_home):
    proc = subprocess.run([sys.executable, "-m", "xsyn.client.cli", "bench", "--runtime", "torch", "--device", "cuda:3",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=run_env(cache_home),
                          timeout=300)
    assert proc.returncode == 2 and "cuda:3" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "xsyn.client.cli", "bench", "--runtime", "torch", "--device", "gpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=run_env(cache_home),
                          timeout=300)
    assert proc.returncode == 2 and "--device 'gpu'" in proc.stderr and "Traceback" not in proc.stderr
