"""moto's server on 127.0.0.1, so the real boto3 clients of the plugin talk to it over a socket."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto.dynamodb.responses import DynamoHandler
from moto.server import ThreadedMotoServer

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
