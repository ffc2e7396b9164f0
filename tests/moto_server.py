"""moto's server on 127.0.0.1, so the real boto3 clients of the plugin talk to it over a socket."""

from __future__ import annotations

import functools
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto.dynamodb.responses import DynamoHandler
from moto.server import ThreadedMotoServer

from tests.servers import free_port

ROOT = __file__.rsplit("/tests/", 1)[0]

_DYNAMODB_LOCK = threading.RLock()


def _one_dynamodb_request_at_a_time() -> None:
    """Make each DynamoDB request atomic, as the service makes it.

    moto's server answers requests in threads and checks a write's condition apart from
    applying it, so two conditional writes racing can both pass: the store's tests of
    races would then test moto. DynamoDB applies each write, and each transaction, as
    one step; one lock around moto's handling of a request does the same.
    """
    call_action = DynamoHandler.call_action
    if getattr(call_action, "one_at_a_time", False):
        return

    @functools.wraps(call_action)
    def atomic(self: DynamoHandler) -> Any:
        with _DYNAMODB_LOCK:
            return call_action(self)

    atomic.one_at_a_time = True  # type: ignore[attr-defined]
    DynamoHandler.call_action = atomic  # type: ignore[method-assign]


@contextmanager
def moto_server() -> Iterator[str]:
    """A running moto server; its endpoint URL."""
    _one_dynamodb_request_at_a_time()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_client(service: str, endpoint: str) -> Any:
    """A client of the tests' own, to set things up and look inside them."""
    return boto3.session.Session().client(
        service,
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@contextmanager
def moto_server_process() -> Iterator[str]:
    """moto's server in a process of its own; its endpoint URL.

    For tests that time what arrives at a fake in the test process: moto's work there
    would hold the interpreter and delay the fake's clock.
    """
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.moto_server", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    _one_dynamodb_request_at_a_time()
    ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False).start()
    threading.Event().wait()
