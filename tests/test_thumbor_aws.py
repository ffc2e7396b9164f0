"""The plugin over thumbor-aws: S3 loader, storage and result storage, on moto's server.

Real Thumbor servers whose LOADER, STORAGE and RESULT_STORAGE are the plugin's, each
wrapping thumbor-aws's own module (MODERATION_SOURCE_*), with the quarantine in S3 too.
S3 is moto's server, reached through a proxy that can fail DeleteObjects; Rekognition is
the fake, which approves blue. What a rejection leaves is read where it would be left:
every bucket is listed.
"""

from __future__ import annotations

import io
import itertools
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import thumbor_aws.result_storage
import thumbor_aws.storage
from PIL import Image
from thumbor.config import Config

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.fakes.s3_faults import S3Faults
from tests.moto_server import aws_client, moto_server
from tests.redis_server import RedisServer
from tests.servers import Response, ThumborServer, base_config
from thumbor_rekognition import aws_caches

pytestmark = pytest.mark.e2e

TOKEN = "thumbor-aws-admin-token-51c9"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ORIGINS = "site-originals"
STORAGE = "thumbor-storage"
RESULTS = "thumbor-results"
QUARANTINE = "moderation-quarantine"
BUCKETS = (ORIGINS, STORAGE, RESULTS, QUARANTINE)
# thumbor-aws's default root paths: objects are written under /st/... and /rs/...
STORAGE_ROOT = "/st"
RESULTS_ROOT = "/rs"
SIZES = ("100x75", "60x45", "30x20")
# The last size is asked for as a browser that takes WebP would: AUTO_WEBP keeps it
# under thumbor-aws's auto_webp folder.
WEBP = {"Accept": "image/webp,image/*,*/*;q=0.8"}
BLUE = (0, 0, 255)

_names = itertools.count()


