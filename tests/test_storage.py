"""The moderating STORAGE's and RESULT_STORAGE's own edge cases, on a Thumbor context
without a server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from thumbor.config import Config
from thumbor.context import Context, RequestParameters
from thumbor.importer import Importer
from thumbor.result_storages import file_storage as result_file_storage
from thumbor.result_storages.file_storage import Storage as FileResultStorage
from thumbor.storages import file_storage
from thumbor.storages.file_storage import Storage as FileStorage

from thumbor_rekognition.gate import ModerationHandler
from thumbor_rekognition.result_storage import Storage as ModeratingResultStorage
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


class _RemovedWhileChecked:
    """os.path.getmtime that first removes the file, as a purge landing between a file
    storage's exists and its modification-time check would."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    def __call__(self, path: str) -> float:
        os.remove(path)
        self.removed.append(path)
        return os.path.getmtime(path)


def _real_context(tmp_path: Path, handler: Any = None) -> Context:
    config = Config(
        STORAGE="thumbor_rekognition.storage",
        MODERATION_SOURCE_STORAGE="thumbor.storages.file_storage",
        FILE_STORAGE_ROOT_PATH=str(tmp_path / "storage"),
        RESULT_STORAGE="thumbor_rekognition.result_storage",
        MODERATION_SOURCE_RESULT_STORAGE="thumbor.result_storages.file_storage",
        RESULT_STORAGE_FILE_STORAGE_ROOT_PATH=str(tmp_path / "results"),
        RESULT_STORAGE_EXPIRATION_SECONDS=3600,
        MODERATION_SQLITE_PATH=str(tmp_path / "decisions.sqlite3"),
        MODERATION_QUARANTINE_PATH=str(tmp_path / "quarantine"),
    )
    importer = Importer(config)
    importer.import_modules()
    return Context(config=config, importer=importer, request_handler=handler)


@pytest.mark.parametrize("route", ["image", "upload"])
def test_an_original_removed_while_its_existence_is_checked_does_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    # The image route asks STORAGE whether its path names an upload id on every request.
    handler = ModerationHandler.__new__(ModerationHandler) if route == "image" else None
    context = _real_context(tmp_path, handler)
    path = "host/vanishing.png"
    asyncio.run(FileStorage(context).put(path, b"picture bytes"))
    removed = _RemovedWhileChecked()
    monkeypatch.setattr(file_storage, "getmtime", removed)

    found = asyncio.run(ModeratingStorage(context).exists(path))

    assert found is False
    assert removed.removed == [FileStorage(context).path_on_filesystem(path)]


def test_a_result_purged_while_it_is_read_is_a_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = _real_context(tmp_path)
    context.request = RequestParameters(url="/unsafe/30x30/host/vanishing.png")
    asyncio.run(FileResultStorage(context).put(b"result bytes"))
    removed = _RemovedWhileChecked()
    monkeypatch.setattr(result_file_storage, "getmtime", removed)

    found = asyncio.run(ModeratingResultStorage(context).get())

    assert found is None
    assert len(removed.removed) == 1
