"""scripts/airgap.py: wheels grouped for moving, verified before an offline install.

The real prepare + install runs on the xsyn wheel alone (``--only-xsyn``: no download); the
full set is downloaded the same way with PyPI at hand (see docs/measurements.md).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("airgap", ROOT / "scripts" / "airgap.py")
airgap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(airgap)


def test_groups_stay_under_the_limit_and_a_too_big_wheel_is_named():
    sizes = {"a.whl": 50, "b.whl": 40, "c.whl": 30, "d.whl": 20, "e.whl": 10}
    groups = airgap.plan_groups(sizes, 60)
    assert sorted(n for g in groups for n in g) == sorted(sizes)
    assert all(sum(sizes[n] for n in g) <= 60 for g in groups) and len(groups) == 3
    with pytest.raises(airgap.AirgapError, match="a.whl"):
        airgap.plan_groups(sizes, 45)


def test_prepare_then_offline_install_and_damage_is_caught(tmp_path):
    out = tmp_path / "carry"
    run = [sys.executable, str(ROOT / "scripts" / "airgap.py")]
    proc = subprocess.run(run + ["prepare", str(out), "--only-xsyn"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    (name, entry), = manifest["wheels"].items()
    assert name.startswith("xsyn-") and (out / "airgap.py").is_file()

    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, str(out / "airgap.py"), "install", str(out), "--target", str(site)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    import sysconfig

    # -S and another cwd: neither the editable install nor this checkout can answer; the installed copy must
    deps = sysconfig.get_paths()["purelib"]
    check = subprocess.run([sys.executable, "-S", "-c", "import xsyn.api.synthesis as m; print(m.__file__)"],
                           capture_output=True, text=True, env={"PYTHONPATH": f"{site}:{deps}", "PATH": "/usr/bin"},
                           cwd=tmp_path)
    assert check.returncode == 0 and str(site) in check.stdout, check.stderr

    wheel = out / entry["group"] / name
    wheel.write_bytes(wheel.read_bytes()[:-100])
    proc = subprocess.run([sys.executable, str(out / "airgap.py"), "install", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "damaged" in proc.stderr and name in proc.stderr
    wheel.unlink()
    proc = subprocess.run([sys.executable, str(out / "airgap.py"), "install", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "missing" in proc.stderr and entry["group"] in proc.stderr
