"""A real HTTP receiver on 127.0.0.1 for webhooks and CDN purge calls in tests.

It records every request it gets and can be told to answer with an error, to answer
late, or to be down (its port closed: connections are refused). It can go down and come
back on the same port, as a restarted service would.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request, as the receiver read it."""

    method: str
    path: str
    # Case-insensitive, as a receiving web framework's headers are.
    headers: Message
    body: bytes
    # time.monotonic() when the request was read in full.
    at: float
    # The status it was answered with.
    status: int


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, delay = self.server.receiver._answer_for(
            self.command, self.path, self.headers, body
        )
        if delay:
            self.server.receiver._stopping.wait(delay)
        reply = b'{"ok": true}' if status < 400 else b'{"error": "failing on purpose"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_PURGE = do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, receiver: Receiver, port: int) -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A caller that gave up waiting (a timeout, an exited process) is not an error here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Receiver:
    """A threaded HTTP server recording every request; a context manager.

    ``Receiver()`` takes a free port on its first start and keeps it: ``stop()`` closes
    the port (connections are refused, as from a service that is down) and ``start()``
    listens on it again.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._received: list[Received] = []
        self._failures: list[int] = []
        self._failing: int | None = None
        self._delay = 0.0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234 (known once started, and kept after)."""
        if not self.port:
            raise RuntimeError("Receiver has no port yet; call start()")
        return f"http://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self._server is not None

    def start(self) -> Receiver:
        """Listen (again) on the receiver's port."""
        if self._server is not None:
            raise RuntimeError("Receiver is already running")
        self._stopping.clear()
        self._server = _bind(lambda: _Server(self, self.port))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"receiver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the port: callers get 'connection refused' until start()."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()
        self._server = None
        self._thread = None

    # Switches.

    def fail(self, status: int = 500, times: int | None = None) -> None:
        """Answer `status` to the next `times` requests (None: until answer_ok())."""
        with self._lock:
            if times is None:
                self._failing = status
            else:
                self._failures.extend([status] * times)

    def answer_ok(self) -> None:
        """Answer 200 again, dropping any failure still queued."""
        with self._lock:
            self._failures.clear()
            self._failing = None

    def delay(self, seconds: float) -> None:
        """Wait this long before answering each request (0: answer at once)."""
        with self._lock:
            self._delay = seconds

    # What was received.

    @property
    def requests(self) -> list[Received]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._received)

    def matching(self, predicate: Callable[[Received], bool]) -> list[Received]:
        return [request for request in self.requests if predicate(request)]

    def wait_for(
        self,
        count: int,
        predicate: Callable[[Received], bool] = lambda _: True,
        timeout: float = 10.0,
    ) -> list[Received]:
        """Wait until at least `count` requests match; those requests."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [request for request in self._received if predicate(request)]
                remaining = deadline - time.monotonic()
                if len(found) >= count or remaining <= 0:
                    break
                self._changed.wait(remaining)
        if len(found) < count:
            raise AssertionError(
                f"{len(found)} matching request(s) within {timeout:g} s, expected {count}"
            )
        return found

    def clear(self) -> None:
        """Forget requests, failures and delays."""
        with self._lock:
            self._received.clear()
            self._failures.clear()
            self._failing = None
            self._delay = 0.0

    def _answer_for(
        self, method: str, path: str, headers: Message, body: bytes
    ) -> tuple[int, float]:
        with self._changed:
            status = self._failures.pop(0) if self._failures else self._failing or 200
            self._received.append(Received(method, path, headers, body, time.monotonic(), status))
            self._changed.notify_all()
            return status, self._delay


def _bind(build: Callable[[], _Server], timeout: float = 5.0) -> _Server:
    # A port just closed can take a moment to be free again for listening.
    deadline = time.monotonic() + timeout
    while True:
        try:
            return build()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
