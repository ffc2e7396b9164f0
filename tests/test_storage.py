"""The moderating STORAGE's own edge cases, on a Thumbor context without a server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from thumbor.config import Config
from thumbor.context import Context
from thumbor.importer import Importer
from thumbor.storages.file_storage import Storage as FileStorage

from thumbor_rekognition.storage import Storage as ModeratingStorage


class Storage(FileStorage):  # type: ignore[misc]
    """A file storage whose file vanishes between its exists and its open."""

    async def get(self, path: str) -> Any:
        raise FileNotFoundError(path)


def context_over(tmp_path: Path) -> Context:
    config = Config(
        STORAGE="thumbor_rekognition.storage",
        MODERATION_SOURCE_STORAGE=__name__,
        FILE_STORAGE_ROOT_PATH=str(tmp_path / "storage"),
        MODERATION_SQLITE_PATH=str(tmp_path / "decisions.sqlite3"),
        MODERATION_QUARANTINE_PATH=str(tmp_path / "quarantine"),
    )
    importer = Importer(config)
    importer.import_modules()
    return Context(config=config, importer=importer)


def test_an_original_removed_while_it_is_read_is_a_miss(tmp_path: Path) -> None:
    storage = ModeratingStorage(context_over(tmp_path))

    found = asyncio.run(storage.get("host/vanished.png"))

    assert found is None
