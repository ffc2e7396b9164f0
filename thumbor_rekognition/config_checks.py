"""Reading raw configuration values: typed access that names the key in every error, and
the checks made at start-up beyond one value's type (endpoint URLs, unknown keys, a
backend's extra)."""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import string
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import botocore.utils
from thumbor.config import Config

from thumbor_rekognition import banks
from thumbor_rekognition.config_keys import DEFAULTS

# The pattern of DetectModerationLabels' ProjectVersion in the Rekognition service model.
_PROJECT_VERSION_ARN = (
    r"arn:[a-z\d-]+:rekognition:[a-z\d-]+:\d{12}:project/[a-zA-Z0-9_.\-]{1,255}"
    r"/version/[a-zA-Z0-9_.\-]{1,255}/[0-9]+"
)


# The schemes redis-py's from_url accepts.
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class ConfigurationError(ValueError):
    """A configuration value the plugin cannot work with; the message names the key."""


def checked_endpoint_url(key: str, value: str | None, example: str) -> str | None:
    """An endpoint URL from the config (None: the service's own), or ConfigurationError."""
    if value is not None and not (
        botocore.utils.is_valid_endpoint_url(value)
        or botocore.utils.is_valid_ipv6_endpoint_url(value)
    ):
        raise ConfigurationError(
            f"Config '{key}' has value {value!r}. Not a URL such as {example!r}."
        )
    return value


# Prefixes of the plugin's keys: a key with one of them that nothing defines is a typo.
_PREFIXES = ("MODERATION_", "REKOGNITION_")


def unknown_keys(config: Any) -> list[str]:
    """A warning for each MODERATION_* or REKOGNITION_* key given that nothing defines."""
    # Thumbor's Config keeps every key the conf file (or code) set as an attribute of its
    # own; defaults live on the class. --use-environment reads any key from os.environ.
    given = {key: "set in the configuration" for key in vars(config) if key.isupper()}
    if getattr(config, "_allow_environment_variables", False):
        given.update(dict.fromkeys(os.environ, "set in the environment"))
    messages = []
    for key, where in sorted(given.items()):
        if not key.startswith(_PREFIXES) or key in Config.class_defaults:
            continue
        near = _nearest_key(key)
        hint = f"Did you mean '{near}'?" if near else "thumbor.conf.example lists every key."
        messages.append(f"Config '{key}' ({where}) is not a key of the plugin: ignored. {hint}")
    return messages


def _nearest_key(key: str) -> str | None:
    # Compared without their prefixes, which every key shares and which would make any
    # two keys look alike; the whole names only break ties (MODERATION_ / REKOGNITION_).
    def score(candidate: str) -> tuple[float, float]:
        return (
            difflib.SequenceMatcher(None, _tail(key), _tail(candidate)).ratio(),
            difflib.SequenceMatcher(None, key, candidate).ratio(),
        )

    best = max(DEFAULTS, key=score)
    return best if score(best)[0] >= 0.6 else None


def _tail(key: str) -> str:
    return next((key[len(p) :] for p in _PREFIXES if key.startswith(p)), key)


# Backends that need an extra beyond the base install: the extra, and what it brings
# that the backend imports.
BACKEND_EXTRAS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    # numpy is the plugin's own dependency (PDQ hashes).
    "thumbor_rekognition.backends.nudenet": ("local", ("cv2", "onnxruntime", "nudenet")),
}


