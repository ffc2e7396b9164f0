"""The quarantine contract, run against the file quarantine and the S3 one.

``QuarantineContract`` holds every behaviour a quarantine promises. A quarantine runs it
by subclassing it with two fixtures: ``make_quarantine``, a factory whose every call
opens a new Quarantine object on the same storage (as another Thumbor process would),
and ``stored``, which lists everything that storage holds, so that a test can prove an
operation touched nothing. The S3 quarantine talks to moto's server over a socket, with
the real boto3 client, its retries and timeouts.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber
from thumbor.config import Config

from tests.conftest import picture
from tests.moto_server import aws_client, moto_server
from thumbor_rekognition import quarantine
from thumbor_rekognition.config import ConfigurationError, Settings
from thumbor_rekognition.quarantine import QuarantineError, file, load_quarantine, s3

MakeQuarantine = Callable[[], quarantine.Quarantine]
Stored = Callable[[], dict[str, bytes]]

PNG = picture((30, 160, 90))
JPEG = picture((200, 60, 20), image_format="JPEG")
# Every byte value, 256 KiB of it: large enough that a torn write would show.
BINARY = bytes(range(256)) * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


BAD_HASHES = [
    "../../etc/passwd",
    "../" * 21 + "a",  # 64 characters that climb out of any folder
    "/" + "a" * 63,
    "aa/" + "a" * 61,
    "A" * 64,
    "a" * 63,
    "a" * 65,
    "g" * 64,
    "",
]
OPERATIONS: dict[str, Callable[[quarantine.Quarantine, str], object]] = {
    "put": lambda kept, digest: kept.put(digest, PNG),
    "get": lambda kept, digest: kept.get(digest),
    "delete": lambda kept, digest: kept.delete(digest),
}


def make_settings(**values: Any) -> Settings:
    config = Config()
    for key, value in values.items():
        setattr(config, key, value)
    return Settings.from_config(config)


def refusals(kept: quarantine.Quarantine, digest: str) -> list[str]:
    """The operations that refused the hash as not being a SHA-256 digest."""
    refused = []
    for name, operation in sorted(OPERATIONS.items()):
        try:
            operation(kept, digest)
        except QuarantineError as error:
            if "SHA-256" in str(error):
                refused.append(name)
    return refused


def in_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run work(0..count-1) in threads released together; the errors they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(number: int) -> None:
        try:
            start.wait()
            work(number)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


class QuarantineContract:
    """What every quarantine does; subclasses provide ``make_quarantine`` and ``stored``."""

    @pytest.fixture
    def make_quarantine(self) -> MakeQuarantine:
        raise NotImplementedError

    @pytest.fixture
    def stored(self) -> Stored:
        raise NotImplementedError

    @pytest.fixture
    def kept(self, make_quarantine: MakeQuarantine) -> quarantine.Quarantine:
        return make_quarantine()

    @pytest.mark.parametrize(
        "data", [PNG, JPEG, BINARY, b""], ids=["png", "jpeg", "binary", "empty"]
    )
    def test_kept_original_comes_back_byte_for_byte(
        self, kept: quarantine.Quarantine, data: bytes
    ) -> None:
        kept.put(sha(data), data)

        returned = kept.get(sha(data))

        assert returned == data

    def test_originals_are_kept_apart_by_hash(self, kept: quarantine.Quarantine) -> None:
        kept.put(sha(PNG), PNG)
        kept.put(sha(JPEG), JPEG)

        returned = (kept.get(sha(PNG)), kept.get(sha(JPEG)))

        assert returned == (PNG, JPEG)

    def test_unknown_hash_has_no_original(self, kept: quarantine.Quarantine) -> None:
        kept.put(sha(PNG), PNG)

        assert kept.get(sha(JPEG)) is None

    def test_keeping_an_original_twice_keeps_one_copy(
        self, kept: quarantine.Quarantine, stored: Stored
    ) -> None:
        kept.put(sha(PNG), PNG)

        kept.put(sha(PNG), PNG)

        assert kept.get(sha(PNG)) == PNG
        assert list(stored().values()) == [PNG]

    def test_deleted_original_is_gone(self, kept: quarantine.Quarantine, stored: Stored) -> None:
        kept.put(sha(PNG), PNG)

        kept.delete(sha(PNG))

        assert kept.get(sha(PNG)) is None
        assert stored() == {}

    def test_deleting_an_unknown_hash_leaves_the_others_alone(
        self, kept: quarantine.Quarantine
    ) -> None:
        kept.put(sha(PNG), PNG)

        kept.delete(sha(JPEG))
        kept.delete(sha(JPEG))

        assert kept.get(sha(PNG)) == PNG

    def test_deleted_original_can_be_kept_again(self, kept: quarantine.Quarantine) -> None:
        kept.put(sha(PNG), PNG)
        kept.delete(sha(PNG))

        kept.put(sha(PNG), PNG)

        assert kept.get(sha(PNG)) == PNG

    def test_another_process_reads_and_deletes_what_one_kept(
        self, make_quarantine: MakeQuarantine
    ) -> None:
        writer, reviewer = make_quarantine(), make_quarantine()
        writer.put(sha(PNG), PNG)

        seen = reviewer.get(sha(PNG))
        reviewer.delete(sha(PNG))

        assert seen == PNG
        assert writer.get(sha(PNG)) is None

    @pytest.mark.parametrize("digest", BAD_HASHES)
    def test_hash_that_is_not_a_sha256_digest_is_refused_and_touches_nothing(
        self, kept: quarantine.Quarantine, stored: Stored, digest: str
    ) -> None:
        kept.put(sha(JPEG), JPEG)
        before = stored()

        refused = refusals(kept, digest)

        assert refused == sorted(OPERATIONS)
        assert stored() == before

    def test_hash_with_a_trailing_newline_is_refused_and_touches_nothing(
        self, kept: quarantine.Quarantine, stored: Stored
    ) -> None:
        kept.put(sha(JPEG), JPEG)
        before = stored()

        refused = refusals(kept, sha(PNG) + "\n")

        assert refused == sorted(OPERATIONS)
        assert stored() == before

    @pytest.mark.parametrize("objects", ["shared", "one-each"])
    def test_concurrent_puts_of_the_same_hash_leave_one_intact_copy(
        self, make_quarantine: MakeQuarantine, stored: Stored, objects: str
    ) -> None:
        shared = make_quarantine()
        each = [shared if objects == "shared" else make_quarantine() for _ in range(8)]

        errors = in_threads(8, lambda number: each[number].put(sha(BINARY), BINARY))

        assert errors == []
        assert shared.get(sha(BINARY)) == BINARY
        assert list(stored().values()) == [BINARY]


class TestFileQuarantine(QuarantineContract):
    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        # Deep enough that '../../etc/passwd' below it would still land inside tmp_path,
        # where `stored` sees it.
        return tmp_path / "deep" / "er" / "quarantine"

    @pytest.fixture
    def make_quarantine(self, root: Path) -> MakeQuarantine:
        settings = make_settings(MODERATION_QUARANTINE_PATH=str(root))
        return lambda: file.Quarantine(settings)

    @pytest.fixture
    def stored(self, tmp_path: Path) -> Stored:
        def every_file() -> dict[str, bytes]:
            return {
                str(path.relative_to(tmp_path)): path.read_bytes()
                for path in sorted(tmp_path.rglob("*"))
                if path.is_file()
            }

        return every_file

    def test_original_is_kept_in_a_folder_named_after_the_first_two_hex_digits(
        self, kept: quarantine.Quarantine, root: Path
    ) -> None:
        digest = sha(PNG)

        kept.put(digest, PNG)

        assert (root / digest[:2] / digest).read_bytes() == PNG

    @pytest.mark.parametrize("operation", sorted(OPERATIONS))
    def test_path_traversal_does_not_reach_a_file_outside_the_root(
        self, kept: quarantine.Quarantine, tmp_path: Path, operation: str
    ) -> None:
        target = tmp_path / "etc" / "passwd"
        target.parent.mkdir()
        target.write_bytes(b"root:x:0:0::/root:/bin/sh\n")

        with pytest.raises(QuarantineError):
            OPERATIONS[operation](kept, "../../etc/passwd")

        assert target.read_bytes() == b"root:x:0:0::/root:/bin/sh\n"

    @pytest.mark.parametrize("operation", sorted(OPERATIONS))
    def test_unwritable_root_is_a_quarantine_error(self, tmp_path: Path, operation: str) -> None:
        # Tests run as root, for whom permissions do not stop writes: a regular file
        # standing where the folder should be does.
        blocker = tmp_path / "not-a-folder"
        blocker.write_bytes(b"in the way")
        kept = file.Quarantine(make_settings(MODERATION_QUARANTINE_PATH=str(blocker)))

        with pytest.raises(QuarantineError, match=re.escape(str(blocker))):
            OPERATIONS[operation](kept, sha(PNG))

        assert blocker.read_bytes() == b"in the way"

    def test_configured_quarantine_module_loads_a_file_quarantine_at_the_configured_path(
        self, tmp_path: Path
    ) -> None:
        settings = make_settings(MODERATION_QUARANTINE_PATH=str(tmp_path / "configured"))

        kept = load_quarantine(settings)
        kept.put(sha(PNG), PNG)

        assert isinstance(kept, file.Quarantine)
        assert (tmp_path / "configured" / sha(PNG)[:2] / sha(PNG)).read_bytes() == PNG

    def test_file_quarantine_without_settings_or_root_is_refused(self) -> None:
        with pytest.raises(ValueError, match="root"):
            file.Quarantine()


# The S3 quarantine, against moto's server on 127.0.0.1.


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3_admin(moto_endpoint: str) -> Any:
    """A client of the tests' own, to create buckets and look inside them."""
    return aws_client("s3", moto_endpoint)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestS3Quarantine(QuarantineContract):
    @pytest.fixture(autouse=True)
    def aws_environment(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION"):
            monkeypatch.delenv(name, raising=False)

    @pytest.fixture
    def bucket(self, s3_admin: Any) -> str:
        name = f"quarantine-{uuid.uuid4().hex[:16]}"
        s3_admin.create_bucket(Bucket=name)
        return name

    @pytest.fixture
    def s3_settings(self, moto_endpoint: str, bucket: str) -> Callable[..., Settings]:
        def build(**values: Any) -> Settings:
            defaults = {
                "MODERATION_QUARANTINE": "thumbor_rekognition.quarantine.s3",
                "MODERATION_QUARANTINE_S3_BUCKET": bucket,
                "MODERATION_QUARANTINE_S3_ENDPOINT_URL": moto_endpoint,
            }
            return make_settings(**{**defaults, **values})

        return build

    @pytest.fixture
    def make_quarantine(self, s3_settings: Callable[..., Settings]) -> MakeQuarantine:
        settings = s3_settings()
        return lambda: s3.Quarantine(settings)

    @pytest.fixture
    def stored(self, s3_admin: Any, bucket: str) -> Stored:
        def every_object() -> dict[str, bytes]:
            contents: dict[str, bytes] = {}
            for page in s3_admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    body = s3_admin.get_object(Bucket=bucket, Key=item["Key"])["Body"]
                    contents[item["Key"]] = body.read()
            return contents

        return every_object

    def test_original_is_written_under_the_configured_prefix_with_server_side_encryption(
        self, s3_settings: Callable[..., Settings], s3_admin: Any, bucket: str
    ) -> None:
        kept = s3.Quarantine(s3_settings(MODERATION_QUARANTINE_S3_PREFIX="moderation/kept/"))
        digest = sha(PNG)

        kept.put(digest, PNG)

        head = s3_admin.head_object(Bucket=bucket, Key=f"moderation/kept/{digest[:2]}/{digest}")
        assert head["ServerSideEncryption"] == "AES256"
        assert head["ContentLength"] == len(PNG)

    def test_default_prefix_is_the_quarantine_folder(
        self, kept: quarantine.Quarantine, stored: Stored
    ) -> None:
        digest = sha(PNG)

        kept.put(digest, PNG)

        assert list(stored()) == [f"quarantine/{digest[:2]}/{digest}"]

    @pytest.mark.parametrize(
        ("prefix", "folder"),
        [("kept", "kept/"), ("/kept/", "kept/"), ("", ""), ("a/b", "a/b/")],
    )
    def test_prefix_is_read_as_a_folder(
        self, s3_settings: Callable[..., Settings], stored: Stored, prefix: str, folder: str
    ) -> None:
        kept = s3.Quarantine(s3_settings(MODERATION_QUARANTINE_S3_PREFIX=prefix))
        digest = sha(PNG)

        kept.put(digest, PNG)

        assert list(stored()) == [f"{folder}{digest[:2]}/{digest}"]

    @pytest.mark.parametrize(
        ("data", "content_type"),
        [(PNG, "image/png"), (JPEG, "image/jpeg"), (BINARY, "application/octet-stream")],
        ids=["png", "jpeg", "unknown"],
    )
    def test_content_type_is_read_from_the_bytes(
        self, kept: s3.Quarantine, s3_admin: Any, bucket: str, data: bytes, content_type: str
    ) -> None:
        kept.put(sha(data), data)

        head = s3_admin.head_object(Bucket=bucket, Key=kept.key(sha(data)))

        assert head["ContentType"] == content_type

    def test_kept_original_is_not_uploaded_again(
        self, kept: s3.Quarantine, s3_admin: Any, bucket: str
    ) -> None:
        kept.put(sha(PNG), PNG)
        # Marked behind the quarantine's back: a second upload would replace the mark.
        s3_admin.put_object(
            Bucket=bucket, Key=kept.key(sha(PNG)), Body=PNG, Metadata={"mark": "first"}
        )

        kept.put(sha(PNG), PNG)

        head = s3_admin.head_object(Bucket=bucket, Key=kept.key(sha(PNG)))
        assert head["Metadata"] == {"mark": "first"}

    @pytest.mark.parametrize("operation", sorted(OPERATIONS))
    def test_bucket_that_does_not_exist_is_a_quarantine_error_naming_it(
        self, s3_settings: Callable[..., Settings], operation: str
    ) -> None:
        kept = s3.Quarantine(s3_settings(MODERATION_QUARANTINE_S3_BUCKET="no-such-quarantine"))

        with pytest.raises(QuarantineError, match=r"no-such-quarantine.*NoSuchBucket"):
            OPERATIONS[operation](kept, sha(PNG))

    @pytest.mark.parametrize("bucket_value", ["", "   "], ids=["empty", "blank"])
    def test_missing_bucket_setting_is_a_configuration_error_naming_the_key(
        self, s3_settings: Callable[..., Settings], bucket_value: str
    ) -> None:
        settings = s3_settings(MODERATION_QUARANTINE_S3_BUCKET=bucket_value)

        with pytest.raises(ConfigurationError, match="MODERATION_QUARANTINE_S3_BUCKET"):
            load_quarantine(settings)

    def test_bucket_written_as_a_url_is_a_configuration_error_naming_the_key(
        self, s3_settings: Callable[..., Settings]
    ) -> None:
        settings = s3_settings(MODERATION_QUARANTINE_S3_BUCKET="s3://my-bucket/quarantine")

        with pytest.raises(ConfigurationError, match="MODERATION_QUARANTINE_S3_BUCKET"):
            s3.Quarantine(settings)

    def test_endpoint_that_is_not_a_url_is_a_configuration_error_naming_the_key(
        self, s3_settings: Callable[..., Settings]
    ) -> None:
        # Refused when the config is read, before any quarantine is built.
        with pytest.raises(ConfigurationError, match="MODERATION_QUARANTINE_S3_ENDPOINT_URL"):
            s3_settings(MODERATION_QUARANTINE_S3_ENDPOINT_URL="127.0.0.1:9000")

    def test_configured_quarantine_module_loads_the_s3_quarantine(
        self, s3_settings: Callable[..., Settings], stored: Stored
    ) -> None:
        kept = load_quarantine(s3_settings())

        kept.put(sha(PNG), PNG)

        assert isinstance(kept, s3.Quarantine)
        assert list(stored().values()) == [PNG]

    def test_empty_region_means_the_rekognition_region(
        self, s3_settings: Callable[..., Settings]
    ) -> None:
        settings = s3_settings(REKOGNITION_REGION="eu-west-3", MODERATION_QUARANTINE_S3_REGION="")

        client = s3.Quarantine(settings).client()

        assert client.meta.region_name == "eu-west-3"

    def test_quarantine_region_wins_over_the_rekognition_region(
        self, s3_settings: Callable[..., Settings]
    ) -> None:
        settings = s3_settings(
            REKOGNITION_REGION="eu-west-3", MODERATION_QUARANTINE_S3_REGION="ap-south-1"
        )

        client = s3.Quarantine(settings).client()

        assert client.meta.region_name == "ap-south-1"

    def test_client_is_built_once_per_process(
        self, kept: s3.Quarantine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        parent = kept.client()
        again = kept.client()
        monkeypatch.setattr(os, "getpid", lambda: -1)

        child = kept.client()

        assert again is parent
        assert child is not parent
        assert kept.client() is child

    def test_unreachable_endpoint_is_a_quarantine_error_after_a_few_quick_attempts(
        self, s3_settings: Callable[..., Settings]
    ) -> None:
        endpoint = f"http://127.0.0.1:{closed_port()}"
        # Built without a call: construction never touches the network.
        kept = s3.Quarantine(s3_settings(MODERATION_QUARANTINE_S3_ENDPOINT_URL=endpoint))
        started = time.monotonic()

        with pytest.raises(QuarantineError, match="cannot keep"):
            kept.put(sha(PNG), PNG)

        assert time.monotonic() - started < 5.0

    def test_missing_credentials_are_a_quarantine_error(
        self, kept: quarantine.Quarantine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        for name in (
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ):
            monkeypatch.delenv(name, raising=False)

        with pytest.raises(QuarantineError, match="credentials"):
            kept.get(sha(PNG))

    def test_put_goes_ahead_when_s3_answers_a_missing_key_with_403(
        self, kept: s3.Quarantine
    ) -> None:
        # Credentials without s3:ListBucket get 403, not 404, for a key that is not there.
        with Stubber(kept.client()) as stub:
            stub.add_client_error("head_object", "403", http_status_code=403)
            stub.add_response(
                "put_object",
                {},
                {
                    "Bucket": kept.bucket,
                    "Key": kept.key(sha(PNG)),
                    "Body": PNG,
                    "ContentType": "image/png",
                    "ServerSideEncryption": "AES256",
                },
            )

            kept.put(sha(PNG), PNG)

            stub.assert_no_pending_responses()

    def test_denied_write_is_a_quarantine_error_naming_the_permissions(
        self, kept: s3.Quarantine
    ) -> None:
        with Stubber(kept.client()) as stub:
            stub.add_client_error("head_object", "403", http_status_code=403)
            stub.add_client_error("put_object", "AccessDenied", "Access Denied", 403)

            with pytest.raises(QuarantineError, match=r"cannot keep .*s3:PutObject"):
                kept.put(sha(PNG), PNG)

    def test_denied_read_is_a_quarantine_error_not_a_missing_original(
        self, kept: s3.Quarantine
    ) -> None:
        with Stubber(kept.client()) as stub:
            stub.add_client_error("get_object", "AccessDenied", "Access Denied", 403)

            with pytest.raises(QuarantineError, match=r"cannot read .*s3:ListBucket"):
                kept.get(sha(PNG))
