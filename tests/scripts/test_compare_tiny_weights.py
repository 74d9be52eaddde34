"""scripts/compare_tiny_weights.py on copies of the committed tiny weights: identical files,
equal tensors in a re-saved file, and a changed tensor, each told apart by output and exit status."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "export" / "data" / "presets" / "tiny"


def _compare(candidate: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_tiny_weights.py"), str(COMMITTED),
                           str(candidate)], capture_output=True, text=True, timeout=120)


def test_identical_resaved_and_changed_weights_are_told_apart(tmp_path):
    copy = tmp_path / "preset"
    shutil.copytree(COMMITTED, copy)
    proc = _compare(copy)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("identical bytes") == 4 and "does not match" not in proc.stdout

    tensors = load_file(str(copy / "vae.safetensors"))
    save_file(dict(reversed(list(tensors.items()))), str(copy / "vae.safetensors"), metadata={"note": "resaved"})
    proc = _compare(copy)
    assert proc.returncode == 0, proc.stderr
    assert "vae.safetensors: equal tensors" in proc.stdout and "does not match its manifest" in proc.stdout

    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, str(copy / "vae.safetensors"))
    proc = _compare(copy)
    assert proc.returncode == 1
    assert "vae.safetensors: max |diff| 0.5" in proc.stdout
