"""`make demo`'s script, run for real from a copy of the repository's demo files: it
decides a picture no request has fetched yet, which the command line accepts only with
--unseen."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
READY_SECONDS = 120.0


def status_of(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str | None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("X-Moderation-Status")
    finally:
        connection.close()


def test_the_demo_starts_with_its_sample_rejected_before_any_request_fetched_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "demo", tmp_path / "scripts" / "demo")
    shutil.copytree(ROOT / "demo", tmp_path / "demo")
    port = free_port()
    environment = {**os.environ, "PORT": str(port), "VENV": str(Path(sys.executable).parent.parent)}
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen(
        [str(tmp_path / "scripts" / "demo")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environment,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + READY_SECONDS
        # The review page shows the showcase refusal's original: the demo keeps it,
        # without any visitor fetching the picture first.
        original = 0
        while original != 200:
            assert demo.poll() is None, (tmp_path / "demo.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "demo.log").read_text()
            try:
                token = (tmp_path / "demo-data" / "admin-token").read_text().strip()
                auth = {"Authorization": f"Bearer {token}"}
                original, _ = status_of(port, "/moderation/original?url=chart.webp", auth)
            except OSError:
                pass
            time.sleep(0.2)
        answer = status_of(port, "/unsafe/300x200/chart.webp")
        banner = (tmp_path / "demo.log").read_text()
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(timeout=30)
        log.close()

    assert "thumbor-moderation demo on" in banner
    assert answer[1] == "rejected"
