"""The plugin over thumbor-aws: S3 loader, storage and result storage, on moto's server.

Real Thumbor servers run the README's "On AWS" thumbor.conf as written (LOADER, STORAGE
and RESULT_STORAGE the plugin's, each wrapping thumbor-aws's own module, the quarantine
in S3, CloudFront purged), with endpoints pointed at 127.0.0.1: S3 and CloudFront are
moto's server, S3 reached through a proxy that can fail DeleteObjects, and Rekognition
is the fake, which approves blue. What a rejection leaves is read where it would be left:
every bucket is listed.
"""

from __future__ import annotations

import io
import itertools
import json
import time
import uuid
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
from tests.fakes.s3_faults import Deletion, S3Faults
from tests.moto_server import aws_client, moto_server
from tests.redis_server import RedisServer
from tests.servers import Response, ThumborServer, base_config, result_file, storage_file
from tests.test_cdn import invalidations
from thumbor_rekognition import aws_caches, stores
from thumbor_rekognition.config import ConfigurationError, Settings
from thumbor_rekognition.urls import key_of

pytestmark = pytest.mark.e2e

AWS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "aws.md"
TOKEN = "thumbor-aws-admin-token-51c9"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The README's buckets and region, made on moto's server.
REGION = "eu-west-1"
ORIGINS = "my-site-originals"
THUMBOR = "my-site-thumbor"
QUARANTINE = "my-site-moderation"
BUCKETS = (ORIGINS, THUMBOR, QUARANTINE)
STORAGE_ROOT = "/st"
RESULTS_ROOT = "/rs"
SIZES = ("100x75", "60x45", "30x20")
# The last size is asked for as a browser that takes WebP would: AUTO_WEBP keeps it
# under thumbor-aws's auto_webp folder.
WEBP = {"Accept": "image/webp,image/*,*/*;q=0.8"}
BLUE = (0, 0, 255)
# Rejections under traffic, each at another moment of it.
RACE_ROUNDS = 4
# Long enough for a rejection, its quarantine copy and its purge to finish meanwhile.
SLOW_WRITE = 5.0

_names = itertools.count()


def readme_section() -> str:
    """The documentation's "On AWS" page."""
    return AWS_PAGE.read_text()


def readme_policy() -> dict[str, Any]:
    """The IAM policy of the README's "On AWS" section."""
    section = readme_section()
    opening = section.index("```json\n") + len("```json\n")
    policy: dict[str, Any] = json.loads(section[opening : section.index("```\n", opening)])
    return policy


def readme_conf() -> dict[str, Any]:
    """The thumbor.conf of the README's "On AWS" section, as Thumbor would read it."""
    section = readme_section()
    opening = section.index("```python\n") + len("```python\n")
    namespace: dict[str, Any] = {}
    exec(section[opening : section.index("```\n", opening)], namespace)
    return {key: value for key, value in namespace.items() if key.isupper()}


@dataclass
class AWS:
    """moto's server, the S3 proxy Thumbor is given, clients of the tests' own."""

    endpoint: str
    faults: S3Faults
    client: Any
    cloudfront: tuple[Any, str]

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(
            item["Key"]
            for page in pages
            for item in page.get("Contents", [])
            if item["Key"].startswith(prefix)
        )

    def stored(self, name: str) -> list[str]:
        """The keys thumbor-aws's storage holds for this picture."""
        return [key for key in self.keys(THUMBOR, STORAGE_ROOT + "/") if name in key]

    def results(self, name: str) -> list[str]:
        """The keys thumbor-aws's result storage holds for this picture."""
        return [key for key in self.keys(THUMBOR, RESULTS_ROOT + "/") if name in key]

    def quarantined(self) -> list[bytes]:
        return [
            self.client.get_object(Bucket=QUARANTINE, Key=key)["Body"].read()
            for key in self.keys(QUARANTINE)
        ]


