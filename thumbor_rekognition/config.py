"""Every configuration key the plugin reads, and the typed settings built from them.

Keys are declared here with ``Config.define`` so that ``thumbor-config`` prints them
with their descriptions. ``Settings.from_config`` reads them once, at start-up, casts
strings (``--use-environment`` hands every value over as a string) and fails with a
message that names the key.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import botocore.utils
from thumbor.config import Config

from thumbor_rekognition import duplicates, policy, taxonomy

logger = logging.getLogger(__name__)

GROUP = "Moderation"
REKOGNITION_GROUP = "Moderation - Amazon Rekognition"
NUDENET_GROUP = "Moderation - offline model"
ADMIN_GROUP = "Moderation - administration"
QUARANTINE_GROUP = "Moderation - quarantine"
NOTIFY_GROUP = "Moderation - CDN and notifications"

_KEYS: list[tuple[str, Any, str, str]] = [
    (
        "MODERATION_SOURCE_LOADER",
        "thumbor.loaders.http_loader",
        "Loader that fetches originals; thumbor_rekognition.loader wraps it and moderates "
        "what it returns.",
        GROUP,
    ),
    (
        "MODERATION_SOURCE_STORAGE",
        "thumbor.storages.file_storage",
        "Storage that keeps originals; STORAGE = 'thumbor_rekognition.storage' wraps it, "
        "hands out only approved originals and stores only approved ones.",
        GROUP,
    ),
    (
        "MODERATION_SOURCE_RESULT_STORAGE",
        "thumbor.result_storages.file_storage",
        "Result storage that keeps rendered results; RESULT_STORAGE = "
        "'thumbor_rekognition.result_storage' wraps it, ties each result to the content "
        "hash of every original it was made from and serves it only while all are "
        "approved. None: no result storage.",
        GROUP,
    ),
    (
        "MODERATION_BACKEND",
        "thumbor_rekognition.backends.rekognition",
        "Module that judges pictures: thumbor_rekognition.backends.rekognition (Amazon "
        "Rekognition) or thumbor_rekognition.backends.nudenet (offline, nudity only; "
        "needs pip install 'thumbor-moderation[local]', checked at start-up).",
        GROUP,
    ),
    (
        "MODERATION_MIN_CONFIDENCE",
        0.5,
        "Confidence (0..1) above which a label rejects an image, for every category "
        "without its own threshold.",
        GROUP,
    ),
    (
        "MODERATION_CATEGORY_THRESHOLDS",
        {},
        "Per-category thresholds, e.g. {'explicit_nudity': 0.6}. A threshold on a "
        "category covers its children unless a child has its own. Names match "
        "case-insensitively; an unknown name stops start-up. Write every name in one "
        "Rekognition model generation (6.x or 7.x): answers of the other are translated "
        "with AWS's 6.1 -> 7 table. 'animated' and 'illustrated' set the threshold of "
        "every label of a picture with that ContentType.",
        GROUP,
    ),
    (
        "MODERATION_IGNORED_CATEGORIES",
        [],
        "Categories that never reject an image, e.g. ['revealing_clothes']. Ignoring a "
        "category ignores its children unless a child has its own threshold.",
        GROUP,
    ),
    (
        "MODERATION_RULES",
        "",
        "Thresholds written as a Cloudinary moderation string, e.g. "
        "'aws_rek:explicit_nudity:0.6:revealing_clothes:ignore'. Ending the chain with "
        "'|manual' makes every picture the model does not reject 'pending' until a human "
        "approves or rejects it; 'manual' alone (or 'duplicate:0.9|manual') leaves every "
        "new picture to a human without a backend call; a 'duplicate:<score>' step, as in "
        "Cloudinary, rejects a near-copy of any picture already judged, approved or not "
        "(de-duplication of uploads; 'duplicate:0' turns it off, scores below 0.85 are "
        "read as 0.85). Merged with "
        "MODERATION_CATEGORY_THRESHOLDS and MODERATION_IGNORED_CATEGORIES; a category "
        "given different values in two places stops start-up.",
        GROUP,
    ),
    (
        "MODERATION_REVIEW_BAND",
        0.0,
        "Width (0..1) of a band below each threshold: a label scoring inside it makes "
        "the decision 'pending' for a human instead of 'approved'. 0 disables it.",
        GROUP,
    ),
    (
        "MODERATION_DUPLICATE_SIMILARITY",
        0.9,
        "How alike (0..1) a new picture must be to one the model or a human rejected to "
        "be rejected as its duplicate, without a backend call, naming it (source "
        "'duplicate'). Re-encoded, resized and slightly brightened copies score 0.94 or "
        "more (one in 1,200 lower in the README's figures), distinct pictures 0.5 to 0.7 "
        "(0.875 at most); 0 disables matching, values from 0.85 up are accepted. When "
        "the rejected picture is approved, its duplicates are judged on their own. "
        "Cloudinary's 'duplicate:<score>' step in MODERATION_RULES is another rule: "
        "copies of any judged picture.",
        GROUP,
    ),
    (
        "MODERATION_REJECTED_RESPONSE",
        "placeholder",
        "What a rejected image is answered with: 'placeholder' (an image at the "
        "requested size, HTTP 200) or 'forbidden' (HTTP 403, empty body).",
        GROUP,
    ),
    (
        "MODERATION_PLACEHOLDER_PATH",
        None,
        "Image file served in place of rejected images; a neutral built-in one when unset.",
        GROUP,
    ),
    (
        "MODERATION_REJECTED_MAX_AGE",
        60,
        "Cache-Control max-age in seconds for rejected and pending responses "
        "(0 sends 'no-store'). Never Thumbor's MAX_AGE.",
        GROUP,
    ),
    (
        "MODERATION_ON_ERROR",
        "reject",
        "What to serve for a pending picture, one the backend could not judge (retried "
        "on a later request) or one left to a human by MODERATION_REVIEW_BAND or by "
        "MODERATION_RULES ending in '|manual': 'reject' "
        "serves the rejected response, 'allow' serves the image, never cached.",
        GROUP,
    ),
    (
        "MODERATION_DECISION_STORE",
        "thumbor_rekognition.stores.sqlite",
        "Module that keeps decisions: thumbor_rekognition.stores.sqlite (one machine), "
        "thumbor_rekognition.stores.redis (shared by a cluster) or "
        "thumbor_rekognition.stores.dynamodb (shared by a cluster on AWS).",
        GROUP,
    ),
    (
        "MODERATION_SQLITE_PATH",
        "/tmp/thumbor/moderation.sqlite3",  # noqa: S108 - mirrors Thumbor's own /tmp defaults
        "SQLite file of the sqlite decision store; shared safely by every process of one machine.",
        GROUP,
    ),
    (
        "MODERATION_REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "Redis of the redis decision store (redis-py URL: rediss:// for TLS, password and "
        "database in the URL).",
        GROUP,
    ),
    (
        "MODERATION_REDIS_PREFIX",
        "moderation:",
        "Prefix of every Redis key the redis decision store writes (no '{' or '}': the "
        "store adds hash tags of its own).",
        GROUP,
    ),
    (
        "MODERATION_REDIS_CLUSTER",
        False,
        "True when MODERATION_REDIS_URL names a node of a Redis Cluster (any node: the "
        "others are found from it; several, comma-separated, so that one down when Thumbor "
        "starts does not matter).",
        GROUP,
    ),
    (
        "MODERATION_REDIS_WAIT_REPLICAS",
        0,
        "Replicas that must hold a decision before it is answered (Redis WAIT, within "
        "MODERATION_STORE_TIMEOUT_SECONDS); 1 with a replica per master keeps every answered "
        "decision through a failover. 0: answer once the master has it.",
        GROUP,
    ),
    (
        "MODERATION_DYNAMODB_TABLE",
        "",
        "Table of the dynamodb decision store; required with "
        "thumbor_rekognition.stores.dynamodb (see the README for its definition).",
        GROUP,
    ),
    (
        "MODERATION_DYNAMODB_REGION",
        "",
        "Region of the DynamoDB table; REKOGNITION_REGION when empty.",
        GROUP,
    ),
    (
        "MODERATION_DYNAMODB_ENDPOINT_URL",
        None,
        "DynamoDB endpoint URL (e.g. a VPC endpoint); AWS's own for the region when unset.",
        GROUP,
    ),
    (
        "MODERATION_DYNAMODB_CREATE_TABLE",
        False,
        "Create the DynamoDB table (on-demand billing, with item expiry) when it does not "
        "exist. Off: a missing table is an error, for tables made by infrastructure code.",
        GROUP,
    ),
    (
        "MODERATION_STORE_TIMEOUT_SECONDS",
        0.5,
        "Longest wait for one call to a networked decision store; past it the store counts "
        "as unreachable for that request.",
        GROUP,
    ),
    (
        "MODERATION_LEASE_SECONDS",
        30.0,
        "How long one process may hold the right to judge a new picture while every other "
        "process waits for its decision; a crashed holder blocks the picture this long.",
        GROUP,
    ),
    (
        "MODERATION_CACHE_TTL_SECONDS",
        2.0,
        "How long a process keeps a decision in memory before reading it again; bounds "
        "how late an override made by another process is enforced.",
        GROUP,
    ),
    (
        "MODERATION_TIMEOUT_SECONDS",
        10.0,
        "Longest a request waits for a new picture to be judged (backend retries "
        "included). Past it the request answers 'pending'; the judgement carries on and "
        "serves later requests.",
        GROUP,
    ),
    (
        "MODERATION_WORKERS",
        8,
        "Threads per Thumbor process for backend calls, hashing and image preparation.",
        GROUP,
    ),
    (
        "MODERATION_MAX_PIXELS",
        100_000_000,
        "Largest image (width x height) the plugin will decode; larger ones are refused "
        "with HTTP 400 before decoding.",
        GROUP,
    ),
    (
        "MODERATION_MAX_FRAMES",
        20,
        "Most scenes of one animated image (GIF, WebP, APNG) sent to the backend, all at "
        "once: near-duplicate frames are dropped and every distinct scene is judged, up "
        "to this many; the image is rejected if any is. An animation with more distinct "
        "scenes is never approved: it waits for a human (pending). With Rekognition each "
        "scene is one paid call.",
        GROUP,
    ),
    (
        "MODERATION_ANALYSIS_MAX_SIDE",
        1600,
        "Longest side in pixels the backend needs. Larger originals are decoded at "
        "reduced size and reduced by an integer factor, so the copy sent to the backend "
        "has a longest side between this and twice this.",
        GROUP,
    ),
    (
        "MODERATION_QUARANTINE",
        "thumbor_rekognition.quarantine.file",
        "Module that keeps originals that are not approved, so that approving one "
        "restores it: thumbor_rekognition.quarantine.file (a local folder) or "
        "thumbor_rekognition.quarantine.s3 (a bucket shared by a cluster).",
        QUARANTINE_GROUP,
    ),
    (
        "MODERATION_QUARANTINE_PATH",
        "/tmp/thumbor/quarantine",  # noqa: S108 - mirrors Thumbor's own /tmp defaults
        "Folder of the file quarantine.",
        QUARANTINE_GROUP,
    ),
    (
        "MODERATION_QUARANTINE_S3_BUCKET",
        "",
        "Bucket of the S3 quarantine; required with thumbor_rekognition.quarantine.s3.",
        QUARANTINE_GROUP,
    ),
    (
        "MODERATION_QUARANTINE_S3_PREFIX",
        "quarantine/",
        "Key prefix of quarantined originals in the S3 bucket.",
        QUARANTINE_GROUP,
    ),
    (
        "MODERATION_QUARANTINE_S3_REGION",
        "",
        "Region of the S3 quarantine bucket; REKOGNITION_REGION when empty.",
        QUARANTINE_GROUP,
    ),
    (
        "MODERATION_QUARANTINE_S3_ENDPOINT_URL",
        None,
        "S3 endpoint URL (an S3-compatible store); AWS's own when unset.",
        QUARANTINE_GROUP,
    ),
    (
        "MODERATION_ADMIN_PREFIX",
        "/moderation",
        "URL prefix of the admin API and review page.",
        ADMIN_GROUP,
    ),
    (
        "MODERATION_ADMIN_TOKEN",
        None,
        "Bearer token of the admin API and review page. Unset: the admin API is off and "
        "every path under the prefix answers 404 saying so. Use a long random string, "
        "e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`.",
        ADMIN_GROUP,
    ),
    (
        "MODERATION_ADMIN_MAX_BODY_BYTES",
        65536,
        "Largest request body the admin API reads; larger ones get HTTP 413.",
        ADMIN_GROUP,
    ),
    (
        "MODERATION_CACHE_TAG_HEADER",
        None,
        "Response header naming the original of every approved image, e.g. "
        "'Surrogate-Key' (Fastly), 'Cache-Tag' (Cloudflare), 'Edge-Cache-Tag' (Akamai), "
        "so a CDN can purge every size of one picture at once. Unset: no header.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_CDN_PURGERS",
        [],
        "Modules that purge a CDN when an image becomes rejected, is forgotten or is "
        "purged: thumbor_rekognition.cdn.cloudfront, thumbor_rekognition.cdn.http.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_CLOUDFRONT_DISTRIBUTION_ID",
        "",
        "CloudFront distribution invalidated by thumbor_rekognition.cdn.cloudfront.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_CLOUDFRONT_PATH_PREFIX",
        "",
        "Prefix put before Thumbor's result paths to make CloudFront paths, when the "
        "distribution serves Thumbor under a sub-path.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_CLOUDFRONT_ENDPOINT_URL",
        None,
        "CloudFront API endpoint; AWS's own when unset.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_HTTP_PURGE",
        {},
        "The HTTP call of thumbor_rekognition.cdn.http: {'method': 'POST', 'url': ..., "
        "'headers': {...}, 'body': ...}. In url, header values and body, {tag} is the "
        "picture's cache tag, {paths} the JSON list of its result paths and {key} its "
        "decision key, e.g. Fastly: url 'https://api.fastly.com/service/ID/purge/{tag}' "
        "with header 'Fastly-Key'; Cloudflare: url '.../zones/ID/purge_cache', body "
        '\'{"tags": ["{tag}"]}\' with an Authorization header.',
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_WEBHOOK_URL",
        None,
        "URL that receives a signed JSON POST for every decision change. Unset: none sent.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_WEBHOOK_SECRET",
        None,
        "Key of the HMAC-SHA256 signature of webhook calls (X-Moderation-Signature).",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_OUTBOX_TIMEOUT_SECONDS",
        10.0,
        "Timeout of one webhook or purge call.",
        NOTIFY_GROUP,
    ),
    (
        "MODERATION_OUTBOX_GIVE_UP_SECONDS",
        259200,
        "How long a webhook or purge that keeps failing is retried (with exponential "
        "backoff up to 15 minutes) before it is given up; 3 days by default.",
        NOTIFY_GROUP,
    ),
    (
        "NUDENET_THREADS",
        1,
        "Threads of the offline model's onnxruntime session per Thumbor process. 1 suits "
        "a server that runs one Thumbor process per core; 0 lets onnxruntime use every core.",
        NUDENET_GROUP,
    ),
    (
        "REKOGNITION_REGION",
        "us-east-1",
        "AWS region of the Rekognition endpoint. Credentials come from boto3's standard "
        "chain (environment, shared files, instance role).",
        REKOGNITION_GROUP,
    ),
    (
        "REKOGNITION_ENDPOINT_URL",
        None,
        "Rekognition endpoint URL with its scheme (e.g. 'http://localhost:4566'); unset "
        "means AWS's own for the region.",
        REKOGNITION_GROUP,
    ),
    (
        "REKOGNITION_PROJECT_VERSION",
        None,
        "ARN of a Rekognition Custom Moderation adapter (a project version), sent with "
        "every call as ProjectVersion; unset, the base model judges. Decisions record the "
        "adapter the answer names. Changing it does not judge stored pictures again: "
        "their labels stay, `thumbor-moderation forget` has one judged anew.",
        REKOGNITION_GROUP,
    ),
    (
        "REKOGNITION_TIMEOUT_SECONDS",
        5.0,
        "Connect and read timeout of one Rekognition call, in seconds.",
        REKOGNITION_GROUP,
    ),
    (
        "REKOGNITION_MAX_ATTEMPTS",
        3,
        "Attempts per Rekognition call, first one included (botocore 'standard' retries).",
        REKOGNITION_GROUP,
    ),
    (
        "REKOGNITION_MAX_CALLS_PER_SECOND",
        None,
        "Most Rekognition calls per second for the whole cluster (every process of every "
        "node sharing the decision store), retries and animation scenes included: calls "
        "are spaced evenly. A request waits for its turn within MODERATION_TIMEOUT_SECONDS, "
        "then answers 'pending' and is judged on a later request. Throttling answers from "
        "AWS lower the rate for a while. Unset: no limit.",
        REKOGNITION_GROUP,
    ),
]

for _key, _default, _description, _group in _KEYS:
    Config.define(_key, _default, _description, _group)

DEFAULTS: Mapping[str, Any] = {key: default for key, default, _, _ in _KEYS}


_EXAMPLE_HEADER = """\
# thumbor.conf for thumbor-moderation: the Thumbor keys the plugin needs, then every
# key of the plugin with its default and description. Thumbor's config is Python.
# Generated by thumbor_rekognition.config.example_conf().

