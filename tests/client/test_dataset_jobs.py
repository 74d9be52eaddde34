"""`xsyn synthesize` and `xsyn annotate` as users run them, against a real server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_env

pytestmark = pytest.mark.slow


def _cli(*args, cache_home, **kw):
    return subprocess.run([sys.executable, "-m", "xsyn.client.cli", *map(str, args)], capture_output=True, text=True,
                          env=run_env(cache_home), timeout=900, **kw)


@pytest.fixture(scope="module")
def sample_set(tmp_path_factory, cache_home):
    out = tmp_path_factory.mktemp("samples")
    assert _cli("sample-data", "--out", out, "--n", 6, cache_home=cache_home).returncode == 0
    return out


def _synthesize_args(sample_set, out, url):
    return ["synthesize", "--images", sample_set, "--annotations", sample_set / "annotations.json", "--mode", "modify",
            "--per-image", 1, "--out", out, "--concurrency", 3, "--server", url, "--steps", 3]


def _coco_content(out: Path):
    from pycocotools.coco import COCO

    coco = COCO(str(out / "annotations.json"))
    images = {i["id"]: i for i in coco.dataset["images"]}
    for ann in coco.dataset["annotations"]:
        assert ann["image_id"] in images and ann["category_id"] in coco.cats
    return json.loads((out / "annotations.json").read_text())


def test_a_six_image_set_runs_and_a_killed_job_resumes_to_the_same_result(tiny_server, sample_set, tmp_path,
                                                                          cache_home):
    url = tiny_server.options.grpc_url
    whole = _cli(*_synthesize_args(sample_set, tmp_path / "whole", url), cache_home=cache_home)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert "6 done now, 0 already done" in whole.stdout
    reference = _coco_content(tmp_path / "whole")
    assert len(reference["images"]) == 6 and reference["annotations"]
    assert all("segmentation" in a for a in reference["annotations"])  # CAR masks
    record = json.loads(next((tmp_path / "whole" / "records").glob("*.json")).read_text())
    assert {"source_image", "seed", "mode", "request", "model_versions"} <= set(record)

    out = tmp_path / "resumed"
    job = subprocess.Popen([sys.executable, "-m", "xsyn.client.cli", *map(str, _synthesize_args(sample_set, out, url))],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=run_env(cache_home))
    deadline = time.monotonic() + 300
    while len(list((out / "records").glob("*.json"))) < 2 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.2)
    job.send_signal(signal.SIGKILL)
    job.wait()
    finished_before = len(list((out / "records").glob("*.json")))
    assert 2 <= finished_before < 6
    resumed = _cli(*_synthesize_args(sample_set, out, url), cache_home=cache_home)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{6 - finished_before} done now, {finished_before} already done (resumed)" in resumed.stdout
    assert _coco_content(out) == reference
    for image in (tmp_path / "whole" / "images").glob("*.png"):
        assert (out / "images" / image.name).read_bytes() == image.read_bytes()


def test_bad_dataset_input_is_reported_per_item(tiny_server, sample_set, tmp_path, cache_home):
    coco = json.loads((sample_set / "annotations.json").read_text())
    coco["images"].append({"id": 99, "file_name": "images/missing.png", "width": 320, "height": 256})
    coco["annotations"].append({"id": 900, "image_id": 99, "category_id": 1, "bbox": [10, 10, 50, 50]})
    coco["annotations"].append({"id": 901, "image_id": 12345, "category_id": 1, "bbox": [10, 10, 50, 50]})
    coco["annotations"].append({"id": 902, "image_id": 1, "category_id": 1})
    coco["categories"].append({"id": 77, "name": "Banana"})
    coco["annotations"].append({"id": 903, "image_id": 1, "category_id": 77, "bbox": [10, 10, 50, 50]})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    args = ["synthesize", "--images", sample_set, "--annotations", bad, "--mode", "add", "--out", tmp_path / "o",
            "--server", tiny_server.options.grpc_url, "--steps", 2, "--limit", 3]
    proc = _cli(*args, cache_home=cache_home)
    assert "annotation 901: refers to unknown image id 12345" in proc.stdout
    assert "annotation 902: malformed" in proc.stdout
    assert "annotation 903: category 'Banana' is not in the class groups" in proc.stdout
    assert proc.returncode == 0 and "3 done now" in proc.stdout  # the run went on

    missing = _cli(*args[:-2], "--limit", 7, cache_home=cache_home)
    assert "failed  missing_99_0: FileNotFoundError: image file" in missing.stdout
    assert missing.returncode == 1 and "1 failed" in missing.stdout
    assert "3 already done (resumed)" in missing.stdout

    (tmp_path / "broken.json").write_text("{not json")
    broken = _cli("synthesize", "--images", sample_set, "--annotations", tmp_path / "broken.json", "--mode", "add",
                  "--out", tmp_path / "b", "--server", tiny_server.options.grpc_url, cache_home=cache_home)
    assert broken.returncode == 2 and broken.stderr.startswith("xsyn: error: --annotations") and "not valid JSON" in broken.stderr


def test_annotate_batch_clicks_to_coco(tiny_server, sample_set, tmp_path, cache_home):
    from pycocotools.coco import COCO

    clicks = {"clicks": [{"file_name": "images/sample_0000.png", "x": 120, "y": 90, "category": "Knife"},
                         {"file_name": "images/sample_0000.png", "points": [[60, 60, 1], [80, 62, 0]], "category": "Gun"},
                         {"file_name": "images/sample_0001.png", "x": 5000, "y": 10, "category": "Knife"},
                         {"file_name": "images/nope.png", "x": 1, "y": 1, "category": "Gun"}]}
    path = tmp_path / "clicks.json"
    path.write_text(json.dumps(clicks))
    proc = _cli("annotate", "--images", sample_set, "--clicks", path, "--out", tmp_path / "a",
                "--server", tiny_server.options.grpc_url, cache_home=cache_home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 masks on 2 images, 2 problem(s)" in proc.stdout and "points.0" in proc.stdout and "nope.png" in proc.stdout
    coco = COCO(str(tmp_path / "a" / "annotations.json"))
    assert len(coco.anns) == 2 and all(a["segmentation"] for a in coco.anns.values())


def test_resume_verifies_what_it_trusts_and_redoes_damaged_items(tiny_server, sample_set, tmp_path, cache_home):
    """A truncated record and a truncated image are found on resume, reported, redone, and the
    result equals an undamaged run; an intact item is not redone."""
    url = tiny_server.options.grpc_url
    out = tmp_path / "job"
    first = _cli(*_synthesize_args(sample_set, out, url), cache_home=cache_home)
    assert first.returncode == 0, first.stdout + first.stderr
    reference = (out / "annotations.json").read_bytes()
    records = sorted((out / "records").glob("*.json"))
    record = json.loads(records[1].read_text())
    assert record["image_bytes"] > 0 and len(record["image_sha256"]) == 64
    records[0].write_bytes(records[0].read_bytes()[:40])               # truncated record
    image = out / record["file_name"]
    image.write_bytes(image.read_bytes()[: record["image_bytes"] // 2])  # truncated image
    partial = out / "images" / f".{image.name}.k2j3x9"                  # a write killed before its rename
    partial.write_bytes(b"half an image")

    again = _cli(*_synthesize_args(sample_set, out, url), cache_home=cache_home)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Traceback" not in again.stderr
    assert f"redo {records[0].stem}" in again.stdout and f"redo {records[1].stem}" in again.stdout
    assert "2 done now, 4 already done" in again.stdout
    assert (out / "annotations.json").read_bytes() == reference
    assert not partial.exists()


def test_local_jobs_with_threads_equal_a_sequential_run(tiny_repo, sample_set, tmp_path, cache_home):
    outs = {}
    for concurrency in (1, 2):
        out = tmp_path / f"local{concurrency}"
        args = _synthesize_args(sample_set, out, "unused")
        args[args.index("--concurrency") + 1] = concurrency
        args = args[:args.index("--server")] + ["--local", tiny_repo] + args[args.index("--server") + 2:]
        proc = _cli(*args, "--limit", 4, cache_home=cache_home)
        assert proc.returncode == 0 and "ImportError" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        outs[concurrency] = out
    assert (outs[1] / "annotations.json").read_bytes() == (outs[2] / "annotations.json").read_bytes()
    for image in sorted((outs[1] / "images").glob("*.png")):
        assert image.read_bytes() == (outs[2] / "images" / image.name).read_bytes(), image.name
