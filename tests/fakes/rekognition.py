"""A fake Amazon Rekognition endpoint for DetectModerationLabels over real HTTP.

Answers by the mean colour of the picture sent. Custom Moderation adapters are modelled:
a call naming an adapter (ProjectVersion) gets that adapter's answers and its ARN back,
one naming an unknown adapter a ResourceNotFoundException, and one naming an expired
adapter the base model's answer without a ProjectVersion, as AWS documents.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import math
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast

from PIL import Image, ImageStat

TARGET_PREFIX = "RekognitionService."
OPERATION = "DetectModerationLabels"
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MIN_DIMENSION = 80
MAX_DIMENSION = 10000
DEFAULT_MIN_CONFIDENCE = 50.0
DEFAULT_MODEL_VERSION = "7.0"
COLOR_TOLERANCE = 60.0
SUPPORTED_FORMATS = ("JPEG", "PNG")
MAGIC_BYTES = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n"}
UNKNOWN_OPERATION = "UnknownOperationException"
POLL_INTERVAL = 0.02

Color = tuple[int, int, int]
Label = dict[str, object]


ERROR_FAULTS: dict[str, tuple[int, str, str]] = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "throughput": (
        400,
        "ProvisionedThroughputExceededException",
        "Provisioned rate exceeded",
    ),
    "internal": (500, "InternalServerError", "Internal server error"),
    "access_denied": (
        400,
        "AccessDeniedException",
        "User is not authorized to perform: rekognition:DetectModerationLabels",
    ),
    "invalid_format": (
        400,
        "InvalidImageFormatException",
        "Request has invalid image format",
    ),
}
FAULT_MODES = frozenset(ERROR_FAULTS) | {"malformed", "slow", "drop", "hold"}
# What a held request may be answered with once released (None: its normal answer).
RELEASE_ANSWERS = frozenset(ERROR_FAULTS) | {"malformed", "drop"}
MALFORMED_BODY = b'{"ModerationLabels": [{"Name": "Explicit'


@dataclass(frozen=True)
class Call:
    """One request received by the fake."""

    min_confidence: float | None
    image_format: str
    width: int
    height: int
    size: int
    mean_color: Color
    at: float
    fault: str | None
    # The ProjectVersion (adapter ARN) the request named, None without one.
    project_version: str | None = None


@dataclass(frozen=True)
class _Scenario:
    labels: tuple[Label, ...]
    model_version: str
    content_types: tuple[Label, ...] = ()


@dataclass
class _ActiveFault:
    mode: str
    remaining: int | None
    delay: float


@dataclass(frozen=True)
class _Inspection:
    image_format: str = ""
    width: int = 0
    height: int = 0
    size: int = 0
    mean_color: Color = (0, 0, 0)
    magic_format: str | None = None
    decodable: bool = False


@dataclass(frozen=True)
class _Request:
    image: _Inspection
    min_confidence: float | None
    error: tuple[str, str] | None
    project_version: str | None = None


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    error_code: str | None = None
    drop: bool = False


class _Rejected(Exception):
    """A request the real service would reject."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FakeRekognition:
    """An in-process HTTP server that answers DetectModerationLabels like AWS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._scenarios: dict[tuple[Color, str | None], _Scenario] = {}
        # Adapter ARN -> whether it has expired (answers come from the base model then).
        self._adapters: dict[str, bool] = {}
        self._faults: list[_ActiveFault] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._released = threading.Event()
        self._release_answer: str | None = None

    def __enter__(self) -> FakeRekognition:
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
        """Endpoint URL to pass to boto3 as endpoint_url."""
        if self._server is None:
            raise RuntimeError("FakeRekognition is not running; call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeRekognition:
        """Start serving on an ephemeral port of 127.0.0.1."""
        if self._server is not None:
            raise RuntimeError("FakeRekognition is already running")
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL},
            name="fake-rekognition",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = None
        self._thread = None

    def respond(
        self,
        color: Color,
        labels: list[Label],
        model_version: str = DEFAULT_MODEL_VERSION,
        content_types: list[Label] | None = None,
        adapter: str | None = None,
    ) -> None:
        """Answer images whose mean colour is nearest to `color` with `labels` (and, as
        model 7.x does, ContentTypes such as [{"Name": "Illustrated", "Confidence": 90}]);
        with `adapter`, only calls through that adapter (see add_adapter)."""
        key = _as_color(color)
        for label in labels:
            _check_label(label)
        scenario = _Scenario(
            tuple(dict(label) for label in labels),
            model_version,
            tuple(dict(kind) for kind in content_types or ()),
        )
        with self._lock:
            self._scenarios[(key, adapter)] = scenario

    def add_adapter(self, arn: str, expired: bool = False) -> None:
        """Make a Custom Moderation adapter known; an expired one is answered by the base
        model, without a ProjectVersion in the answer."""
        with self._lock:
            self._adapters[arn] = expired

    def fail(self, mode: str, times: int | None = None, delay: float = 0.0) -> None:
        """Inject a fault into the next `times` requests (None: until cleared).

        Faults queue up: a fault starts once the ones injected before it are used up.
        "hold" keeps each request it takes unanswered until release() (or stop()); any
        other mode answers `delay` seconds after the request ("slow": with the answer).
        """
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; use one of {sorted(FAULT_MODES)}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None")
        if delay < 0:
            raise ValueError("delay must not be negative")
        with self._lock:
            self._faults.append(_ActiveFault(mode, times, delay))
            if mode == "hold":
                self._released.clear()

    def release(self, answer: str | None = None) -> None:
        """Answer every request a "hold" fault keeps, and hold no more.

        answer: a fault mode to answer them with (an error, "malformed", "drop"), or None
        for the answer they would have had.
        """
        if answer is not None and answer not in RELEASE_ANSWERS:
            raise ValueError(f"cannot answer with {answer!r}; use one of {sorted(RELEASE_ANSWERS)}")
        with self._lock:
            self._faults = [fault for fault in self._faults if fault.mode != "hold"]
            self._release_answer = answer
        self._released.set()

    def clear_faults(self) -> None:
        """Remove every injected fault (held requests get their normal answer)."""
        with self._lock:
            self._faults.clear()
            self._release_answer = None
        self._released.set()

    @property
    def calls(self) -> list[Call]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._calls)

    @property
    def connections(self) -> int:
        """Connections open to the fake: requests of a client still being read or answered,
        or kept alive for its next one."""
        server = self._server
        if server is None:
            return 0
        with server._connections_lock:
            return len(server._connections)

    @property
    def call_count(self) -> int:
        """Number of DetectModerationLabels requests received, failed ones included."""
        with self._lock:
            return sum(1 for call in self._calls if call.fault != UNKNOWN_OPERATION)

    def reset(self) -> None:
        """Forget calls, scenarios and faults (held requests get their normal answer)."""
        with self._lock:
            self._calls.clear()
            self._scenarios.clear()
            self._faults.clear()
            self._release_answer = None
            self._adapters.clear()
        self._released.set()

    def _handle(self, target: str | None, body: bytes) -> _Reply:
        received = time.monotonic()
        if target != TARGET_PREFIX + OPERATION:
            self._record(_Inspection(), None, UNKNOWN_OPERATION, received)
            return _error_reply(400, UNKNOWN_OPERATION, f"Unknown operation {target}")
        request = _parse_request(body)
        fault = self._take_fault()
        error_code = request.error[0] if request.error is not None else None
        outcome = fault.mode if fault is not None else error_code
        self._record(
            request.image, request.min_confidence, outcome, received, request.project_version
        )
        if fault is None:
            return self._answer(request)
        if fault.mode == "slow":
            self._stopping.wait(fault.delay)
            return self._answer(request)
        if fault.mode == "hold":
            answer = self._hold()
            return self._answer(request) if answer is None else _fault_reply(answer)
        # Any other fault is answered after its delay (none unless given).
        self._stopping.wait(fault.delay)
        return _fault_reply(fault.mode)

    def _hold(self) -> str | None:
        while not self._released.wait(POLL_INTERVAL):
            if self._stopping.is_set():
                return None
        with self._lock:
            return self._release_answer

    def _answer(self, request: _Request) -> _Reply:
        if request.error is not None:
            return _error_reply(400, *request.error)
        adapter = request.project_version
        with self._lock:
            expired = self._adapters.get(adapter) if adapter is not None else None
        if adapter is not None and expired is None:
            return _error_reply(
                400, "ResourceNotFoundException", f"The project version {adapter} was not found"
            )
        answering = None if expired else adapter
        scenario = self._scenario_for(request.image.mean_color, answering)
        threshold = (
            DEFAULT_MIN_CONFIDENCE if request.min_confidence is None else request.min_confidence
        )
        labels = [label for label in scenario.labels if _confidence(label) >= threshold]
        payload: dict[str, object] = {
            "ModerationLabels": labels,
            "ModerationModelVersion": scenario.model_version,
            # MinConfidence is documented for labels only ("doesn't return any labels
            # with a confidence level lower than this"): ContentTypes come back whole.
            "ContentTypes": list(scenario.content_types),
        }
        if answering is not None:
            payload["ProjectVersion"] = answering
        return _Reply(200, json.dumps(payload).encode())

    def _scenario_for(self, color: Color, adapter: str | None = None) -> _Scenario:
        with self._lock:
            candidates = [
                (math.dist(color, known), scenario)
                for (known, answers_for), scenario in self._scenarios.items()
                if answers_for == adapter
            ]
        matches = [item for item in candidates if item[0] <= COLOR_TOLERANCE]
        if not matches:
            return _Scenario((), DEFAULT_MODEL_VERSION)
        return min(matches, key=lambda item: item[0])[1]

    def _take_fault(self) -> _ActiveFault | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.pop(0)
            return fault

    def _record(
        self,
        image: _Inspection,
        min_confidence: float | None,
        fault: str | None,
        received: float,
        project_version: str | None = None,
    ) -> None:
        call = Call(
            min_confidence=min_confidence,
            image_format=image.image_format,
            width=image.width,
            height=image.height,
            size=image.size,
            mean_color=image.mean_color,
            at=received,
            fault=fault,
            project_version=project_version,
        )
        with self._lock:
            self._calls.append(call)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, fake: FakeRekognition) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm on, the body would wait
    # for the client's delayed ACK of the headers (40 ms on Linux) on a kept-alive
    # connection, a stall AWS's endpoints do not have.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        super().finish()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        reply = self.server.fake._handle(self.headers.get("X-Amz-Target"), body)
        if reply.drop:
            self.close_connection = True
            return
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", JSON_CONTENT_TYPE)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            if reply.error_code is not None:
                self.send_header("x-amzn-ErrorType", reply.error_code)
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet instead of logging every request to stderr."""