## Thumbor: route every image through the plugin
LOADER = 'thumbor_rekognition.loader'
HANDLER_LISTS = [
    'thumbor.handler_lists.healthcheck',
    'thumbor.handler_lists.upload',
    'thumbor.handler_lists.blacklist',
    'thumbor_rekognition.handler_list',
]
SECURITY_KEY = 'change-me'
# Every door Thumbor reads originals or results through: the plugin's own storages,
# each wrapping the storage that keeps the bytes (MODERATION_SOURCE_*). Or no_storage.
STORAGE = 'thumbor_rekognition.storage'
UPLOAD_PHOTO_STORAGE = 'thumbor_rekognition.storage'
RESULT_STORAGE = 'thumbor_rekognition.result_storage'
"""

# Keys an operator must look at; the rest are shown commented out at their defaults.
_EXAMPLE_SET = (
    "MODERATION_SOURCE_LOADER",
    "MODERATION_SOURCE_STORAGE",
    "MODERATION_SOURCE_RESULT_STORAGE",
    "MODERATION_BACKEND",
    "MODERATION_DECISION_STORE",
)


def example_conf() -> str:
    """A thumbor.conf listing every key of the plugin, grouped, with its description."""
    lines = [_EXAMPLE_HEADER]
    group = None
    for key, default, description, key_group in _KEYS:
        if key_group != group:
            lines.append(f"\n## {key_group}\n")
            group = key_group
        lines += [f"# {line}" for line in textwrap.wrap(description, 86)]
        prefix = "" if key in _EXAMPLE_SET else "# "
        lines.append(f"{prefix}{key} = {default!r}\n")
    return "\n".join(lines)


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
    "thumbor_rekognition.backends.nudenet": ("local", ("numpy", "cv2", "onnxruntime", "nudenet")),
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


@dataclass(frozen=True)
class Settings:
    """The plugin's configuration, validated and typed."""

    source_loader: str
    source_storage: str
    source_result_storage: str | None
    backend: str
    policy: policy.Policy
    rejected_response: str
    placeholder_path: str | None
    rejected_max_age: int
    on_error: str
    decision_store: str
    sqlite_path: str
    redis_url: Secret
    redis_prefix: str
    redis_cluster: bool
    redis_wait_replicas: int
    dynamodb_table: str
    dynamodb_region: str
    dynamodb_endpoint_url: str | None
    dynamodb_create_table: bool
    store_timeout: float
    lease_seconds: float
    cache_ttl: float
    request_budget: float
    workers: int
    max_pixels: int
    analysis_max_side: int
    max_frames: int
    quarantine: str
    quarantine_path: str
    quarantine_s3_bucket: str
    quarantine_s3_prefix: str
    quarantine_s3_region: str
    quarantine_s3_endpoint_url: str | None
    admin_prefix: str
    admin_token: Secret | None
    admin_max_body: int
    cache_tag_header: str | None
    cdn_purgers: tuple[str, ...]
    cloudfront_distribution_id: str
    cloudfront_path_prefix: str
    cloudfront_endpoint_url: str | None
    # Holds API keys in its headers: never printed.
    http_purge: dict[str, Any] = field(repr=False)
    webhook_url: str | None
    webhook_secret: Secret | None
    outbox_timeout: float
    outbox_give_up: float
    nudenet_threads: int
    rekognition_region: str
    rekognition_endpoint_url: str | None
    rekognition_timeout: float
    rekognition_max_attempts: int
    rekognition_max_calls_per_second: float | None
    duplicate_similarity: float = 0.9
    # Cloudinary's 'duplicate:<score>' chain step: a near-copy of any judged picture is
    # rejected without a backend call (0: no such step).
    indexed_copy_similarity: float = 0.0
    rekognition_project_version: str | None = None
    # Thumbor's own key: whether it turns pictures as their EXIF orientation says.
    respect_orientation: bool = False

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        """Read and validate every key from a Thumbor config object."""
        reader = _Reader(config)
        return cls(
            source_loader=reader.module("MODERATION_SOURCE_LOADER"),
            source_storage=reader.module("MODERATION_SOURCE_STORAGE"),
            source_result_storage=reader.optional_module("MODERATION_SOURCE_RESULT_STORAGE"),
            backend=reader.module("MODERATION_BACKEND"),
            policy=_read_policy(reader),
            rejected_response=reader.choice(
                "MODERATION_REJECTED_RESPONSE", ("placeholder", "forbidden")
            ),
            placeholder_path=reader.optional_str("MODERATION_PLACEHOLDER_PATH"),
            rejected_max_age=reader.integer("MODERATION_REJECTED_MAX_AGE", minimum=0),
            on_error=reader.choice("MODERATION_ON_ERROR", ("reject", "allow")),
            decision_store=reader.module("MODERATION_DECISION_STORE"),
            sqlite_path=reader.string("MODERATION_SQLITE_PATH"),
            redis_url=reader.redis_url("MODERATION_REDIS_URL"),
            redis_prefix=reader.redis_prefix("MODERATION_REDIS_PREFIX"),
            redis_cluster=reader.boolean("MODERATION_REDIS_CLUSTER"),
            redis_wait_replicas=reader.integer("MODERATION_REDIS_WAIT_REPLICAS", minimum=0),
            dynamodb_table=reader.string("MODERATION_DYNAMODB_TABLE").strip(),
            dynamodb_region=reader.string("MODERATION_DYNAMODB_REGION").strip(),
            dynamodb_endpoint_url=reader.endpoint_url("MODERATION_DYNAMODB_ENDPOINT_URL"),
            dynamodb_create_table=reader.boolean("MODERATION_DYNAMODB_CREATE_TABLE"),
            store_timeout=reader.number(
                "MODERATION_STORE_TIMEOUT_SECONDS", minimum=0.01, maximum=60.0
            ),
            lease_seconds=reader.number("MODERATION_LEASE_SECONDS", minimum=1.0, maximum=3600.0),
            cache_ttl=reader.number("MODERATION_CACHE_TTL_SECONDS", minimum=0.0),
            request_budget=reader.number("MODERATION_TIMEOUT_SECONDS", minimum=0.1, maximum=600.0),
            workers=reader.integer("MODERATION_WORKERS", minimum=1),
            max_pixels=reader.integer("MODERATION_MAX_PIXELS", minimum=6400),
            max_frames=reader.integer("MODERATION_MAX_FRAMES", minimum=1, maximum=100),
            analysis_max_side=reader.integer(
                "MODERATION_ANALYSIS_MAX_SIDE", minimum=80, maximum=10_000
            ),
            quarantine=reader.module("MODERATION_QUARANTINE"),
            quarantine_path=reader.string("MODERATION_QUARANTINE_PATH"),
            quarantine_s3_bucket=reader.string("MODERATION_QUARANTINE_S3_BUCKET"),
            quarantine_s3_prefix=reader.string("MODERATION_QUARANTINE_S3_PREFIX"),
            quarantine_s3_region=reader.string("MODERATION_QUARANTINE_S3_REGION"),
            quarantine_s3_endpoint_url=reader.endpoint_url("MODERATION_QUARANTINE_S3_ENDPOINT_URL"),
            admin_prefix=reader.prefix("MODERATION_ADMIN_PREFIX"),
            admin_token=reader.secret("MODERATION_ADMIN_TOKEN", minimum_length=16),
            admin_max_body=reader.integer("MODERATION_ADMIN_MAX_BODY_BYTES", minimum=1024),
            cache_tag_header=reader.header("MODERATION_CACHE_TAG_HEADER"),
            cdn_purgers=tuple(reader.modules("MODERATION_CDN_PURGERS")),
            cloudfront_distribution_id=reader.string("MODERATION_CLOUDFRONT_DISTRIBUTION_ID"),
            cloudfront_path_prefix=reader.string("MODERATION_CLOUDFRONT_PATH_PREFIX"),
            cloudfront_endpoint_url=reader.endpoint_url("MODERATION_CLOUDFRONT_ENDPOINT_URL"),
            http_purge=reader.http_call("MODERATION_HTTP_PURGE"),
            webhook_url=reader.url("MODERATION_WEBHOOK_URL"),
            webhook_secret=reader.secret("MODERATION_WEBHOOK_SECRET", minimum_length=16),
            outbox_timeout=reader.number(
                "MODERATION_OUTBOX_TIMEOUT_SECONDS", minimum=0.1, maximum=300.0
            ),
            outbox_give_up=reader.number("MODERATION_OUTBOX_GIVE_UP_SECONDS", minimum=1.0),
            nudenet_threads=reader.integer("NUDENET_THREADS", minimum=0, maximum=64),
            rekognition_region=reader.string("REKOGNITION_REGION"),
            rekognition_endpoint_url=reader.endpoint_url("REKOGNITION_ENDPOINT_URL"),
            rekognition_timeout=reader.number(
                "REKOGNITION_TIMEOUT_SECONDS", minimum=0.1, maximum=300.0
            ),
            rekognition_max_attempts=reader.integer(
                "REKOGNITION_MAX_ATTEMPTS", minimum=1, maximum=20
            ),
            rekognition_max_calls_per_second=reader.optional_number(
                "REKOGNITION_MAX_CALLS_PER_SECOND", minimum=0.01, maximum=10_000.0
            ),
            duplicate_similarity=_read_duplicate_similarity(reader),
            indexed_copy_similarity=_read_duplicate_step(reader),
            rekognition_project_version=_read_project_version(reader),
            # Read as Thumbor reads it (its truth value), so judged as Thumbor turns it.
            respect_orientation=bool(getattr(config, "RESPECT_ORIENTATION", False)),
        )


