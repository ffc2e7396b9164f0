"""The plugin's per-process state, built from a Thumbor config.

Settings are validated once, when Thumbor builds its handlers. Threads, connections and
clients are created on first use in each process, so that ``thumbor --processes=N``
forks before any of them exists.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import io
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from importlib import resources
from types import ModuleType
from typing import Any

from PIL import Image

from thumbor_rekognition import aws_caches, backends, stores
from thumbor_rekognition.config import Settings
from thumbor_rekognition.config_checks import ConfigurationError
from thumbor_rekognition.moderation.memory import Bounded
from thumbor_rekognition.moderator import Moderator
from thumbor_rekognition.outbox import Outbox
from thumbor_rekognition.quarantine import load_quarantine

logger = logging.getLogger(__name__)

# Store calls in flight per process; SQLite serialises its own, Redis pools connections.
STORE_THREADS = 4
# Distinct placeholder transformations kept per process (a few kB each).
PLACEHOLDER_RENDERINGS = 256


class Runtime:
    """Settings, placeholder and source loader now; executor, store and backend per process."""

    def __init__(self, settings: Settings, config: Any = None) -> None:
        self.settings = settings
        self.placeholder = _read_placeholder(settings.placeholder_path)
        self.source_loader = _import_loader(settings.source_loader)
        self.source_validates = callable(getattr(self.source_loader, "validate", None))
        self.source_storage = _import_wrapped(
            "MODERATION_SOURCE_STORAGE", settings.source_storage, "storage"
        )
        self.source_result_storage = (
            _import_wrapped(
                "MODERATION_SOURCE_RESULT_STORAGE", settings.source_result_storage, "result_storage"
            )
            if settings.source_result_storage
            else None
        )
        # thumbor-aws buckets among them, whose objects a purge deletes (needs the
        # Thumbor config: thumbor-aws reads its own keys).
        self.buckets = (
            aws_caches.buckets(
                config, self.source_storage, self.source_result_storage, settings.outbox_timeout
            )
            if config is not None
            else {}
        )
        _import_module("MODERATION_BACKEND", settings.backend)
        _import_module("MODERATION_DECISION_STORE", settings.decision_store)
        _import_module("MODERATION_QUARANTINE", settings.quarantine)
        self._lock = threading.Lock()
        # Threads, connections and clients do not survive a fork: a child builds its own.
        os.register_at_fork(after_in_child=functools.partial(_forget_moderator, weakref.ref(self)))
        self.placeholders = RenderCache(PLACEHOLDER_RENDERINGS)
        # Rejected pictures whose stored original the gate has moved to the quarantine.
        self.evicted: Bounded[bool] = Bounded(PLACEHOLDER_RENDERINGS * 40)

    # This process's moderator, built on first use after fork: read on every request, so
    # a plain attribute once built (__getattr__ is asked only while it is missing).
    moderator: Moderator

    def __getattr__(self, name: str) -> Any:
        if name != "moderator":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        with self._lock:
            moderator = self.__dict__.get("moderator")
            if moderator is None:
                moderator = self.moderator = self._build_moderator()
            return moderator

    def start_warm_up(self) -> None:
        """Build this process's clients or model in the background, ahead of requests."""
        threading.Thread(target=self._warm_up, name="moderation-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        try:
            # Only Thumbor processes deliver the outbox: a command-line run would exit
            # in the middle of a delivery it had claimed.
            self.moderator.outbox.start()  # type: ignore[union-attr]
            backend = self.moderator.backend
            # Said by Thumbor processes only: a command-line run prints what it judges.
            for message in backends.startup_warnings(backend, self.settings.policy):
                logger.warning("%s", message)
            started = time.perf_counter()
            backend.warm_up()
            logger.info(
                "backend %s ready in %.0f ms", backend.name, (time.perf_counter() - started) * 1000
            )
        except Exception:
            logger.exception("moderation backend failed to warm up")

    def _build_moderator(self) -> Moderator:
        settings = self.settings
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="moderation"
        )
        store_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=STORE_THREADS, thread_name_prefix="moderation-store"
        )
        calls_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="moderation-calls"
        )
        backend = backends.load_backend(settings)
        store = stores.load_store(settings)
        outbox = Outbox(settings, store, self.buckets)
        moderator = Moderator(
            settings=settings,
            store=store,
            backend=backend,
            executor=executor,
            store_executor=store_executor,
            calls_executor=calls_executor,
            quarantine=load_quarantine(settings),
            outbox=outbox,
        )
        store.subscribe(moderator.changed)
        return moderator


class RenderCache:
    """Rendered placeholders by transformation, least recently used dropped first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, tuple[bytes, str]] = OrderedDict()

    def get(self, key: Any) -> tuple[bytes, str] | None:
        item = self._items.get(key) if key is not None else None
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Any, rendered: tuple[bytes, str]) -> None:
        self._items[key] = rendered
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def _forget_moderator(reference: weakref.ref[Runtime]) -> None:
    runtime = reference()
    if runtime is not None:
        runtime._lock = threading.Lock()
        runtime.__dict__.pop("moderator", None)


# By config object (hashed by identity): Thumbor keeps one for the process's life.
RUNTIMES: dict[Any, Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def runtime_for(config: Any) -> Runtime:
    """The runtime of a Thumbor config object, validating it the first time."""
    runtime = RUNTIMES.get(config)
    if runtime is not None:
        return runtime
    with _RUNTIMES_LOCK:
        runtime = RUNTIMES.get(config)
        if runtime is None:
            runtime = RUNTIMES[config] = Runtime(Settings.from_config(config), config)
        return runtime


def _read_placeholder(path: str | None) -> bytes:
    if path is None:
        return (
            resources.files("thumbor_rekognition").joinpath("assets/placeholder.png").read_bytes()
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError) as error:
        raise ConfigurationError(
            f"Config 'MODERATION_PLACEHOLDER_PATH' has value {path!r}. "
            f"Not a readable image ({error})."
        ) from None
    return data


def _import_module(key: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ConfigurationError(
            f"Config '{key}' has value {name!r}. Cannot import it ({error})."
        ) from None


def _import_wrapped(key: str, name: str, wrapper: str) -> ModuleType:
    """The storage module one of the plugin's storages wraps."""
    module = _import_module(key, name)
    if name.startswith(__package__ + "."):
        raise ConfigurationError(
            f"Config '{key}' has value {name!r}: it names the plugin's own {wrapper} module; "
            "it must name the module that keeps the bytes, e.g. a thumbor.storages one."
        )
    if not callable(getattr(module, "Storage", None)):
        raise ConfigurationError(f"Config '{key}' has value {name!r}. It has no Storage class.")
    return module


def _import_loader(name: str) -> ModuleType:
    module = _import_module("MODERATION_SOURCE_LOADER", name)
    if name == __package__ + ".loader":
        raise ConfigurationError(
            "Config 'MODERATION_SOURCE_LOADER' names the moderating loader itself; "
            "it must name the loader that fetches originals, e.g. thumbor.loaders.http_loader."
        )
    if not callable(getattr(module, "load", None)):
        raise ConfigurationError(
            f"Config 'MODERATION_SOURCE_LOADER' has value {name!r}. It has no load() function."
        )
    return module