def _parse_request(body: bytes) -> _Request:
    try:
        payload = _load_object(body)
        min_confidence = _min_confidence(payload)
        project_version = _project_version(payload)
        data = _image_bytes(payload)
    except _Rejected as rejection:
        return _Request(_Inspection(), None, (rejection.code, rejection.message))
    image = _inspect(data)
    return _Request(image, min_confidence, _validate(image, min_confidence), project_version)


def _project_version(payload: Mapping[str, object]) -> str | None:
    value = payload.get("ProjectVersion")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Rejected("SerializationException", "ProjectVersion must be a string")
    return value


def _load_object(body: bytes) -> Mapping[str, object]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise _Rejected("SerializationException", "Request body is not JSON") from None
    if not isinstance(payload, dict):
        raise _Rejected("SerializationException", "Request body must be an object")
    return cast(Mapping[str, object], payload)


def _min_confidence(payload: Mapping[str, object]) -> float | None:
    value = payload.get("MinConfidence")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Rejected("SerializationException", "MinConfidence must be a number")
    return float(value)


def _image_bytes(payload: Mapping[str, object]) -> bytes:
    image = payload.get("Image")
    if not isinstance(image, dict):
        raise _Rejected("InvalidParameterException", "Request has invalid parameters")
    if "S3Object" in image:
        raise _Rejected("InvalidS3ObjectException", "This fake only supports Image.Bytes")
    encoded = image.get("Bytes")
    if not isinstance(encoded, str):
        raise _Rejected("InvalidParameterException", "Request has invalid parameters")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise _Rejected("SerializationException", "Image.Bytes is not base64") from None


