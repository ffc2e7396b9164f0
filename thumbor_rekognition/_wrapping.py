"""What the plugin's STORAGE and RESULT_STORAGE share: a wrapped module, built late."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from thumbor_rekognition.runtime import Runtime, runtime_for


class Wrapping:
    """Mixed into a Thumbor storage class that wraps the module keeping the bytes."""

    # Lets the handler list check at start-up that the configured module moderates.
    MODERATING = True

    context: Any

    def __init__(self, context: Any) -> None:
        # Thumbor builds one per request context, and one before its handler lists check
        # the configuration: the runtime and the wrapped storage come on first use.
        super().__init__(context)  # type: ignore[call-arg]
        self._source: Any = None
        self._built: Runtime | None = None

    @property
    def _runtime(self) -> Runtime:
        if self._built is None:
            self._built = runtime_for(self.context.config)
        return self._built

    def _wrapped(self) -> ModuleType | None:
        """The module whose Storage keeps the bytes, or None for none."""
        raise NotImplementedError

    @property
    def source(self) -> Any:
        """The wrapped storage instance for this request, or None."""
        if self._source is None:
            module = self._wrapped()
            self._source = module.Storage(self.context) if module is not None else False
        return self._source or None
