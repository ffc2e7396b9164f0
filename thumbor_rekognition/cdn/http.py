"""A purge described in configuration as one HTTP call (Fastly, Cloudflare, Varnish...)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING
from urllib.parse import quote

from thumbor_rekognition import cdn
from thumbor_rekognition.config_checks import ConfigurationError

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings


class Purger(cdn.Purger):
    """MODERATION_HTTP_PURGE's method, URL, headers and body, with {tag}, {key} and
    {paths} filled in; any 2xx answer is a success."""

    name = "http"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if not settings.http_purge:
            raise ConfigurationError(
                "Config 'MODERATION_HTTP_PURGE' must describe the purge call to use "
                "thumbor_rekognition.cdn.http."
            )
        self.call = settings.http_purge

    def purge(self, tag: str, key: str, paths: list[str]) -> None:
        values = {"tag": tag, "key": key, "paths": json.dumps(paths)}
        url_values = {name: quote(value, safe="") for name, value in values.items()}
        request = urllib.request.Request(  # noqa: S310 - the operator's own http(s) URL
            _fill(self.call["url"], url_values),
            data=_fill(self.call["body"], values).encode("utf-8") or None,
            method=self.call["method"],
            headers={name: _fill(value, values) for name, value in self.call["headers"].items()},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.outbox_timeout) as reply:  # noqa: S310
                reply.read(65536)
        except urllib.error.HTTPError as error:
            raise cdn.PurgeError(f"purge answered HTTP {error.code}") from error
        except (urllib.error.URLError, OSError) as error:
            raise cdn.PurgeError(f"purge call failed: {error}") from error


def _fill(template: str, values: dict[str, str]) -> str:
    """Replace {name} placeholders only; other braces (JSON bodies) stay as written."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template
