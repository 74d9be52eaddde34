"""The process between ``xsyn serve`` and ``tritonserver`` that makes sure nothing outlives a server.

``python -m xsyn.serving.reaper PREFIX -- tritonserver ARGS...`` starts the server as its child
and waits for it. It is started with a parent-death signal (SIGTERM), and gives the server one
too, so:

- ``xsyn serve`` killed (even ``kill -9``): the reaper gets SIGTERM and passes it on; Triton stops
  its models and exits;
- the reaper killed: the server gets SIGTERM itself;
- the server gone for any reason (stopped, crashed, ``kill -9``): the reaper SIGKILLs whatever is
  left of the process group (stubs, which also exit by themselves when their parent dies) and
  removes the Python backend's shared-memory regions, ``/dev/shm/PREFIX*``, which only the
  server removes and only when it stops cleanly.

It exits with the server's exit code (128 + signal number when the server was killed). Only the
standard library is imported: it starts in milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (``prctl``); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except OSError:
        return


def remove_shm(prefix: str) -> list[str]:
    """Remove ``/dev/shm/<prefix>*``; returns the names removed."""
    removed = []
    if not prefix:
        return removed
    for path in SHM_DIR.glob(prefix + "*"):
        try:
            path.unlink()
            removed.append(path.name)
        except OSError:
            continue
    return removed


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) process ids in process group ``pgid`` (Linux ``/proc``)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def kill_group_except(pgid: int, keep: int, wait: float = 2.0) -> None:
    """Wait up to ``wait`` s for the group's other members to exit, then SIGKILL them."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and [p for p in group_members(pgid) if p != keep]:
        time.sleep(0.05)
    for pid in group_members(pgid):
        if pid != keep:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m xsyn.serving.reaper SHM_PREFIX -- COMMAND...", file=sys.stderr)
        return 2
    prefix, command = argv[0], argv[2:]
    child = subprocess.Popen(command, preexec_fn=set_parent_death_signal)

    def forward(signum, frame):
        try:
            child.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    kill_group_except(os.getpgid(0), os.getpid())
    remove_shm(prefix)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
