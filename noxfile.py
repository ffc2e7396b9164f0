"""The supported versions, tested: the end-to-end tests on the oldest and the newest
Python and Thumbor 7 release that pyproject.toml allows.

    make versions                      # every session
    .venv/bin/nox -s "e2e(3.13-thumbor-7.8.0)"

Each session installs the package with its test, local and aws extras from the ranges in
pyproject.toml, as a user's pip would on that Python, with Thumbor pinned to the
session's release; `make test` stays the full suite on the pinned versions of
constraints.txt.
"""

from __future__ import annotations

from pathlib import Path

import nox

# (Python, Thumbor) pairs at the ends of pyproject.toml's ranges: requires-python >=3.10
# up to 3.13, thumbor>=7.8,<8 (7.8.0 is the only 7.8 release so far). Thumbor 7.7 is not
# supported: it holds Pillow at 10.0, on which the end-to-end tests fail (animations and
# hostile files), and thumbor-aws 1.1 needs 7.8.
PAIRS = [
    ("3.10", "7.8.0", "test,local,aws"),
    ("3.13", "7.8.0", "test,local,aws"),
]

# Pure-Python libraries that pin each other's versions (botocore above all).
AWS_LIBRARIES = {"boto3", "botocore", "aiobotocore", "s3transfer", "moto", "thumbor-aws"}

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True


@nox.session(name="e2e")
@nox.parametrize(
    ("python", "thumbor", "extras"),
    PAIRS,
    ids=[f"{python}-thumbor-{thumbor}" for python, thumbor, _ in PAIRS],
)
def e2e(session: nox.Session, thumbor: str, extras: str) -> None:
    """The end-to-end tests (real Thumbor over HTTP) on one Python and one Thumbor."""
    # Not all of constraints.txt: its pins were resolved for one Python, and a user on
    # another gets what the ranges resolve to there. Only the AWS libraries keep their
    # pins: left free, pip backtracks through years of botocore releases.
    session.env["PIP_CONSTRAINT"] = None  # None: left out of the environment inherited
    pins = Path(session.create_tmp()) / "aws-pins.txt"
    pins.write_text(
        "".join(
            line + "\n"
            for line in Path("constraints.txt").read_text().splitlines()
            if line.split("==")[0].lower() in AWS_LIBRARIES
        )
    )
    session.install("-c", str(pins), "-e", f".[{extras}]", f"thumbor=={thumbor}")
    installed = session.run(
        "python", "-c", "import thumbor; print(thumbor.__version__)", silent=True
    )
    if str(installed).strip() != thumbor:
        session.error(f"Thumbor {thumbor} asked for, {str(installed).strip()} installed")
    skip = [] if "aws" in extras else ["--ignore", "tests/test_thumbor_aws.py"]
    # As `make test` does: the tests that assert a wall-clock bound run alone, after the
    # rest, so that the other workers' load does not count against them.
    common = ["-q", "-p", "no:cacheprovider", *skip, *session.posargs]
    session.run("pytest", "-m", "e2e and not timing", "-n", "2", *common)
    session.run("pytest", "-m", "e2e and timing", *common)
