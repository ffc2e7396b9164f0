"""A real redis-server for the tests: Debian's binary on 127.0.0.1, in a directory of its own.

Tests that share one server take the session-scoped ``redis_server`` fixture by importing
it (``from tests.redis_server import redis_server  # noqa: F401``); tests that stop, kill
or freeze a server start a ``RedisServer`` of their own.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from tests.servers import free_port

START_TIMEOUT = 10.0


def redis_server_executable() -> str:
    """The path of redis-server; fails the test (never skips it) when it is missing."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail(
            "redis-server is not installed: run scripts/install-system-packages redis-server",
            pytrace=False,
        )
    return executable


class RedisServer:
    """One redis-server process that can be stopped, killed, frozen and started again.

    Every write is appended to the AOF and fsynced before Redis answers, so what a
    client saw acknowledged survives ``kill()``; ``start()`` reuses the port and the
    directory, so a restarted server holds the same data at the same URL.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.executable = redis_server_executable()
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis-server.log"

    @property
    def url(self) -> str:
        return self.url_of_db(0)

    def url_of_db(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        if self.process is not None:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.executable,
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--dir",
                    str(self.directory),
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--daemonize",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server did not start on port {self.port}:\n{self._log_tail()}"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """End the server at once (SIGKILL), as a crash or an OOM kill would."""
        self._end(signal.SIGKILL)

    def freeze(self) -> None:
        """Suspend the server (SIGSTOP): it keeps its connections but answers nothing."""
        self._running().send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a frozen server (SIGCONT)."""
        self._running().send_signal(signal.SIGCONT)

    def _running(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError(f"redis-server on port {self.port} is not running")
        return self.process

    def _end(self, signum: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signum)
            # A frozen server acts on SIGTERM only once it runs again.
            process.send_signal(signal.SIGCONT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _answers_ping(self) -> bool:
        # A raw socket: a client library would retry, and a server still loading its
        # AOF answers -LOADING, which is not ready.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server shared by the session; tests keep apart by key prefix or database."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server
