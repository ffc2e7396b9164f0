"""HANDLER_LISTS entry: the gate on Thumbor's image route.

Routes from handler lists are matched before Thumbor's own image route, so every image
request reaches the gate once Thumbor has checked its signature.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from libthumbor.url import Url

from thumbor_rekognition import admin, check, quarantine, stores
from thumbor_rekognition.config_checks import ConfigurationError, check_backend_extra, unknown_keys
from thumbor_rekognition.filter_table import share_filter_tables
from thumbor_rekognition.gate import ModerationHandler
from thumbor_rekognition.runtime import runtime_for

logger = logging.getLogger(__name__)


def get_handlers(context: Any) -> list[tuple[Any, ...]]:
    """Validate the configuration and route image requests through the gate."""
    # Said before anything can stop start-up: a misspelt key often explains the error.
    for message in unknown_keys(context.config):
        logger.warning("%s", message)
    try:
        runtime = runtime_for(context.config)
        # Its libraries are imported on the first picture; missing, every picture is a 500.
        check_backend_extra(runtime.settings.backend)
        # What the store and the quarantine would refuse in each process: refused here.
        stores.check_settings(runtime.settings)
        quarantine.check_settings(runtime.settings)
        _check_loader(context)
        _check_storages(context)
        _check_order(context.config)
    except ConfigurationError as error:
        logger.critical("thumbor-moderation cannot start: %s", error)
        raise SystemExit(f"thumbor-moderation: {error}") from None
    share_filter_tables()
    # No IOLoop may exist before `thumbor --processes=N` forks, so warming up happens in
    # a thread: now when Thumbor runs in this process, in each child after fork otherwise.
    if getattr(context.server, "processes", 1) == 1:
        runtime.start_warm_up()
    else:
        os.register_at_fork(after_in_child=runtime.start_warm_up)
    return [
        # Before the admin routes: with only MODERATION_CHECK_TOKEN set, theirs say "off".
        *check.get_handlers(context, runtime),
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


NO_STORAGE = "thumbor.storages.no_storage"
THUMBOR_HANDLER_LISTS = "thumbor.handler_lists."
THIS = __name__


def _check_storages(context: Any) -> None:
    # STORAGE, UPLOAD_PHOTO_STORAGE and RESULT_STORAGE are used through doors the gate does
    # not stand in front of (the upload API, filters that paste other pictures in): they
    # must moderate, or keep nothing.
    config = context.config
    importer = context.modules.importer
    storages = [("STORAGE", importer.storage)]
    if config.UPLOAD_ENABLED:
        storages.append(("UPLOAD_PHOTO_STORAGE", importer.upload_photo_storage))
    for key, storage in storages:
        name = getattr(config, key)
        if name != NO_STORAGE and not getattr(storage, "MODERATING", False):
            raise ConfigurationError(
                f"Config '{key}' has value {name!r}. With the moderation gate installed it "
                "must be 'thumbor_rekognition.storage' (set the storage that keeps originals "
                f"in MODERATION_SOURCE_STORAGE) or {NO_STORAGE!r}, or uploads and filters "
                "would hand out originals that are not approved."
            )
    if config.RESULT_STORAGE and not getattr(importer.result_storage, "MODERATING", False):
        raise ConfigurationError(
            f"Config 'RESULT_STORAGE' has value {config.RESULT_STORAGE!r}. With the "
            "moderation gate installed it must be 'thumbor_rekognition.result_storage' (set "
            "the result storage that keeps results in MODERATION_SOURCE_RESULT_STORAGE) or "
            "None, or results made from a picture rejected later would still be served."
        )


def _check_order(config: Any) -> None:
    # The gate's route matches any path, /healthcheck too: Thumbor's own lists go first.
    lists = [str(name) for name in config.HANDLER_LISTS]
    if THIS not in lists:
        return
    later = [
        name for name in lists[lists.index(THIS) + 1 :] if name.startswith(THUMBOR_HANDLER_LISTS)
    ]
    if later:
        raise ConfigurationError(
            f"Config 'HANDLER_LISTS' lists {THIS!r} before {', '.join(later)}. Its route "
            "takes every path: list it last, after Thumbor's own handler lists."
        )
