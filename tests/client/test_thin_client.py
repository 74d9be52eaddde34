"""The client installs and runs without the server stack.

A fresh virtual environment gets ``pip install <repo>`` (no ``server`` extra): torch, diffusers,
onnxruntime and tritonserver must be absent there, and the SDK must still click and synthesize
against a real tiny server, and the CLI's client commands must work while the server commands
say what to install.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "diffusers", "transformers", "onnxruntime", "segment_anything", "pytriton", "scipy")


@pytest.fixture(scope="module")
def client_env(tmp_path_factory) -> Path:
    """A venv with only the client distribution installed; returns its python."""
    env = tmp_path_factory.mktemp("client_env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    build = tmp_path_factory.mktemp("client_build")
    proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           str(ROOT)], capture_output=True, text=True, timeout=900, cwd=build)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return python


def _run(python: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=600, cwd=python.parent)


def test_client_env_has_nothing_heavy(client_env):
    proc = _run(client_env, f"""
        import importlib.util, sys
        import xsyn.client.sdk, xsyn.api.synthesis, xsyn.api.annotation
        missing = [m for m in {HEAVY!r} if importlib.util.find_spec(m) is None]
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})
        print(missing, loaded)
        assert missing == list({HEAVY!r}), missing
        assert not loaded, loaded
    """)
    assert proc.returncode == 0, proc.stderr


def test_client_env_clicks_and_synthesizes_against_a_real_server(client_env, tiny_server):
    proc = _run(client_env, """
        import json, sys
        import numpy as np
        from xsyn.client.sdk import AnnotationSession, InvalidArgument, XsynClient

        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        image[30:70, 40:90] = (200, 60, 30)
        with XsynClient(sys.argv[1]) as client:
            assert client.health()["ready"]
            session = AnnotationSession(client, image)
            click = session.click(60, 50)
            mask = click.mask()
            assert mask.shape == (96, 128) and mask.dtype == bool
            result = client.synthesize({"boxes": [[40, 30, 90, 70]], "class_names": ["Gun"], "steps": 2,
                                        "seed": 3, "bom_alpha": 0.0}, image)
            assert result.image.shape == image.shape and result.image.dtype == np.uint8
            try:
                client.synthesize({"boxes": [[40, 30, 90, 70]], "class_names": ["Gun"], "steps": 0}, image)
            except InvalidArgument as exc:
                assert "steps" in str(exc)
            else:
                raise AssertionError("steps=0 was accepted")
            print(json.dumps({"mask_pixels": int(mask.sum()), "status": result.response.status,
                              "items": len(result.response.items)}))
    """, tiny_server.options.grpc_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "ok" and summary["items"] == 1


def test_client_env_cli_annotates_and_names_the_missing_extra(client_env, tiny_server, tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "clicks.json").write_text(json.dumps(
        {"clicks": [{"file_name": "images/a.png", "x": 40, "y": 30, "category": "Knife"}]}))
    xsyn = client_env.parent / "xsyn"
    proc = subprocess.run([str(xsyn), "annotate", "--images", str(tmp_path), "--clicks", str(tmp_path / "clicks.json"),
                           "--out", str(tmp_path / "out"), "--server", tiny_server.options.grpc_url],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert len(coco["annotations"]) == 1 and coco["categories"][0]["name"] == "Knife"

    proc = subprocess.run([str(xsyn), "export", "--preset", "tiny"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "xsyn[server]" in proc.stderr and "Traceback" not in proc.stderr
