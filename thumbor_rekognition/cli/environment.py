"""The configuration a command runs against, and what every command shares: its errors,
its exit codes, reading files and walking the decisions."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from derpconf.config import ConfigurationError as DerpConfigurationError
from thumbor.config import Config
from thumbor.context import Context, RequestParameters, ServerParameters
from thumbor.importer import Importer

from thumbor_rekognition.caches import ThumborCaches
from thumbor_rekognition.config import (  # also defines the plugin's keys
    ConfigurationError,
)
from thumbor_rekognition.decision import (
    Decision,
    Status,
)
from thumbor_rekognition.review import MAX_PAGE, Review
from thumbor_rekognition.runtime import Runtime, runtime_for

logger = logging.getLogger(__name__)


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

CONF_NAME = "thumbor.conf"
REEVALUATE_ACTOR = "cli:reevaluate"


class Failure(Exception):
    """An operation that did not succeed: its message is printed, the exit code is 1."""


class UsageError(Exception):
    """A command line that cannot be acted on: its message is printed, the exit code is 2."""


def conf_lookup_paths() -> list[str]:
    """Where thumbor.conf is looked for without --conf, as Thumbor itself does."""
    return [os.curdir, os.path.expanduser("~"), "/etc/"]


class Environment:
    """One Thumbor configuration, as the plugin's servers see it."""

    def __init__(self, conf: str | None) -> None:
        self.config = _load_config(conf)
        self.importer = Importer(self.config)
        try:
            self.importer.import_modules()
        except (ImportError, AttributeError, DerpConfigurationError) as error:
            raise ConfigurationError(f"Thumbor cannot import its modules: {error}") from None
        server = ServerParameters(
            port=0,
            ip="127.0.0.1",
            config_path=getattr(self.config, "config_file", None),
            keyfile=None,
            log_level="warning",
            app_class="thumbor.app.ThumborServiceApp",
        )
        server.security_key = self.config.SECURITY_KEY
        self.context = Context(server=server, config=self.config, importer=self.importer)
        self.runtime: Runtime = runtime_for(self.config)
        try:
            # Built now so that a backend or store module without its class is a
            # configuration error, not a failure halfway through a command.
            self.runtime.moderator  # noqa: B018
        except TypeError as error:
            raise ConfigurationError(str(error)) from None
        self.review = Review(self.runtime, ThumborCaches(self.context))

    def request_context(self, quoted_url: str) -> Any:
        """A context like the one a loader gets during an image request."""
        context = Context(server=self.context.server, config=self.config, importer=self.importer)
        context.request = RequestParameters(image=quoted_url)
        return context

    def close(self) -> None:
        self.runtime.moderator.store.close()


def _load_config(conf: str | None) -> Any:
    if conf is None:
        path = Config.get_conf_file(CONF_NAME, conf_lookup_paths())
        if path is None:
            # Defaults would administer no server's decisions: say so rather than guess.
            looked = ", ".join(
                os.path.join(os.path.abspath(folder), CONF_NAME) for folder in conf_lookup_paths()
            )
            raise ConfigurationError(
                f"no configuration found (looked for {looked}); pass --conf FILE"
            )
    else:
        path = os.path.expanduser(conf)
        if not os.path.exists(path):
            raise ConfigurationError(f"No configuration file at {conf}.")
    try:
        return Config.load(path)
    except DerpConfigurationError as error:
        raise ConfigurationError(str(error)) from None
    except Exception as error:
        # thumbor.conf is executed Python: any error in it is a configuration error.
        raise ConfigurationError(f"Cannot read {path}: {type(error).__name__}: {error}") from None


async def each_decision(
    review: Review, status: Status | None, limit: int | None
) -> AsyncIterator[Decision]:
    """Every decision ordered by key, a page at a time."""
    cursor: str | None = None
    remaining = limit
    while remaining is None or remaining > 0:
        size = MAX_PAGE if remaining is None else min(remaining, MAX_PAGE)
        page, cursor = await review.page(status, size, cursor)
        for decision in page:
            yield decision
        if remaining is not None:
            remaining -= len(page)
        if cursor is None:
            return


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
