"""The originals one request was made from: its result is kept only tied to each of them.

A result can contain more than its main picture (the watermark and frame filters paste
others in). Each original the request read is noted here, by decision key and content
hash, as the loader or the storage hands it out; the result storage writes the hashes
with the result and serves it only while every one of them is approved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thumbor_rekognition.urls import normalise


@dataclass
class Provenance:
    """Decision key -> content hash of each original used, the main picture's first."""

    main: str
    sources: dict[str, str] = field(default_factory=dict)
    # A picture pasted in was refused (the placeholder stood in): keep no result.
    refused: bool = False

    def note(self, key: str, sha256: str) -> None:
        """Record an original handed out to this request."""
        if key == self.main and self.sources and key not in self.sources:
            # The main picture always comes first in what is written with a result.
            self.sources = {key: sha256, **self.sources}
        else:
            self.sources[key] = sha256

    def hashes(self) -> list[str]:
        """The content hashes, the main picture's first, when it was noted."""
        return list(self.sources.values()) if self.main in self.sources else []


def of(context: Any) -> Provenance:
    """This request's provenance, created on first use once the request is parsed."""
    found: Provenance | None = getattr(context, "moderation_provenance", None)
    if found is not None:
        return found
    image_url = getattr(getattr(context, "request", None), "image_url", None)
    found = Provenance(main=normalise(image_url or ""))
    if image_url is not None:
        context.moderation_provenance = found
    return found


def is_main(context: Any, key: str) -> bool:
    """Whether a decision key is the picture the request asked for (not one pasted in)."""
    request = getattr(context, "request", None)
    image_url = getattr(request, "image_url", None)
    return image_url is None or normalise(image_url) == key