def wait_for(
    condition: Callable[[], bool], timeout: float = 20.0, seen: Callable[[], object] = str
) -> None:
    """Wait for a condition; when it is not met in time, fail saying what seen() shows."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met in time: {seen()}"
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


def paths_of(name: str) -> list[str]:
    return [f"/unsafe/{size}/{name}" for size in SIZES]


def views(server: ThumborServer, name: str) -> list[Response]:
    """The picture at every size, the last one as a WebP-taking browser asks for it."""
    return [
        server.get(path, headers=WEBP if path.startswith(f"/unsafe/{SIZES[-1]}/") else None)
        for path in paths_of(name)
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


def aws_config(aws: AWS, rekognition: str, store: dict[str, Any]) -> dict[str, Any]:
    """The README's conf, with every endpoint on 127.0.0.1 and what tests need besides."""
    config = readme_conf()
    s3 = aws.faults.url
    config.update(
        {
            "AWS_LOADER_S3_ENDPOINT_URL": s3,
            "AWS_STORAGE_S3_ENDPOINT_URL": s3,
            "AWS_RESULT_STORAGE_S3_ENDPOINT_URL": s3,
            "MODERATION_QUARANTINE_S3_ENDPOINT_URL": s3,
            "REKOGNITION_ENDPOINT_URL": rekognition,
            "REKOGNITION_MAX_ATTEMPTS": 1,
            "REKOGNITION_TIMEOUT_SECONDS": 3.0,
            "MODERATION_CLOUDFRONT_ENDPOINT_URL": aws.endpoint,
            "MODERATION_CLOUDFRONT_DISTRIBUTION_ID": aws.cloudfront[1],
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_CACHE_TTL_SECONDS": 0.2,
            "MODERATION_OUTBOX_TIMEOUT_SECONDS": 5.0,
            "ALLOW_UNSAFE_URL": True,
            "RESULT_STORAGE_STORES_UNSAFE": True,
            # thumbor-aws writes the security key beside each original: a purge takes it.
            "STORES_CRYPTO_KEY_FOR_EACH_IMAGE": True,
            "AUTO_WEBP": True,
        }
    )
    config.update(store)
    return config


@pytest.fixture(scope="module")
def aws() -> Iterator[AWS]:
    with moto_server() as endpoint, S3Faults(endpoint) as faults:
        client = aws_client("s3", endpoint)
        for bucket in BUCKETS:
            client.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
            )
        cloudfront = aws_client("cloudfront", endpoint)
        yield AWS(endpoint, faults, client, (cloudfront, create_distribution(cloudfront)))


def create_distribution(client: Any) -> str:
    """A CloudFront distribution in front of Thumbor, its own in this process's moto."""
    origin = {
        "Id": "thumbor",
        "DomainName": "thumbor.example.com",
        "CustomOriginConfig": {
            "HTTPPort": 80,
            "HTTPSPort": 443,
            "OriginProtocolPolicy": "http-only",
        },
    }
    created = client.create_distribution(
        DistributionConfig={
            # moto keeps one state per process, whichever of its servers is asked.
            "CallerReference": f"thumbor-aws-tests-{uuid.uuid4().hex}",
            "Comment": "Thumbor over thumbor-aws behind CloudFront",
            "Enabled": True,
            "Origins": {"Quantity": 1, "Items": [origin]},
            "DefaultCacheBehavior": {
                "TargetOriginId": "thumbor",
                "ViewerProtocolPolicy": "allow-all",
                "MinTTL": 0,
                "ForwardedValues": {"QueryString": False, "Cookies": {"Forward": "none"}},
            },
        }
    )
    return str(created["Distribution"]["Id"])


@pytest.fixture
def faults(aws: AWS) -> Iterator[S3Faults]:
    aws.faults.clear()
    yield aws.faults
    aws.faults.clear()


def add_origin(aws: AWS) -> tuple[str, bytes]:
    """A new blue picture in the origin bucket, bytes differing from every other's."""
    number = next(_names)
    name = f"pictures/blue-{number}.png"
    data = picture(BLUE, size=(160, 100 + number))
    aws.client.put_object(Bucket=ORIGINS, Key=name, Body=data)
    return name, data


def landed(faults: S3Faults, paths: list[str]) -> list[float]:
    """When the results of these request paths reached S3."""
    return [at for key, at in faults.puts if any(key.endswith(path) for path in paths)]


def cached_everywhere(server: ThumborServer, aws: AWS, store: dict[str, Any]) -> tuple[str, bytes]:
    """A picture approved, served at every size, kept in storage and result storage, and
    each result's path recorded in the decision store (what a purge deletes)."""
    name, data = add_origin(aws)
    served = views(server, name)
    assert [status_of(response) for response in served] == ["approved"] * len(SIZES)
    # thumbor-aws writes a result once the response is on its way; the plugin records its
    # path after the write has landed, so a purge in between would miss it.
    wait_for(lambda: len(aws.results(name)) == len(SIZES))
    wait_for(lambda: len(recorded_results(store, name)) == len(SIZES))
    return name, data