def _inspect(data: bytes) -> _Inspection:
    magic = next((name for name, prefix in MAGIC_BYTES.items() if data.startswith(prefix)), None)
    if not _complete(magic, data):
        return _Inspection(image_format=magic or "UNKNOWN", size=len(data), magic_format=magic)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                image_format = image.format or "UNKNOWN"
                mean_color = _mean_color(image) if _in_range(width, height) else (0, 0, 0)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return _Inspection(image_format=magic or "UNKNOWN", size=len(data), magic_format=magic)
    return _Inspection(
        image_format=image_format,
        width=width,
        height=height,
        size=len(data),
        mean_color=mean_color,
        magic_format=magic,
        decodable=True,
    )


def _complete(magic: str | None, data: bytes) -> bool:
    """Whether a JPEG or PNG arrived whole. Thumbor's PIL engine makes Pillow accept
    truncated files process-wide, so decoding alone cannot tell."""
    if magic == "JPEG":
        last_scan = data.rfind(b"\xff\xda")
        return last_scan != -1 and data.find(b"\xff\xd9", last_scan) != -1
    if magic == "PNG":
        return data.rfind(b"IEND") != -1
    return True


def _mean_color(image: Image.Image) -> Color:
    image.draft("RGB", (256, 256))
    red, green, blue = ImageStat.Stat(image.convert("RGB")).mean
    return (round(red), round(green), round(blue))