def _read_project_version(reader: _Reader) -> str | None:
    """The adapter ARN, refused when it names another region than REKOGNITION_REGION:
    Rekognition answers such a call InvalidParameterException, on every picture."""
    arn = reader.project_version("REKOGNITION_PROJECT_VERSION")
    region = reader.string("REKOGNITION_REGION").strip()
    named = arn.split(":")[3] if arn else ""
    if arn and region and named != region:
        raise ConfigurationError(
            f"Config 'REKOGNITION_PROJECT_VERSION' names an adapter in region '{named}', but "
            f"REKOGNITION_REGION is '{region}': Rekognition only runs an adapter in its own "
            "region. Set REKOGNITION_REGION to the adapter's region, or use an adapter "
            f"trained in '{region}'."
        )
    return arn


def _read_duplicate_similarity(reader: _Reader) -> float:
    key = "MODERATION_DUPLICATE_SIMILARITY"
    return _similarity(reader.number(key, minimum=0.0, maximum=1.0), key)


def _read_duplicate_step(reader: _Reader) -> float:
    """The score of the chain's 'duplicate:<score>' step (Cloudinary's de-duplication of
    uploads), 0 without one or with 'duplicate:0' (which only indexes, as every judged
    picture is indexed anyway)."""
    rules = reader.string("MODERATION_RULES")
    if not rules.strip():
        return 0.0
    try:
        score = policy.parse_cloudinary_chain(rules).duplicate
    except ValueError as error:
        raise ConfigurationError(f"MODERATION_RULES: {error}") from error
    if score is None or score == 0:
        return 0.0
    if score < duplicates.MIN_SIMILARITY:
        # Cloudinary's scores are its own; this fingerprint puts unrelated pictures up to
        # 0.875 alike, so a lower score would refuse unrelated uploads.
        logger.warning(
            "MODERATION_RULES: 'duplicate:%g' is read as 'duplicate:%g': below that, "
            "unrelated pictures come close enough to be refused as copies",
            score,
            duplicates.MIN_SIMILARITY,
        )
        return duplicates.MIN_SIMILARITY
    return score


