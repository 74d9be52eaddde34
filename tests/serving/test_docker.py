"""What can be checked of the on-prem files without a Docker engine."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from xsyn.client.cli import build_parser

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_compose_file_parses_and_reserves_one_gpu():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = compose["services"]["xsyn"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert all(p.startswith("127.0.0.1:") for p in service["ports"])
    assert "xsyn-models:/models" in service["volumes"]
    assert service["restart"] == "unless-stopped"
    grace, stop = int(service["environment"]["XSYN_GRACE"]), int(service["stop_grace_period"].rstrip("s"))
    assert stop > grace, "Docker must not SIGKILL the drain"


def test_dockerfile_is_pinned_and_its_entry_exists():
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, flags=re.M).group(1)
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", base)
    assert 'ENTRYPOINT ["xsyn-entrypoint"]' in text and "COPY docker/entrypoint.sh /usr/local/bin/xsyn-entrypoint" in text
    for source in re.findall(r"^COPY (\S+) ", text, flags=re.M):
        assert (DOCKER.parent / source).exists(), source


def test_entrypoint_uses_only_commands_and_flags_the_cli_has():
    script = (DOCKER / "entrypoint.sh").read_text()
    assert subprocess.run(["bash", "-n", str(DOCKER / "entrypoint.sh")]).returncode == 0
    subcommands = build_parser()._subparsers._group_actions[0].choices
    for command, rest in re.findall(r"\bxsyn (\w+) ([^\n]*)", script):
        assert command in subcommands, command
        known = {opt for action in subcommands[command]._actions for opt in action.option_strings}
        for flag in re.findall(r"(--[\w-]+)", rest):
            assert flag in known, (command, flag)
    for flag in re.findall(r"args\+=\((--[\w-]+)", script):
        assert flag in {o for a in subcommands["export"]._actions for o in a.option_strings}, flag
