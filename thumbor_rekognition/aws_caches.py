"""thumbor-aws's STORAGE and RESULT_STORAGE buckets: the objects of recorded paths, deleted.

thumbor-aws's result storage has no ``remove(path)``, and its storage removes one key at
a time and leaves the crypto and detector objects it wrote beside an original. When
MODERATION_SOURCE_RESULT_STORAGE or MODERATION_SOURCE_STORAGE names a thumbor-aws module,
a purge deletes every object of the recorded paths with DeleteObjects, 1,000 keys a
call, in the bucket and with the region, endpoint and credentials thumbor-aws itself is
configured with (read through thumbor-aws's own properties, so its tc_aws compatibility
mode is honoured too). Keys are built by thumbor-aws's own ``normalize_path``:
``<root_path>/<path>`` for both, and ``<root_path>/auto_webp/<path>`` too for results,
where AUTO_WEBP puts the WebP rendering of a request. A deletion that fails is queued in
the outbox, which retries it with backoff like a CDN purge.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeGuard

import boto3
import botocore.config
import botocore.exceptions

from thumbor_rekognition import stores
from thumbor_rekognition._process import PerProcess
from thumbor_rekognition.config_checks import ConfigurationError, Secret

if TYPE_CHECKING:
    from thumbor_rekognition.runtime import Runtime

logger = logging.getLogger(__name__)

# Buckets by what they keep, as outbox topics name them.
STORAGE = "storage"
RESULT_STORAGE = "result_storage"
# DeleteObjects takes at most 1,000 keys a call.
BATCH = 1000
# What thumbor-aws's storage writes for an original: the bytes, the security key
# (STORES_CRYPTO_KEY_FOR_EACH_IMAGE) and the focal points of smart cropping.
STORED_SUFFIXES = ("", ".txt", ".detectors.txt")
# thumbor-aws's result storage puts a request that AUTO_WEBP answered in WebP here.
AUTO_WEBP_FOLDER = "/auto_webp"
# What retrying does not cure until the configuration or the role's policy changes.
CONFIGURATION_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
        "InvalidAccessKeyId",
        "NoCredentialsError",
        "NoSuchBucket",
        "PermanentRedirect",
        "SignatureDoesNotMatch",
    }
)
CONFIGURATION_HINT = "; check the bucket, its region, and that the role may s3:DeleteObject in it"


class DeleteError(Exception):
    """Objects were not deleted; ``keys`` are the ones still to delete."""

    def __init__(self, message: str, keys: list[str], code: str = "") -> None:
        self.configuration = code in CONFIGURATION_CODES
        super().__init__(message + (CONFIGURATION_HINT if self.configuration else ""))
        self.keys = keys


@dataclass(frozen=True)
class Bucket:
    """One thumbor-aws bucket, reached as thumbor-aws is configured to reach it."""

    role: str
    name: str
    root_path: str
    region: str | None
    endpoint_url: str | None
    access_key_id: str | None
    secret_access_key: Secret | None
    timeout: float
    # thumbor-aws's key function and the config it reads AWS_NORMALIZER from.
    _normalize: Any = field(repr=False, compare=False)
    _context: Any = field(repr=False, compare=False)
    _client: PerProcess[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_client", PerProcess(self._build_client))

    def keys(self, paths: Iterable[str]) -> list[str]:
        """Every key thumbor-aws may have written for these paths, each once."""
        prefixes: tuple[str, ...]
        suffixes: tuple[str, ...]
        if self.role == RESULT_STORAGE:
            prefixes, suffixes = (self.root_path, self.root_path + AUTO_WEBP_FOLDER), ("",)
        else:
            prefixes, suffixes = (self.root_path,), STORED_SUFFIXES
        found: dict[str, None] = {}
        for path in paths:
            for prefix in prefixes:
                key = self._normalize(self._context, prefix, path)
                for suffix in suffixes:
                    found[key + suffix] = None
        return list(found)

    def delete(self, keys: Sequence[str], bucket: str | None = None) -> None:
        """Delete these keys, a batch a call (blocking); DeleteError names what is left."""
        name = bucket or self.name
        left: list[str] = []
        code = message = ""
        for start in range(0, len(keys), BATCH):
            batch = list(keys[start : start + BATCH])
            try:
                reply = self._client.get().delete_objects(
                    Bucket=name,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
                # S3's error code, or botocore's own error (no credentials found, say).
                failed = getattr(error, "response", {}).get("Error", {}).get("Code", "")
                failed = failed or type(error).__name__
                raise DeleteError(
                    f"s3://{name}: DeleteObjects failed: {error}",
                    left + list(keys[start:]),
                    str(failed),
                ) from error
            # Quiet: only the keys that were not deleted come back, each with its reason.
            for item in reply.get("Errors", []):
                left.append(str(item["Key"]))
                code = code or str(item.get("Code", ""))
                message = message or str(item.get("Message", ""))
        if left:
            raise DeleteError(
                f"s3://{name}: {len(left)} objects not deleted ({code}: {message})", left, code
            )

    def _build_client(self) -> Any:
        # thumbor-aws's own client is asynchronous and bound to Thumbor's event loop; the
        # outbox delivers from a thread of its own, so it gets a client of its own built
        # from the same settings (None falls back to the default credential chain, as it
        # does in thumbor-aws).
        return boto3.session.Session().client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=(
                self.secret_access_key.value if self.secret_access_key else None
            ),
            config=botocore.config.Config(
                retries={"mode": "standard", "total_max_attempts": 3},
                connect_timeout=self.timeout,
                read_timeout=self.timeout,
            ),
        )


def is_thumbor_aws(storage_class: Any, role: str) -> TypeGuard[type]:
    """Whether a Storage class is (or extends) thumbor-aws's storage or result storage."""
    if not isinstance(storage_class, type) or not any(
        # Looked at before importing thumbor-aws, which other deployments never load.
        base.__module__.startswith("thumbor_aws.")
        for base in storage_class.__mro__
    ):
        return False
    try:
        if role == STORAGE:
            from thumbor_aws import storage as module
        else:
            from thumbor_aws import result_storage as module
    except ImportError:
        return False
    return issubclass(storage_class, module.Storage)


