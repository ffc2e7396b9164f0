"""Build the sdist and the wheel, check them, and start Thumbor from the wheel alone.

What a user gets from `pip install thumbor_moderation-<version>-py3-none-any.whl`: the
wheel is installed into a new virtualenv (its dependencies pinned by constraints.txt),
and Thumbor runs there with the README's minimal configuration, only its paths moved to
a temporary folder and Rekognition's endpoint pointed at the project's fake one. A clean
picture must come back approved and one the fake flags rejected, through HTTP.

Usage (from the checkout, with the dev virtualenv): make release-check
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import picture  # noqa: E402
from tests.fakes.rekognition import FakeRekognition  # noqa: E402
from tests.servers import free_port  # noqa: E402

CLEAN, FLAGGED = (40, 160, 40), (200, 30, 30)


def run(*command: str | Path, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(
            f"check-release: {' '.join(map(str, command))} failed:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def minimal_config(data: Path) -> str:
    """The README's minimal thumbor.conf, its /var/lib/thumbor paths moved into data."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"Minimal `thumbor.conf`.*?```python\n(.*?)```", readme, re.S)
    if found is None:
        sys.exit("check-release: the README has no minimal thumbor.conf block")
    return found.group(1).replace("/var/lib/thumbor", str(data))


def serve(folder: Path) -> http.server.ThreadingHTTPServer:
    """The origin the README's http_loader fetches from."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def status_of(url: str, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return str(response.headers.get("X-Moderation-Status"))
        except OSError as error:
            if time.monotonic() > deadline:
                raise SystemExit(f"check-release: no answer from {url}: {error}") from None
            time.sleep(0.5)


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="release-"))
    try:
        dist = scratch / "dist"
        run(sys.executable, "-m", "build", "--outdir", dist, ".")
        artefacts = sorted(dist.iterdir())
        print("built:", ", ".join(path.name for path in artefacts))
        run(sys.executable, "-m", "twine", "check", "--strict", *artefacts)
        print("twine check: passed")
        wheel = next(path for path in artefacts if path.suffix == ".whl")

        venv = scratch / "venv"
        run(sys.executable, "-m", "venv", venv)
        env_pip = {**os.environ, "PIP_CONSTRAINT": str(ROOT / "constraints.txt")}
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)]
        done = subprocess.run(pip, env=env_pip, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"check-release: installing {wheel.name} failed:\n{done.stderr}")
        version = run(
            venv / "bin" / "python",
            "-c",
            "import importlib.metadata as m; print(m.version('thumbor-moderation'))",
        ).strip()
        print("installed:", version)

        data, origin_files = scratch / "data", scratch / "origin"
        data.mkdir()
        origin_files.mkdir()
        (origin_files / "clean.png").write_bytes(picture(CLEAN))
        (origin_files / "flagged.png").write_bytes(picture(FLAGGED))
        with FakeRekognition() as fake:
            fake.respond(FLAGGED, [{"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99}])
            origin = serve(origin_files)
            conf = scratch / "thumbor.conf"
            conf.write_text(
                minimal_config(data) + f"REKOGNITION_ENDPOINT_URL = {fake.url!r}\n"
                "FILE_STORAGE_ROOT_PATH = " + repr(str(data / "storage")) + "\n"
                "RESULT_STORAGE_FILE_STORAGE_ROOT_PATH = " + repr(str(data / "result")) + "\n"
            )
            port = free_port()
            env = {
                **os.environ,
                "AWS_ACCESS_KEY_ID": "release-check",
                "AWS_SECRET_ACCESS_KEY": "release-check",
            }
            thumbor = subprocess.Popen(
                [str(venv / "bin" / "thumbor"), "--port", str(port), "--conf", str(conf)],
                cwd=scratch,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                base = f"http://127.0.0.1:{port}/unsafe/120x90/127.0.0.1:{origin.server_port}"
                deadline = time.monotonic() + 60
                seen = {
                    name: status_of(f"{base}/{name}", deadline)
                    for name in ("clean.png", "flagged.png")
                }
            finally:
                thumbor.terminate()
                log = thumbor.communicate(timeout=30)[0]
                origin.shutdown()
        if seen != {"clean.png": "approved", "flagged.png": "rejected"} or "Traceback" in log:
            sys.exit(f"check-release: Thumbor from the wheel answered {seen}\n{log}")
        print(f"Thumbor from the wheel, README's minimal configuration: {seen}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
