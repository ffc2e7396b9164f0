"""Meta's Hasher-Matcher-Actioner (HMA 2.0, "Open Media Match") as the matcher.

A site whose lists hold millions of hashes keeps them in HMA, not in every Thumbor
process: before the backend is paid, each frame's PDQ hash is looked up with
``GET {MODERATION_HMA_URL}/m/lookup?signal=<64 hex>&signal_type=pdq``
(hasher-matcher-actioner/src/OpenMediaMatch/blueprints/matching.py). HMA answers the
enabled banks that match, each with its matching contents:
``{"BANK_A": [{"bank_content_id": 1001, "distance": "4"}], ...}`` (``{}`` for none);
earlier versions answered a list of bank names, read too. HMA has no credentials of its
own (it is meant to run inside the site's network): MODERATION_HMA_HEADERS adds the
headers a proxy in front of it asks for.

HMA unreachable, slow or answering an error: the picture is judged by the backend
alone, as it would be without HMA, and the failure is counted (``hma_unreachable`` in
``thumbor-moderation stats``) and logged. Waiting for HMA instead would leave every new
picture pending while it is down, and HMA only ever adds rejections of known pictures.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


class Unreachable(Exception):
    """HMA did not answer a lookup, or not in its shape."""


@dataclass(frozen=True)
class Match:
    """A bank of HMA's that a hash matches, with the first matching content's id and
    distance as HMA gave them ('' when it did not)."""

    bank: str
    content_id: str = ""
    distance: str = ""


class Client:
    """Lookups of PDQ hashes in one HMA."""

    def __init__(self, url: str, timeout: float, headers: Mapping[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})

    async def lookup(self, hex_hash: str) -> list[Match]:
        """The banks that match a PDQ hash; raises Unreachable when HMA cannot say."""
        query = urllib.parse.urlencode({"signal": hex_hash, "signal_type": "pdq"})
        request = HTTPRequest(
            f"{self.url}/m/lookup?{query}",
            headers=self.headers,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as error:
            raise Unreachable(f"HTTP {error.code} from HMA") from None
        except OSError as error:
            raise Unreachable(f"HMA not reachable: {error}") from None
        try:
            return matches(json.loads(response.body))
        except ValueError as error:
            raise Unreachable(f"HMA answered something else than a lookup: {error}") from None


def matches(answer: Any) -> list[Match]:
    """The banks of a lookup's answer; ValueError for another shape."""
    if isinstance(answer, list) and all(isinstance(bank, str) for bank in answer):
        return [Match(bank) for bank in answer]
    if not isinstance(answer, Mapping):
        raise ValueError("neither a mapping of banks nor a list of bank names")
    found: list[Match] = []
    for bank, contents in answer.items():
        if not isinstance(contents, list):
            raise ValueError(f"bank {bank!r} is not given a list of contents")
        if not contents:
            continue
        first = contents[0] if isinstance(contents[0], Mapping) else {}
        found.append(
            Match(
                str(bank),
                str(first.get("bank_content_id", "")),
                str(first.get("distance", "")),
            )
        )
    return found
