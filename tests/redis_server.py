"""A real redis-server for the tests: Debian's binary on 127.0.0.1, in a directory of its own.

Tests that share one server take the session-scoped ``redis_server`` fixture by importing
it (``from tests.redis_server import redis_server  # noqa: F401``); tests that stop, kill
or freeze a server start a ``RedisServer`` of their own. ``RedisCluster`` (and the shared
``redis_cluster`` fixture) does the same for a Redis Cluster made of such servers.
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
import redis

from tests.servers import free_port

# Redis Cluster's bus listens on each node's port plus this.
CLUSTER_BUS_OFFSET = 10_000

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

    def __init__(self, directory: Path, port: int | None = None, options: list[str] | None = None):
        self.executable = redis_server_executable()
        self.directory = directory
        self.port = port or free_port()
        self.options = options or []
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
                    *self.options,
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


def free_cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is free too."""
    return free_port(span=CLUSTER_BUS_OFFSET)


class RedisCluster:
    """A Redis Cluster on 127.0.0.1: masters, optionally a replica each, made by
    ``redis-cli --cluster create`` as an operator would.

    Nodes fail over after NODE_TIMEOUT_MS; a master without a replica leaves only its
    own slots unserved (``cluster-require-full-coverage no``). Nodes keep an AOF fsynced
    on every write, like RedisServer, so a restarted master holds what it acknowledged.
    """

    NODE_TIMEOUT_MS = 1000

    def __init__(
        self,
        directory: Path,
        masters: int = 3,
        replicas: int = 0,
        options: list[str] | None = None,
    ) -> None:
        self.directory = directory
        self.masters = masters
        self.replicas = replicas
        self.nodes = [
            RedisServer(
                directory / f"node-{index}",
                port,
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(self.NODE_TIMEOUT_MS),
                    "--cluster-require-full-coverage",
                    "no",
                    *(options or []),
                ],
            )
            for index, port in enumerate(self._ports(masters * (1 + replicas)))
        ]

    @staticmethod
    def _ports(count: int) -> list[int]:
        # Distinct from each other's ports and bus ports: free_port never hands out a
        # port twice.
        return [free_cluster_port() for _ in range(count)]

    @property
    def url(self) -> str:
        """A URL naming one node; the cluster client finds the others from it."""
        return self.nodes[0].url

    def start(self) -> None:
        """Start every node, join them into a cluster, return once every node serves."""
        for node in self.nodes:
            node.start()
        executable = shutil.which("redis-cli")
        if executable is None:
            pytest.fail("redis-cli is not installed (Debian package redis-server)", pytrace=False)
        created = subprocess.run(
            [
                executable,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}"
            )
        self.wait_until_serving()

    def info(self, node: RedisServer) -> dict[str, str]:
        """CLUSTER INFO of a node, or {} when it does not answer."""
        try:
            with redis.Redis(port=node.port, socket_timeout=1) as client:
                text = client.execute_command("CLUSTER INFO")
        except redis.exceptions.RedisError:
            return {}
        if isinstance(text, bytes):
            text = text.decode()
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        return dict(line.split(":", 1) for line in str(text).split() if ":" in line)

    def replicating(self, node: RedisServer) -> bool:
        """Whether a replica's link to its master is up (True for a master)."""
        try:
            with redis.Redis(port=node.port, socket_timeout=1) as client:
                info = client.info("replication")
        except redis.exceptions.RedisError:
            return False
        return info.get("role") == "master" or info.get("master_link_status") == "up"

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        """Until every running node says the cluster is ok with every slot served, and
        every running replica has caught up with its master."""
        deadline = time.monotonic() + timeout
        while True:
            running = [node for node in self.nodes if node.process is not None]
            infos = [self.info(node) for node in running]
            if all(
                info.get("cluster_state") == "ok" and info.get("cluster_slots_ok") == "16384"
                for info in infos
            ) and all(self.replicating(node) for node in running):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster not serving after {timeout} s: {infos}")
            time.sleep(0.1)

    def master_of(self, key: str) -> RedisServer:
        """The node serving a key's slot now."""
        with redis.RedisCluster(host="127.0.0.1", port=self._running().port) as client:
            node = client.get_node_from_key(key)
        return next(server for server in self.nodes if server.port == node.port)

    def replica_of(self, master: RedisServer) -> RedisServer:
        """The replica of a master."""
        with redis.Redis(port=master.port) as client:
            info = client.info("replication")
        port = int(info["slave0"]["port"])
        return next(server for server in self.nodes if server.port == port)

    def _running(self) -> RedisServer:
        return next(node for node in self.nodes if node.process is not None)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """Three masters shared by the session; tests keep apart by key prefix."""
    with RedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server shared by the session; tests keep apart by key prefix or database."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server