def check_backend_extra(backend: str) -> None:
    """Raise ConfigurationError if the libraries of this backend's extra do not import."""
    if backend not in BACKEND_EXTRAS:
        return
    extra, modules = BACKEND_EXTRAS[backend]
    # Imported in a process of their own: imported here, they would start their threads
    # before `thumbor --processes=N` forks, and the model is loaded after fork anyway.
    try:
        found = subprocess.run(  # noqa: S603 - this Python, importing fixed module names
            [sys.executable, "-c", f"import {', '.join(modules)}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        lines = found.stderr.strip().splitlines() or [f"exit code {found.returncode}"]
        reason = lines[-1] if found.returncode != 0 else None
    except (OSError, subprocess.TimeoutExpired) as error:
        reason = f"its libraries could not be tried: {error}"
    if reason is not None:
        raise ConfigurationError(
            f"Config 'MODERATION_BACKEND' has value {backend!r}, which needs the '{extra}' "
            f"extra ({reason}): pip install 'thumbor-moderation[{extra}]'"
        )


@dataclass(frozen=True)
class Secret:
    """A string that does not show itself in repr or logs."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"


def to_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigurationError(f"Config '{key}' has value {value!r}. Not a valid number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"Config '{key}' has value {value!r}. Not a valid number."
        ) from None
    if not math.isfinite(number):
        raise ConfigurationError(f"Config '{key}' has value {value!r}. Not a finite number.")
    return number


class Reader:
    """Typed access to raw config values, with errors that name the key."""

    def __init__(self, config: Any) -> None:
        self._config = config

    def raw(self, key: str) -> Any:
        value = getattr(self._config, key, DEFAULTS[key])
        return DEFAULTS[key] if value is None and DEFAULTS[key] is not None else value

    def _fail(self, key: str, value: Any, reason: str) -> ConfigurationError:
        return ConfigurationError(f"Config '{key}' has value {value!r}. {reason}")

    def string(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise self._fail(key, value, "Not a string.")
        return value

    def redis_url(self, key: str) -> Secret:
        value = self.string(key)
        urls = [url.strip() for url in value.split(",") if url.strip()]
        if not urls or any(not url.lower().startswith(_REDIS_SCHEMES) for url in urls):
            # Not repeated: the URL may hold a password.
            raise ConfigurationError(
                f"Config '{key}' is not a Redis URL: write it with its scheme, e.g. "
                "'redis://127.0.0.1:6379/0' (rediss:// for TLS, unix:// for a socket)."
            )
        return Secret(value)

    def redis_prefix(self, key: str) -> str:
        value = self.string(key)
        if "{" in value or "}" in value:
            raise self._fail(key, value, "Must not contain '{' or '}'.")
        return value

    def optional_str(self, key: str) -> str | None:
        value = self.raw(key)
        if value is None or value in ("", "None"):
            return None
        if not isinstance(value, str):
            raise self._fail(key, value, "Not a string.")
        return value

    def prefix(self, key: str) -> str:
        value = self.string(key).strip()
        if (
            not value.startswith("/")
            or value == "/"
            or not all(
                part and (part.replace("-", "").replace("_", "").replace(".", "").isalnum())
                for part in value.strip("/").split("/")
            )
        ):
            raise self._fail(key, value, "Must be a path such as '/moderation'.")
        return "/" + value.strip("/")

    def secret(self, key: str, minimum_length: int) -> Secret | None:
        value = self.raw(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ConfigurationError(f"Config '{key}' is not a string.")
        if len(value) < minimum_length or value.strip() != value:
            # The value itself is never repeated: it is a secret.
            raise ConfigurationError(
                f"Config '{key}' must be at least {minimum_length} characters without "
                "surrounding spaces."
            )
        return Secret(value)

    def url_template(self, key: str, fields: tuple[str, ...], required: str) -> str:
        """A str.format template naming only these fields, the required one included."""
        value = self.string(key)
        try:
            named = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as error:
            raise self._fail(key, value, f"Not a format template ({error}).") from None
        known = ", ".join("{" + field + "}" for field in fields)
        if not named <= set(fields):
            raise self._fail(key, value, f"Its fields may only be {known}.")
        if required not in named:
            raise self._fail(key, value, f"It must contain {{{required}}}.")
        return value

    def project_version(self, key: str) -> str | None:
        value = self.optional_str(key)
        if value is not None and not re.fullmatch(_PROJECT_VERSION_ARN, value.strip()):
            raise self._fail(
                key,
                value,
                "Not a Rekognition project version ARN, e.g. 'arn:aws:rekognition:us-east-1:"
                "111122223333:project/my-adapter/version/my-adapter.2024-01-01/1700000000000'.",
            )
        return value.strip() if value is not None else None

    def endpoint_url(self, key: str) -> str | None:
        # botocore accepts 'localhost:4566' here and fails only when a client is built,
        # in each process, on the first request that needs it.
        return checked_endpoint_url(key, self.optional_str(key), "http://127.0.0.1:4566")

    def header(self, key: str) -> str | None:
        value = self.optional_str(key)
        if value is not None and not re.fullmatch(r"[A-Za-z0-9-]+", value):
            raise self._fail(key, value, "Not an HTTP header name.")
        return value

    def url(self, key: str) -> str | None:
        value = self.optional_str(key)
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise self._fail(key, value, "Not an http(s) URL.")
        return value

    def modules(self, key: str) -> list[str]:
        names = self.names(key)
        for name in names:
            if not name or any(not part.isidentifier() for part in name.split(".")):
                raise self._fail(key, names, f"'{name}' is not a Python module path.")
        return names

    def http_call(self, key: str) -> dict[str, Any]:
        value = self.mapping(key)
        if not value:
            return {}
        unknown = set(value) - {"method", "url", "headers", "body"}
        if unknown:
            raise self._fail(key, value, f"Unknown fields: {', '.join(sorted(unknown))}.")
        if not isinstance(value.get("url"), str) or not re.match(r"^https?://", value["url"]):
            raise self._fail(key, value, "Needs an http(s) 'url'.")
        headers = value.get("headers", {})
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise self._fail(key, value, "'headers' must map names to strings.")
        method = str(value.get("method", "POST")).upper()
        if method not in ("POST", "PUT", "DELETE", "PURGE", "GET"):
            raise self._fail(key, value, "'method' must be POST, PUT, DELETE, PURGE or GET.")
        body = value.get("body", "")
        if not isinstance(body, str):
            raise self._fail(key, value, "'body' must be a string template.")
        return {"method": method, "url": value["url"], "headers": dict(headers), "body": body}

    def module(self, key: str) -> str:
        value = self.string(key).strip()
        if not value or any(not part.isidentifier() for part in value.split(".")):
            raise self._fail(key, value, "Not a Python module path.")
        return value

    def optional_module(self, key: str) -> str | None:
        return self.module(key) if self.optional_str(key) is not None else None

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.raw(key)
        normalised = value.strip().lower() if isinstance(value, str) else value
        if normalised not in choices:
            raise self._fail(key, value, f"Must be one of: {', '.join(choices)}.")
        return str(normalised)

    def number(self, key: str, minimum: float | None = None, maximum: float | None = None) -> float:
        value = self.raw(key)
        number = to_float(value, key)
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise self._fail(key, value, f"Must be between {minimum} and {maximum}.")
        return number

    def optional_number(
        self, key: str, minimum: float | None = None, maximum: float | None = None
    ) -> float | None:
        value = self.raw(key)
        if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
            return None
        return self.number(key, minimum, maximum)

    def boolean(self, key: str) -> bool:
        value = self.raw(key)
        if isinstance(value, bool):
            return value
        text = value.strip().lower() if isinstance(value, str) else value
        # --use-environment hands every value over as a string: "False" is not truthy.
        if text in ("true", "1", "yes", "on", 1):
            return True
        if text in ("false", "0", "no", "off", "", 0):
            return False
        raise self._fail(key, value, "Not a valid bool.")

    def integer(self, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.raw(key)
        if isinstance(value, bool):
            raise self._fail(key, value, "Not a valid integer.")
        try:
            number = int(value) if not isinstance(value, float) or value.is_integer() else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise self._fail(key, value, "Not a valid integer.")
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            bounds = (
                f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            )
            raise self._fail(key, value, f"Must be {bounds}.")
        return number

    def hash_banks(self, key: str) -> tuple[banks.BankConfig, ...]:
        value = self.raw(key)
        if isinstance(value, str):
            value = self._json(key, value) if value.strip() else []
        try:
            return banks.configs(value)
        except ValueError as error:
            raise self._fail(key, value, str(error)) from None

    def headers(self, key: str) -> dict[str, str]:
        value = self.raw(key)
        if isinstance(value, str):
            value = self._json(key, value) if value.strip() else {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            # Not repeated: the headers may hold credentials.
            raise ConfigurationError(f"Config '{key}' is not a mapping of header names to text.")
        return dict(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.raw(key)
        if isinstance(value, str):
            value = self._json(key, value) if value.strip() else {}
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise self._fail(key, value, "Not a mapping of category names to thresholds.")
        return dict(value)

    def names(self, key: str) -> list[str]:
        value = self.raw(key)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = self._json(key, text)
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if not isinstance(value, (list, tuple, set, frozenset)) or not all(
            isinstance(item, str) for item in value
        ):
            raise self._fail(key, value, "Not a list of category names.")
        return list(value)

    def _json(self, key: str, text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise self._fail(key, text, f"Not valid JSON ({error.msg}).") from None