def recorded_results(store: dict[str, Any], name: str) -> list[str]:
    """The result paths the decision store holds for a picture, read as a purge reads them."""
    opened = stores.load_store(Settings.from_config(Config(**{**readme_conf(), **store})))
    try:
        return stores.result_paths(opened.results(key_of(name)))
    finally:
        opened.close()


class TestPluginOverThumborAws:
    """One Thumbor process, decisions in SQLite."""

    processes = 1

    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
        folder = tmp_path_factory.mktemp("sqlite")
        return {
            "MODERATION_DECISION_STORE": "thumbor_rekognition.stores.sqlite",
            "MODERATION_SQLITE_PATH": str(folder / "decisions.sqlite3"),
        }

    @pytest.fixture(scope="class")
    @classmethod
    def server(
        cls,
        tmp_path_factory: pytest.TempPathFactory,
        aws: AWS,
        module_fake: FakeRekognition,
        store: dict[str, Any],
    ) -> Iterator[ThumborServer]:
        root = tmp_path_factory.mktemp(f"aws-{cls.processes}")
        config = aws_config(aws, module_fake.url, store)
        thumbor = ThumborServer(root, config, processes=cls.processes)
        thumbor.start()
        yield thumbor
        thumbor.stop()
        assert "Traceback" not in thumbor.log

    def test_thumbor_aws_keeps_what_it_serves_under_its_own_keys(
        self, server: ThumborServer, aws: AWS, store: dict[str, Any], fake: FakeRekognition
    ) -> None:
        name, _ = cached_everywhere(server, aws, store)

        stored = aws.stored(name)
        results = aws.results(name)

        assert stored == [f"{STORAGE_ROOT}/{name}", f"{STORAGE_ROOT}/{name}.txt"]
        assert results == sorted(
            [
                f"{RESULTS_ROOT}/auto_webp/unsafe/{SIZES[-1]}/{name}",
                *(f"{RESULTS_ROOT}/unsafe/{size}/{name}" for size in SIZES[:-1]),
            ]
        )
        assert fake.call_count == 1

    def test_a_rejection_leaves_no_object_of_the_picture_in_storage_or_result_storage(
        self, server: ThumborServer, aws: AWS, store: dict[str, Any], fake: FakeRekognition
    ) -> None:
        name, data = cached_everywhere(server, aws, store)

        answer = decide(server, name, "rejected")
        left = (aws.stored(name), aws.results(name))
        served = views(server, name)

        assert answer.status == 200
        assert left == ([], [])
        assert data in aws.quarantined()
        assert [status_of(response) for response in served] == ["rejected"] * len(SIZES)
        assert [size_of(response) for response in served] == [requested(s) for s in SIZES]
        assert [blue_pixels(response) for response in served] == [0] * len(SIZES)
        # Refusing wrote nothing back.
        assert (aws.stored(name), aws.results(name)) == ([], [])
        assert fake.call_count == 1
        # And the CDN in front was told to drop every size.
        wait_for(lambda: invalidations(aws.cloudfront, name) != [])
        assert invalidations(aws.cloudfront, name) == [set(paths_of(name))]

    def test_the_purge_answer_counts_the_results_deleted(
        self, server: ThumborServer, aws: AWS, store: dict[str, Any]
    ) -> None:
        name, _ = cached_everywhere(server, aws, store)

        answer = server.request(
            "POST", f"/moderation/purge?url={quote(name, safe='')}", headers=AUTH
        )

        assert answer.status == 200
        assert json.loads(answer.body) == {"original_removed": True, "results_removed": 3}
        assert (aws.stored(name), aws.results(name)) == ([], [])

    def test_approval_with_the_origin_object_deleted_serves_it_from_the_quarantine(
        self, server: ThumborServer, aws: AWS, store: dict[str, Any]
    ) -> None:
        name, data = cached_everywhere(server, aws, store)
        assert decide(server, name, "rejected").status == 200
        aws.client.delete_object(Bucket=ORIGINS, Key=name)

        answer = decide(server, name, "approved")
        served = views(server, name)

        assert answer.status == 200
        assert aws.keys(ORIGINS, name) == []
        assert [status_of(response) for response in served] == ["approved"] * len(SIZES)
        assert [response.status for response in served] == [200] * len(SIZES)
        assert [size_of(response) for response in served] == [requested(s) for s in SIZES]
        assert all(blue_pixels(response) > 0 for response in served)
        body = aws.client.get_object(Bucket=THUMBOR, Key=f"{STORAGE_ROOT}/{name}")["Body"]
        assert body.read() == data

    def test_a_failed_deletion_waits_in_the_outbox_and_is_retried_until_done(
        self, server: ThumborServer, aws: AWS, store: dict[str, Any], faults: S3Faults
    ) -> None:
        name, _ = cached_everywhere(server, aws, store)
        faults.fail_deletes(1000, naming=RESULTS_ROOT + "/")

        def tries() -> list[Deletion]:
            return [call for call in faults.deletions if call.keys == 2 * len(SIZES)]

        answer = decide(server, name, "rejected")
        # boto3's three attempts in the purge, then three in the outbox's first delivery:
        # twice boto3's backoff and the outbox's wait, which took over 20 s once beside two
        # CPU burners (two Thumbor processes, Redis and moto on two starved cores).
        wait_for(
            lambda: len(tries()) >= 6,
            timeout=60.0,
            seen=lambda: (
                f"{len(tries())} tries at {[call.at for call in tries()]}, outbox {outbox(server)}"
            ),
        )
        left = aws.results(name)
        waiting = outbox(server)
        faults.fail_deletes(0)
        wait_for(lambda: aws.results(name) == [])
        wait_for(lambda: outbox(server) == {})

        assert answer.status == 200
        assert len(left) == len(SIZES)
        assert waiting == {"s3:result_storage.pending": 1}
        assert aws.stored(name) == []
        assert [call.failed for call in tries()] == [True] * (len(tries()) - 1) + [False]
        # The outbox waits a second (give or take a fifth) before its next delivery.
        assert tries()[6].at - tries()[5].at >= 0.75
        assert [status_of(view) for view in views(server, name)] == ["rejected"] * len(SIZES)

    def test_a_result_written_after_the_rejection_was_purged_deletes_itself(
        self, server: ThumborServer, aws: AWS, store: dict[str, Any], faults: S3Faults
    ) -> None:
        name, _ = cached_everywhere(server, aws, store)
        faults.delay_puts(SLOW_WRITE, naming=RESULTS_ROOT + "/")
        late = [f"/unsafe/{width}x{width}/{name}" for width in (90, 70)]

        # Answered at once; thumbor-aws writes their results once S3 lets it.
        answers = [server.get(path) for path in late]
        assert decide(server, name, "rejected").status == 200
        purged_at = time.monotonic()
        wait_for(lambda: len(landed(faults, late)) == len(late))
        wait_for(lambda: aws.results(name) == [], timeout=10.0)

        assert [status_of(answer) for answer in answers] == ["approved"] * len(late)
        # The writes landed after the rejection's purge had run: theirs is the removal.
        assert min(landed(faults, late)) > purged_at
        assert aws.stored(name) == []

    def test_a_rejection_racing_traffic_leaves_no_object_behind(
        self, server: ThumborServer, aws: AWS
    ) -> None:
        lost = []
        for round_ in range(RACE_ROUNDS):
            name, _ = add_origin(aws)
            assert status_of(server.get(f"/unsafe/30x30/{name}")) == "approved"
            paths = [f"/unsafe/{40 + index}x{30 + index}/{name}" for index in range(24)]
            with ThreadPoolExecutor(max_workers=8) as pool:
                futures = [pool.submit(server.get, path) for path in paths]
                time.sleep(0.02 * round_)
                assert decide(server, name, "rejected").status == 200
                for future in futures:
                    future.result()
            # Thumbor writes a result after answering: give the last writes time to land.
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and (aws.stored(name) or aws.results(name)):
                time.sleep(0.1)
            left = aws.stored(name) + aws.results(name)
            if left:
                lost.append((round_, left))

        assert lost == []


