"""The DynamoDB store's items, as pure functions: the table's name and definition, keys and
sort keys, history entries, conditions and count updates, and a decision's own item
(every field under a one-letter name, defaults left out)."""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from typing import TYPE_CHECKING, Any

from thumbor_rekognition import stores
from thumbor_rekognition.config_checks import ConfigurationError, checked_endpoint_url
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

if TYPE_CHECKING:
    pass

# Change-feed items and expired leases are deleted by DynamoDB's TTL after this long.
FEED_KEEP_SECONDS = 3600
COUNT_SHARDS = 8
# DynamoDB refuses sort keys longer than 1024 bytes: longer keys and paths are cut and
# told apart by a hash (they keep their place in the order up to the cut).
_LONGEST_NAME = 1000
_CUT_NAME = 900
TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
STATUS_CODES = {status: status.value[0] for status in Status}
SOURCE_CODES = {source: source.value[0] for source in Source}


class _Refused(Exception):
    """A conditional write or a transaction was refused."""

    def __init__(self, response: dict[str, Any]) -> None:
        super().__init__(response.get("Error", {}).get("Code", ""))
        self.response = response

    @property
    def reasons(self) -> list[str]:
        """The refusal code of each write of a transaction."""
        return [
            str(reason.get("Code", "")) for reason in self.response.get("CancellationReasons", [])
        ]

    @property
    def conflict(self) -> bool:
        """Another transaction was writing the same item: worth trying again."""
        return "TransactionConflict" in self.reasons


def _table_name(value: str) -> str:
    table = value.strip()
    if not table:
        raise ConfigurationError(
            "Config 'MODERATION_DYNAMODB_TABLE' is empty. MODERATION_DECISION_STORE = "
            "'thumbor_rekognition.stores.dynamodb' needs a table."
        )
    if not TABLE_NAME.match(table):
        raise ConfigurationError(
            f"Config 'MODERATION_DYNAMODB_TABLE' has value {table!r}. "
            "Not a DynamoDB table name (3 to 255 of A-Z a-z 0-9 _ . -)."
        )
    return table


def _endpoint_url(value: str | None) -> str | None:
    return checked_endpoint_url("MODERATION_DYNAMODB_ENDPOINT_URL", value, "http://127.0.0.1:8000")


def table_definition(table: str) -> dict[str, Any]:
    """create_table arguments of the table this store needs (docs/stores.md shows the same)."""
    return {
        "TableName": table,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
    }


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: float | str) -> dict[str, str]:
    return {"N": str(value)}


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": _s(pk), "sk": _s(sk)}


def _name(text: str) -> str:
    """A key or path as a sort key: itself, or cut and told apart by its hash when too long."""
    data = text.encode("utf-8")
    if len(data) <= _LONGEST_NAME:
        return text
    cut = data[:_CUT_NAME].decode("utf-8", "ignore")
    return f"{cut}\t{hashlib.sha256(data).hexdigest()}"


def _decision_pk(key: str) -> str:
    return "D#" + _name(key)


def _queue_pk(topic: str, key: str) -> str:
    # Topics ('webhook', 'cdn:<name>') hold no '#': the key starts after the second one.
    return f"Q#{topic}#{_name(key)}"


def _due_sk(at: float) -> str:
    return f"{at:017.6f}#{_token()}"


def _token() -> str:
    """Random enough to tell apart items written in the same microsecond."""
    return uuid.uuid4().hex[:12]


def _event_json(event: Event) -> str:
    """A history entry: [when, status, source, actor, note], status and source by letter."""
    fields = [
        event.at,
        STATUS_CODES[event.status] if event.status else "",
        SOURCE_CODES[event.source] if event.source else "",
        event.actor,
        event.note,
    ]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def _event(text: str) -> Event:
    at, status, source, actor, note = json.loads(text)
    return Event(
        status=_STATUSES[status] if status else None,
        source=_SOURCES[source] if source else None,
        actor=actor,
        note=note,
        at=at,
    )


