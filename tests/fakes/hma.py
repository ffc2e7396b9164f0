"""A fake of Meta's Hasher-Matcher-Actioner (HMA 2.0) matching API over real HTTP.

``GET /m/lookup?signal=<64 hex>&signal_type=pdq`` answers as HMA's
src/OpenMediaMatch/blueprints/matching.py does with a signal type given: a JSON object of
the banks that match, each with a list of ``{"bank_content_id": int, "distance": str}``
(``{}`` when none). Banks hold PDQ hashes; a hash matches within ``distance`` bits (HMA's
PDQ index default is 31). Anything else is answered 400 with HMA's error shape, and the
fake can be made to answer 503 (HMA's answer while its index is not built yet).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

MATCH_DISTANCE = 31


class FakeHMA:
    """An HMA with banks of PDQ hashes, on 127.0.0.1."""

    def __init__(self) -> None:
        self.banks: dict[str, list[tuple[int, int]]] = {}
        self.lookups: list[str] = []
        self.unavailable = False
        self._next_id = 1000
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, bank: str, hex_hash: str) -> int:
        """Add a hash to a bank (made on first use); its content id."""
        with self._lock:
            self._next_id += 1
            self.banks.setdefault(bank, []).append((self._next_id, int(hex_hash, 16)))
            return self._next_id

    def lookup(self, signal: str) -> dict[str, list[dict[str, Any]]]:
        value = int(signal, 16)
        with self._lock:
            self.lookups.append(signal)
            found: dict[str, list[dict[str, Any]]] = {}
            for bank, contents in self.banks.items():
                for content_id, listed in contents:
                    distance = (value ^ listed).bit_count()
                    if distance <= MATCH_DISTANCE:
                        found.setdefault(bank, []).append(
                            {"bank_content_id": content_id, "distance": str(distance)}
                        )
            return found

    def __enter__(self) -> FakeHMA:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(fake: FakeHMA) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {key: values[0] for key, values in parse_qs(parts.query).items()}
            if parts.path != "/m/lookup":
                return self._answer(404, {"message": "Not Found"})
            if fake.unavailable:
                return self._answer(503, {"message": "index not ready"})
            signal, kind = query.get("signal", ""), query.get("signal_type", "")
            if not signal or not kind:
                return self._answer(
                    400, {"message": "Either url or both signal and signal_type are required"}
                )
            if kind != "pdq":
                return self._answer(400, {"message": f"SignalType '{kind}' is not enabled"})
            try:
                if len(signal) != 64:
                    raise ValueError(signal)
                found = fake.lookup(signal)
            except ValueError:
                return self._answer(400, {"message": f"invalid signal: {signal!r}"})
            return self._answer(200, found)

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