class TestPluginOverThumborAwsInTwoProcesses(TestPluginOverThumborAws):
    """`thumbor --processes=2`, decisions in Redis as the README shows."""

    processes = 2

    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
        with RedisServer(tmp_path_factory.mktemp("redis")) as redis:
            # No test here is about a slow store, and a result is written only once its
            # decision is read back in time: beside other tests on a loaded machine a
            # read can take longer than the default 0.5 s, and the result never lands.
            yield {"MODERATION_REDIS_URL": redis.url, "MODERATION_STORE_TIMEOUT_SECONDS": 5.0}


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
    config = readme_conf()
    config.update({key: module, "UPLOAD_ENABLED": True})
    thumbor = ThumborServer(tmp_path, config)

    thumbor.start(wait=False)
    code = thumbor.wait_exit()

    assert code != 0
    assert f"Config '{key}' has value {module!r}" in thumbor.log
    assert "MODERATION_SOURCE_" in thumbor.log
    assert "Traceback" not in thumbor.log


def test_more_keys_than_a_batch_take_one_delete_objects_call_per_thousand(
    aws: AWS, faults: S3Faults
) -> None:
    config = Config(
        AWS_RESULT_STORAGE_BUCKET_NAME=THUMBOR,
        AWS_RESULT_STORAGE_S3_ENDPOINT_URL=faults.url,
        AWS_RESULT_STORAGE_S3_ACCESS_KEY_ID="testing",
        AWS_RESULT_STORAGE_S3_SECRET_ACCESS_KEY="testing",
    )
    bucket = aws_caches.buckets(config, None, thumbor_aws.result_storage, 5.0)[
        aws_caches.RESULT_STORAGE
    ]
    paths = [f"/unsafe/{width}x30/batch/one.png" for width in range(1, 1201)]
    written = [f"{RESULTS_ROOT}{path}" for path in paths]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(lambda key: aws.client.put_object(Bucket=THUMBOR, Key=key, Body=b"x"), written)
        )
    assert len(aws.results("/batch/")) == 1200

    keys = bucket.keys(paths)
    bucket.delete(keys)

    # Every path has its plain key and its AUTO_WEBP key.
    assert len(keys) == 2400
    assert set(written) < set(keys)
    assert [call.keys for call in faults.deletions] == [1000, 1000, 400]
    assert aws.results("/batch/") == []