def _index_item(pk: str, key: str) -> dict[str, Any]:
    item = {"pk": _s(pk), "sk": _s(_name(key))}
    if _name(key) != key:
        item["k"] = _s(key)
    return item


def _timed_key(decision: Decision | None) -> dict[str, Any] | None:
    """The key of a decision's entry in the index by time of its status (the time code of
    its last change, then its key, as the sort key); None for a status without one."""
    if decision is None or decision.status not in stores.TIMED:
        return None
    code = stores.time_code(decision.updated_at)
    return _key("T#" + decision.status.value, _timed_sk(code, decision.key))


def _timed_sk(code: str, key: str) -> str:
    return code + _name(key)


def _timed_item(decision: Decision) -> dict[str, Any]:
    item = _key(
        "T#" + decision.status.value, _timed_sk(stores.time_code(decision.updated_at), decision.key)
    )
    if _name(decision.key) != decision.key:
        item["k"] = _s(decision.key)
    return item


def _timed_key_of(item: dict[str, Any]) -> str:
    """The decision key of an entry of an index by time."""
    return str(item["k"]["S"]) if "k" in item else stores.split_time_cursor(item["sk"]["S"])[1]


def _indexed_key(item: dict[str, Any]) -> str:
    return str(item["k"]["S"] if "k" in item else item["sk"]["S"])


def _version(item: dict[str, Any] | None) -> int:
    return int(item["v"]["N"]) if item else 0


def _unchanged(item: dict[str, Any] | None) -> dict[str, Any]:
    """The condition that a decision item is still as it was read."""
    if item is None:
        return {"ConditionExpression": "attribute_not_exists(pk)"}
    return {
        "ConditionExpression": "v = :v",
        "ExpressionAttributeValues": {":v": item["v"]},
    }


def _counted(current: Decision | None, new: Decision | None) -> dict[str, Any] | None:
    """The update of the decision counts, on one of COUNT_SHARDS counter items."""
    changes: dict[str, int] = {}
    if current is not None:
        name = f"{current.status.value}.{current.source.value}"
        changes[name] = changes.get(name, 0) - 1
    if new is not None:
        name = f"{new.status.value}.{new.source.value}"
        changes[name] = changes.get(name, 0) + 1
    return _add("C#counts", {name: value for name, value in changes.items() if value})


def _outbox_count(topic: str, pending: int = 0, abandoned: int = 0) -> dict[str, Any]:
    changes = {f"{topic}.pending": pending, f"{topic}.abandoned": abandoned}
    update = _add("C#outbox", {name: value for name, value in changes.items() if value})
    if update is None:
        raise ValueError("an outbox count change must change something")
    return {"Update": update}