def buckets(
    config: Any, storage: ModuleType | None, result_storage: ModuleType | None, timeout: float
) -> dict[str, Bucket]:
    """The thumbor-aws buckets among the modules the plugin wraps, by role."""
    found: dict[str, Bucket] = {}
    for role, module in ((STORAGE, storage), (RESULT_STORAGE, result_storage)):
        if module is None:
            continue
        storage_class = getattr(module, "Storage", None)
        if not is_thumbor_aws(storage_class, role):
            continue
        try:
            found[role] = _bucket(role, storage_class, config, timeout)
        except AttributeError as error:
            # A key thumbor-aws reads but never defines (its tc_aws mode reads TC_AWS_ENDPOINT).
            raise ConfigurationError(
                f"Config 'MODERATION_SOURCE_{role.upper()}' has value {module.__name__!r}, "
                f"which reads {str(error)!r}: set it in thumbor.conf."
            ) from None
    return found


def _bucket(role: str, storage_class: type, config: Any, timeout: float) -> Bucket:
    from thumbor_aws.utils import normalize_path

    # thumbor-aws reads its settings from context.config only: a context without a
    # request is enough to ask it for them.
    context = SimpleNamespace(config=config)
    instance = storage_class(context)
    secret = instance.secret_access_key
    return Bucket(
        role=role,
        name=str(instance.bucket_name),
        root_path=str(instance.root_path or ""),
        region=instance.region_name or None,
        endpoint_url=instance.endpoint_url or None,
        access_key_id=instance.access_key_id or None,
        secret_access_key=Secret(str(secret)) if secret else None,
        timeout=timeout,
        _normalize=normalize_path,
        _context=context,
    )


async def remove(runtime: Runtime, key: str, role: str, paths: Iterable[str]) -> int:
    """Delete the objects of these paths now, queueing what fails for the outbox.

    Returns how many paths had every object deleted now (S3 does not say which keys
    existed: a path counts once its objects are gone).
    """
    bucket = runtime.buckets.get(role)
    unique = list(dict.fromkeys(paths))
    if bucket is None or not unique:
        return 0
    keys = bucket.keys(unique)
    moderator = runtime.moderator
    try:
        await moderator.run_blocking(bucket.delete, keys)
    except DeleteError as error:
        outbox = moderator.outbox
        try:
            if outbox is None:
                raise stores.StoreUnavailable("no outbox in this process")
            await moderator.run_store(outbox.remove_objects, key, bucket, error.keys)
        except stores.StoreUnavailable as lost:
            logger.error("%s of %s: %s; not queued for a retry: %s", role, key, error, lost)
        else:
            # A configuration error is retried too (a fixed policy lets it through), loudly.
            log = logger.error if error.configuration else logger.warning
            log("%s of %s: %s; the outbox retries it", role, key, error)
        return 0
    return len(unique)
