"""Clicks before batch work: the models no person waits on run at a lower CPU priority.

The pipeline specs say which pipeline is interactive (``apsam``); it and every leaf graph it calls
keep the normal priority, everything else (``xsyn``, UNet, VAE, text encoder) runs at
``ServerSettings.batch_nice``. Checked on the real stub processes of a running server.
"""

from __future__ import annotations

import os
import subprocess

from xsyn.export.pipelines import APSAM, XSYN, interactive_graphs
from xsyn.serving.repository import pipeline_config
from xsyn.settings import ServerSettings


def test_priorities_come_from_the_pipeline_specs():
    assert interactive_graphs() == {"sam_image_encoder", "sam_decoder"}
    assert pipeline_config(APSAM).parameters["priority"].string_value == "interactive"
    assert pipeline_config(XSYN).parameters["priority"].string_value == "batch"


def _stub_niceness(server) -> dict[str, int]:
    """Model name -> niceness of its stub processes (the stub's argv names the model.py path)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ni=,args="], capture_output=True, text=True).stdout
    repo = str(server.options.repository)
    nice = {}
    for line in out.splitlines():
        pid, ni, args = line.split(None, 2)
        if "triton_python_backend_stub" in args and repo in args and os.getpgid(int(pid)) == server.process.pid:
            model = args.split(repo, 1)[1].strip("/").split("/")[0]
            nice.setdefault(model, set()).add(int(ni))
    return {k: max(v) for k, v in nice.items()}


def test_batch_models_run_at_lower_cpu_priority(tiny_server):
    nice = _stub_niceness(tiny_server)
    batch = ServerSettings().batch_nice
    assert batch > 0
    for model in ("unet", "vae_encoder", "vae_decoder", "text_encoder", "xsyn"):
        assert nice[model] == batch, (model, nice)
    for model in ("sam_decoder", "sam_image_encoder", "apsam"):
        assert nice[model] == 0, (model, nice)