def _similarity(value: float, key: str) -> float:
    if 0.0 < value < duplicates.MIN_SIMILARITY:
        raise ConfigurationError(
            f"Config '{key}' sets the duplicate similarity to {value:g}. Use 0 (no matching) "
            f"or {duplicates.MIN_SIMILARITY:g} to 1: unrelated pictures come closer than "
            f"{duplicates.MIN_SIMILARITY:g} now and then."
        )
    return value


def _read_policy(reader: _Reader) -> policy.Policy:
    default = reader.number("MODERATION_MIN_CONFIDENCE", minimum=0.0, maximum=1.0)
    band = reader.number("MODERATION_REVIEW_BAND", minimum=0.0, maximum=1.0)
    rules: dict[str, float | None] = {}
    origin: dict[str, str] = {}

    def add(category: str, value: float | None, key: str) -> None:
        slug = _category(category, key)
        if slug in rules and rules[slug] != value:
            raise ConfigurationError(
                f"{key} gives category '{category}' the value {_show(value)}, but "
                f"{origin[slug]} already gives it {_show(rules[slug])}."
            )
        rules[slug] = value
        origin[slug] = key

    rules_string = reader.string("MODERATION_RULES")
    manual = False
    model = True
    if rules_string.strip():
        try:
            chain = policy.parse_cloudinary_chain(rules_string)
        except ValueError as error:
            raise ConfigurationError(f"MODERATION_RULES: {error}") from error
        manual = chain.manual
        model = chain.model
        for category, value in chain.rules.items():
            add(category, value, "MODERATION_RULES")

    for category, value in reader.mapping("MODERATION_CATEGORY_THRESHOLDS").items():
        threshold = _threshold(value, f"MODERATION_CATEGORY_THRESHOLDS['{category}']")
        add(category, threshold, "MODERATION_CATEGORY_THRESHOLDS")

    for category in reader.names("MODERATION_IGNORED_CATEGORIES"):
        add(category, None, "MODERATION_IGNORED_CATEGORIES")

    try:
        return policy.Policy(
            default=default, rules=rules, review_band=band, manual_review=manual, model=model
        )
    except ValueError as error:
        keys = ", ".join(sorted(set(origin.values())))
        raise ConfigurationError(f"{keys}: {error}") from error


def _category(name: str, key: str) -> str:
    slug = taxonomy.canonical(name)
    if slug is None:
        hint = taxonomy.suggest(name)
        suggestion = f" Did you mean '{hint}'?" if hint else ""
        raise ConfigurationError(
            f"{key} names an unknown moderation category '{name}'.{suggestion} "
            f"Known categories: {', '.join(sorted(taxonomy.known_slugs()))}."
        )
    return slug


def _threshold(value: Any, key: str) -> float:
    number = _to_float(value, key)
    if not 0.0 <= number <= 1.0:
        raise ConfigurationError(
            f"Config '{key}' has value {value!r}. Thresholds are confidences between 0 and 1."
        )
    return number


def _to_float(value: Any, key: str) -> float:
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


def _show(value: float | None) -> str:
    return "ignore" if value is None else repr(value)


class _Reader:
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
        number = _to_float(value, key)
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
