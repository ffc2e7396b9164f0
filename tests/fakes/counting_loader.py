"""A source loader that reads originals as Thumbor's file loader does, and writes down,
at each load, how many originals loaded before it are still held by requests that have
not finished (a request holds its original until it ends): one JSON line per load, to
the file named by the environment variable COUNTING_LOADER_LOG."""

from __future__ import annotations

import json
import os
from typing import Any

from thumbor.loaders import file_loader

# The handlers of the requests that loaded an original, while they run.
_holding: list[Any] = []


async def load(context: Any, path: str) -> Any:
    _holding[:] = [handler for handler in _holding if not handler._finished]
    with open(os.environ["COUNTING_LOADER_LOG"], "a") as log:
        log.write(json.dumps({"path": path, "held": len(_holding)}) + "\n")
    result = await file_loader.load(context, path)
    handler = getattr(context, "request_handler", None)
    if handler is not None:
        _holding.append(handler)
    return result
