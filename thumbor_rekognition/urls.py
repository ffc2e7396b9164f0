"""Decision keys: one spelling for the many ways a URL can name the same original."""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import quote, unquote

_SCHEME = re.compile(r"^(?:https?:)?/{1,2}", re.IGNORECASE)
_DEFAULT_PORT = re.compile(r":(?:80|443)$")
# URLs whose key (and cache tag) a process remembers: the pictures asked for again and
# again, without keeping two strings for every picture ever asked for (65,536 were
# kept, about 20 MB once full: most of what a soak of new pictures grew by).
MEMO_ENTRIES = 8192


@lru_cache(maxsize=MEMO_ENTRIES)
def normalise(image_url: str) -> str:
    """The decision key of an image URL as Thumbor's loaders receive it (quoted or not).

    ``http://Host:80/a.jpg``, ``https://host/a.jpg``, ``host/a.jpg`` and
    ``http%3A//host/a.jpg`` share the key ``host/a.jpg``. Without a scheme the first
    segment may be a folder of the file loader, so its case is kept.
    """
    # Never stripped: 'mint.png ' is another file than 'mint.png' to every loader.
    text = unquote(image_url)
    match = _SCHEME.match(text)
    if match is None:
        return text
    rest = text[match.end() :]
    if not match.group(0).lower().startswith("http"):
        # A path of the file loader: '#' belongs to the file name, and case matters.
        return rest
    host, slash, path = rest.split("#", 1)[0].partition("/")
    return f"{_DEFAULT_PORT.sub('', host.lower())}{slash}{path}"


def key_of(url: str) -> str:
    """The decision key of an image URL written by a person (not URL-encoded).

    Thumbor hands loaders the image URL quoted; quoting it first keeps a '%' that is
    part of a name ('a%41.jpg') from being decoded a second time.
    """
    return normalise(quote(url.encode("utf-8"), safe="/:?=&"))
