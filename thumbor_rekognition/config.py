"""The plugin's typed settings, read once at start-up from the keys config_keys defines.

``Settings.from_config`` casts strings (``--use-environment`` hands every value over as
a string), reads the thresholds into a Policy, and fails with a message that names the
key (config_checks reads and checks single values). Importing this module defines the
keys, through config_keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from thumbor_rekognition import banks, duplicates, policy, taxonomy
from thumbor_rekognition.config_checks import ConfigurationError as ConfigurationError
from thumbor_rekognition.config_checks import Reader, to_float
from thumbor_rekognition.config_checks import Secret as Secret
from thumbor_rekognition.config_checks import check_backend_extra as check_backend_extra
from thumbor_rekognition.config_checks import checked_endpoint_url as checked_endpoint_url
from thumbor_rekognition.config_checks import unknown_keys as unknown_keys
from thumbor_rekognition.config_docs import example_conf as example_conf
from thumbor_rekognition.config_keys import DEFAULTS as DEFAULTS

logger = logging.getLogger(__name__)

MB = 1024 * 1024


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
    review_blur_approved: bool
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
    hash_banks: tuple[banks.BankConfig, ...] = ()
    hash_bank_distance: int = 31
    hash_bank_reload_seconds: float = 10.0
    hma_url: str | None = None
    # May hold a proxy's credentials: never printed.
    hma_headers: dict[str, str] = field(default_factory=dict, repr=False)
    hma_timeout: float = 2.0
    # Thumbor's own key: whether it turns pictures as their EXIF orientation says.
    respect_orientation: bool = False
    turn_wait: float = 1.0
    backlog_size: int = 1000
    backlog_bytes: int = 64 * MB
    decode_budget: int = 128 * MB
    cache_entries: int = 10_000
    # Upload time: the token that may only check, the largest picture a check reads, and
    # the Thumbor URL of a new S3 object.
    check_token: Secret | None = None
    check_max_body: int = 20 * 1024 * 1024
    s3_url_template: str = "{key}"

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        """Read and validate every key from a Thumbor config object."""
        reader = Reader(config)
        chain = _read_chain(reader)
        return cls(
            source_loader=reader.module("MODERATION_SOURCE_LOADER"),
            source_storage=reader.module("MODERATION_SOURCE_STORAGE"),
            source_result_storage=reader.optional_module("MODERATION_SOURCE_RESULT_STORAGE"),
            backend=reader.module("MODERATION_BACKEND"),
            policy=_read_policy(reader, chain),
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
            turn_wait=reader.number("MODERATION_TURN_WAIT_SECONDS", minimum=0.0, maximum=600.0),
            backlog_size=reader.integer("MODERATION_BACKLOG_SIZE", minimum=0),
            backlog_bytes=reader.integer("MODERATION_BACKLOG_MB", minimum=0) * MB,
            decode_budget=reader.integer("MODERATION_DECODE_BUDGET_MB", minimum=1) * MB,
            cache_entries=reader.integer("MODERATION_CACHE_ENTRIES", minimum=1),
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
            review_blur_approved=reader.boolean("MODERATION_REVIEW_BLUR_APPROVED"),
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
            indexed_copy_similarity=_read_duplicate_step(chain),
            rekognition_project_version=_read_project_version(reader),
            hash_banks=reader.hash_banks("MODERATION_HASH_BANKS"),
            hash_bank_distance=reader.integer(
                "MODERATION_HASH_BANK_DISTANCE", minimum=0, maximum=64
            ),
            hash_bank_reload_seconds=reader.number(
                "MODERATION_HASH_BANK_RELOAD_SECONDS", minimum=0.01, maximum=60.0
            ),
            hma_url=reader.url("MODERATION_HMA_URL"),
            hma_headers=reader.headers("MODERATION_HMA_HEADERS"),
            hma_timeout=reader.number("MODERATION_HMA_TIMEOUT_SECONDS", minimum=0.05, maximum=60.0),
            # Read as Thumbor reads it (its truth value), so judged as Thumbor turns it.
            respect_orientation=bool(getattr(config, "RESPECT_ORIENTATION", False)),
            check_token=reader.secret("MODERATION_CHECK_TOKEN", minimum_length=16),
            # Tornado drops the connection of a body over 100 MB unanswered.
            check_max_body=reader.integer(
                "MODERATION_CHECK_MAX_BODY_BYTES", minimum=1024, maximum=100 * 1024 * 1024
            ),
            s3_url_template=reader.url_template(
                "MODERATION_S3_URL_TEMPLATE", ("bucket", "key"), required="key"
            ),
        )


def _read_project_version(reader: Reader) -> str | None:
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


def _read_duplicate_similarity(reader: Reader) -> float:
    key = "MODERATION_DUPLICATE_SIMILARITY"
    return _similarity(reader.number(key, minimum=0.0, maximum=1.0), key)


def _read_chain(reader: Reader) -> policy.Chain | None:
    """The Cloudinary chain MODERATION_RULES holds, None when it is empty."""
    rules = reader.string("MODERATION_RULES")
    if not rules.strip():
        return None
    try:
        return policy.parse_cloudinary_chain(rules)
    except ValueError as error:
        raise ConfigurationError(f"MODERATION_RULES: {error}") from error


def _read_duplicate_step(chain: policy.Chain | None) -> float:
    """The score of the chain's 'duplicate:<score>' step (Cloudinary's de-duplication of
    uploads), 0 without one or with 'duplicate:0' (which only indexes, as every judged
    picture is indexed anyway)."""
    score = chain.duplicate if chain is not None else None
    if score is None or score == 0:
        return 0.0
    if score < duplicates.MIN_SIMILARITY:
        # Cloudinary's scores are its own; below Meta's 31 bits of 256, PDQ puts unrelated
        # pictures close enough now and then that a lower score would refuse them.
        logger.warning(
            "MODERATION_RULES: 'duplicate:%g' is read as 'duplicate:%.3f': below that, "
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
            f"or {duplicates.MIN_SIMILARITY:.3f} (31 bits of 256) to 1: unrelated pictures come "
            f"closer than that now and then."
        )
    return value


def _read_policy(reader: Reader, chain: policy.Chain | None) -> policy.Policy:
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

    manual = False
    model = True
    if chain is not None:
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
    number = to_float(value, key)
    if not 0.0 <= number <= 1.0:
        raise ConfigurationError(
            f"Config '{key}' has value {value!r}. Thresholds are confidences between 0 and 1."
        )
    return number


def _show(value: float | None) -> str:
    return "ignore" if value is None else repr(value)
