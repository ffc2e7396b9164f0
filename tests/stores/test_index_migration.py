"""``migrate-store`` and the former fingerprint's index (formats 2 and 3, a 24-byte DCT
fingerprint under four 16-bit bands): nothing matches by it any more; the index holds
PDQ hashes, and migrate-store deletes the former one. A format-2 file or database is
refused until it runs (SQLite, Redis); a format-3 one is read as it is meanwhile."""

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
from tests.stores.test_sqlite import PRINT_A, SHA_A, SHA_B, decision, everything, save
from thumbor_rekognition import stores
from thumbor_rekognition.cli.old_fingerprint import Print as FormerPrint
from thumbor_rekognition.decision import Status
from thumbor_rekognition.duplicates import probes
from thumbor_rekognition.fingerprint import Print
from thumbor_rekognition.stores import dynamodb, sqlite
from thumbor_rekognition.stores import redis as redis_store

FORMER = {SHA_A: FormerPrint(0x0123_4567_89AB_CDEF, 7), SHA_B: FormerPrint(0xFEDC_BA98, 9)}


def found(store: stores.Store, print_: Print) -> list[stores.Indexed]:
    return store.indexed_near(probes([print_], within=0), everything)


def judged(store: stores.Store) -> None:
    """A picture the model rejected and one it approved, as every format keeps them."""
    save(store, decision("host/rejected.jpg", SHA_A, status=Status.REJECTED))
    save(store, decision("host/approved.jpg", SHA_B, status=Status.APPROVED))


def assert_pdq_index_works(store: stores.Store) -> None:
    store.put_fingerprints(SHA_A, {0: PRINT_A}, rejecting={0})
    assert found(store, PRINT_A) == [stores.Indexed(SHA_A, Print(PRINT_A.value), True)]


# SQLite: the table 'fingerprints'; format 2 named its column 'rejecting' 'indexed'.
_FORMER_TABLE = """
CREATE TABLE fingerprints (
    sha256 TEXT NOT NULL, frame INTEGER NOT NULL, print BLOB NOT NULL,
    coarse INTEGER NOT NULL, {flag} INTEGER NOT NULL, b0 INTEGER NOT NULL,
    b1 INTEGER NOT NULL, b2 INTEGER NOT NULL, b3 INTEGER NOT NULL,
    PRIMARY KEY (sha256, frame)
);
"""


def sqlite_former(path: str, version: int) -> None:
    store = sqlite.Store(path=path)
    judged(store)
    store.close()
    connection = sqlite3.connect(path, isolation_level=None)
    flag = "indexed" if version == 2 else "rejecting"
    connection.executescript(_FORMER_TABLE.format(flag=flag) + f"PRAGMA user_version = {version};")
    for sha256, print_ in FORMER.items():
        connection.execute(
            "INSERT INTO fingerprints VALUES (?, 0, ?, ?, 1, ?, ?, ?, ?)",
            (sha256, print_.to_bytes(), print_.coarse, *print_.bands()),
        )
    connection.close()


def former_table(path: str) -> bool:
    with sqlite3.connect(path) as connection:
        return bool(
            connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'fingerprints'"
            ).fetchone()
        )


def test_an_sqlite_file_of_format_2_is_refused_then_its_former_index_dropped(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "moderation.sqlite3")
    sqlite_former(path, version=2)
    store = sqlite.Store(path=path)

    with pytest.raises(stores.StoreUnavailable, match="thumbor-moderation migrate-store"):
        found(store, PRINT_A)
    store.migrate()
    store.migrate()
    migrated = sqlite.Store(path=path)

    assert not former_table(path)
    assert migrated.fingerprints(SHA_A) == {}
    assert migrated.get("host/rejected.jpg") is not None
    assert_pdq_index_works(migrated)
    store.close()
    migrated.close()


def test_an_sqlite_file_of_format_3_works_at_once_and_migrate_drops_the_former_index(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "moderation.sqlite3")
    sqlite_former(path, version=3)
    store = sqlite.Store(path=path)

    before = found(store, PRINT_A), store.fingerprints(SHA_A)
    kept_before = former_table(path)
    store.migrate()
    store.migrate()

    assert before == ([], {})
    assert kept_before
    assert not former_table(path)
    assert_pdq_index_works(store)
    store.close()


# Redis: a picture's record 'fp:{<sha256>}', the bands' hashes 'fpx:<band>' (format 3) or
# 'fpi:<band>' (format 2).


