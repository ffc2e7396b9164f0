from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from PIL import Image

from tests.fakes.rekognition import FakeRekognition

# Hypothesis's 200 ms per example is a wall-clock bound that a loaded machine misses now
# and then ("Unreliable test timings"); what the properties check does not depend on it.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


def picture(
    color: tuple[int, int, int],
    size: tuple[int, int] = (160, 120),
    image_format: str = "PNG",
) -> bytes:
    """A solid-colour picture; the fake Rekognition endpoint answers by colour."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, image_format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def module_fake() -> Iterator[FakeRekognition]:
    with FakeRekognition() as fake:
        yield fake


@pytest.fixture
def fake(module_fake: FakeRekognition) -> Iterator[FakeRekognition]:
    module_fake.reset()
    yield module_fake
    module_fake.reset()


@pytest.fixture(scope="module")
def module_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("thumbor")


@pytest.fixture(scope="module")
def images(module_root: Path) -> Path:
    """The folder of originals a module's Thumbor servers load from."""
    folder = module_root / "images"
    folder.mkdir()
    return folder


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A folder of originals of the test's own, for tests that change what it serves."""
    folder = tmp_path / "origin"
    folder.mkdir()
    return folder