def _add(pk: str, changes: dict[str, int]) -> dict[str, Any] | None:
    if not changes:
        return None
    names = {f"#c{index}": name for index, name in enumerate(changes)}
    values = {f":c{index}": _n(value) for index, value in enumerate(changes.values())}
    return {
        "Key": _key(pk, str(random.randrange(COUNT_SHARDS))),  # noqa: S311 - spreading
        "UpdateExpression": "ADD " + ", ".join(f"#c{i} :c{i}" for i in range(len(changes))),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


# The decision's own item: every field but the key (in pk) and the content hash (a
# binary attribute), under one-letter names, defaults left out: s status, o source,
# t created, a updated (when it differs), u URL or q what precedes the key in it,
# l labels, r reasons, x content types, k PDQ hashes (lists of their fields), and _FIELDS.


_FIELDS = {
    "backend": "b",
    "model_version": "m",
    "policy": "p",
    "min_confidence": "c",
    "width": "w",
    "height": "y",
    "error": "e",
    "project_version": "v",
    "duplicate_of": "d",
    "similarity": "n",
    "blind": "z",
}


_DEFAULTS: dict[str, Any] = {
    "backend": "",
    "model_version": "",
    "policy": "",
    "min_confidence": 0.0,
    "width": 0,
    "height": 0,
    "error": "",
    "project_version": "",
    "duplicate_of": "",
    "similarity": 0.0,
    "blind": False,
}


def encode(decision: Decision) -> str:
    """The body of a decision item."""
    data: dict[str, Any] = {
        "s": STATUS_CODES[decision.status],
        "o": SOURCE_CODES[decision.source],
        "t": decision.created_at,
    }
    if decision.updated_at != decision.created_at:
        data["a"] = decision.updated_at
    # The URL is nearly always a scheme before the key: only that scheme is kept.
    if decision.key and decision.url.endswith(decision.key):
        if decision.url != decision.key:
            data["q"] = decision.url[: -len(decision.key)]
    else:
        data["u"] = decision.url
    for name, default in _DEFAULTS.items():
        value = getattr(decision, name)
        if value != default:
            data[_FIELDS[name]] = value
    if decision.labels:
        data["l"] = [_label(label) for label in decision.labels]
    if decision.reasons:
        data["r"] = [_reason(reason) for reason in decision.reasons]
    if decision.content_types:
        data["x"] = [_content_type(kind) for kind in decision.content_types]
    if decision.pdq:
        data["k"] = [[hashed.hash, hashed.quality, hashed.frame] for hashed in decision.pdq]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def decode(key: str, sha256: str, body: str) -> Decision:
    """A decision from the body of its item."""
    data = json.loads(body)
    return Decision(
        key=key,
        url=data["u"] if "u" in data else data.get("q", "") + key,
        sha256=sha256,
        status=_STATUSES[data["s"]],
        source=_SOURCES[data["o"]],
        labels=tuple(
            Label(name, parent, level, confidence, *rest)
            for name, parent, level, confidence, *rest in data.get("l", ())
        ),
        reasons=tuple(
            Reason(name, parent, confidence, threshold, category, *rest)
            for name, parent, confidence, threshold, category, *rest in data.get("r", ())
        ),
        backend=data.get("b", ""),
        model_version=data.get("m", ""),
        policy=data.get("p", ""),
        min_confidence=data.get("c", 0.0),
        width=data.get("w", 0),
        height=data.get("y", 0),
        error=data.get("e", ""),
        created_at=data["t"],
        updated_at=data.get("a", data["t"]),
        content_types=tuple(ContentType(*fields) for fields in data.get("x", ())),
        project_version=data.get("v", ""),
        duplicate_of=data.get("d", ""),
        similarity=data.get("n", 0.0),
        blind=data.get("z", False),
        pdq=tuple(Pdq(*fields) for fields in data.get("k", ())),
    )


_STATUSES = {code: status for status, code in STATUS_CODES.items()}
_SOURCES = {code: source for source, code in SOURCE_CODES.items()}


def _label(label: Label) -> list[Any]:
    fields: list[Any] = [label.name, label.parent, label.level, label.confidence]
    return [*fields, label.frame] if label.frame else fields


def _reason(reason: Reason) -> list[Any]:
    fields: list[Any] = [
        reason.name,
        reason.parent,
        reason.confidence,
        reason.threshold,
        reason.category,
    ]
    if reason.judged_as:
        return [*fields, reason.frame, reason.judged_as]
    return [*fields, reason.frame] if reason.frame else fields


def _content_type(kind: ContentType) -> list[Any]:
    fields: list[Any] = [kind.name, kind.confidence]
    return [*fields, kind.frame] if kind.frame else fields


def _decision(key: str, item: dict[str, Any] | None) -> Decision | None:
    """The decision an item holds; None for no item or a forgotten decision's remains."""
    if item is None or "b" not in item:
        return None
    sha256 = bytes(item["h"]["B"]).hex() if "h" in item else ""
    return decode(key, sha256, item["b"]["S"])
