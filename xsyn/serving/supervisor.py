"""Keeps one :class:`~xsyn.serving.server.TritonServer` serving without an operator.

Triton 2.51's Python backend never restarts a stub that died: every later request to that
model fails with INTERNAL "Stub process ... is not healthy" while the model still reports
READY. The supervisor watches from the same host, every ``poll`` seconds:

- **a stub gone** (killed, crashed, out of memory): the model is unloaded and loaded again
  through explicit model control with the admin key (loopback, restricted protocol). While it
  reloads the model is not ready, so health tells the truth; requests to it are refused, and
  the pipelines answer their callers UNAVAILABLE (retryable). One model's heal does not touch
  the others.
- **tritonserver gone**: its reaper has already removed the stubs and shared memory; the server
  is started again after a backoff (1 s, doubling up to 30 s). More than ``max_restarts``
  restarts within ``restart_window`` seconds is a crash loop: the supervisor gives up and
  :attr:`Supervisor.failure` says why (``xsyn serve`` then exits 1 with that line).

Every action is logged (logger ``xsyn.serving.supervisor``) and kept in :attr:`Supervisor.events`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from xsyn.serving.server import ServerError, TritonServer

log = logging.getLogger(__name__)


class Supervisor:
    """Watch ``server`` (already started and ready) in a background thread; see the module docstring."""

    def __init__(self, server: TritonServer, poll: float = 0.5, max_restarts: int = 5,
                 restart_window: float = 600.0, backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        self.server = server
        self.poll = poll
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.backoff = backoff
        self.events: list[str] = []
        self.failure: str | None = None
        self._expected: dict[str, set[str]] = {}
        self._restarts: deque[float] = deque()
        self._stop = threading.Event()
        self._grace: float | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "Supervisor":
        self._expected = self.server.stubs()
        self._thread = threading.Thread(target=self._run, name="xsyn-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop watching, then drain and stop the server (``grace``: see ``TritonServer.stop``).

        The watcher thread stops the server itself: a server it restarted is its child, and
        Linux signals a child when the thread that started it ends."""
        self._grace = grace
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()
        else:
            self.server.stop(grace)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _event(self, text: str) -> None:
        log.info("%s", text)
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")

    def _run(self) -> None:
        try:
            self._watch()
        finally:
            if self._stop.is_set():
                self.server.stop(self._grace)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                if self.server.process is None or self.server.process.poll() is not None:
                    if not self._restart_server():
                        return
                    continue
                alive = self.server.stubs()
                for model, names in self._expected.items():
                    missing = names - alive.get(model, set())
                    if missing and not self._stop.is_set():
                        self._heal(model, sorted(missing))
            except Exception as exc:  # the watcher must not die of one failed round
                self._event(f"supervisor round failed: {type(exc).__name__}: {exc}")

    def _heal(self, model: str, missing: list[str]) -> None:
        """Unload and load ``model``, whose stubs ``missing`` died."""
        self._event(f"model {model}: stub {', '.join(missing)} died; reloading the model")
        client, headers = self.server.admin_client(), self.server.admin_headers
        start = time.monotonic()
        try:
            client.unload_model(model, headers=headers)
        except Exception as exc:
            self._event(f"model {model}: unload failed ({exc}); loading anyway")
        try:
            client.load_model(model, headers=headers)
        except Exception as exc:
            self._event(f"model {model}: load failed: {exc}")
            return
        self._expected[model] = self.server.stubs().get(model, set())
        self._event(f"model {model}: ready again after {time.monotonic() - start:.1f} s")

    def _restart_server(self) -> bool:
        """Start the server again after a backoff; False once restarts are exhausted."""
        code = self.server.process.returncode if self.server.process is not None else None
        self.server.stop(grace=0)  # reaps the old process group and its shared memory
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > self.restart_window:
            self._restarts.popleft()
        if len(self._restarts) >= self.max_restarts:
            self.failure = (f"tritonserver exited (code {code}) {len(self._restarts) + 1} times within "
                            f"{self.restart_window:.0f} s; giving up. Log: {self.server.log_path}")
            self._event(self.failure)
            return False
        delay = min(self.backoff[0] * 2 ** len(self._restarts), self.backoff[1])
        self._restarts.append(now)
        self._event(f"tritonserver exited (code {code}); restarting in {delay:.0f} s")
        if self._stop.wait(delay):
            return False
        try:
            self.server.start()
            self.server.wait_until_ready()
        except ServerError as exc:
            self._event(f"restart failed: {str(exc).splitlines()[0]}")
            return True  # the next round counts it as another exit
        self._expected = self.server.stubs()
        self._event("tritonserver restarted; every model ready")
        return True
