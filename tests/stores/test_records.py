"""The compact record format: every field comes back exactly, defaults cost nothing, and
fields added later are skipped by readers that do not know them."""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thumbor_rekognition.decision import (
    ContentType,
    Decision,
    Event,
    Label,
    Pdq,
    Reason,
    Source,
    Status,
)
from thumbor_rekognition.stores import records, redis_scripts, wire

SHA = hashlib.sha256(b"picture").hexdigest()
KEY = "cdn.example.com/photos/2024/05/img-00012345-large.jpg"


def full_decision() -> Decision:
    """A decision with every field away from its default."""
    return Decision(
        key=KEY,
        url="https://" + KEY,
        sha256=SHA,
        status=Status.REJECTED,
        source=Source.MANUAL,
        labels=(
            Label("Explicit", "", 1, 97.12345886230469),
            Label("Exposed Female Nipple", "Explicit Nudity", 3, 64.5, frame=2),
        ),
        reasons=(
            Reason("Explicit Nudity", "Explicit", 97.123456789, 0.6, "explicit", 1, "Nudity"),
        ),
        backend="rekognition",
        model_version="7.0",
        policy="0123456789abcdef",
        min_confidence=42.5,
        width=4032,
        height=3024,
        error="retryable: an earlier attempt failed",
        created_at=1_700_000_000.123456,
        updated_at=1_700_000_123.987654,
        content_types=(ContentType("Illustrated", 88.25, 1),),
        project_version="arn:aws:rekognition:eu-west-1:123456789012:project/p/version/v1/1",
        duplicate_of="cdn.example.com/photos/2024/05/img-00012344-large.jpg",
        similarity=0.96875,
        blind=True,
        pdq=(Pdq("0f" * 32, 87, 0), Pdq("", 12, 1)),
    )


def test_a_decision_with_every_field_set_comes_back_equal() -> None:
    decision = full_decision()

    assert records.decode_decision(KEY, records.encode_decision(decision)) == decision


def test_the_format_knows_every_field_a_decision_has() -> None:
    # A field added to Decision must be given a field number in records.py, or it would
    # silently vanish from every store.
    assert records.known_fields() == records.DECISION_FIELDS


def test_a_plain_approved_decision_takes_under_ninety_bytes() -> None:
    decision = Decision(
        key=KEY,
        url="http://" + KEY,
        sha256=SHA,
        status=Status.APPROVED,
        source=Source.AUTO,
        backend="rekognition",
        model_version="7.0",
        policy="0123456789abcdef",
        min_confidence=50.0,
        width=1024,
        height=768,
        created_at=1_700_000_000.1234567,
        updated_at=1_700_000_000.1234589,
    )

    record = records.encode_decision(decision)

    assert len(record) < 90
    assert records.decode_decision(KEY, record) == decision


def test_defaults_are_left_out() -> None:
    decision = Decision(
        key=KEY,
        url=KEY,
        sha256=SHA,
        status=Status.APPROVED,
        source=Source.AUTO,
        created_at=0.0,
        updated_at=0.0,
    )

    record = records.encode_decision(decision)

    # The flags byte and the hash, nothing else.
    assert len(record) == 33
    assert records.decode_decision(KEY, record) == decision


def test_fields_of_a_later_version_are_skipped() -> None:
    decision = full_decision()
    record = records.encode_decision(decision)
    assert record[0] & records.DEFLATED
    plain = bytes([record[0] & ~records.DEFLATED]) + record[1:33] + wire.inflate(record[33:])
    later = bytearray()
    for number, kind, value in ((40, 0, b"\x96\x01"), (41, 2, b"\x05hello"), (42, 5, b"\0\0\0\0")):
        later += records.varint(number << 3 | kind) + value
    later += records.varint(43 << 3 | 1) + struct.pack("<d", 1.5)

    assert records.decode_decision(KEY, plain) == decision
    assert records.decode_decision(KEY, plain + bytes(later)) == decision


def test_a_record_of_a_later_format_is_refused() -> None:
    record = bytearray(records.encode_decision(full_decision()))
    record[0] |= 0x40

    with pytest.raises(records.RecordError, match="later format"):
        records.decode_decision(KEY, bytes(record))


def test_a_hash_that_is_not_64_hex_digits_is_kept_as_written() -> None:
    for sha in ("", "ABC", "not a hash", SHA.upper()):
        decision = full_decision().replace(sha256=sha)

        record = records.encode_decision(decision)

        assert records.sha_of(record) == b""
        assert records.decode_decision(KEY, record) == decision


def test_a_url_that_does_not_end_with_its_key_is_kept_whole() -> None:
    decision = full_decision().replace(url="http%3A//CDN.example.com:80/other.jpg")

    assert records.decode_decision(KEY, records.encode_decision(decision)) == decision