def test_a_thumbor_aws_bucket_does_not_show_its_secret() -> None:
    config = Config(
        AWS_STORAGE_BUCKET_NAME=THUMBOR,
        AWS_STORAGE_S3_ACCESS_KEY_ID="AKIAEXAMPLE",
        AWS_STORAGE_S3_SECRET_ACCESS_KEY="secret-that-stays-hidden",
    )

    bucket = aws_caches.buckets(config, thumbor_aws.storage, None, 5.0)[aws_caches.STORAGE]

    assert (bucket.name, bucket.root_path) == (THUMBOR, STORAGE_ROOT)
    assert "secret-that-stays-hidden" not in repr(bucket)


def test_without_thumbor_aws_the_plugin_serves_and_purges_as_before(
    tmp_path: Path, fake: FakeRekognition, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thumbor_aws that cannot be imported, first on the path of Thumbor's process.
    absent = tmp_path / "absent" / "thumbor_aws"
    absent.mkdir(parents=True)
    (absent / "__init__.py").write_text("raise ModuleNotFoundError('thumbor_aws')\n")
    monkeypatch.setenv("PYTHONPATH", str(absent.parent))
    images = tmp_path / "images"
    images.mkdir()
    (images / "plain.png").write_bytes(picture(BLUE))
    config = base_config(tmp_path, images, fake.url)
    config["MODERATION_ADMIN_TOKEN"] = TOKEN
    refused = ThumborServer(
        tmp_path / "refused",
        {**config, "MODERATION_SOURCE_RESULT_STORAGE": "thumbor_aws.result_storage"},
    )
    refused.start(wait=False)

    assert refused.wait_exit() != 0
    assert "Config 'MODERATION_SOURCE_RESULT_STORAGE'" in refused.log
    assert "Cannot import it" in refused.log

    thumbor = ThumborServer(tmp_path, config).start()
    try:
        served = [
            thumbor.get(path) for path in ("/unsafe/40x30/plain.png", "/unsafe/20x15/plain.png")
        ]
        wait_for(lambda: result_file(tmp_path, "/unsafe/20x15/plain.png").exists())
        kept = storage_file(tmp_path, "plain.png").exists()
        answer = decide(thumbor, "plain.png", "rejected")
        after = thumbor.get("/unsafe/40x30/plain.png")
    finally:
        thumbor.stop()

    assert [status_of(response) for response in served] == ["approved", "approved"]
    assert kept
    assert answer.status == 200
    assert not result_file(tmp_path, "/unsafe/40x30/plain.png").exists()
    assert not result_file(tmp_path, "/unsafe/20x15/plain.png").exists()
    assert not storage_file(tmp_path, "plain.png").exists()
    assert status_of(after) == "rejected"
    assert "Traceback" not in thumbor.log


def test_thumbor_aws_in_tc_aws_compatibility_mode_is_reached_with_its_tc_aws_keys() -> None:
    config = Config(
        THUMBOR_AWS_RUN_IN_COMPATIBILITY_MODE=True,
        TC_AWS_ENDPOINT="http://127.0.0.1:9",
        TC_AWS_REGION="eu-west-1",
        TC_AWS_RESULT_STORAGE_BUCKET="old-results",
        TC_AWS_RESULT_STORAGE_ROOT_PATH="results",
    )

    bucket = aws_caches.buckets(config, None, thumbor_aws.result_storage, 5.0)[
        aws_caches.RESULT_STORAGE
    ]

    assert (bucket.name, bucket.region, bucket.endpoint_url) == (
        "old-results",
        "eu-west-1",
        "http://127.0.0.1:9",
    )
    assert bucket.keys(["/unsafe/10x10/a.png"]) == [
        "results/unsafe/10x10/a.png",
        "results/auto_webp/unsafe/10x10/a.png",
    ]


def test_a_tc_aws_key_thumbor_aws_reads_but_nobody_set_is_a_configuration_error() -> None:
    config = Config(THUMBOR_AWS_RUN_IN_COMPATIBILITY_MODE=True, TC_AWS_STORAGE_BUCKET="old")

    with pytest.raises(ConfigurationError) as raised:
        aws_caches.buckets(config, thumbor_aws.storage, None, 5.0)

    assert str(raised.value) == (
        "Config 'MODERATION_SOURCE_STORAGE' has value 'thumbor_aws.storage', "
        "which reads 'TC_AWS_ENDPOINT': set it in thumbor.conf."
    )


def test_a_bucket_that_does_not_exist_is_a_loud_error_naming_every_key_left(aws: AWS) -> None:
    config = Config(
        AWS_RESULT_STORAGE_BUCKET_NAME="no-such-bucket-here",
        AWS_RESULT_STORAGE_S3_ENDPOINT_URL=aws.endpoint,
        AWS_RESULT_STORAGE_S3_ACCESS_KEY_ID="testing",
        AWS_RESULT_STORAGE_S3_SECRET_ACCESS_KEY="testing",
    )
    bucket = aws_caches.buckets(config, None, thumbor_aws.result_storage, 5.0)[
        aws_caches.RESULT_STORAGE
    ]
    keys = bucket.keys(["/unsafe/10x10/a.png", "/unsafe/20x20/a.png"])

    with pytest.raises(aws_caches.DeleteError) as raised:
        bucket.delete(keys)

    assert raised.value.keys == keys
    assert raised.value.configuration
    assert "NoSuchBucket" in str(raised.value)
    assert "s3:DeleteObject" in str(raised.value)


def test_the_readme_policy_allows_what_its_conf_does_with_each_bucket() -> None:
    conf, policy = readme_conf(), readme_policy()
    allowed = {
        (action, resource)
        for statement in policy["Statement"]
        if statement["Effect"] == "Allow"
        for action in _listed(statement["Action"])
        for resource in _listed(statement["Resource"])
    }
    needs = {conf["AWS_LOADER_BUCKET_NAME"]: ("s3:GetObject",)}
    for key in (
        "AWS_STORAGE_BUCKET_NAME",
        "AWS_RESULT_STORAGE_BUCKET_NAME",
        "MODERATION_QUARANTINE_S3_BUCKET",
    ):
        needs[conf[key]] = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")
    distribution = conf["MODERATION_CLOUDFRONT_DISTRIBUTION_ID"]

    missing = [
        (action, resource)
        for bucket, actions in needs.items()
        for action, resource in [
            *((action, f"arn:aws:s3:::{bucket}/*") for action in actions),
            ("s3:ListBucket", f"arn:aws:s3:::{bucket}"),
        ]
        if (action, resource) not in allowed
    ]

    assert missing == []
    assert ("rekognition:DetectModerationLabels", "*") in allowed
    assert any(
        action == "cloudfront:CreateInvalidation"
        and resource.endswith(f":distribution/{distribution}")
        for action, resource in allowed
    )


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value
