"""Real Thumbor servers for end-to-end tests: a subprocess per server, HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

SECURITY_KEY = "test-security-key"
MAX_AGE = 86400

DEFAULT_HANDLER_LISTS = [
    "thumbor.handler_lists.healthcheck",
    "thumbor.handler_lists.upload",
    "thumbor.handler_lists.blacklist",
    "thumbor_rekognition.handler_list",
]
# Thumbor's own handler lists, as in the plugin's configuration minus the plugin.
STOCK_HANDLER_LISTS = [name for name in DEFAULT_HANDLER_LISTS if "rekognition" not in name]


# Ports handed out by this process: two servers asked for before either binds get two.
_HANDED_OUT: set[int] = set()
_PORTS = random.Random()
LOWEST_PORT = 10_000
# A port and the port + this (Redis Cluster's bus) always fall to the same worker.
PORT_PERIOD = 10_000
PORT_BLOCK = 100


def _worker() -> tuple[int, int]:
    """This pytest-xdist worker's index and the number of workers; (0, 1) when serial."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not name.startswith("gw") or not count.isdigit():
        return 0, 1
    return int(name[2:]), int(count)


def _ours(port: int) -> bool:
    """Whether the port is in this worker's share, so that workers never race for one.

    Ports go to workers by blocks of PORT_BLOCK, counted within PORT_PERIOD.
    """
    index, count = _worker()
    return (port % PORT_PERIOD // PORT_BLOCK) % count == index % count


def _ephemeral_start() -> int:
    """Where the kernel's range of local ports for outgoing connections begins."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(span: int = 0) -> int:
    """A port free now (and port + span too, when span is given) for a server to bind.

    Taken below the kernel's ephemeral range: a port from that range, free when asked
    for, can become the local port of any connection opened before the server binds it
    (a busy suite opens many), and the server then fails with "Address already in use".
    """
    highest = _ephemeral_start() - span
    if highest - LOWEST_PORT < 1_000:
        # No room below the ephemeral range on this machine: the kernel's choice.
        return _bindable_port_from_kernel(span)
    for _ in range(1_000):
        port = _PORTS.randrange(LOWEST_PORT, highest)
        wanted = {port, port + span}
        if not all(_ours(each) for each in wanted):
            continue
        if wanted & _HANDED_OUT or not all(_bindable(each) for each in wanted):
            continue
        _HANDED_OUT.update(wanted)
        return port
    raise RuntimeError(f"no free port between {LOWEST_PORT} and {highest}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _bindable_port_from_kernel(span: int) -> int:
    for _ in range(1_000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not span or _bindable(port + span):
            return port
    raise RuntimeError("no free port")


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def thumbor_executable() -> str:
    candidate = Path(sys.executable).with_name("thumbor")
    return str(candidate) if candidate.exists() else shutil.which("thumbor") or "thumbor"


def base_config(root: Path, images: Path, endpoint: str | None) -> dict[str, Any]:
    """A moderated Thumbor over a folder of originals, with file storage and result storage."""
    config: dict[str, Any] = {
        "SECURITY_KEY": SECURITY_KEY,
        "ALLOW_UNSAFE_URL": True,
        "LOADER": "thumbor_rekognition.loader",
        "MODERATION_SOURCE_LOADER": "thumbor.loaders.file_loader",
        "FILE_LOADER_ROOT_PATH": str(images),
        "STORAGE": "thumbor_rekognition.storage",
        "UPLOAD_PHOTO_STORAGE": "thumbor_rekognition.storage",
        "MODERATION_SOURCE_STORAGE": "thumbor.storages.file_storage",
        "FILE_STORAGE_ROOT_PATH": str(root / "storage"),
        "RESULT_STORAGE": "thumbor_rekognition.result_storage",
        "MODERATION_SOURCE_RESULT_STORAGE": "thumbor.result_storages.file_storage",
        "RESULT_STORAGE_FILE_STORAGE_ROOT_PATH": str(root / "result"),
        "RESULT_STORAGE_STORES_UNSAFE": True,
        "MAX_AGE": MAX_AGE,
        "HANDLER_LISTS": DEFAULT_HANDLER_LISTS,
        "MODERATION_SQLITE_PATH": str(root / "decisions.sqlite3"),
        "MODERATION_QUARANTINE_PATH": str(root / "quarantine"),
        "MODERATION_CACHE_TTL_SECONDS": 0.2,
        "REKOGNITION_MAX_ATTEMPTS": 1,
        "REKOGNITION_TIMEOUT_SECONDS": 3.0,
    }
    if endpoint:
        config["REKOGNITION_ENDPOINT_URL"] = endpoint
    return config


# Thumbor's own modules in place of the plugin's: stock Thumbor, for comparison.
STOCK_MODULES = {
    "LOADER": "thumbor.loaders.file_loader",
    "STORAGE": "thumbor.storages.file_storage",
    "UPLOAD_PHOTO_STORAGE": "thumbor.storages.file_storage",
    "RESULT_STORAGE": "thumbor.result_storages.file_storage",
}


def stock_config(root: Path, images: Path, handler_lists: list[str]) -> dict[str, Any]:
    """Stock Thumbor over the same folder of originals, with these handler lists."""
    config = base_config(root, images, None)
    config.update(STOCK_MODULES)
    config["HANDLER_LISTS"] = handler_lists
    return config


def aws_test_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    environment.pop("AWS_PROFILE", None)
    return environment


class ThumborServer:
    """`thumbor --conf=...` in a subprocess, with its log kept for inspection."""

    def __init__(
        self,
        root: Path,
        config: Mapping[str, Any],
        processes: int = 1,
        log_level: str = "info",
        cpus: set[int] | None = None,
    ) -> None:
        self.root = root
        self.config = dict(config)
        self.processes = processes
        self.log_level = log_level
        self.cpus = cpus
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.conf_path = root / f"thumbor-{id(self)}.conf"
        self.log_path = root / f"thumbor-{id(self)}.log"

    def write_conf(self) -> None:
        lines = [f"{key} = {value!r}" for key, value in self.config.items()]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, wait: bool = True) -> ThumborServer:
        self.write_conf()
        self.port = free_port()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                thumbor_executable(),
                f"--conf={self.conf_path}",
                "--ip=127.0.0.1",
                f"--port={self.port}",
                f"--log-level={self.log_level}",
                f"--processes={self.processes}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=aws_test_environment(),
            preexec_fn=self._pin if self.cpus else None,
            # Its own process group: with --processes=N the workers are stopped with it.
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def _pin(self) -> None:
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"thumbor exited with {self.process.returncode}:\n{self.log}")
            try:
                if self.get("/healthcheck").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"thumbor did not start within {timeout}s:\n{self.log}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        """The exit code of a server expected to stop by itself; stopped if it does not."""
        if self.process is None:
            raise RuntimeError("not started")
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is None:
            return
        group = self.process.pid
        self._signal_group(group, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self._signal_group(group, signal.SIGKILL)
            self.process.wait(10)
        # Workers of `--processes=N` may outlive their parent for a moment.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._group_alive(group):
            time.sleep(0.05)
        self._signal_group(group, signal.SIGKILL)
        self.process = None

    def kill(self) -> None:
        """End every process of the server at once (SIGKILL), as a crash or an OOM kill
        would: nothing of its own shutdown runs."""
        if self.process is None:
            return
        group = self.process.pid
        self._signal_group(group, signal.SIGKILL)
        self.process.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._group_alive(group):
            time.sleep(0.05)
        self.process = None

    @staticmethod
    def _signal_group(group: int, number: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, number)

    @staticmethod
    def _group_alive(group: int) -> bool:
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def restart(self) -> ThumborServer:
        self.stop()
        return self.start()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            reply = connection.getresponse()
            return Response(reply.status, reply.headers, reply.read())
        finally:
            connection.close()

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Response:
        return self.request("GET", path, headers=headers)


def result_file(root: Path, request_path: str) -> Path:
    """Where Thumbor's file result storage keeps the result of a request path."""
    digest = hashlib.sha1(unquote(request_path).encode()).hexdigest()
    return root / "result" / "default" / digest[:2] / digest[2:4] / digest[4:]


def storage_file(root: Path, image_url: str) -> Path:
    """Where Thumbor's file storage keeps an original, by the quoted image URL."""
    digest = hashlib.sha1(image_url.encode()).hexdigest()
    return root / "storage" / digest[:2] / digest[2:]