def _in_range(width: int, height: int) -> bool:
    return all(MIN_DIMENSION <= side <= MAX_DIMENSION for side in (width, height))


def _validate(image: _Inspection, min_confidence: float | None) -> tuple[str, str] | None:
    if image.size > MAX_IMAGE_BYTES:
        return ("ImageTooLargeException", "Image size is too large")
    if (
        image.magic_format not in SUPPORTED_FORMATS
        or image.image_format != image.magic_format
        or not image.decodable
    ):
        return ("InvalidImageFormatException", "Request has invalid image format")
    if not _in_range(image.width, image.height):
        return ("InvalidParameterException", "Request has invalid parameters")
    if min_confidence is not None and not 0 <= min_confidence <= 100:
        return ("InvalidParameterException", "Request has invalid parameters")
    return None


def _error_reply(status: int, code: str, message: str) -> _Reply:
    body = json.dumps({"__type": code, "Message": message}).encode()
    return _Reply(status, body, error_code=code)


def _fault_reply(mode: str) -> _Reply:
    if mode == "drop":
        return _Reply(200, b"", drop=True)
    if mode == "malformed":
        return _Reply(200, MALFORMED_BODY)
    return _error_reply(*ERROR_FAULTS[mode])


def _confidence(label: Label) -> float:
    return float(cast(float, label["Confidence"]))


def _as_color(color: Color) -> Color:
    if len(color) != 3 or not all(0 <= channel <= 255 for channel in color):
        raise ValueError(f"color must be three channels in 0..255, got {color!r}")
    red, green, blue = color
    return (red, green, blue)


def _check_label(label: Label) -> None:
    name, parent = label.get("Name"), label.get("ParentName")
    confidence, level = label.get("Confidence"), label.get("TaxonomyLevel")
    if not isinstance(name, str) or not name:
        raise ValueError(f"label needs a non-empty Name: {label!r}")
    if not isinstance(parent, str):
        raise ValueError(f"label needs a ParentName ('' at top level): {label!r}")
    if not isinstance(confidence, (int, float)) or not 0 <= confidence <= 100:
        raise ValueError(f"label needs a Confidence in 0..100: {label!r}")
    if level is not None and (not isinstance(level, int) or level < 1):
        raise ValueError(f"TaxonomyLevel must be a positive int: {label!r}")
    unknown = set(label) - {"Name", "ParentName", "Confidence", "TaxonomyLevel"}
    if unknown:
        raise ValueError(f"unknown label keys {sorted(unknown)}: {label!r}")