@dataclass
class S3:
    """moto's server, the proxy Thumbor is given, and a client of the tests' own."""

    endpoint: str
    faults: S3Faults
    client: Any

    def keys(self, bucket: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def keys_of(self, bucket: str, name: str) -> list[str]:
        """Every key in a bucket that names this picture."""
        return [key for key in self.keys(bucket) if name in key]

    def bodies(self, bucket: str) -> list[bytes]:
        return [
            self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
            for key in self.keys(bucket)
        ]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def status_of(response: Response) -> str | None:
    return response.header("X-Moderation-Status")


def blue_pixels(response: Response) -> int:
    with Image.open(io.BytesIO(response.body)) as image:
        rgb = image.convert("RGB")
        return sum(
            count
            for count, (red, green, blue) in rgb.getcolors(rgb.width * rgb.height) or []
            if blue > 200 and red < 60 and green < 60
        )


def size_of(response: Response) -> tuple[int, int]:
    with Image.open(io.BytesIO(response.body)) as image:
        return image.size


def requested(size: str) -> tuple[int, int]:
    width, height = size.split("x")
    return int(width), int(height)


def views(server: ThumborServer, name: str) -> list[Response]:
    """The picture at every size, the last one as a WebP-taking browser asks for it."""
    return [
        server.get(f"/unsafe/{size}/{name}", headers=WEBP if size == SIZES[-1] else None)
        for size in SIZES
    ]


def decide(server: ThumborServer, name: str, status: str) -> Response:
    body = json.dumps({"status": status, "note": "thumbor-aws", "actor": "tests"}).encode()
    return server.request(
        "PUT", f"/moderation/image?url={quote(name, safe='')}", body=body, headers=AUTH
    )


def outbox(server: ThumborServer) -> dict[str, int]:
    response = server.request("GET", "/moderation/stats", headers=AUTH)
    assert response.status == 200
    counts: dict[str, int] = json.loads(response.body)["outbox"]
    return counts


def aws_config(
    root: Path, s3_endpoint: str, rekognition: str, store: dict[str, Any]
) -> dict[str, Any]:
    """Every module over S3 through thumbor-aws, as the README's "On AWS" shows it."""
    config = base_config(root, root / "unused", rekognition)
    for key in ("FILE_LOADER_ROOT_PATH", "FILE_STORAGE_ROOT_PATH"):
        del config[key]
    del config["RESULT_STORAGE_FILE_STORAGE_ROOT_PATH"]
    del config["MODERATION_QUARANTINE_PATH"]
    config.update(
        {
            "MODERATION_SOURCE_LOADER": "thumbor_aws.loader",
            "AWS_LOADER_BUCKET_NAME": ORIGINS,
            "AWS_LOADER_ROOT_PATH": "",
            "AWS_LOADER_REGION_NAME": "us-east-1",
            "AWS_LOADER_S3_ENDPOINT_URL": s3_endpoint,
            "MODERATION_SOURCE_STORAGE": "thumbor_aws.storage",
            "AWS_STORAGE_BUCKET_NAME": STORAGE,
            "AWS_STORAGE_REGION_NAME": "us-east-1",
            "AWS_STORAGE_S3_ENDPOINT_URL": s3_endpoint,
            # Writes the security key beside each original: a purge must take it too.
            "STORES_CRYPTO_KEY_FOR_EACH_IMAGE": True,
            "MODERATION_SOURCE_RESULT_STORAGE": "thumbor_aws.result_storage",
            "AWS_RESULT_STORAGE_BUCKET_NAME": RESULTS,
            "AWS_RESULT_STORAGE_REGION_NAME": "us-east-1",
            "AWS_RESULT_STORAGE_S3_ENDPOINT_URL": s3_endpoint,
            "AUTO_WEBP": True,
            "MODERATION_QUARANTINE": "thumbor_rekognition.quarantine.s3",
            "MODERATION_QUARANTINE_S3_BUCKET": QUARANTINE,
            "MODERATION_QUARANTINE_S3_REGION": "us-east-1",
            "MODERATION_QUARANTINE_S3_ENDPOINT_URL": s3_endpoint,
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_OUTBOX_TIMEOUT_SECONDS": 5.0,
        }
    )
    config.update(store)
    return config


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_server() as endpoint, S3Faults(endpoint) as faults:
        client = aws_client("s3", endpoint)
        for bucket in BUCKETS:
            client.create_bucket(Bucket=bucket)
        yield S3(endpoint, faults, client)


@pytest.fixture
def faults(s3: S3) -> Iterator[S3Faults]:
    s3.faults.clear()
    yield s3.faults
    s3.faults.clear()


def add_origin(s3: S3) -> tuple[str, bytes]:
    """A new blue picture in the origin bucket, bytes differing from every other's."""
    number = next(_names)
    name = f"pictures/blue-{number}.png"
    data = picture(BLUE, size=(160, 100 + number))
    s3.client.put_object(Bucket=ORIGINS, Key=name, Body=data)
    return name, data


def cached_everywhere(server: ThumborServer, s3: S3) -> tuple[str, bytes]:
    """A picture approved, served at every size, and kept in storage and result storage."""
    name, data = add_origin(s3)
    served = views(server, name)
    assert [status_of(response) for response in served] == ["approved"] * len(SIZES)
    # thumbor-aws writes a result once the response is on its way.
    wait_for(lambda: len(s3.keys_of(RESULTS, name)) == len(SIZES))
    return name, data


class TestPluginOverThumborAws:
    """One Thumbor process, decisions in SQLite."""

    processes = 1

    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
        return {}

    @pytest.fixture(scope="class")
    @classmethod
    def server(
        cls,
        tmp_path_factory: pytest.TempPathFactory,
        s3: S3,
        module_fake: FakeRekognition,
        store: dict[str, Any],
    ) -> Iterator[ThumborServer]:
        root = tmp_path_factory.mktemp(f"aws-{cls.processes}")
        config = aws_config(root, s3.faults.url, module_fake.url, store)
        thumbor = ThumborServer(root, config, processes=cls.processes)
        thumbor.start()
        yield thumbor
        thumbor.stop()
        assert "Traceback" not in thumbor.log

    def test_thumbor_aws_keeps_what_it_serves_under_its_own_keys(
        self, server: ThumborServer, s3: S3, fake: FakeRekognition
    ) -> None:
        name, _ = cached_everywhere(server, s3)

        stored = s3.keys_of(STORAGE, name)
        results = s3.keys_of(RESULTS, name)

        assert stored == [f"{STORAGE_ROOT}/{name}", f"{STORAGE_ROOT}/{name}.txt"]
        assert results == sorted(
            [
                f"{RESULTS_ROOT}/auto_webp/unsafe/{SIZES[-1]}/{name}",
                *(f"{RESULTS_ROOT}/unsafe/{size}/{name}" for size in SIZES[:-1]),
            ]
        )
        assert fake.call_count == 1

    def test_a_rejection_leaves_no_object_of_the_picture_in_storage_or_result_storage(
        self, server: ThumborServer, s3: S3, fake: FakeRekognition
    ) -> None:
        name, data = cached_everywhere(server, s3)

        answer = decide(server, name, "rejected")
        left = (s3.keys_of(STORAGE, name), s3.keys_of(RESULTS, name))
        served = views(server, name)

        assert answer.status == 200
        assert left == ([], [])
        assert data in s3.bodies(QUARANTINE)
        assert [status_of(response) for response in served] == ["rejected"] * len(SIZES)
        assert [size_of(response) for response in served] == [requested(s) for s in SIZES]
        assert [blue_pixels(response) for response in served] == [0] * len(SIZES)
        # Refusing wrote nothing back.
        assert (s3.keys_of(STORAGE, name), s3.keys_of(RESULTS, name)) == ([], [])
        assert fake.call_count == 1

    def test_the_purge_answer_counts_the_results_deleted(
        self, server: ThumborServer, s3: S3
    ) -> None:
        name, _ = cached_everywhere(server, s3)

        answer = server.request(
            "POST", f"/moderation/purge?url={quote(name, safe='')}", headers=AUTH
        )

        assert answer.status == 200
        assert json.loads(answer.body) == {"original_removed": True, "results_removed": 3}
        assert (s3.keys_of(STORAGE, name), s3.keys_of(RESULTS, name)) == ([], [])

    def test_approval_with_the_origin_object_deleted_serves_it_from_the_quarantine(
        self, server: ThumborServer, s3: S3
    ) -> None:
        name, data = cached_everywhere(server, s3)
        assert decide(server, name, "rejected").status == 200
        s3.client.delete_object(Bucket=ORIGINS, Key=name)

        answer = decide(server, name, "approved")
        served = views(server, name)

        assert answer.status == 200
        assert name not in s3.keys(ORIGINS)
        assert [status_of(response) for response in served] == ["approved"] * len(SIZES)
        assert [response.status for response in served] == [200] * len(SIZES)
        assert [size_of(response) for response in served] == [requested(s) for s in SIZES]
        assert all(blue_pixels(response) > 0 for response in served)
        body = s3.client.get_object(Bucket=STORAGE, Key=f"{STORAGE_ROOT}/{name}")["Body"]
        assert body.read() == data

    def test_a_failed_deletion_waits_in_the_outbox_and_is_retried_until_done(
        self, server: ThumborServer, s3: S3, faults: S3Faults
    ) -> None:
        name, _ = cached_everywhere(server, s3)
        # Three attempts of the purge's own call, then the outbox's first retry.
        faults.fail_deletes(4)

        answer = decide(server, name, "rejected")
        waiting = outbox(server)
        wait_for(lambda: s3.keys_of(RESULTS, name) == [])
        wait_for(lambda: outbox(server) == {})

        assert answer.status == 200
        assert waiting.get("s3:result_storage.pending") == 1
        assert s3.keys_of(STORAGE, name) == []
        calls = [call for call in faults.deletions if call.bucket == RESULTS]
        assert [call.failed for call in calls] == [True] * 4 + [False]
        # The retry names only what was left: the picture's two keys per size.
        assert [call.keys for call in calls][-1] == 2 * len(SIZES)


class TestPluginOverThumborAwsInTwoProcesses(TestPluginOverThumborAws):
    """`thumbor --processes=2`, decisions in Redis as the README shows."""

    processes = 2

    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
        with RedisServer(tmp_path_factory.mktemp("redis")) as redis:
            yield {
                "MODERATION_DECISION_STORE": "thumbor_rekognition.stores.redis",
                "MODERATION_REDIS_URL": redis.url,
            }


@pytest.mark.parametrize(
    ("key", "module"),
    [
        ("STORAGE", "thumbor_aws.storage"),
        ("RESULT_STORAGE", "thumbor_aws.result_storage"),
        ("UPLOAD_PHOTO_STORAGE", "thumbor_aws.storage"),
        ("LOADER", "thumbor_aws.loader"),
    ],
)
def test_thumbor_aws_named_in_place_of_the_plugin_stops_start_up(
    tmp_path: Path, key: str, module: str
) -> None:
    config = aws_config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9", {})
    config.update({key: module, "UPLOAD_ENABLED": True})
    thumbor = ThumborServer(tmp_path, config)

    thumbor.start(wait=False)
    code = thumbor.wait_exit()

    assert code != 0
    assert f"Config '{key}' has value {module!r}" in thumbor.log
    assert "MODERATION_SOURCE_" in thumbor.log
    assert "Traceback" not in thumbor.log


def test_more_keys_than_a_batch_take_one_delete_objects_call_per_thousand(
    s3: S3, faults: S3Faults
) -> None:
    config = Config(
        AWS_RESULT_STORAGE_BUCKET_NAME=RESULTS,
        AWS_RESULT_STORAGE_S3_ENDPOINT_URL=faults.url,
        AWS_RESULT_STORAGE_S3_ACCESS_KEY_ID="testing",
        AWS_RESULT_STORAGE_S3_SECRET_ACCESS_KEY="testing",
    )
    bucket = aws_caches.buckets(config, None, thumbor_aws.result_storage, 5.0)[
        aws_caches.RESULT_STORAGE
    ]
    paths = [f"/unsafe/{width}x30/batch/one.png" for width in range(1, 1201)]
    written = [f"{RESULTS_ROOT}/unsafe/{width}x30/batch/one.png" for width in range(1, 1201)]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(lambda key: s3.client.put_object(Bucket=RESULTS, Key=key, Body=b"x"), written)
        )
    assert len(s3.keys_of(RESULTS, "/batch/")) == 1200

    keys = bucket.keys(paths)
    bucket.delete(keys)

    # Every path has its plain key and its AUTO_WEBP key.
    assert len(keys) == 2400
    assert set(written) < set(keys)
    assert [call.keys for call in faults.deletions] == [1000, 1000, 400]
    assert s3.keys_of(RESULTS, "/batch/") == []


def test_a_thumbor_aws_bucket_does_not_show_its_secret() -> None:
    config = Config(
        AWS_STORAGE_BUCKET_NAME=STORAGE,
        AWS_STORAGE_S3_ACCESS_KEY_ID="AKIAEXAMPLE",
        AWS_STORAGE_S3_SECRET_ACCESS_KEY="secret-that-stays-hidden",
    )

    bucket = aws_caches.buckets(config, thumbor_aws.storage, None, 5.0)[aws_caches.STORAGE]

    assert (bucket.name, bucket.root_path) == (STORAGE, STORAGE_ROOT)
    assert "secret-that-stays-hidden" not in repr(bucket)
