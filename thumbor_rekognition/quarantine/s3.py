"""Quarantined originals in an S3 bucket shared by a cluster: ``<prefix><sha[:2]>/<sha>``.

Objects are written with server-side encryption (SSE-S3, AES256) and the content type
read from the bytes, so a reviewer who opens one in the console sees the picture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
import botocore.handlers
import botocore.utils
from thumbor.engines import BaseEngine

from thumbor_rekognition import quarantine
from thumbor_rekognition._process import PerProcess
from thumbor_rekognition.config_checks import ConfigurationError, checked_endpoint_url

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

# The first response for a rejected picture waits for its quarantine copy, and the
# picture is refused whether or not the copy is made: a slow bucket is given up on
# early (the moderator logs the loss) rather than allowed to hold requests.
CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 10.0
MAX_ATTEMPTS = 3

# head_object answers a bare 404 (no body, so no error code); get_object says NoSuchKey.
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
# Without s3:ListBucket, S3 answers a key that does not exist with 403, not 404.
_DENIED_CODES = frozenset({"AccessDenied", "403"})
_PERMISSIONS = (
    "the credentials need s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket "
    "(without which S3 answers 403 for a key that does not exist)"
)
_HINTS = {
    "NoSuchBucket": "check MODERATION_QUARANTINE_S3_BUCKET",
    "AccessDenied": _PERMISSIONS,
    "403": _PERMISSIONS,
    "InvalidAccessKeyId": "check the AWS credentials",
    "SignatureDoesNotMatch": "check the AWS credentials",
    "PermanentRedirect": "check MODERATION_QUARANTINE_S3_REGION",
    "AuthorizationHeaderMalformed": "check MODERATION_QUARANTINE_S3_REGION",
}

_T = TypeVar("_T")


class Quarantine(quarantine.Quarantine):
    """The backup repository of a cluster, in one S3 bucket."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.bucket = _bucket_name(settings.quarantine_s3_bucket)
        self.prefix = _folder(settings.quarantine_s3_prefix)
        self.region = settings.quarantine_s3_region.strip() or settings.rekognition_region
        self.endpoint_url = _endpoint_url(settings.quarantine_s3_endpoint_url)
        self._workers = settings.workers
        self._client: PerProcess[Any] = PerProcess(self._build_client)

    @classmethod
    def check_settings(cls, settings: Settings) -> None:
        _bucket_name(settings.quarantine_s3_bucket)
        _endpoint_url(settings.quarantine_s3_endpoint_url)

    def client(self) -> Any:
        """The process's S3 client, built on first use so that it is built after fork."""
        return self._client.get()

    def _build_client(self) -> Any:
        config = botocore.config.Config(
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            # total_max_attempts counts the first attempt; botocore's max_attempts does not.
            retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
            max_pool_connections=max(10, self._workers),
        )
        session = boto3.session.Session()
        return session.client(
            "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=config
        )

    def key(self, sha256: str) -> str:
        """The object key of an original, refused unless the hash is a SHA-256 digest."""
        digest = quarantine.checked(sha256)
        return f"{self.prefix}{digest[:2]}/{digest}"

    def put(self, sha256: str, data: bytes) -> None:
        key = self.key(sha256)

        def keep() -> None:
            if self._head(key):
                return
            self.client().put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=_content_type(data),
                ServerSideEncryption="AES256",
            )

        self._call(f"cannot keep {sha256}", keep)

    def get(self, sha256: str) -> bytes | None:
        key = self.key(sha256)

        def read() -> bytes | None:
            try:
                response = self.client().get_object(Bucket=self.bucket, Key=key)
            except botocore.exceptions.ClientError as error:
                if _code(error) in _MISSING_CODES:
                    return None
                raise
            body = response["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            return data

        return self._call(f"cannot read {sha256}", read)

    def delete(self, sha256: str) -> None:
        key = self.key(sha256)

        def drop() -> None:
            # S3 answers 204 whether or not the key existed.
            self.client().delete_object(Bucket=self.bucket, Key=key)

        self._call(f"cannot delete {sha256}", drop)

    def _head(self, key: str) -> bool:
        try:
            self.client().head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as error:
            code = _code(error)
            # A 403 may only hide a missing key: put_object tells whether writing is denied.
            if code in _MISSING_CODES or code in _DENIED_CODES:
                return False
            raise
        return True

    def _call(self, what: str, operation: Callable[[], _T]) -> _T:
        where = f"s3://{self.bucket}/{self.prefix}"
        try:
            return operation()
        except botocore.exceptions.ClientError as error:
            code = _code(error)
            message = error.response.get("Error", {}).get("Message") or ""
            hint = _HINTS.get(code)
            detail = f"{code} {message}".strip() + (f" ({hint})" if hint else "")
            raise quarantine.QuarantineError(f"{what} in {where}: {detail}") from error
        except botocore.exceptions.BotoCoreError as error:
            # Missing credentials, timeouts, refused connections, broken streams.
            raise quarantine.QuarantineError(f"{what} in {where}: {error}") from error


def _code(error: botocore.exceptions.ClientError) -> str:
    details = error.response.get("Error", {})
    code = details.get("Code")
    if code:
        return str(code)
    return str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "Unknown"))


def _folder(prefix: str) -> str:
    """The prefix as a folder: no leading slash (S3 keeps it as an empty folder name),
    a trailing one added, so 'quarantine' and 'quarantine/' mean the same."""
    folder = prefix.strip().lstrip("/")
    return folder if not folder or folder.endswith("/") else folder + "/"


def _content_type(data: bytes) -> str:
    mime: str | None = BaseEngine.get_mimetype(data)
    return mime or "application/octet-stream"


def _bucket_name(value: str) -> str:
    bucket = value.strip()
    if not bucket:
        raise ConfigurationError(
            "Config 'MODERATION_QUARANTINE_S3_BUCKET' is empty. "
            "MODERATION_QUARANTINE = 'thumbor_rekognition.quarantine.s3' needs a bucket."
        )
    if not (
        botocore.handlers.VALID_BUCKET.match(bucket) or botocore.handlers.VALID_S3_ARN.match(bucket)
    ):
        raise ConfigurationError(
            f"Config 'MODERATION_QUARANTINE_S3_BUCKET' has value {bucket!r}. "
            "Not a bucket name (write 'my-bucket', not 's3://my-bucket/path')."
        )
    return bucket


def _endpoint_url(value: str | None) -> str | None:
    return checked_endpoint_url(
        "MODERATION_QUARANTINE_S3_ENDPOINT_URL", value, "http://127.0.0.1:9000"
    )