def test_the_flags_byte_says_status_and_hash_where_the_lua_scripts_read_them() -> None:
    for status, number in ((Status.APPROVED, 0), (Status.REJECTED, 1), (Status.PENDING, 2)):
        record = records.encode_decision(full_decision().replace(status=status))

        assert records.status_of(record) == number
        assert records.sha_of(record) == bytes.fromhex(SHA)
        assert record[1:33] == bytes.fromhex(SHA)
        assert (record[0] >> 2) & 3 == 1  # manual


def test_every_source_has_a_number_in_the_flags_byte_and_the_lua_tallies() -> None:
    # 3 is spelt out in the record; the Redis counts name it after the one source it is.
    names = {0: "auto", 1: "manual", 2: "duplicate", 3: "bank"}
    for source in Source:
        record = records.encode_decision(full_decision().replace(source=source))

        number = (record[0] >> 2) & 3
        assert names[number] == source.value
        assert f"[{number}] = '{source.value}'" in redis_scripts._LIBRARY
        assert records.decode_decision(KEY, record).source is source


@pytest.mark.parametrize(
    "event",
    [
        Event(Status.APPROVED, Source.AUTO, "thumbor-rekognition", "nothing above", 1.5),
        Event(None, None, "cli:alice", "forget it", 1_700_000_000.123456789),
        Event(Status.PENDING, Source.MANUAL, "", "", 0.0),
        Event(Status.REJECTED, Source.AUTO, "é" * 300, "x" * 5000, -1.0),
        Event(Status.REJECTED, Source.DUPLICATE, "thumbor-rekognition", "near a.jpg", 2.0),
    ],
)
def test_history_entries_come_back_equal(event: Event) -> None:
    assert records.decode_event(records.encode_event(event)) == event


@pytest.mark.parametrize(
    "path",
    [
        "/unsafe/300x200/" + KEY,
        "storage:" + KEY,
        "/unsafe/filters:watermark(other.png)/" + KEY + "?x=1",
        "/unrelated/path.jpg",
        "",
    ],
)
def test_recorded_paths_come_back_equal(path: str) -> None:
    encoded = records.encode_path(KEY, path)

    assert records.decode_path(KEY, encoded) == path
    if KEY in path:
        assert len(encoded) < len(path) - len(KEY) + 4


def test_joined_items_split_back() -> None:
    items = [b"", b"a", b"b" * 200, b"c" * 20_000]

    assert list(records.split(records.join(items))) == items


def test_truncated_bytes_are_refused_not_misread() -> None:
    record = records.encode_decision(full_decision())

    with pytest.raises(records.RecordError):
        records.decode_decision(KEY, record[:-3])


texts = st.text(max_size=40)
numbers = st.floats(allow_nan=False)
counts = st.integers(min_value=0, max_value=2**40)


@given(
    labels=st.lists(st.builds(Label, texts, texts, counts, numbers, counts), max_size=4),
    reasons=st.lists(
        st.builds(Reason, texts, texts, numbers, numbers, texts, counts, texts), max_size=3
    ),
    content_types=st.lists(st.builds(ContentType, texts, numbers, counts), max_size=2),
    url_head=texts,
    status=st.sampled_from(list(Status)),
    source=st.sampled_from(list(Source)),
    sha=st.one_of(st.just(SHA), texts),
    policy=st.one_of(st.just("0123456789abcdef"), texts),
    strings=st.tuples(texts, texts, texts, texts, texts),
    sizes=st.tuples(counts, counts),
    times=st.tuples(numbers, numbers, numbers, numbers),
)
def test_any_decision_comes_back_equal(
    labels: list[Label],
    reasons: list[Reason],
    content_types: list[ContentType],
    url_head: str,
    status: Status,
    source: Source,
    sha: str,
    policy: str,
    strings: tuple[str, str, str, str, str],
    sizes: tuple[int, int],
    times: tuple[float, float, float, float],
) -> None:
    backend, model_version, error, project_version, duplicate_of = strings
    decision = Decision(
        key=KEY,
        url=url_head + KEY,
        sha256=sha,
        status=status,
        source=source,
        labels=tuple(labels),
        reasons=tuple(reasons),
        content_types=tuple(content_types),
        backend=backend,
        model_version=model_version,
        policy=policy,
        min_confidence=times[2],
        width=sizes[0],
        height=sizes[1],
        error=error,
        created_at=times[0],
        updated_at=times[1],
        project_version=project_version,
        duplicate_of=duplicate_of,
        similarity=times[3],
    )

    decoded = records.decode_decision(KEY, records.encode_decision(decision))

    assert decoded == decision
    # -0.0 == 0.0: compare the bits of every float too.
    for name in ("min_confidence", "created_at", "updated_at", "similarity"):
        assert struct.pack("<d", getattr(decoded, name)) == struct.pack(
            "<d", getattr(decision, name)
        )


def test_every_field_of_the_full_decision_is_away_from_its_default() -> None:
    decision = full_decision()
    defaults = Decision(key="", url="", sha256="", status=Status.APPROVED, source=Source.AUTO)

    same = [
        field.name
        for field in dataclasses.fields(Decision)
        if getattr(decision, field.name) == getattr(defaults, field.name)
    ]

    assert same == []
