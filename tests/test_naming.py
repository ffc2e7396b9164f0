"""One name for what the user installs and runs: thumbor-moderation, in the README's
title, the demo's banner, Thumbor's log and the history of a decision the plugin made.
(The Python package keeps its name, thumbor_rekognition: it is what thumbor.conf names.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import ThumborServer, base_config
from thumbor_rekognition.moderation.verdicts import SYSTEM

ROOT = Path(__file__).resolve().parent.parent
NAME = "thumbor-moderation"


def test_the_installed_package_and_command_are_named_thumbor_moderation() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()

    assert f'name = "{NAME}"' in pyproject
    assert f'{NAME} = "thumbor_rekognition.cli:main"' in pyproject


def test_the_readme_title_and_the_demo_banner_say_thumbor_moderation() -> None:
    title = (ROOT / "README.md").read_text().splitlines()[0]
    demo = (ROOT / "scripts" / "demo").read_text()

    assert title == f"# {NAME}"
    assert f"{NAME} demo on $URL" in demo
    assert "thumbor-rekognition" not in demo


def test_the_plugins_own_actor_in_every_history_is_thumbor_moderation() -> None:
    assert SYSTEM == NAME


@pytest.mark.e2e
def test_thumbor_refusing_to_start_names_thumbor_moderation(tmp_path: Path) -> None:
    config = base_config(tmp_path, tmp_path / "images", None)
    config["LOADER"] = "thumbor.loaders.file_loader"
    thumbor = ThumborServer(tmp_path, config)

    thumbor.start(wait=False)
    code = thumbor.wait_exit()

    assert code != 0
    assert f"{NAME} cannot start: Config 'LOADER'" in thumbor.log
    assert "thumbor-rekognition" not in thumbor.log
