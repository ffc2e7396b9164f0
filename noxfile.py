"""The supported versions, tested: the end-to-end tests on the oldest and the newest
Python and Thumbor 7 release that pyproject.toml allows.

    make versions                      # every session
    .venv/bin/nox -s "e2e-3.10(thumbor='7.7.0')"

Each session installs the package with its test, local and aws extras from the ranges in
pyproject.toml, as a user's pip would on that Python, with Thumbor pinned to the
session's release; `make test` stays the full suite on the pinned versions of
constraints.txt.
"""

from __future__ import annotations

import nox

# pyproject.toml: requires-python = ">=3.10"; classifiers list up to 3.13.
PYTHONS = ["3.10", "3.13"]
# pyproject.toml: thumbor>=7.7,<8.
THUMBORS = ["7.7.0", "7.8.0"]

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True


@nox.session(python=PYTHONS, name="e2e")
@nox.parametrize("thumbor", THUMBORS)
def e2e(session: nox.Session, thumbor: str) -> None:
    """The end-to-end tests (real Thumbor over HTTP) on one Python and one Thumbor."""
    # Not constraints.txt: its pins were resolved for one Python; a user on another gets
    # what the ranges resolve to there.
    session.env.pop("PIP_CONSTRAINT", None)
    session.install("-e", ".[test,local,aws]", f"thumbor=={thumbor}")
    installed = session.run(
        "python", "-c", "import thumbor; print(thumbor.__version__)", silent=True
    )
    if str(installed).strip() != thumbor:
        session.error(f"Thumbor {thumbor} asked for, {str(installed).strip()} installed")
    session.run("pytest", "-m", "e2e", "-q", "-p", "no:cacheprovider", *session.posargs)
