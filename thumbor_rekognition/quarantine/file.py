"""Quarantined originals in a local folder: ``<root>/<sha[:2]>/<sha>``."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

from thumbor_rekognition import quarantine

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings


class Quarantine(quarantine.Quarantine):
    """The default backup repository, on the machine's disk."""

    def __init__(self, settings: Settings | None = None, *, root: str | None = None) -> None:
        super().__init__(settings)
        if root is None:
            if settings is None:
                raise ValueError("a file quarantine needs settings or a root folder")
            root = settings.quarantine_path
        self.root = root

    def _path(self, sha256: str) -> str:
        digest = quarantine.checked(sha256)
        return os.path.join(self.root, digest[:2], digest)

    def put(self, sha256: str, data: bytes) -> None:
        path = self._path(sha256)
        if os.path.exists(path):
            return
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # Written aside and renamed, so a reader never sees half an original.
            handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".incoming-")
            with os.fdopen(handle, "wb") as output:
                output.write(data)
            os.replace(temporary, path)
        except OSError as error:
            raise quarantine.QuarantineError(
                f"cannot keep {sha256} in {self.root}: {error}"
            ) from error

    def get(self, sha256: str) -> bytes | None:
        try:
            with open(self._path(sha256), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise quarantine.QuarantineError(
                f"cannot read {sha256} from {self.root}: {error}"
            ) from error

    def delete(self, sha256: str) -> None:
        try:
            os.remove(self._path(sha256))
        except FileNotFoundError:
            pass
        except OSError as error:
            raise quarantine.QuarantineError(
                f"cannot delete {sha256} from {self.root}: {error}"
            ) from error
