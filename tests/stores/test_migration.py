"""``migrate-store``: data written by the previous version (JSON documents) is refused with
a message naming the command until it runs, then found whole in the current format."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.stores.previous_format import RedisWriter, SQLiteWriter
from thumbor_rekognition import stores
from thumbor_rekognition.cli import main
from thumbor_rekognition.cli.old_fingerprint import Print
from thumbor_rekognition.decision import Decision, Event, Label, Reason, Source, Status
from thumbor_rekognition.stores import redis as redis_store
from thumbor_rekognition.stores import sqlite

SHA_A = "a" * 64
SHA_B = "b" * 64

Writer = SQLiteWriter | RedisWriter


def fill(writer: Writer) -> None:
    """What a site of the previous version holds: decisions of every kind, a forgotten one,
    recorded paths, a queued notification."""
    rejected = Decision(
        key="host/rejected.jpg",
        url="http://host/rejected.jpg",
        sha256=SHA_A,
        status=Status.REJECTED,
        source=Source.AUTO,
        labels=(Label("Explicit Nudity", "", 1, 97.5), Label("Nudity", "Explicit Nudity", 2, 97.5)),
        reasons=(Reason("Nudity", "Explicit Nudity", 97.5, 0.6, "explicit_nudity"),),
        backend="rekognition",
        model_version="6.1",
        policy="0123456789abcdef",
        min_confidence=50.0,
        width=640,
        height=480,
        created_at=1_700_000_000.5,
        updated_at=1_700_000_001.25,
    )
    writer.save(rejected, Event(Status.REJECTED, Source.AUTO, "thumbor-rekognition", "auto", 1.0))
    manual = rejected.replace(status=Status.APPROVED, source=Source.MANUAL, updated_at=1.7e9 + 9)
    writer.save(manual, Event(Status.APPROVED, Source.MANUAL, "alice", "a statue", 2.0))
    twin = rejected.replace(key="cdn/rejected.jpg", url="cdn/rejected.jpg")
    writer.save(twin, Event(Status.REJECTED, Source.AUTO, "thumbor-rekognition", "same", 3.0))
    waiting = Decision(
        key="host/waiting.png",
        url="host/waiting.png",
        sha256=SHA_B,
        status=Status.PENDING,
        source=Source.AUTO,
        error="retryable: ThrottlingException",
    )
    writer.save(waiting, Event(Status.PENDING, Source.AUTO, "thumbor-rekognition", "no", 4.0))
    gone = Decision(key="host/gone.jpg", url="host/gone.jpg", sha256="c" * 64,
                    status=Status.APPROVED, source=Source.AUTO)  # fmt: skip
    writer.save(gone, Event(Status.APPROVED, Source.AUTO, "thumbor-rekognition", "ok", 5.0))
    writer.delete("host/gone.jpg", Event(None, None, "bob", "forget it", 6.0))
    writer.add_result("host/rejected.jpg", "/unsafe/300x200/host/rejected.jpg")
    writer.add_result("host/rejected.jpg", "storage:host/rejected.jpg")
    writer.add_result("host/never-judged.jpg", "/unsafe/host/never-judged.jpg")
    writer.enqueue("webhook", "host/rejected.jpg", '{"status": "approved"}')


def assert_converted(store: stores.Store, writer: Writer) -> None:
    contents = writer.contents
    for key, decision in contents.decisions.items():
        assert store.get(key) == decision
    for key, events in contents.history.items():
        assert store.history(key) == events
    for key, paths in contents.results.items():
        assert store.results(key) == paths
    assert store.get("host/gone.jpg") is None
    assert [d.key for d in store.page()[0]] == sorted(contents.decisions)
    assert [d.key for d in store.page(Status.PENDING)[0]] == ["host/waiting.png"]
    assert store.counts() == {
        "approved": 1,
        "approved.manual": 1,
        "rejected": 1,
        "rejected.auto": 1,
        "pending": 1,
        "pending.auto": 1,
    }
    assert store.find_by_hash(SHA_A) == contents.decisions["host/rejected.jpg"]
    assert [d.key for d in store.find_all_by_hash(SHA_A)] == [
        "cdn/rejected.jpg",
        "host/rejected.jpg",
    ]
    claimed = store.claim(now=1e12, lease=30, limit=10)
    assert [(item.topic, item.key, item.payload) for item in claimed] == [
        ("webhook", "host/rejected.jpg", '{"status": "approved"}')
    ]
    assert store.outbox_counts() == {"webhook.pending": 1}


class MigrationContract:
    """The same story for each store; subclasses provide the writer and the store."""

    @pytest.fixture
    def writer(self) -> Iterator[Writer]:
        raise NotImplementedError

    @pytest.fixture
    def open_store(self) -> Callable[[], stores.Store]:
        raise NotImplementedError

    def test_data_of_the_previous_format_is_refused_with_the_command_to_run(
        self, writer: Writer, open_store: Callable[[], stores.Store]
    ) -> None:
        fill(writer)
        store = open_store()

        with pytest.raises(stores.StoreUnavailable, match="thumbor-moderation migrate-store"):
            store.get("host/rejected.jpg")

    def test_migrate_converts_everything_the_previous_format_held(
        self, writer: Writer, open_store: Callable[[], stores.Store]
    ) -> None:
        fill(writer)

        converted = open_store().migrate()

        assert converted == 5
        assert_converted(open_store(), writer)

    def test_migrate_run_again_changes_nothing(
        self, writer: Writer, open_store: Callable[[], stores.Store]
    ) -> None:
        fill(writer)
        open_store().migrate()

        again = open_store().migrate()

        assert again == 0
        assert_converted(open_store(), writer)

    def test_migrate_keeps_duplicates_and_shared_values_and_drops_former_fingerprints(
        self, writer: Writer, open_store: Callable[[], stores.Store]
    ) -> None:
        fill(writer)
        copy = Decision(
            key="host/copy.jpg",
            url="https://host/copy.jpg",
            sha256="d" * 64,
            status=Status.REJECTED,
            source=Source.DUPLICATE,
            duplicate_of="host/rejected.jpg",
            similarity=0.96875,
            project_version="arn:aws:rekognition:eu-west-1:1:project/p/version/v/1",
            created_at=1_700_000_002.0,
            updated_at=1_700_000_002.0,
        )
        writer.save(copy, Event(Status.REJECTED, Source.DUPLICATE, "thumbor-rekognition", "", 7.0))
        print_ = Print(0x0123_4567_89AB_CDEF, 7)
        writer.put_fingerprints(SHA_A, 0, print_)
        writer.link_duplicate(SHA_A, "host/copy.jpg")
        writer.share("rate:rekognition", "turns")

        open_store().migrate()
        store = open_store()

        assert store.get("host/copy.jpg") == copy
        assert store.counts()["rejected.duplicate"] == 1
        # The former fingerprint is matched by nothing: the picture's PDQ fingerprints
        # come from `backfill --fingerprints` or its next judgement.
        assert store.fingerprints(SHA_A) == {}
        assert store.duplicates_of(SHA_A) == ["host/copy.jpg"]
        assert store.compare_and_set("rate:rekognition", "turns", "next") == "turns"
        # A duplicate decision stays below a manual one, as before the conversion.
        manual = copy.replace(status=Status.APPROVED, source=Source.MANUAL)
        store.save(manual, Event(Status.APPROVED, Source.MANUAL, "alice", "", 8.0))
        assert store.save(copy, Event(None, None, "thumbor-rekognition", "", 9.0)) == manual

    def test_a_store_of_the_current_format_has_nothing_to_migrate(
        self, open_store: Callable[[], stores.Store]
    ) -> None:
        store = open_store()
        decision = Decision(key="a", url="a", sha256=SHA_A, status=Status.APPROVED,
                            source=Source.AUTO)  # fmt: skip
        store.save(decision, Event(Status.APPROVED, Source.AUTO, "test", ""))

        assert store.migrate() == 0
        assert open_store().get("a") == decision


class TestSQLiteMigration(MigrationContract):
    @pytest.fixture
    def path(self, tmp_path: Path) -> str:
        return str(tmp_path / "moderation.sqlite3")

    @pytest.fixture
    def writer(self, path: str) -> Iterator[Writer]:
        writer = SQLiteWriter(path)
        yield writer
        writer.close()

    @pytest.fixture
    def open_store(self, path: str) -> Iterator[Callable[[], stores.Store]]:
        opened: list[stores.Store] = []

        def open_store() -> stores.Store:
            opened.append(sqlite.Store(path=path))
            return opened[-1]

        yield open_store
        for store in opened:
            store.close()

    def test_the_command_line_converts_the_configured_store(
        self, writer: Writer, path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fill(writer)
        conf = tmp_path / "thumbor.conf"
        conf.write_text(f"MODERATION_SQLITE_PATH = {path!r}\n")

        code = main(["--conf", str(conf), "migrate-store"])

        assert code == 0
        assert "converted 5 pictures" in capsys.readouterr().out
        store = sqlite.Store(path=path)
        assert_converted(store, writer)
        store.close()


class TestRedisMigration(MigrationContract):
    @pytest.fixture
    def prefix(self) -> str:
        return f"migration-{uuid.uuid4().hex[:12]}:"

    @pytest.fixture
    def writer(
        self,
        redis_server: RedisServer,  # noqa: F811
        prefix: str,
    ) -> Iterator[Writer]:
        writer = RedisWriter(redis_server.url, prefix)
        yield writer
        writer.close()

    @pytest.fixture
    def open_store(
        self,
        redis_server: RedisServer,  # noqa: F811
        prefix: str,
    ) -> Iterator[Callable[[], stores.Store]]:
        opened: list[stores.Store] = []

        def open_store() -> stores.Store:
            opened.append(redis_store.Store(url=redis_server.url, prefix=prefix))
            return opened[-1]

        yield open_store
        for store in opened:
            store.close()

    def test_migrate_leaves_no_key_of_the_previous_format(
        self,
        writer: Writer,
        open_store: Callable[[], stores.Store],
        redis_server: RedisServer,  # noqa: F811
        prefix: str,
    ) -> None:
        fill(writer)

        open_store().migrate()

        with redis.Redis.from_url(redis_server.url) as client:
            names = sorted(name.decode()[len(prefix) :] for name in client.scan_iter(prefix + "*"))
        previous = {"d", "h", "r", "sha", "st", "ss", "all", "ob"}
        assert names
        assert [name for name in names if name.split(":")[0] in previous] == []
