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
from moto.sqs.models import SQSBackend

from tests.servers import free_port

ROOT = __file__.rsplit("/tests/", 1)[0]

_DYNAMODB_LOCK = threading.RLock()
_SQS_LOCK = threading.RLock()


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


def _one_sqs_receive_at_a_time() -> None:
    """Hand each SQS message to one receive at a time, as the service does.

    moto's server picks a receive's messages in its request thread without a lock, so two
    receives at once can both take the same message: the first one's receipt handle is
    then stale, its deletion does nothing, and the message comes back after its
    visibility timeout. Each pass over the queue is made under one lock here; a long poll
    waits between passes without it, so that other requests go on meanwhile.
    """
    receive = SQSBackend.receive_message
    if getattr(receive, "one_at_a_time", False):
        return

    @functools.wraps(receive)
    def atomic(
        self: SQSBackend,
        queue_name: str,
        count: int,
        wait_seconds_timeout: int,
        visibility_timeout: int,
        message_attribute_names: list[str] | None = None,
    ) -> Any:
        polling_end = time.monotonic() + wait_seconds_timeout
        while True:
            with _SQS_LOCK:
                found = receive(
                    self, queue_name, count, 0, visibility_timeout, message_attribute_names
                )
            if found or time.monotonic() >= polling_end:
                return found
            time.sleep(0.02)

    for name in ("delete_message", "change_message_visibility"):
        method = getattr(SQSBackend, name)

        def locked(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            with _SQS_LOCK:
                return _method(*args, **kwargs)

        setattr(SQSBackend, name, functools.wraps(method)(locked))
    atomic.one_at_a_time = True  # type: ignore[attr-defined]
    SQSBackend.receive_message = atomic  # type: ignore[method-assign]


@contextmanager
def moto_server() -> Iterator[str]:
    """A running moto server; its endpoint URL."""
    _one_dynamodb_request_at_a_time()
    _one_sqs_receive_at_a_time()
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
    _one_sqs_receive_at_a_time()
    ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False).start()
    threading.Event().wait()
