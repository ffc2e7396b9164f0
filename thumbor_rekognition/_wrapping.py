"""What the plugin's STORAGE and RESULT_STORAGE share: a wrapped module, built late."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from thumbor_rekognition.runtime import RUNTIMES, Runtime, runtime_for


class Wrapping:
    """Mixed into a Thumbor storage class that wraps the module keeping the bytes."""

    # Lets the handler list check at start-up that the configured module moderates.
    MODERATING = True
    # The Runtime attribute holding the wrapped module (None: keep nothing).
    WRAPS = ""

    context: Any
    # Thumbor builds one per request context (three per image request, counting upload
    # and result storage), and one before its handler lists check the configuration: the
    # runtime and the wrapped storage come on first use, and building one costs nothing.
    _source: Any = None
    _built: Runtime | None = None

    @property
    def _runtime(self) -> Runtime:
        built = self._built
        if built is None:
            built = self._built = runtime_for(self.context.config)
        return built

    @property
    def source(self) -> Any:
        """The wrapped storage instance for this request, or None."""
        source = self._source
        if source is None:
            # On every request: as few steps as building it can take.
            config = self.context.config
            built = self._built = RUNTIMES.get(config) or runtime_for(config)
            module: ModuleType | None = getattr(built, self.WRAPS)
            source = self._source = module.Storage(self.context) if module is not None else False
        return source or None
