"""HANDLER_LISTS entry: the gate on Thumbor's image route.

Routes from handler lists are matched before Thumbor's own image route, so every image
request reaches the gate once Thumbor has checked its signature.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from libthumbor.url import Url

from thumbor_rekognition import admin
from thumbor_rekognition.config import ConfigurationError
from thumbor_rekognition.gate import ModerationHandler
from thumbor_rekognition.runtime import runtime_for

logger = logging.getLogger(__name__)


def get_handlers(context: Any) -> list[tuple[Any, ...]]:
    """Validate the configuration and route image requests through the gate."""
    try:
        runtime = runtime_for(context.config)
        _check_loader(context)
    except ConfigurationError as error:
        logger.critical("thumbor-rekognition cannot start: %s", error)
        raise SystemExit(f"thumbor-rekognition: {error}") from None
    # No IOLoop may exist before `thumbor --processes=N` forks, so warming up happens in
    # a thread: now when Thumbor runs in this process, in each child after fork otherwise.
    if getattr(context.server, "processes", 1) == 1:
        runtime.start_warm_up()
    else:
        os.register_at_fork(after_in_child=runtime.start_warm_up)
    return [
        *admin.get_handlers(context, runtime),
        (Url.regex(), ModerationHandler, {"context": context, "runtime": runtime}),
    ]


def _check_loader(context: Any) -> None:
    loader = context.modules.importer.loader
    if not getattr(loader, "MODERATING_LOADER", False):
        raise ConfigurationError(
            f"Config 'LOADER' has value {context.config.LOADER!r}. With the moderation "
            "gate installed it must be 'thumbor_rekognition.loader' (set the loader that "
            "fetches originals in MODERATION_SOURCE_LOADER), or first fetches would "
            "serve unmoderated images."
        )
