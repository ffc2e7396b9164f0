"""One filter table per process instead of one per request.

Thumbor builds a `FiltersFactory` in every request's `Context`: it walks every configured
filter class and compiles its parameter regexes again, about a fifth of the instructions
a cached hit costs. The table depends only on the list of filter classes, and Thumbor
reads it without changing it (`create_instances` makes each request's filter objects),
so every context built with the same classes can share one.

The moderation gate's handler list shares them. Stock Thumbor can too, by listing this
module in HANDLER_LISTS: it adds no route.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import thumbor.context
from thumbor.filters import FiltersFactory

_TABLES: dict[tuple[type, ...], FiltersFactory] = {}


def shared_filters_factory(filter_classes: Iterable[type]) -> FiltersFactory:
    """The process's FiltersFactory for these classes, built on first use."""
    key = tuple(filter_classes)
    table = _TABLES.get(key)
    if table is None:
        # Threads building it at once build equal tables: the first one stored is kept.
        table = _TABLES.setdefault(key, FiltersFactory(key))
    return table


def share_filter_tables() -> None:
    """Make every Context built from now on use the process's table for its filters."""
    context_module: Any = thumbor.context
    context_module.FiltersFactory = shared_filters_factory


def get_handlers(context: Any) -> list[tuple[Any, ...]]:
    """HANDLER_LISTS entry for Thumbor without the gate: shares the tables, adds no route."""
    share_filter_tables()
    return []
