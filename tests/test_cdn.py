"""CDN cache tags and purges through the real Thumbor app.

CloudFront is moto's server on 127.0.0.1 (its invalidations read COMPLETED at once, so
botocore's waiter is not used); Fastly- and Cloudflare-style purge APIs are a real HTTP
receiver. A purge is checked where the CDN would see it: which paths an invalidation
covers, which tag a purge call names, and that tag against the header the images carried.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.moto_server import aws_client, moto_server
from tests.receivers import Received, Receiver
from tests.servers import ThumborServer
from tests.test_notifications import (
    HOOK_PATH,
    add_picture,
    admin_config,
    arg,
    body_of,
    call,
    outbox,
    wait_for,
    waiting,
)
from thumbor_rekognition.cdn import PATHS_PER_PICTURE, WILDCARD, cache_tag
from thumbor_rekognition.stores import result_paths
from thumbor_rekognition.stores.sqlite import Store

pytestmark = pytest.mark.e2e

TAG_HEADER = "Surrogate-Key"
CLOUDFLARE_TAG_HEADER = "Cache-Tag"
TAG_HEADERS = (TAG_HEADER, CLOUDFLARE_TAG_HEADER, "Edge-Cache-Tag")
TAG = re.compile(r"img-[0-9a-f]{24}")
CLOUDFRONT = "thumbor_rekognition.cdn.cloudfront"
HTTP = "thumbor_rekognition.cdn.http"
HTTP_WAITING = f"cdn:{HTTP}.pending"
FASTLY_KEY = "fastly-api-token-for-tests"
FASTLY_PURGE = "/service/SERVICE_ID/purge/"
CLOUDFLARE_PURGE = "/client/v4/zones/ZONE_ID/purge_cache"
CLOUDFLARE_TOKEN = "cloudflare-api-token-for-tests"

RED = (255, 0, 0)
BLUE = (0, 0, 255)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]
SIZES = ("100x75", "60x45", "30x20")


def fastly_call(receiver: Receiver) -> dict[str, Any]:
    return {
        "method": "POST",
        "url": receiver.url + FASTLY_PURGE + "{tag}",
        "headers": {"Fastly-Key": FASTLY_KEY},
    }


def cloudflare_call(receiver: Receiver) -> dict[str, Any]:
    return {
        "method": "POST",
        "url": receiver.url + CLOUDFLARE_PURGE,
        "headers": {
            "Authorization": f"Bearer {CLOUDFLARE_TOKEN}",
            "Content-Type": "application/json",
        },
        "body": '{"tags": ["{tag}"]}',
    }


def serve(server: ThumborServer, name: str, sizes: tuple[str, ...] = SIZES) -> list[str]:
    """Request a picture at these sizes, expect it approved; the request paths."""
    paths = [f"/unsafe/{size}/{quote(name)}" for size in sizes]
    statuses = [server.get(path).header("X-Moderation-Status") for path in paths]
    assert statuses == ["approved"] * len(paths)
    return paths


def recorded(server: ThumborServer, name: str, count: int, timeout: float = 10.0) -> None:
    """Wait until the gate has recorded `count` result paths for the picture.

    Thumbor answers before it stores a result, and the gate records the path after that.
    """
    store = Store(path=str(server.root / "decisions.sqlite3"))
    try:
        wait_for(lambda: len(result_paths(store.results(name))) == count, timeout)
    finally:
        store.close()


def tag_of(server: ThumborServer, path: str, header: str = TAG_HEADER) -> str | None:
    return server.get(path).header(header)


def purges_of(tag: str) -> Callable[[Received], bool]:
    """Fastly-style purge calls for this cache tag."""
    return lambda request: request.path == FASTLY_PURGE + tag


def invalidations(cloudfront: tuple[Any, str], stem: str) -> list[set[str]]:
    """The paths of each invalidation of the distribution that names this picture."""
    client, distribution = cloudfront
    listing = client.list_invalidations(DistributionId=distribution, MaxItems="1000")
    found = []
    for summary in listing["InvalidationList"].get("Items", []):
        invalidation = client.get_invalidation(DistributionId=distribution, Id=summary["Id"])
        paths = set(invalidation["Invalidation"]["InvalidationBatch"]["Paths"].get("Items", []))
        if any(stem in path for path in paths):
            found.append(paths)
    return found


def invalidated(cloudfront: tuple[Any, str], stem: str, count: int = 1) -> list[set[str]]:
    """Wait for `count` invalidations naming the picture, and a moment for any extra one."""
    wait_for(lambda: len(invalidations(cloudfront, stem)) >= count)
    time.sleep(0.5)
    return invalidations(cloudfront, stem)


@pytest.fixture(scope="module")
def cloudfront() -> Iterator[tuple[str, Any, str]]:
    """moto's server, a client of the tests' own, and a distribution in front of Thumbor."""
    with moto_server() as endpoint:
        client = aws_client("cloudfront", endpoint)
        yield endpoint, client, _create_distribution(client)


def _create_distribution(client: Any, reference: str = "thumbor-rekognition-tests") -> str:
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
            "CallerReference": reference,
            "Comment": "Thumbor behind CloudFront",
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


@pytest.fixture(scope="module")
def distribution(cloudfront: tuple[str, Any, str]) -> tuple[Any, str]:
    _, client, distribution_id = cloudfront
    return client, distribution_id


@pytest.fixture(scope="module")
def module_receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def _server(root: Path, config: dict[str, Any]) -> Iterator[ThumborServer]:
    thumbor = ThumborServer(root, config).start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log
    assert FASTLY_KEY not in thumbor.log
    assert CLOUDFLARE_TOKEN not in thumbor.log


@pytest.fixture(scope="module")
def edge(
    module_root: Path,
    images: Path,
    module_fake: FakeRekognition,
    module_receiver: Receiver,
    cloudfront: tuple[str, Any, str],
) -> Iterator[ThumborServer]:
    """Thumbor behind CloudFront and a Fastly-style CDN, tagging with Surrogate-Key."""
    endpoint, _, distribution_id = cloudfront
    root = module_root / "edge"
    config = admin_config(root, images, module_fake.url)
    config.update(
        {
            "MODERATION_CACHE_TAG_HEADER": TAG_HEADER,
            "MODERATION_CDN_PURGERS": [CLOUDFRONT, HTTP],
            "MODERATION_CLOUDFRONT_DISTRIBUTION_ID": distribution_id,
            "MODERATION_CLOUDFRONT_ENDPOINT_URL": endpoint,
            "MODERATION_HTTP_PURGE": fastly_call(module_receiver),
            # Pending pictures are served: their responses must carry no tag either.
            "MODERATION_ON_ERROR": "allow",
        }
    )
    yield from _server(root, config)


@pytest.fixture(scope="module")
def cloudflare(
    module_root: Path, images: Path, module_fake: FakeRekognition, module_receiver: Receiver
) -> Iterator[ThumborServer]:
    """Thumbor behind a Cloudflare-style CDN: purge by tag with a JSON body."""
    root = module_root / "cloudflare"
    config = admin_config(root, images, module_fake.url)
    config.update(
        {
            "MODERATION_CACHE_TAG_HEADER": CLOUDFLARE_TAG_HEADER,
            "MODERATION_CDN_PURGERS": [HTTP],
            "MODERATION_HTTP_PURGE": cloudflare_call(module_receiver),
        }
    )
    yield from _server(root, config)


@pytest.fixture(scope="module")
def plain(module_root: Path, images: Path, module_fake: FakeRekognition) -> Iterator[ThumborServer]:
    """Thumbor without MODERATION_CACHE_TAG_HEADER."""
    root = module_root / "plain"
    yield from _server(root, admin_config(root, images, module_fake.url))


@dataclass
class Unstored:
    """Thumbor keeping no result of unsafe URLs, its own CloudFront distribution, a
    Fastly-style purge API and webhooks, both at its own receiver."""

    server: ThumborServer
    receiver: Receiver
    distribution: tuple[Any, str]


# Thumbor's default: results of unsafe URLs are not stored; and no result storage at all.
UNSTORED = {
    "unsafe-not-stored": {"RESULT_STORAGE_STORES_UNSAFE": False},
    "no-result-storage": {"RESULT_STORAGE": None, "MODERATION_SOURCE_RESULT_STORAGE": None},
}


@pytest.fixture(scope="module", params=sorted(UNSTORED))
def unstored(
    request: pytest.FixtureRequest,
    module_root: Path,
    images: Path,
    module_fake: FakeRekognition,
    cloudfront: tuple[str, Any, str],
) -> Iterator[Unstored]:
    endpoint, client, _ = cloudfront
    name: str = request.param
    root = module_root / name
    distribution = _create_distribution(client, name)
    with Receiver() as receiver:
        config = admin_config(root, images, module_fake.url)
        config.update(
            {
                "MODERATION_CACHE_TAG_HEADER": TAG_HEADER,
                "MODERATION_CDN_PURGERS": [CLOUDFRONT, HTTP],
                "MODERATION_CLOUDFRONT_DISTRIBUTION_ID": distribution,
                "MODERATION_CLOUDFRONT_ENDPOINT_URL": endpoint,
                "MODERATION_HTTP_PURGE": fastly_call(receiver),
                "MODERATION_WEBHOOK_URL": receiver.url + HOOK_PATH,
                **UNSTORED[name],
            }
        )
        for key in [key for key, value in config.items() if value is None]:
            del config[key]
        for server in _server(root, config):
            yield Unstored(server, receiver, (client, distribution))


@pytest.fixture
def receiver(module_receiver: Receiver, edge: ThumborServer) -> Receiver:
    """The purge API, answering 200, once what earlier tests queued is delivered."""
    module_receiver.answer_ok()
    wait_for(lambda: waiting(edge) == 0, timeout=20)
    module_receiver.clear()
    return module_receiver


# Cache tags


def test_every_size_of_an_approved_picture_carries_the_same_cache_tag(
    edge: ThumborServer, images: Path
) -> None:
    name, other = add_picture(images, BLUE, "tagged"), add_picture(images, BLUE, "tagged")

    tags = [tag_of(edge, path) for path in serve(edge, name)]
    again = tag_of(edge, f"/unsafe/{SIZES[0]}/{name}")
    other_tags = [tag_of(edge, path) for path in serve(edge, other, SIZES[:2])]

    assert tags[0] is not None
    assert TAG.fullmatch(tags[0])
    assert tags == [tags[0]] * 3
    assert again == tags[0]
    assert other_tags == [other_tags[0]] * 2
    assert other_tags[0] != tags[0]


def test_rejected_and_pending_images_carry_no_cache_tag(
    edge: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    fake.respond(RED, NUDITY)
    rejected = add_picture(images, RED, "untagged-rejected")
    pending = add_picture(images, BLUE, "untagged-pending")
    overridden = add_picture(images, BLUE, "untagged-overridden")
    serve(edge, overridden, SIZES[:1])
    assert call(edge, "PUT", f"/image?url={arg(overridden)}", {"status": "rejected"}).status == 200
    fake.fail("internal", times=1)

    responses = {
        # First: the backend's next answer is an error.
        "pending": edge.get(f"/unsafe/60x45/{pending}"),
        "rejected": edge.get(f"/unsafe/60x45/{rejected}"),
        "overridden": edge.get(f"/unsafe/{SIZES[0]}/{overridden}"),
    }

    assert {name: r.header("X-Moderation-Status") for name, r in responses.items()} == {
        "pending": "pending",
        "rejected": "rejected",
        "overridden": "rejected",
    }
    assert responses["pending"].status == 200
    assert {name: r.header(TAG_HEADER) for name, r in responses.items()} == dict.fromkeys(responses)


def test_no_cache_tag_is_sent_when_the_header_is_not_configured(
    plain: ThumborServer, images: Path
) -> None:
    name = add_picture(images, BLUE, "plain")

    response = plain.get(f"/unsafe/60x45/{name}")

    assert response.header("X-Moderation-Status") == "approved"
    assert [response.header(header) for header in TAG_HEADERS] == [None, None, None]
    assert not [value for value in response.headers.values() if TAG.fullmatch(value)]


# Purges


def test_rejecting_an_approved_picture_invalidates_exactly_its_result_paths_once(
    edge: ThumborServer, receiver: Receiver, distribution: tuple[Any, str], images: Path
) -> None:
    name = add_picture(images, BLUE, "invalidated")
    paths = serve(edge, name)
    recorded(edge, name, 3)

    put = call(edge, "PUT", f"/image?url={arg(name)}", {"status": "rejected", "note": "spam"})
    found = invalidated(distribution, name)

    assert put.status == 200
    assert found == [set(paths)]


def test_a_fastly_style_purge_names_the_tag_the_images_carried(
    edge: ThumborServer, receiver: Receiver, images: Path
) -> None:
    name = add_picture(images, BLUE, "fastly")
    paths = serve(edge, name)
    tag = tag_of(edge, paths[0])
    assert tag is not None

    assert call(edge, "PUT", f"/image?url={arg(name)}", {"status": "rejected"}).status == 200
    [purge] = receiver.wait_for(1, purges_of(tag))
    time.sleep(0.5)

    assert purge.method == "POST"
    assert purge.headers["Fastly-Key"] == FASTLY_KEY
    assert receiver.requests == [purge]


def test_a_cloudflare_style_purge_names_the_tag_in_its_json_body(
    cloudflare: ThumborServer, module_receiver: Receiver, images: Path
) -> None:
    wait_for(lambda: waiting(cloudflare) == 0)
    module_receiver.clear()
    name = add_picture(images, BLUE, "cloudflare")
    paths = serve(cloudflare, name, SIZES[:2])
    tags = [tag_of(cloudflare, path, CLOUDFLARE_TAG_HEADER) for path in paths]

    assert call(cloudflare, "PUT", f"/image?url={arg(name)}", {"status": "rejected"}).status == 200
    [purge] = module_receiver.wait_for(1, lambda r: r.path == CLOUDFLARE_PURGE)

    assert tags[0] is not None
    assert tags == [tags[0]] * 2
    assert purge.method == "POST"
    assert purge.headers["Authorization"] == f"Bearer {CLOUDFLARE_TOKEN}"
    assert purge.headers["Content-Type"] == "application/json"
    assert json.loads(purge.body) == {"tags": [tags[0]]}


def test_rejecting_a_picture_that_was_never_served_purges_nothing(
    edge: ThumborServer,
    receiver: Receiver,
    distribution: tuple[Any, str],
    images: Path,
    fake: FakeRekognition,
) -> None:
    fake.respond(RED, NUDITY)
    name = add_picture(images, RED, "never-served")
    assert edge.get(f"/unsafe/60x45/{name}").header("X-Moderation-Status") == "rejected"
    # A served picture rejected just after: its purges show that purging works, and
    # anything queued for the first picture would have been delivered before them.
    served = add_picture(images, BLUE, "served-after")
    paths = serve(edge, served, SIZES[:1])
    tag = tag_of(edge, paths[0])
    assert tag is not None
    recorded(edge, served, 1)

    put = call(edge, "PUT", f"/image?url={arg(name)}", {"status": "rejected", "note": "sure"})
    assert call(edge, "PUT", f"/image?url={arg(served)}", {"status": "rejected"}).status == 200
    found = invalidated(distribution, served)
    receiver.wait_for(1, purges_of(tag))
    wait_for(lambda: waiting(edge) == 0)

    assert put.status == 200
    assert found == [set(paths)]
    assert [request.path for request in receiver.requests] == [FASTLY_PURGE + tag]
    assert invalidations(distribution, name) == []


def test_a_failing_purge_is_retried_until_it_succeeds_and_waits_in_the_stats_meanwhile(
    edge: ThumborServer, receiver: Receiver, images: Path
) -> None:
    name = add_picture(images, BLUE, "retried")
    paths = serve(edge, name, SIZES[:1])
    tag = tag_of(edge, paths[0])
    assert tag is not None
    receiver.fail(500, times=2)

    assert call(edge, "PUT", f"/image?url={arg(name)}", {"status": "rejected"}).status == 200
    receiver.wait_for(1, purges_of(tag))
    waiting_meanwhile = outbox(edge)
    attempts = receiver.wait_for(3, purges_of(tag), timeout=15)
    wait_for(lambda: waiting(edge) == 0)

    assert waiting_meanwhile.get(HTTP_WAITING) == 1
    assert [attempt.status for attempt in attempts] == [500, 500, 200]
    assert all(attempt.headers["Fastly-Key"] == FASTLY_KEY for attempt in attempts)
    assert attempts[1].at - attempts[0].at >= 0.75
    assert attempts[2].at - attempts[1].at >= 1.5
    assert outbox(edge) == {}


@pytest.mark.parametrize(
    ("operation", "method", "route"),
    [("forgetting", "DELETE", "/image"), ("purging", "POST", "/purge")],
)
def test_forgetting_or_purging_an_approved_picture_purges_the_cdn(
    edge: ThumborServer,
    receiver: Receiver,
    distribution: tuple[Any, str],
    images: Path,
    operation: str,
    method: str,
    route: str,
) -> None:
    name = add_picture(images, BLUE, operation)
    paths = serve(edge, name, SIZES[:2])
    tag = tag_of(edge, paths[0])
    assert tag is not None
    recorded(edge, name, 2)

    response = call(edge, method, f"{route}?url={arg(name)}")
    found = invalidated(distribution, name)
    purges = receiver.wait_for(1, purges_of(tag))

    assert response.status in (200, 204)
    assert found == [set(paths)]
    assert len(purges) == 1


def test_a_picture_whose_name_needs_escaping_is_invalidated_at_the_path_viewers_request(
    edge: ThumborServer, receiver: Receiver, distribution: tuple[Any, str], images: Path
) -> None:
    serial = str(time.monotonic_ns())
    name = f"café au lait-{serial}.png"
    (images / name).write_bytes(picture(BLUE, size=(151, 97)))
    paths = serve(edge, name, SIZES[:1])
    recorded(edge, name, 1)

    assert call(edge, "PUT", f"/image?url={arg(name)}", {"status": "rejected"}).status == 200
    found = invalidated(distribution, serial)

    assert paths == [f"/unsafe/{SIZES[0]}/caf%C3%A9%20au%20lait-{serial}.png"]
    assert found == [set(paths)]


# Purges of paths served but not kept in result storage


def test_rejecting_a_picture_served_without_result_storage_purges_every_path_served(
    unstored: Unstored, images: Path
) -> None:
    name = add_picture(images, BLUE, "unstored")
    paths = serve(unstored.server, name)
    tag = tag_of(unstored.server, paths[0])
    assert tag is not None
    recorded(unstored.server, name, 3)

    put = call(unstored.server, "PUT", f"/image?url={arg(name)}", {"status": "rejected"})
    found = invalidated(unstored.distribution, name)
    [purge] = unstored.receiver.wait_for(1, purges_of(tag))
    [hook] = unstored.receiver.wait_for(1, _rejection_of(name))

    assert put.status == 200
    assert not list((unstored.server.root / "result").rglob("*.*"))
    assert found == [set(paths)]
    assert purge.status == 200
    assert sorted(body_of(hook)["paths"]) == sorted(paths)


def test_past_the_bound_of_paths_a_purge_invalidates_every_path(
    unstored: Unstored, images: Path
) -> None:
    name = add_picture(images, BLUE, "bound")
    sizes = tuple(f"{width}x0" for width in range(1, PATHS_PER_PICTURE + 51))
    paths = serve(unstored.server, name, sizes)
    tag = tag_of(unstored.server, paths[0])
    assert tag is not None
    store = Store(path=str(unstored.server.root / "decisions.sqlite3"))
    # Written one after another on the store's thread, which a busy machine slows down.
    wait_for(lambda: len(result_paths(store.results(name))) >= PATHS_PER_PICTURE, 60.0)
    # The bound holds per process while it remembers what it recorded: a path or two
    # may be recorded again after the picture's decision is saved anew.
    count = len(result_paths(store.results(name)))
    store.close()

    put = call(unstored.server, "PUT", f"/image?url={arg(name)}", {"status": "rejected"})
    [hook] = unstored.receiver.wait_for(1, _rejection_of(name))
    unstored.receiver.wait_for(1, purges_of(tag))
    wait_for(lambda: waiting(unstored.server) == 0)

    assert put.status == 200
    assert PATHS_PER_PICTURE <= count < len(paths)
    assert body_of(hook)["paths"] == [WILDCARD]
    assert [{WILDCARD}] == [
        found for found in invalidations(unstored.distribution, "") if WILDCARD in found
    ]
    assert f"{name} was served at {PATHS_PER_PICTURE} paths or more" in unstored.server.log


def _rejection_of(name: str) -> Callable[[Received], bool]:
    """The webhook telling that this picture became rejected."""
    return lambda request: (
        request.path == HOOK_PATH
        and body_of(request)["key"] == name
        and body_of(request)["status"] == "rejected"
    )


# Each destination on its own: a slow webhook receiver holds up webhooks only.

SLOW_ANSWER = 1.5
BACKLOG = 20


def test_a_slow_webhook_receiver_does_not_hold_up_cdn_purges(
    tmp_path: Path, fake: FakeRekognition
) -> None:
    root = tmp_path / "slow-receiver"
    images = root / "images"
    images.mkdir(parents=True)
    with Receiver() as hooks, Receiver() as edge:
        hooks.delay(SLOW_ANSWER)
        config = admin_config(root, images, fake.url)
        config.update(
            {
                "MODERATION_WEBHOOK_URL": hooks.url + HOOK_PATH,
                "MODERATION_CDN_PURGERS": [HTTP],
                "MODERATION_HTTP_PURGE": fastly_call(edge),
            }
        )
        for server in _server(root, config):
            # Every first view queues a webhook: a backlog the slow receiver takes a while over.
            pictures = [add_picture(images, BLUE, "backlog") for _ in range(BACKLOG)]
            for name in pictures:
                serve(server, name, sizes=("40x30",))
            rejected = pictures[-3:]
            for name in rejected:
                answer = call(server, "PUT", f"/image?url={arg(name)}", {"status": "rejected"})
                assert answer.status == 200

            purged = edge.wait_for(3, timeout=60)
            hooks_by_then = len(hooks.requests)
            hooks.wait_for(BACKLOG + 3, timeout=120)

    tags = {FASTLY_PURGE + cache_tag(name): name for name in rejected}
    purge_at = {tags[purge.path]: purge.at for purge in purged}
    rejection_at = {
        body_of(hook)["key"]: hook.at
        for hook in hooks.requests
        if body_of(hook)["status"] == "rejected"
    }
    assert sorted(purge_at) == sorted(rejected)
    assert hooks_by_then < BACKLOG + 3
    assert all(purge_at[name] < rejection_at[name] for name in rejected)