def redis_former(url: str, prefix: str, version: int, cluster: bool = False) -> None:
    store = redis_store.Store(url=url, prefix=prefix, cluster=cluster)
    judged(store)
    store.close()
    connect = redis.RedisCluster.from_url if cluster else redis.Redis.from_url
    band_key = "fpi" if version == 2 else "fpx"
    with connect(url) as client:
        client.set(prefix + "format", str(version))
        for sha256, print_ in FORMER.items():
            record = {"prints": {"0": print_.hex()}, "rejecting": [0]}
            client.set(prefix + "fp:{" + sha256 + "}", json.dumps(record))
            for band, value in enumerate(print_.bands()):
                entry = print_.to_bytes() + bytes.fromhex(sha256) + b"\x01"
                client.hset(f"{prefix}{band_key}:{band}", f"{value:04x}", entry)


def former_keys(client: redis.Redis | redis.RedisCluster, prefix: str) -> list[str]:
    return sorted(
        name.decode() if isinstance(name, bytes) else name
        for pattern in ("fp:*", "fpx:*", "fpi:*")
        for name in client.scan_iter(prefix + pattern)
    )


def test_a_redis_index_of_format_2_is_refused_then_deleted_by_migrate(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    prefix = f"index-{uuid.uuid4().hex[:12]}:"
    redis_former(redis_server.url, prefix, version=2)
    store = redis_store.Store(url=redis_server.url, prefix=prefix)

    with pytest.raises(stores.StoreUnavailable, match="thumbor-moderation migrate-store"):
        found(store, PRINT_A)
    store.migrate()
    store.migrate()
    migrated = redis_store.Store(url=redis_server.url, prefix=prefix)

    with redis.Redis.from_url(redis_server.url) as client:
        assert former_keys(client, prefix) == []
    assert migrated.fingerprints(SHA_A) == {}
    assert migrated.get("host/rejected.jpg") is not None
    assert_pdq_index_works(migrated)
    store.close()
    migrated.close()


def test_a_redis_cluster_index_of_format_3_is_deleted_on_every_master(
    redis_cluster: RedisCluster,  # noqa: F811
) -> None:
    prefix = f"index-{uuid.uuid4().hex[:12]}:"
    url = redis_cluster.nodes[0].url
    redis_former(url, prefix, version=3, cluster=True)
    store = redis_store.Store(url=url, prefix=prefix, cluster=True)

    before = store.fingerprints(SHA_A)
    store.migrate()
    migrated = redis_store.Store(url=redis_cluster.nodes[1].url, prefix=prefix, cluster=True)

    assert before == {}
    with redis.RedisCluster.from_url(url) as client:
        assert former_keys(client, prefix) == []
    assert_pdq_index_works(migrated)
    store.close()
    migrated.close()


# DynamoDB: records 'P#<sha256>' and band items 'I#<band>#<value>'.


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


def test_a_dynamodb_index_of_the_former_fingerprint_is_ignored_then_deleted_by_migrate(
    table: dynamodb.Store,
    endpoint: str,  # noqa: F811
) -> None:
    judged(table)
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    for sha256, print_ in FORMER.items():
        client.put_item(
            TableName=table.table,
            Item={
                "pk": {"S": "P#" + sha256},
                "sk": {"S": "p"},
                "f": {"M": {"0": {"B": print_.to_bytes()}}},
                "r": {"NS": ["0"]},
                "x": {"N": "3"},
                "v": {"N": "1"},
            },
        )
        for band, value in enumerate(print_.bands()):
            client.update_item(
                TableName=table.table,
                Key={"pk": {"S": f"I#{band}#{value:04x}"}, "sk": {"S": "i"}},
                UpdateExpression="ADD e :e",
                ExpressionAttributeValues={
                    ":e": {"BS": [print_.to_bytes() + bytes.fromhex(sha256) + b"\x01"]}
                },
            )
    before = table.fingerprints(SHA_A)

    deleted = table.migrate()
    again = table.migrate()

    left = client.scan(TableName=table.table, ProjectionExpression="pk")["Items"]
    assert before == {}
    assert (deleted, again) == (2, 0)
    assert [item for item in left if item["pk"]["S"][:2] in ("P#", "I#")] == []
    assert table.get("host/rejected.jpg") is not None
    assert_pdq_index_works(table)
