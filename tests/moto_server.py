"""moto's server on 127.0.0.1, so the real boto3 clients of the plugin talk to it over a socket."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto.server import ThreadedMotoServer


@contextmanager
def moto_server() -> Iterator[str]:
    """A running moto server; its endpoint URL."""
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
