"""Benchmarks run through `make bench SCRIPT=... ARGS=...`, with the venv's python, as
the README shows them: a plain `python benchmarks/x.py` outside the venv lacks Pillow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def make_bench(*variables: str) -> subprocess.CompletedProcess[str]:
    # A PATH without the venv, as a newcomer's shell has; the install step is taken as done.
    environment = {**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    environment.pop("VIRTUAL_ENV", None)
    command = ["make", "--no-print-directory", f"VENV={VENV}", "-o", f"{VENV}/.installed-dev"]
    return subprocess.run(
        [*command, "bench", *variables],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env=environment,
    )


def test_make_bench_runs_the_named_script_with_its_arguments_in_the_venv() -> None:
    by_name = make_bench("SCRIPT=duplicates", "ARGS=--help")
    by_path = make_bench("SCRIPT=benchmarks/first_view.py", "ARGS=--help")

    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout.startswith(f"{VENV}/bin/python benchmarks/duplicates.py --help\n")
    assert "usage: duplicates.py" in by_name.stdout
    assert by_path.returncode == 0, by_path.stderr
    assert "usage: first_view.py" in by_path.stdout


def test_the_docs_run_every_benchmark_through_make_bench() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()

    for page in pages:
        assert not re.search(r"python3? benchmarks/", page.read_text()), page.name
    for script in ("first_view", "duplicates", "stores", "dynamodb"):
        assert f"make bench SCRIPT={script}" in benchmarks, script
