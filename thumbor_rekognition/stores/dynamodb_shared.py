"""What the plugin's processes share through the DynamoDB table besides decisions: counters,
leases, compare-and-set values and the outbox (queues per topic and key, moved by
transactions)."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from thumbor_rekognition import stores
from thumbor_rekognition.stores.dynamodb_items import (
    FEED_KEEP_SECONDS,
    _add,
    _due_sk,
    _key,
    _n,
    _outbox_count,
    _queue_pk,
    _Refused,
    _s,
)
from thumbor_rekognition.stores.dynamodb_table import Table

# Due entries a claim reads at most.
CLAIM_SCAN = 1000

# Where earlier versions kept what is due, of every topic.
LEGACY_DUE = "OD"


def _due_pk(topic: str) -> str:
    return "OD#" + topic


def _due_pk_of(item: dict[str, Any]) -> str:
    """The partition an outbox item is due in (earlier versions' items name none)."""
    return str(item["dp"]["S"]) if "dp" in item else LEGACY_DUE


class SharedState(Table):
    """Counters, leases, shared values and the outbox."""

    def incr(self, name: str, amount: int = 1) -> None:
        self._do(
            "update_item",
            TableName=self.table,
            Key=_key("C#counters", name),
            UpdateExpression="ADD n :amount",
            ExpressionAttributeValues={":amount": _n(amount)},
        )

    def counters(self) -> dict[str, int]:
        return {item["sk"]["S"]: int(item["n"]["N"]) for item in self._query("C#counters")}

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        now = time.time()
        expires = now + seconds
        try:
            self._do(
                "put_item",
                TableName=self.table,
                Item={
                    **_key("L#" + name, "l"),
                    "h": _s(holder),
                    "x": _n(f"{expires:.6f}"),
                    "ttl": _n(int(expires) + FEED_KEEP_SECONDS),
                },
                ConditionExpression="attribute_not_exists(pk) OR h = :holder OR x < :now",
                ExpressionAttributeValues={":holder": _s(holder), ":now": _n(f"{now:.6f}")},
            )
        except _Refused:
            return False
        return True

    def release_lease(self, name: str, holder: str) -> None:
        # Refused when another holder has it now, or nobody does.
        with contextlib.suppress(_Refused):
            self._do(
                "delete_item",
                TableName=self.table,
                Key=_key("L#" + name, "l"),
                ConditionExpression="h = :holder",
                ExpressionAttributeValues={":holder": _s(holder)},
            )

    def compare_and_set(self, name: str, expected: str | None, value: str) -> str | None:
        condition, values = (
            ("attribute_not_exists(pk)", {})
            if expected is None
            else ("s = :expected", {":expected": _s(expected)})
        )
        try:
            self._do(
                "put_item",
                TableName=self.table,
                Item={**_key("V#" + name, "v"), "s": _s(value)},
                ConditionExpression=condition,
                **({"ExpressionAttributeValues": values} if values else {}),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except _Refused as refused:
            found = refused.response.get("Item")
            return str(found["s"]["S"]) if found else None
        return expected

    # Near-duplicates. A picture's record 'K#<sha256>' holds its fingerprints by frame
    # ('f', a map of 256-byte values: each frame's PDQ hash and its variants'), the frames
    # that reject it ('r') and a version ('v'); the index is one item per slot value,
    # 'J#<slot>#<value in hex>', whose item 'i' has a binary set 'e' of its entries (a PDQ
    # hash, its picture's content hash, whether the frame rejects it) and whose item 'r'
    # the entries of each rotation and mirror of rejecting frames. A lookup is then a few
    # BatchGetItem of the probed slot values, each read one small item of one partition;
    # a put adds to and takes from those sets (ADD and DELETE need no read).

    def enqueue(self, topic: str, key: str, payload: str) -> None:
        self._transact_retrying(
            lambda: self._outbox_writes(key, [(topic, payload)]), f"queueing {topic} for {key}"
        )

    def _outbox_writes(self, key: str, entries: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The writes of a transaction that add outbox items of a key (none for none)."""
        writes: list[dict[str, Any]] = []
        for topic, payload in entries:
            queue = _queue_pk(topic, key)
            # Numbered after the decision was read: a change written later gets a higher one.
            number = int(
                self._do(
                    "update_item",
                    TableName=self.table,
                    Key=_key(queue, "n"),
                    UpdateExpression="ADD n :one",
                    ExpressionAttributeValues={":one": _n(1)},
                    ReturnValues="UPDATED_NEW",
                )["Attributes"]["n"]["N"]
            )
            now = time.time()
            due, due_pk = _due_sk(now), _due_pk(topic)
            entry = {
                **_key(queue, f"i#{number:012d}"),
                "u": _s(f"{number}-{uuid.uuid4().hex}"),
                "t": _s(topic),
                "k": _s(key),
                "p": _s(payload),
                "a": _n(0),
                "c": _n(f"{now:.6f}"),
                "d": _s(due),
                "dp": _s(due_pk),
            }
            writes += [
                {"Put": {"Item": entry}},
                {"Put": {"Item": {**_key(due_pk, due), "q": _s(queue), "i": entry["sk"]}}},
            ]
        if entries:
            pending: dict[str, int] = {}
            for topic, _ in entries:
                pending[f"{topic}.pending"] = pending.get(f"{topic}.pending", 0) + 1
            counted = _add("C#outbox", pending)
            if counted is not None:
                writes.append({"Update": counted})
        return writes

    def claim(
        self, now: float, lease: float, limit: int, topic: str | None = None
    ) -> list[stores.OutboxItem]:
        claimed: list[stores.OutboxItem] = []
        if topic is not None:
            topics = [topic]
        else:
            names = self.outbox_counts()
            topics = sorted(
                {name.rpartition(".")[0] for name in names if name.endswith(".pending")}
            )
        # Each topic's items are due in a partition of their own; earlier versions kept
        # every topic's in LEGACY_DUE, which is read until it is empty.
        for due_pk in [*(_due_pk(name) for name in topics), LEGACY_DUE]:
            if len(claimed) < limit:
                claimed += self._claim_from(due_pk, now, lease, limit - len(claimed), topic)
        return claimed

    def _claim_from(
        self, due_pk: str, now: float, lease: float, limit: int, topic: str | None
    ) -> list[stores.OutboxItem]:
        claimed: list[stores.OutboxItem] = []
        # Items queued behind one that is failing stay due: read past them (each queue
        # is asked for its head once), up to CLAIM_SCAN entries.
        due = self._query(due_pk, "sk <= :now", {":now": _s(f"{now:017.6f}~")}, CLAIM_SCAN)
        heads: dict[str, dict[str, Any] | None] = {}
        for entry in due:
            if len(claimed) >= limit:
                break
            queue, number = entry["q"]["S"], entry["i"]["S"]
            if topic is not None and not queue.startswith(f"Q#{topic}#"):
                continue
            if queue not in heads:
                heads[queue] = next(
                    iter(self._query(queue, "begins_with(sk, :i)", {":i": _s("i#")}, 1)), None
                )
            head = heads[queue]
            if head is None or head["sk"]["S"] != number or head["d"]["S"] != entry["sk"]["S"]:
                continue
            later = _due_sk(now + lease)
            try:
                self._transact(
                    [
                        {
                            "Update": {
                                "Key": _key(queue, number),
                                "UpdateExpression": "SET a = a + :one, d = :later",
                                "ConditionExpression": "d = :due",
                                "ExpressionAttributeValues": {
                                    ":one": _n(1),
                                    ":later": _s(later),
                                    ":due": entry["sk"],
                                },
                            }
                        },
                        {"Delete": {"Key": _key(due_pk, entry["sk"]["S"])}},
                        {"Put": {"Item": {**_key(due_pk, later), "q": _s(queue), "i": _s(number)}}},
                    ]
                )
            except _Refused:
                continue  # Another process claimed it first.
            claimed.append(
                stores.OutboxItem(
                    id=head["u"]["S"],
                    topic=head["t"]["S"],
                    key=head["k"]["S"],
                    payload=head["p"]["S"],
                    attempts=int(head["a"]["N"]) + 1,
                    created_at=float(head["c"]["N"]),
                )
            )
        return claimed

    def _outbox_item(self, item: stores.OutboxItem) -> tuple[str, str, dict[str, Any]] | None:
        queue = _queue_pk(item.topic, item.key)
        number = f"i#{int(item.id.split('-')[0]):012d}"
        found = self._item(queue, number)
        if found is None or found["u"]["S"] != item.id:
            return None
        return queue, number, found

    def complete(self, item: stores.OutboxItem) -> None:
        located = self._outbox_item(item)
        if located is None:
            return
        queue, number, found = located
        self._transact_retrying(
            lambda: [
                {"Delete": {"Key": _key(queue, number)}},
                {"Delete": {"Key": _key(_due_pk_of(found), found["d"]["S"])}},
                _outbox_count(item.topic, pending=-1),
            ],
            f"completing {item.topic} for {item.key}",
        )

    def reschedule(self, item: stores.OutboxItem, next_at: float, error: str) -> None:
        located = self._outbox_item(item)
        if located is None:
            return
        queue, number, found = located
        later = _due_sk(next_at)
        self._transact_retrying(
            lambda: [
                {
                    "Update": {
                        "Key": _key(queue, number),
                        "UpdateExpression": "SET d = :later, e = :error",
                        "ExpressionAttributeValues": {
                            ":later": _s(later),
                            ":error": _s(error[:2000]),
                        },
                    }
                },
                {"Delete": {"Key": _key(_due_pk_of(found), found["d"]["S"])}},
                {
                    "Put": {
                        "Item": {**_key(_due_pk_of(found), later), "q": _s(queue), "i": _s(number)}
                    }
                },
            ],
            f"rescheduling {item.topic} for {item.key}",
        )

    def abandon(self, item: stores.OutboxItem, error: str) -> None:
        located = self._outbox_item(item)
        if located is None:
            return
        queue, number, found = located
        given_up = {
            **_key("QA#" + item.topic, f"{time.time():017.6f}#{item.id}"),
            "k": found["k"],
            "p": found["p"],
            "a": found["a"],
            "e": _s(error[:2000]),
        }
        self._transact_retrying(
            lambda: [
                {"Delete": {"Key": _key(queue, number)}},
                {"Delete": {"Key": _key(_due_pk_of(found), found["d"]["S"])}},
                {"Put": {"Item": given_up}},
                _outbox_count(item.topic, pending=-1, abandoned=1),
            ],
            f"giving up {item.topic} for {item.key}",
        )

    def outbox_counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for item in self._query("C#outbox"):
            for name, value in item.items():
                if name not in ("pk", "sk"):
                    totals[name] = totals.get(name, 0) + int(value["N"])
        return {name: value for name, value in sorted(totals.items()) if value}
