"""The decision store contract, the outbox and shared values, run against the DynamoDB
store on moto's server (the real boto3 client over a socket), and what only it does:
its table, its change feed, its item sizes, its errors.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from thumbor.config import Config

from tests.moto_server import aws_client, moto_server
from tests.servers import free_port
from tests.stores.test_compare_and_set import CompareAndSetContract
from tests.stores.test_outbox import OutboxContract
from tests.stores.test_sqlite import (
    HASH_A,
    PRINT_A,
    SHA_A,
    SHA_B,
    MakeStore,
    StoreContract,
    decision,
    event,
    everything,
    save,
)
from thumbor_rekognition import stores
from thumbor_rekognition.config import ConfigurationError, Settings
from thumbor_rekognition.decision import (
    ContentType,
    Decision,
    Label,
    Pdq,
    Reason,
    Source,
    Status,
)
from thumbor_rekognition.duplicates import probes
from thumbor_rekognition.stores import dynamodb

OpenStore = Callable[..., dynamodb.Store]


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials for moto, and none of the machine's AWS settings."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def open_store(endpoint: str) -> Iterator[OpenStore]:
    """Store(...) on moto's server, closed at the end of the test."""
    opened: list[dynamodb.Store] = []

    def open_store(**options: Any) -> dynamodb.Store:
        options.setdefault("endpoint_url", endpoint)
        options.setdefault("region", "us-east-1")
        options.setdefault("timeout", 5.0)
        store = dynamodb.Store(**options)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def table_store(open_store: OpenStore) -> MakeStore:
    """A table of the test's own, created by the first store that opens it."""
    table = f"moderation-{uuid.uuid4().hex[:12]}"
    return lambda: open_store(table=table, create_table=True)


class TestDynamoDBStore(StoreContract):
    @pytest.fixture
    def make_store(self, table_store: MakeStore) -> MakeStore:
        return table_store

    def forget_order_by_time(self, store: stores.Store) -> None:
        assert isinstance(store, dynamodb.Store)
        client = store._client.get()
        entries = [
            {"pk": item["pk"], "sk": item["sk"]}
            for status in ("pending", "rejected")
            for item in store._query("T#" + status)
        ]
        assert entries
        for key in [*entries, {"pk": {"S": "M#timed"}, "sk": {"S": "m"}}]:
            client.delete_item(TableName=store.table, Key=key)


def test_an_entry_by_time_a_race_left_behind_is_skipped_and_dropped(
    table_store: MakeStore,
) -> None:
    store = table_store()
    assert isinstance(store, dynamodb.Store)
    save(store, decision("host/a.jpg", status=Status.PENDING, updated_at=50.0))
    save(store, decision("host/b.jpg", SHA_B, status=Status.PENDING, updated_at=60.0))
    # What a save that lost a race to a later one can leave: the entry of an earlier time.
    left = {"pk": {"S": "T#pending"}, "sk": {"S": stores.time_code(10.0) + "host/b.jpg"}}
    store._client.get().put_item(TableName=store.table, Item=left)

    page, cursor = store.page_by_time(Status.PENDING, limit=5)

    assert ([d.key for d in page], cursor) == (["host/a.jpg", "host/b.jpg"], None)
    assert [item["sk"]["S"][16:] for item in store._query("T#pending")] == [
        "host/a.jpg",
        "host/b.jpg",
    ]


def test_a_key_too_long_for_a_sort_key_is_listed_by_time(table_store: MakeStore) -> None:
    store = table_store()
    long_key = "host/" + "x" * 1500 + ".jpg"
    save(store, decision(long_key, status=Status.REJECTED, updated_at=20.0))
    save(store, decision("host/a.jpg", SHA_B, status=Status.REJECTED, updated_at=30.0))

    first, cursor = store.page_by_time(Status.REJECTED, limit=1)
    second, last = store.page_by_time(Status.REJECTED, limit=1, cursor=cursor)

    assert [d.key for d in first + second] == [long_key, "host/a.jpg"]
    assert last is None


class TestDynamoDBOutbox(OutboxContract):
    @pytest.fixture
    def make_store(self, table_store: MakeStore) -> MakeStore:
        return table_store


class TestDynamoDBCompareAndSet(CompareAndSetContract):
    @pytest.fixture
    def make_store(self, table_store: MakeStore) -> MakeStore:
        return table_store


# The change feed.


@pytest.mark.timing
def test_a_change_saved_by_one_store_reaches_another_stores_listener_within_a_second(
    table_store: MakeStore,
) -> None:
    listening, writer = table_store(), table_store()
    heard: queue.Queue[str | None] = queue.Queue()
    listening.subscribe(heard.put)
    time.sleep(dynamodb.POLL_SECONDS)

    save(writer, decision("host/changed.jpg"))
    # Saved: the change is in the feed (its item is the save's last write).
    started = time.monotonic()
    first = heard.get(timeout=5.0)
    arrived = time.monotonic() - started
    save(listening, decision("host/own.jpg"))
    writer.delete("host/changed.jpg", event(None, None))
    second = heard.get(timeout=5.0)

    assert (first, second) == ("host/changed.jpg", "host/changed.jpg")
    assert arrived < 2 * dynamodb.Store.propagation_seconds
    time.sleep(3 * dynamodb.POLL_SECONDS)
    assert heard.empty()


def test_a_listener_is_told_anything_may_have_changed_once_the_table_is_back(
    table_store: MakeStore, endpoint: str
) -> None:
    store = table_store()
    save(store, decision("host/a.jpg"))
    table = store.table
    heard: queue.Queue[str | None] = queue.Queue()
    store.subscribe(heard.put)
    time.sleep(dynamodb.POLL_SECONDS)
    client = aws_client("dynamodb", endpoint)
    client.delete_table(TableName=table)
    time.sleep(3 * dynamodb.POLL_SECONDS)

    client.create_table(**dynamodb.table_definition(table))
    told = heard.get(timeout=5.0)

    assert told is None


# The table.


def test_a_missing_table_is_an_unavailable_store_that_says_how_to_make_it(
    open_store: OpenStore,
) -> None:
    store = open_store(table="never-created", create_table=False)

    with pytest.raises(stores.StoreUnavailable, match=r"never-created.*docs/stores.md") as raised:
        store.get("host/a.jpg")

    assert "MODERATION_DYNAMODB_CREATE_TABLE" in str(raised.value)


def test_a_created_table_is_on_demand_with_item_expiry(
    open_store: OpenStore, endpoint: str
) -> None:
    table = f"moderation-{uuid.uuid4().hex[:12]}"

    open_store(table=table, create_table=True).get("host/a.jpg")

    client = aws_client("dynamodb", endpoint)
    described = client.describe_table(TableName=table)["Table"]
    expiry = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert {k["AttributeName"]: k["KeyType"] for k in described["KeySchema"]} == {
        "pk": "HASH",
        "sk": "RANGE",
    }
    assert (expiry["TimeToLiveStatus"], expiry["AttributeName"]) == ("ENABLED", "ttl")


def test_a_table_made_by_hand_from_the_readme_definition_is_used_as_it_is(
    open_store: OpenStore, endpoint: str
) -> None:
    table = f"moderation-{uuid.uuid4().hex[:12]}"
    aws_client("dynamodb", endpoint).create_table(**dynamodb.table_definition(table))
    store = open_store(table=table, create_table=False)

    saved = save(store, decision("host/a.jpg"))

    assert store.get("host/a.jpg") == saved


def test_an_unreachable_endpoint_makes_calls_unavailable_within_seconds(
    open_store: OpenStore,
) -> None:
    store = open_store(
        table="moderation", endpoint_url=f"http://127.0.0.1:{free_port()}", timeout=0.3
    )
    started = time.monotonic()

    with pytest.raises(stores.StoreUnavailable):
        store.get("host/a.jpg")

    assert time.monotonic() - started < 10.0


def test_the_configured_store_module_loads_a_dynamodb_store_with_the_configured_settings(
    endpoint: str, open_store: OpenStore
) -> None:
    config = Config()
    config.MODERATION_DECISION_STORE = "thumbor_rekognition.stores.dynamodb"
    config.MODERATION_DYNAMODB_TABLE = f"configured-{uuid.uuid4().hex[:8]}"
    config.MODERATION_DYNAMODB_REGION = "eu-west-1"
    config.MODERATION_DYNAMODB_ENDPOINT_URL = endpoint
    config.MODERATION_DYNAMODB_CREATE_TABLE = "True"

    store = stores.load_store(Settings.from_config(config))
    saved = save(store, decision("host/a.jpg"))
    store.close()
    in_region = open_store(table=config.MODERATION_DYNAMODB_TABLE, region="eu-west-1")
    elsewhere = boto3.session.Session().client(
        "dynamodb", region_name="us-east-1", endpoint_url=endpoint
    )

    assert isinstance(store, dynamodb.Store)
    assert (store.table, store.region, store.endpoint_url) == (
        config.MODERATION_DYNAMODB_TABLE,
        "eu-west-1",
        endpoint,
    )
    assert in_region.get("host/a.jpg") == saved
    with pytest.raises(elsewhere.exceptions.ResourceNotFoundException):
        elsewhere.describe_table(TableName=store.table)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("MODERATION_DYNAMODB_TABLE", "", "needs a table"),
        ("MODERATION_DYNAMODB_TABLE", "arn:aws:dynamodb:table/x", "Not a DynamoDB table name"),
        ("MODERATION_DYNAMODB_ENDPOINT_URL", "localhost 8000", "Not a URL"),
    ],
)
def test_a_bad_table_or_endpoint_stops_the_store_naming_the_key(
    key: str, value: str, message: str
) -> None:
    config = Config()
    config.MODERATION_DECISION_STORE = "thumbor_rekognition.stores.dynamodb"
    config.MODERATION_DYNAMODB_TABLE = "moderation"
    setattr(config, key, value)

    with pytest.raises(ConfigurationError, match=f"{key}.*{message}"):
        stores.load_store(Settings.from_config(config))


def test_create_table_setting_read_from_the_environment_as_a_string_is_a_bool() -> None:
    for text, expected in [("False", False), ("false", False), ("True", True), ("1", True)]:
        config = Config()
        config.MODERATION_DYNAMODB_CREATE_TABLE = text

        assert Settings.from_config(config).dynamodb_create_table is expected

    config = Config()
    config.MODERATION_DYNAMODB_CREATE_TABLE = "perhaps"
    with pytest.raises(ConfigurationError, match="MODERATION_DYNAMODB_CREATE_TABLE"):
        Settings.from_config(config)


# Keys and paths longer than DynamoDB's sort keys allow.


def test_keys_and_paths_longer_than_a_sort_key_are_kept_whole(table_store: MakeStore) -> None:
    store = table_store()
    long_key = "host/" + "é" * 700 + ".jpg"
    other_key = "host/" + "é" * 700 + "-other.jpg"
    long_path = "/unsafe/300x200/" + long_key
    saved = save(store, decision(long_key))
    save(store, decision(other_key, sha256="b" * 64))

    store.add_results(long_key, [long_path, "/short"])

    assert store.get(long_key) == saved
    assert store.find_by_hash(saved.sha256) == saved
    # Past the cut, two keys are ordered by their hashes: both are listed once.
    assert sorted(item.key for item in store.page(limit=10)[0]) == sorted([long_key, other_key])
    assert store.results(long_key) == [long_path, "/short"]


# The index of rejected pictures.


class Interrupted(dynamodb.Store):
    """A store that lets another put land between its read of a picture's record and its
    own writes."""

    meanwhile: Callable[[], None] | None = None

    def _item(self, pk: str, sk: str) -> dict[str, Any] | None:
        item = super()._item(pk, sk)
        if pk.startswith("K#") and self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return item


def test_a_fingerprint_put_that_another_overtook_leaves_the_index_as_its_record_says(
    table_store: MakeStore, endpoint: str
) -> None:
    other = table_store()
    other.put_fingerprints(SHA_A, {0: PRINT_A}, rejecting={0})
    late = Interrupted(table=other.table, endpoint_url=endpoint, region="us-east-1", timeout=5.0)
    late.meanwhile = lambda: other.put_fingerprints(SHA_A, {0: PRINT_A}, rejecting=())

    late.put_fingerprints(SHA_A, {0: PRINT_A}, rejecting={0})

    found = other.indexed_near(probes([PRINT_A], within=0), everything)
    late.close()
    assert found == [stores.Indexed(SHA_A, HASH_A, rejecting=True)]


# The decision item's own encoding.


@pytest.mark.parametrize(
    "original",
    [
        decision("host/a.jpg"),
        decision("host/a.jpg", sha256="").replace(url="host/a.jpg"),
        decision("host/a.jpg").replace(url="https://other.example/a.jpg?x=1"),
        Decision(
            key="example.com/été.gif",
            url="http://example.com/été.gif",
            sha256="c" * 64,
            status=Status.PENDING,
            source=Source.AUTO,
            labels=(
                Label("Explicit", "", 1, 97.25, 3),
                Label("Explicit Nudity", "Explicit", 2, 50.0),
            ),
            reasons=(
                Reason("Explicit", "", 97.25, 0.5, "explicit", 3, "explicit_nudity"),
                Reason("Unjudged scenes", "", 24.0, 20.0, "unjudged_scenes"),
                Reason("Suggestive", "", 60.0, 0.5, "suggestive", 1),
            ),
            backend="rekognition",
            model_version="7.0",
            policy="0123456789abcdef",
            min_confidence=42.0,
            width=10,
            height=20,
            error="retryable: x",
            created_at=1.0,
            updated_at=2.5,
            content_types=(ContentType("Animated", 88.5, 2), ContentType("Illustrated", 12.0)),
            project_version="arn:aws:rekognition:eu-west-1:1:project/p/version/v1/1",
        ),
        decision("host/copy.jpg", status=Status.REJECTED, source=Source.DUPLICATE).replace(
            duplicate_of="host/o.jpg", similarity=0.9688
        ),
        decision("host/listed.jpg", status=Status.REJECTED, source=Source.BANK).replace(
            reasons=(Reason("known-bad", "0f" * 32 + " (case 1)", 98.4, 0.8789, "hash_bank"),),
            pdq=(Pdq("0f" * 32, 93, 0), Pdq("", 21, 1)),
        ),
    ],
    ids=["plain", "no-hash-url-is-key", "other-url", "every-field", "duplicate", "bank"],
)
def test_every_field_of_a_decision_survives_its_compact_item(original: Decision) -> None:
    body = dynamodb.encode(original)

    assert dynamodb.decode(original.key, original.sha256, body) == original
