"""An HTTP proxy in front of moto's S3 server that fails DeleteObjects and slows writes.

Every request is passed to moto as it came; a DeleteObjects call (``POST /<bucket>?delete``)
is recorded with the keys it names, and answered with S3's own 500 InternalError while
failures are asked for, so the real boto3 client retries it and then gives up as it
would against S3. Object writes (``PUT``) can be held back for a while, as a slow S3
would, and are recorded when they land.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

INTERNAL_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)
_KEY = re.compile(rb"<Key>(.*?)</Key>", re.DOTALL)
# Hop-by-hop headers are the proxy's own business, not the client's or moto's.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass(frozen=True)
class Deletion:
    """One DeleteObjects call that reached the proxy."""

    bucket: str
    keys: int
    failed: bool
    at: float


class S3Faults:
    """A proxy to moto's server; its ``url`` is the endpoint clients are given."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._failures = 0
        self._naming = b""
        self._put_delay = 0.0
        self._put_naming = ""
        self.deletions: list[Deletion] = []
        # (path, when moto stored it) of each object write.
        self.puts: list[tuple[str, float]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def fail_deletes(self, times: int, naming: str = "") -> None:
        """Answer the next `times` DeleteObjects calls naming a key with this in it with a 500."""
        with self._lock:
            self._failures = times
            self._naming = naming.encode()

    def delay_puts(self, seconds: float, naming: str = "") -> None:
        """Hold back each object write whose path has this in it for some seconds."""
        with self._lock:
            self._put_delay = seconds
            self._put_naming = naming

    def clear(self) -> None:
        with self._lock:
            self._failures = 0
            self._put_delay = 0.0
            self.deletions = []
            self.puts = []

    def _take_failure(self, body: bytes) -> bool:
        with self._lock:
            if self._failures <= 0 or self._naming not in body:
                return False
            self._failures -= 1
            return True

    def __enter__(self) -> S3Faults:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Kept-alive connections: no delayed-ACK stall between headers and body.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunk = self.rfile.read(size)
                        self.rfile.readline()
                        if size == 0:
                            break
                        chunks.append(chunk)
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _relay(self) -> None:
                body = self._body()
                path = urlsplit(self.path)
                if self.command == "POST" and re.search(r"(^|&)delete(=|&|$)", path.query):
                    failed = proxy._take_failure(body)
                    with proxy._lock:
                        proxy.deletions.append(
                            Deletion(
                                path.path.strip("/"),
                                len(_KEY.findall(body)),
                                failed,
                                time.monotonic(),
                            )
                        )
                    if failed:
                        self._answer(500, {"Content-Type": "application/xml"}, INTERNAL_ERROR)
                        return
                # PutObject: a PUT naming a key (botocore may add ?x-id=PutObject).
                writes = self.command == "PUT" and "/" in path.path.strip("/")
                with proxy._lock:
                    delay = proxy._put_delay if proxy._put_naming in path.path else 0.0
                if writes and delay:
                    time.sleep(delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                connection = http.client.HTTPConnection(*proxy._upstream, timeout=30)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    reply = connection.getresponse()
                    data = reply.read()
                    if writes:
                        with proxy._lock:
                            proxy.puts.append((path.path, time.monotonic()))
                    kept = {k: v for k, v in reply.getheaders() if k.lower() not in _HOP}
                    length = reply.getheader("Content-Length")
                    self._answer(reply.status, kept, data, length)
                finally:
                    connection.close()

            def _answer(
                self, status: int, headers: dict[str, str], data: bytes, length: str | None = None
            ) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                # A HEAD answer describes the object it did not send.
                head = self.command == "HEAD" and length is not None
                self.send_header("Content-Length", length if head else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler
