"""``migrate-store`` from format 2, whose index held the fingerprints of rejected pictures
only: refused until it runs (SQLite, Redis), read meanwhile (DynamoDB, which has no format
to refuse), then every judged picture is found, its frames marked rejecting or not."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis

from tests.redis_server import RedisCluster, RedisServer, redis_cluster, redis_server  # noqa: F401
from tests.stores.test_dynamodb import aws_environment, endpoint  # noqa: F401
from tests.stores.test_sqlite import PRINT_A, PRINT_B, SHA_A, SHA_B, decision, everything, save
from thumbor_rekognition import stores
from thumbor_rekognition.decision import Status
from thumbor_rekognition.duplicates import probes
from thumbor_rekognition.fingerprint import Print
from thumbor_rekognition.stores import dynamodb, sqlite
from thumbor_rekognition.stores import redis as redis_store

REJECTED = stores.Indexed(SHA_A, PRINT_A, rejecting=True)
APPROVED = stores.Indexed(SHA_B, PRINT_B, rejecting=False)


def found(store: stores.Store, print_: Print) -> list[stores.Indexed]:
    return store.indexed_near(probes([print_], within=0), everything)


def judged(store: stores.Store) -> None:
    """A picture the model rejected and one it approved, as every format keeps them."""
    save(store, decision("host/rejected.jpg", SHA_A, status=Status.REJECTED))
    save(store, decision("host/approved.jpg", SHA_B, status=Status.APPROVED))


# SQLite: format 2 had the column 'indexed' and partial indexes of the rows where it is 1.
_FORMAT_2 = """
DROP INDEX fingerprints_band0;
DROP INDEX fingerprints_band1;
DROP INDEX fingerprints_band2;
DROP INDEX fingerprints_band3;
ALTER TABLE fingerprints RENAME COLUMN rejecting TO indexed;
CREATE INDEX fingerprints_b0 ON fingerprints (b0, coarse) WHERE indexed = 1;
CREATE INDEX fingerprints_b1 ON fingerprints (b1, coarse) WHERE indexed = 1;
CREATE INDEX fingerprints_b2 ON fingerprints (b2, coarse) WHERE indexed = 1;
CREATE INDEX fingerprints_b3 ON fingerprints (b3, coarse) WHERE indexed = 1;
PRAGMA user_version = 2;
"""


def sqlite_format_2(path: str) -> None:
    store = sqlite.Store(path=path)
    judged(store)
    store.close()
    connection = sqlite3.connect(path, isolation_level=None)
    connection.executescript(_FORMAT_2)
    for sha256, print_, indexed in ((SHA_A, PRINT_A, 1), (SHA_B, PRINT_B, 0)):
        coarse = print_.coarse - (1 << 64) if print_.coarse >> 63 else print_.coarse
        connection.execute(
            "INSERT INTO fingerprints VALUES (?, 0, ?, ?, ?, ?, ?, ?, ?)",
            (sha256, print_.to_bytes(), coarse, indexed, *print_.bands()),
        )
    connection.close()


def test_an_sqlite_index_of_format_2_is_refused_then_migrated_to_index_every_picture(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "moderation.sqlite3")
    sqlite_format_2(path)
    store = sqlite.Store(path=path)

    with pytest.raises(stores.StoreUnavailable, match="thumbor-moderation migrate-store"):
        found(store, PRINT_A)
    converted = store.migrate()
    again = store.migrate()
    migrated = sqlite.Store(path=path)

    assert (converted, again) == (2, 0)
    assert found(migrated, PRINT_A) == [REJECTED]
    assert found(migrated, PRINT_B) == [APPROVED]
    assert migrated.fingerprints(SHA_B) == {0: PRINT_B}
    assert migrated.get("host/rejected.jpg") is not None
    store.close()
    migrated.close()


# Redis: format 2 named the rejecting frames 'indexed' in a picture's record and kept
# entries of 56 bytes, of those frames only, in 'fpi:<band>'.


def redis_format_2(url: str, prefix: str, cluster: bool = False) -> None:
    store = redis_store.Store(url=url, prefix=prefix, cluster=cluster)
    judged(store)
    store.close()
    connect = redis.RedisCluster.from_url if cluster else redis.Redis.from_url
    with connect(url) as client:
        client.set(prefix + "format", "2")
        for sha256, print_, indexed in ((SHA_A, PRINT_A, [0]), (SHA_B, PRINT_B, [])):
            record = {"prints": {"0": print_.hex()}, "indexed": indexed}
            client.set(prefix + "fp:{" + sha256 + "}", json.dumps(record))
            for band, value in enumerate(print_.bands() if indexed else ()):
                entry = print_.to_bytes() + bytes.fromhex(sha256)
                client.hset(f"{prefix}fpi:{band}", f"{value:04x}", entry)


def test_a_redis_index_of_format_2_is_refused_then_migrated_to_index_every_picture(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    prefix = f"index-{uuid.uuid4().hex[:12]}:"
    redis_format_2(redis_server.url, prefix)
    store = redis_store.Store(url=redis_server.url, prefix=prefix)

    with pytest.raises(stores.StoreUnavailable, match="thumbor-moderation migrate-store"):
        found(store, PRINT_A)
    converted = store.migrate()
    again = store.migrate()
    migrated = redis_store.Store(url=redis_server.url, prefix=prefix)

    assert (converted, again) == (2, 0)
    assert found(migrated, PRINT_A) == [REJECTED]
    assert found(migrated, PRINT_B) == [APPROVED]
    assert migrated.get("host/rejected.jpg") is not None
    with redis.Redis.from_url(redis_server.url) as client:
        assert [client.exists(f"{prefix}fpi:{band}") for band in range(4)] == [0, 0, 0, 0]
    store.close()
    migrated.close()


def test_a_redis_cluster_index_of_format_2_is_migrated_on_every_master(
    redis_cluster: RedisCluster,  # noqa: F811
) -> None:
    prefix = f"index-{uuid.uuid4().hex[:12]}:"
    url = redis_cluster.nodes[0].url
    redis_format_2(url, prefix, cluster=True)
    store = redis_store.Store(url=url, prefix=prefix, cluster=True)

    with pytest.raises(stores.StoreUnavailable, match="thumbor-moderation migrate-store"):
        found(store, PRINT_A)
    converted = store.migrate()
    migrated = redis_store.Store(url=redis_cluster.nodes[1].url, prefix=prefix, cluster=True)

    assert converted == 2
    assert found(migrated, PRINT_A) == [REJECTED]
    assert found(migrated, PRINT_B) == [APPROVED]
    store.close()
    migrated.close()


# DynamoDB: records without 'x' named the rejecting frames 'i', and the band items held
# entries of 56 bytes, of those frames only.


@pytest.fixture
def table(endpoint: str) -> Iterator[dynamodb.Store]:  # noqa: F811
    store = dynamodb.Store(
        table=f"moderation-{uuid.uuid4().hex[:12]}",
        endpoint_url=endpoint,
        region="us-east-1",
        create_table=True,
        timeout=5.0,
    )
    yield store
    store.close()


def dynamodb_earlier_layout(store: dynamodb.Store, url: str) -> None:
    judged(store)
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    for sha256, print_, indexed in ((SHA_A, PRINT_A, ["0"]), (SHA_B, PRINT_B, [])):
        item = {
            "pk": {"S": "P#" + sha256},
            "sk": {"S": "p"},
            "f": {"M": {"0": {"B": print_.to_bytes()}}},
            "v": {"N": "1"},
        }
        if indexed:
            item["i"] = {"NS": indexed}
        client.put_item(TableName=store.table, Item=item)
        for band, value in enumerate(print_.bands() if indexed else ()):
            client.update_item(
                TableName=store.table,
                Key={"pk": {"S": f"I#{band}#{value:04x}"}, "sk": {"S": "i"}},
                UpdateExpression="ADD e :e",
                ExpressionAttributeValues={
                    ":e": {"BS": [print_.to_bytes() + bytes.fromhex(sha256)]}
                },
            )


def test_a_dynamodb_index_of_the_earlier_layout_is_read_until_migrate_indexes_every_picture(
    table: dynamodb.Store,
    endpoint: str,  # noqa: F811
) -> None:
    dynamodb_earlier_layout(table, endpoint)
    before = (found(table, PRINT_A), found(table, PRINT_B))

    converted = table.migrate()
    again = table.migrate()

    assert before == ([REJECTED], [])
    assert (converted, again) == (2, 0)
    assert found(table, PRINT_A) == [REJECTED]
    assert found(table, PRINT_B) == [APPROVED]
    assert table.fingerprints(SHA_A) == {0: PRINT_A}
