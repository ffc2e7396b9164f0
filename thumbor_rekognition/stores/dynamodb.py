"""Decisions in one DynamoDB table, shared by every Thumbor process of every node.

One table with a string partition key ``pk`` and a string sort key ``sk`` holds
everything, told apart by the prefix of ``pk``:

- ``D#<key>``: the decision (sk ``d``), its history (``e#<version>``) and its result
  paths (``r#<path>``, numbered by the counter ``r``);
- ``H#<sha256>`` and ``S#<status>``: one small item per decision, sorted by key, to find
  decisions by content hash and to list them by status;
- ``C#counts``, ``C#counters``, ``C#outbox``: counters (the decision counts split over a
  few items so that concurrent saves seldom touch the same one);
- ``L#<name>``: leases, a conditional put with an expiry time;
- ``F#<minute>``: the change feed, one item per change, polled by every process;
- ``Q#...``, ``OD``, ``QA#<topic>``: the outbox (queues per topic and key, what is due
  when, what was given up); ``V#<name>``: small shared values (the call rate);
- ``P#<sha256>``: a picture's fingerprints; ``I#<band>#<value>``: the index of judged
  pictures, one item per band value; ``X#<sha256>``: the keys of the decisions that
  reject duplicates of that picture.

Every save reads the decision, then writes it on the condition that its version has
not moved meanwhile: an automatic decision therefore never lands on a manual one about
the same bytes, whichever node writes it. Its history entry, change-feed entry, index
entries and counts follow in one batch; index entries are checked against the decision
when read, so one left behind by a race or a crash is never believed. Reads are
strongly consistent, but for lookups in the index of fingerprints (a match found a
moment late costs one backend call; the decision it names is read strongly). The outbox
moves its items with transactions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions
import botocore.utils

from thumbor_rekognition import rules, stores
from thumbor_rekognition._process import PerProcess
from thumbor_rekognition.config_checks import ConfigurationError, checked_endpoint_url
from thumbor_rekognition.decision import ContentType, Decision, Event, Label, Reason, Source, Status
from thumbor_rekognition.fingerprint import BAND_BITS, Print

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

logger = logging.getLogger(__name__)

# Each process polls the change feed this often; two polls leave room for one under way.
POLL_SECONDS = 0.5
# Changes stamped this much earlier than the last poll are still looked for: a write
# that took long to land, or a writer whose clock is behind by less than this, is not
# missed (past it the memory TTL acts). Each poll reads this many seconds of changes.
FEED_OVERLAP_SECONDS = 2.0
# Change-feed items and expired leases are deleted by DynamoDB's TTL after this long.
FEED_KEEP_SECONDS = 3600
COUNT_SHARDS = 8
# DynamoDB refuses sort keys longer than 1024 bytes: longer keys and paths are cut and
# told apart by a hash (they keep their place in the order up to the cut).
_LONGEST_NAME = 1000
_CUT_NAME = 900
# BatchGetItem's most keys a request.
_BATCH_GET = 100
# An index entry: a fingerprint (24 bytes), its picture's content hash (32 bytes), and
# whether the frame rejects its picture (1 byte). Records written before every judged
# picture was indexed ('i': the rejecting frames, no 'x') have entries of their
# rejecting frames only, without the last byte; `migrate-store` converts them.
_ENTRY = 57
_REJECTING_ENTRY = 56
# 'x' of a fingerprint record whose entries are in the current layout.
_INDEX_LAYOUT = "3"

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


class Store(stores.Store):
    """The decision store for clusters on AWS."""

    propagation_seconds = 2 * POLL_SECONDS

    @classmethod
    def check_settings(cls, settings: Settings) -> None:
        _table_name(settings.dynamodb_table)
        _endpoint_url(settings.dynamodb_endpoint_url)

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        table: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        create_table: bool | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(settings)
        self.table = _table_name(
            table if table is not None else (settings.dynamodb_table if settings else "")
        )
        self.region = region or (
            (settings.dynamodb_region or settings.rekognition_region) if settings else "us-east-1"
        )
        self.endpoint_url = _endpoint_url(
            endpoint_url
            if endpoint_url is not None
            else (settings.dynamodb_endpoint_url if settings else None)
        )
        self.create_table = (
            create_table
            if create_table is not None
            else (settings.dynamodb_create_table if settings else False)
        )
        self.timeout = timeout or (settings.store_timeout if settings else 0.5)
        self._workers = settings.workers if settings else 8
        self._client: PerProcess[Any] = PerProcess(self._build_client)
        self._changes = stores.ChangeFeed(self._poll)

    # The client and the table.

    def _build_client(self) -> Any:
        config = botocore.config.Config(
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            # total_max_attempts counts the first attempt; botocore's max_attempts does not.
            retries={"mode": "standard", "total_max_attempts": 3},
            max_pool_connections=max(10, self._workers + 4),
        )
        client = boto3.session.Session().client(
            "dynamodb", region_name=self.region, endpoint_url=self.endpoint_url, config=config
        )
        if self.create_table:
            self._ensure_table(client)
        return client

    def _ensure_table(self, client: Any) -> None:
        """Create the table when it is missing, and wait until it is usable."""
        try:
            try:
                client.describe_table(TableName=self.table)
                return
            except client.exceptions.ResourceNotFoundException:
                pass
            try:
                client.create_table(**table_definition(self.table))
                logger.warning("created DynamoDB table %s (on-demand billing)", self.table)
            except client.exceptions.ResourceInUseException:
                pass  # Another process is creating it.
            client.get_waiter("table_exists").wait(
                TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
            )
            try:
                client.update_time_to_live(
                    TableName=self.table,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
                )
            except botocore.exceptions.ClientError as error:
                # Enabled already, or being enabled by another process.
                logger.info("TTL of DynamoDB table %s not changed: %s", self.table, error)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
            raise stores.StoreUnavailable(
                f"DynamoDB store: cannot create table {self.table}: {error}"
            ) from error

    def _do(self, operation: str, **arguments: Any) -> dict[str, Any]:
        """One DynamoDB request; _Refused for a failed condition, StoreUnavailable otherwise."""
        try:
            client = self._client.get()
            response: dict[str, Any] = getattr(client, operation)(**arguments)
        except botocore.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                raise _Refused(dict(error.response)) from None
            if code == "ResourceNotFoundException":
                raise stores.StoreUnavailable(
                    f"DynamoDB store: table {self.table} not found in {self.region}: create "
                    "it (see the README) or set MODERATION_DYNAMODB_CREATE_TABLE = True"
                ) from error
            raise stores.StoreUnavailable(f"DynamoDB store: {code}: {error}") from error
        except botocore.exceptions.BotoCoreError as error:
            raise stores.StoreUnavailable(
                f"DynamoDB store: {type(error).__name__}: {error}"
            ) from error
        return response

    def _item(self, pk: str, sk: str) -> dict[str, Any] | None:
        response = self._do("get_item", TableName=self.table, Key=_key(pk, sk), ConsistentRead=True)
        item: dict[str, Any] | None = response.get("Item")
        return item

    def _query(
        self,
        pk: str,
        condition: str = "",
        values: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Items of a partition in sort-key order, optionally with a sort-key condition."""
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk" + (f" AND {condition}" if condition else ""),
            "ExpressionAttributeValues": {":pk": _s(pk), **(values or {})},
            "ConsistentRead": True,
        }
        left = limit
        while True:
            if left is not None:
                arguments["Limit"] = left
            response = self._do("query", **arguments)
            items: list[dict[str, Any]] = response.get("Items", [])
            yield from items
            if left is not None:
                left -= len(items)
                if left <= 0:
                    return
            last = response.get("LastEvaluatedKey")
            if not last:
                return
            arguments["ExclusiveStartKey"] = last

    def _transact(self, writes: list[dict[str, Any]]) -> None:
        for write in writes:
            next(iter(write.values()))["TableName"] = self.table
        self._do("transact_write_items", TransactItems=writes)

    def _retrying(self, attempt: Callable[[], bool], what: str) -> None:
        """Run attempt until it returns True; a lost race is tried again after a pause."""
        for race in range(stores.RACES):
            if attempt():
                return
            time.sleep(random.uniform(0, 0.005 * min(race + 1, 20)))  # noqa: S311 - jitter
        raise stores.StoreUnavailable(f"DynamoDB store: {what} kept losing races")

    # Decisions.

    def get(self, key: str) -> Decision | None:
        return _decision(key, self._item(_decision_pk(key), "d"))

    def save(self, decision: Decision, event: Event) -> Decision:
        kept: list[Decision] = []

        def attempt() -> bool:
            item = self._item(_decision_pk(decision.key), "d")
            current = _decision(decision.key, item)
            stands = rules.settle(current, decision)
            if stands is current:
                kept.append(current)
                return True
            version = _version(item) + 1
            body: dict[str, Any] = {
                **_key(_decision_pk(decision.key), "d"),
                "v": _n(version),
                "b": _s(encode(stands)),
            }
            if stands.sha256:
                body["h"] = {"B": bytes.fromhex(stands.sha256)}
            try:
                self._do("put_item", TableName=self.table, Item=body, **_unchanged(item))
            except _Refused:
                return False  # Changed since it was read: read it again.
            self._changed(
                stands.key, version, rules.noted(stands, decision, event), current, stands
            )
            kept.append(stands)
            return True

        self._retrying(attempt, f"saving {decision.key}")
        return kept[-1]

    def delete(self, key: str, event: Event) -> bool:
        deleted: list[bool] = []

        def attempt() -> bool:
            item = self._item(_decision_pk(key), "d")
            current = _decision(key, item)
            if current is None:
                deleted.append(False)
                return True
            version = _version(item) + 1
            # The version stays behind, so that history entries keep their order.
            tombstone = {**_key(_decision_pk(key), "d"), "v": _n(version)}
            try:
                self._do("put_item", TableName=self.table, Item=tombstone, **_unchanged(item))
            except _Refused:
                return False
            self._changed(key, version, event, current, None)
            deleted.append(True)
            return True

        self._retrying(attempt, f"forgetting {key}")
        return deleted[0]

    def _changed(
        self,
        key: str,
        version: int,
        event: Event,
        current: Decision | None,
        new: Decision | None,
    ) -> None:
        """What follows a decision's change, once its conditional write has landed.

        These writes carry no condition, so they go in batches: a change they race with
        can leave an index entry behind, never take one away from the decision the
        store holds, and readers check entries against the decisions.
        """
        counted = _counted(current, new)
        if counted is not None:
            self._do("update_item", TableName=self.table, **counted)
        at = time.time()
        puts = [
            {**_key(_decision_pk(key), f"e#{version:012d}"), "j": _s(_event_json(event))},
            {
                **_key(f"F#{int(at // 60)}", f"{at:017.6f}#{self._changes.sender}#{_token()}"),
                "k": _s(key),
                "ttl": _n(int(at) + FEED_KEEP_SECONDS),
            },
        ]
        deletes = []
        if current is not None and current.sha256 and (new is None or new.sha256 != current.sha256):
            deletes.append(_key("H#" + current.sha256, _name(key)))
        if current is not None and (new is None or new.status is not current.status):
            deletes.append(_key("S#" + current.status.value, _name(key)))
        if new is not None:
            # Written on every save, so that a save interrupted before it is mended.
            if new.sha256:
                puts.append(_index_item("H#" + new.sha256, key))
                # The picture is judged: whoever held the right to judge it no longer needs it.
                deletes.append(_key("L#judge:" + new.sha256, "l"))
            puts.append(_index_item("S#" + new.status.value, key))
        self._write_all(puts, deletes)

    def history(self, key: str) -> list[Event]:
        items = self._query(_decision_pk(key), "begins_with(sk, :e)", {":e": _s("e#")})
        return [_event(item["j"]["S"]) for item in items]

    def _decisions(self, keys: list[str]) -> dict[str, Decision]:
        """The decisions of some keys, read in batches of 100."""
        found: dict[str, Decision] = {}
        wanted = {_decision_pk(key): key for key in keys}
        for item in self._read_all([_key(pk, "d") for pk in wanted]):
            key = wanted[item["pk"]["S"]]
            decision = _decision(key, item)
            if decision is not None:
                found[key] = decision
        return found

    def _read_all(
        self, keys: list[dict[str, Any]], consistent: bool = True, **options: Any
    ) -> Iterator[dict[str, Any]]:
        """The items of some keys that exist, read 100 a request (BatchGetItem's most)."""
        for start in range(0, len(keys), _BATCH_GET):
            request: dict[str, Any] = {
                self.table: {
                    "Keys": keys[start : start + _BATCH_GET],
                    "ConsistentRead": consistent,
                    **options,
                }
            }
            delay = 0.01
            while request:
                response = self._do("batch_get_item", RequestItems=request)
                yield from response.get("Responses", {}).get(self.table, [])
                request = response.get("UnprocessedKeys") or {}
                if request:
                    # Keys DynamoDB could not read now (throttled): later, not at once.
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)

    def find_all_by_hash(self, sha256: str) -> list[Decision]:
        if not sha256:
            return []
        keys = sorted(_indexed_key(item) for item in self._query("H#" + sha256))
        decisions = self._decisions(keys)
        return [
            decisions[key] for key in keys if key in decisions and decisions[key].sha256 == sha256
        ]

    def page(
        self, status: Status | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Decision], str | None]:
        if limit < 1:
            raise ValueError(f"page limit must be at least 1, got {limit}")
        condition, values = ("sk > :after", {":after": _s(_name(cursor))}) if cursor else ("", {})
        keys: set[str] = set()
        # Every status at once is the three status lists merged.
        for listed in [status] if status else list(Status):
            items = self._query("S#" + listed.value, condition, values, limit=limit + 1)
            keys.update(_indexed_key(item) for item in items)
        ordered = sorted(keys, key=_name)[: limit + 1]
        decisions = self._decisions(ordered[:limit])
        # An entry a racing save left behind names a decision with another status.
        page = [
            decisions[key]
            for key in ordered[:limit]
            if key in decisions and (status is None or decisions[key].status is status)
        ]
        return page, (ordered[limit - 1] if len(ordered) > limit else None)

    def counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for item in self._query("C#counts"):
            for name, value in item.items():
                if name not in ("pk", "sk"):
                    totals[name] = totals.get(name, 0) + int(value["N"])
        counts: dict[str, int] = {}
        for status in Status:
            for source in Source:
                value = totals.get(f"{status.value}.{source.value}", 0)
                if value:
                    counts[status.value] = counts.get(status.value, 0) + value
                    counts[f"{status.value}.{source.value}"] = value
        return counts

    # Result paths.

    def add_results(self, key: str, paths: list[str]) -> None:
        fresh = list(dict.fromkeys(paths))
        if not fresh:
            return
        pk = _decision_pk(key)
        # Numbered in the order recorded, whatever the clocks of the nodes say.
        response = self._do(
            "update_item",
            TableName=self.table,
            Key=_key(pk, "r"),
            UpdateExpression="ADD n :count",
            ExpressionAttributeValues={":count": _n(len(fresh))},
            ReturnValues="UPDATED_NEW",
        )
        first = int(response["Attributes"]["n"]["N"]) - len(fresh) + 1
        for number, path in enumerate(fresh, start=first):
            item = {"pk": _s(pk), "sk": _s("r#" + _name(path)), "n": _n(number)}
            if _name(path) != path:
                item["p"] = _s(path)
            # A path recorded before keeps its first place.
            with contextlib.suppress(_Refused):
                self._do(
                    "put_item",
                    TableName=self.table,
                    Item=item,
                    ConditionExpression="attribute_not_exists(pk)",
                )

    def results(self, key: str) -> list[str]:
        items = self._query(_decision_pk(key), "begins_with(sk, :r)", {":r": _s("r#")})
        ordered = sorted(items, key=lambda item: int(item["n"]["N"]))
        return [item["p"]["S"] if "p" in item else item["sk"]["S"][2:] for item in ordered]

    def drop_results(self, key: str) -> None:
        pk = _decision_pk(key)
        # The counter 'r' goes too: paths recorded from now on are numbered afresh.
        items = list(self._query(pk, "begins_with(sk, :r)", {":r": _s("r")}))
        self._write_all([], [_key(pk, item["sk"]["S"]) for item in items])

    def _write_all(self, puts: list[dict[str, Any]], deletes: list[dict[str, Any]]) -> None:
        """Put and delete items, 25 a request (BatchWriteItem's most)."""
        writes = [{"PutRequest": {"Item": item}} for item in puts]
        writes += [{"DeleteRequest": {"Key": key}} for key in deletes]
        for start in range(0, len(writes), 25):
            request: dict[str, Any] = {self.table: writes[start : start + 25]}
            delay = 0.01
            while request:
                response = self._do("batch_write_item", RequestItems=request)
                request = response.get("UnprocessedItems") or {}
                if request:
                    # DynamoDB hands back what it could not write now: later, not at once.
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)

    # Counters, leases, shared values.

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

    # Near-duplicates. A picture's record 'P#<sha256>' holds its fingerprints by frame
    # ('f', a map of 24-byte values), the frames that reject it ('r'), the layout of its
    # entries ('x') and a version ('v'); the index is one item per band value,
    # 'I#<band>#<value in hex>', whose binary set 'e' holds its entries (a fingerprint, its
    # picture's content hash, whether the frame rejects it). A lookup is then a
    # BatchGetItem of the probed band values, each read one small item of one partition;
    # a put adds to and takes from those sets (ADD and DELETE need no read).

    def put_fingerprints(
        self, sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
    ) -> None:
        pk = "P#" + sha256
        wanted = _index_entries(sha256, prints, rejecting)
        record: dict[str, Any] = {
            **_key(pk, "p"),
            "f": {"M": {str(frame): {"B": p.to_bytes()} for frame, p in sorted(prints.items())}},
            "x": _n(_INDEX_LAYOUT),
        }
        frames = sorted({frame for frame in rejecting if frame in prints})
        if frames:
            record["r"] = {"NS": [str(frame) for frame in frames]}

        def attempt() -> bool:
            item = self._item(pk, "p")
            held = _held_entries(sha256, item)
            # The index first, the record last, on the condition that no other put
            # landed meanwhile: the one that did not land reads that put's record and
            # moves the index from there, so the last record names what the index holds.
            self._change_index("DELETE", _by_item(held - wanted))
            self._change_index("ADD", _by_item(wanted - held))
            try:
                self._do(
                    "put_item",
                    TableName=self.table,
                    Item={**record, "v": _n(_version(item) + 1)},
                    **_unchanged(item),
                )
            except _Refused:
                return False
            return True

        self._retrying(attempt, f"keeping the fingerprints of {sha256}")

    def migrate(self) -> int:
        """Index every judged picture's kept fingerprints: records written when only the
        frames of rejected pictures were indexed get this layout's entries. Lookups read
        both meanwhile, so this can run while Thumbor serves."""
        converted = 0
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :p) AND sk = :sk AND attribute_not_exists(x)",
            "ExpressionAttributeValues": {":p": _s("P#"), ":sk": _s("p")},
            "ProjectionExpression": "pk",
        }
        while True:
            response = self._do("scan", **arguments)
            for found in response.get("Items", []):
                sha256 = str(found["pk"]["S"])[2:]
                prints, rejecting = _fingerprint_record(self._item("P#" + sha256, "p"))
                self.put_fingerprints(sha256, prints, rejecting)
                converted += 1
            last = response.get("LastEvaluatedKey")
            if not last:
                return converted
            arguments["ExclusiveStartKey"] = last

    def _change_index(self, action: str, entries: dict[str, set[bytes]]) -> None:
        for pk, values in sorted(entries.items()):
            self._do(
                "update_item",
                TableName=self.table,
                Key=_key(pk, "i"),
                # DELETE of a set's last value removes the attribute; the item's keys stay.
                UpdateExpression=f"{action} e :entries",
                ExpressionAttributeValues={":entries": {"BS": sorted(values)}},
            )

    def fingerprints(self, sha256: str) -> dict[int, Print]:
        prints, _ = _fingerprint_record(self._item("P#" + sha256, "p"))
        return prints

    def indexed_near(
        self, probes: Sequence[Collection[int]], close: Callable[[int], bool]
    ) -> list[stores.Indexed]:
        keys = [
            _key(_band_pk(band, value), "i")
            for band, values in enumerate(probes)
            for value in sorted(values)
        ]
        kept: set[bytes] = set()
        for item in self._read_all(keys, consistent=False, ProjectionExpression="e"):
            for entry in item.get("e", {}).get("BS", []):
                entry = bytes(entry)
                if len(entry) not in (_ENTRY, _REJECTING_ENTRY):
                    raise ValueError(f"an index entry is {_ENTRY} bytes, got {len(entry)}")
                if entry not in kept and close(int.from_bytes(entry[:8], "big")):
                    kept.add(entry)
        return [
            stores.Indexed(
                entry[24:56].hex(),
                Print.from_bytes(entry[:24]),
                len(entry) == _REJECTING_ENTRY or entry[56:] == b"\x01",
            )
            for entry in sorted(kept)
        ]

    def link_duplicate(self, original: str, key: str, linked: bool = True) -> None:
        if linked:
            self._do("put_item", TableName=self.table, Item=_index_item("X#" + original, key))
        else:
            self._do("delete_item", TableName=self.table, Key=_key("X#" + original, _name(key)))

    def duplicates_of(self, original: str) -> list[str]:
        return sorted(_indexed_key(item) for item in self._query("X#" + original))

    # The change feed.

    def subscribe(self, changed: Callable[[str | None], None]) -> None:
        """Poll the change feed: other processes' changes arrive within a second."""
        self._changes.subscribe(changed)

    def _poll(self) -> None:
        seen: dict[str, float] = {}
        since = time.time()
        failing = False
        for _ in self._changes.ticks(POLL_SECONDS):
            now = time.time()
            start = since - FEED_OVERLAP_SECONDS
            try:
                entries = [
                    item
                    for minute in range(
                        int(start // 60), int((now + FEED_OVERLAP_SECONDS) // 60) + 1
                    )
                    for item in self._query(
                        f"F#{minute}", "sk >= :start", {":start": _s(f"{start:017.6f}")}
                    )
                ]
            except stores.StoreUnavailable:
                failing = True
                continue
            if failing:
                failing = False
                # Changes made while the table was out of reach are unknown: forget everything.
                self._changes.notify(None)
            since = now
            for item in entries:
                entry = item["sk"]["S"]
                if entry in seen:
                    continue
                seen[entry] = now
                # '<time>#<sender>#<random>'
                if entry.split("#")[1] != self._changes.sender:
                    self._changes.notify(item["k"]["S"])
            for entry, at in list(seen.items()):
                if at < start - FEED_OVERLAP_SECONDS:
                    del seen[entry]

    # The outbox.

    def enqueue(self, topic: str, key: str, payload: str) -> None:
        queue = _queue_pk(topic, key)
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
        item_id = f"{number}-{uuid.uuid4().hex}"
        due = _due_sk(now)
        entry = {
            **_key(queue, f"i#{number:012d}"),
            "u": _s(item_id),
            "t": _s(topic),
            "k": _s(key),
            "p": _s(payload),
            "a": _n(0),
            "c": _n(f"{now:.6f}"),
            "d": _s(due),
        }
        self._transact_retrying(
            lambda: [
                {"Put": {"Item": entry}},
                {"Put": {"Item": {**_key("OD", due), "q": _s(queue), "i": entry["sk"]}}},
                _outbox_count(topic, pending=1),
            ],
            f"queueing {topic} for {key}",
        )

    def _transact_retrying(self, writes: Callable[[], list[dict[str, Any]]], what: str) -> None:
        def attempt() -> bool:
            try:
                self._transact(writes())
            except _Refused as refused:
                if refused.conflict:
                    return False
                raise stores.StoreUnavailable(
                    f"DynamoDB store: {what} refused: {refused}"
                ) from None
            return True

        self._retrying(attempt, what)

    def claim(self, now: float, lease: float, limit: int) -> list[stores.OutboxItem]:
        claimed: list[stores.OutboxItem] = []
        due = list(
            self._query("OD", "sk <= :now", {":now": _s(f"{now:017.6f}~")}, limit=limit * 10)
        )
        for entry in due:
            if len(claimed) >= limit:
                break
            queue, number = entry["q"]["S"], entry["i"]["S"]
            head = next(iter(self._query(queue, "begins_with(sk, :i)", {":i": _s("i#")}, 1)), None)
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
                        {"Delete": {"Key": _key("OD", entry["sk"]["S"])}},
                        {"Put": {"Item": {**_key("OD", later), "q": _s(queue), "i": _s(number)}}},
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
                {"Delete": {"Key": _key("OD", found["d"]["S"])}},
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
                {"Delete": {"Key": _key("OD", found["d"]["S"])}},
                {"Put": {"Item": {**_key("OD", later), "q": _s(queue), "i": _s(number)}}},
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
                {"Delete": {"Key": _key("OD", found["d"]["S"])}},
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

    def close(self) -> None:
        self._changes.closed.set()


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
    """create_table arguments of the table this store needs (the README shows the same)."""
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


# Items.


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


def _indexed_key(item: dict[str, Any]) -> str:
    return str(item["k"]["S"] if "k" in item else item["sk"]["S"])


def _band_pk(band: int, value: int) -> str:
    return f"I#{band}#{value:0{BAND_BITS // 4}x}"


def _index_entries(
    sha256: str, prints: Mapping[int, Print], rejecting: Collection[int]
) -> set[tuple[str, bytes]]:
    """The index entries of a picture's frames: (band item, entry)."""
    digest = bytes.fromhex(sha256)
    return {
        (_band_pk(band, value), print_.to_bytes() + digest + bytes([frame in rejecting]))
        for frame, print_ in prints.items()
        for band, value in enumerate(print_.bands())
    }


def _held_entries(sha256: str, item: dict[str, Any] | None) -> set[tuple[str, bytes]]:
    """The index entries a fingerprint record says the index holds."""
    prints, rejecting = _fingerprint_record(item)
    if item is None or "x" in item:
        return _index_entries(sha256, prints, rejecting)
    digest = bytes.fromhex(sha256)
    return {
        (_band_pk(band, value), print_.to_bytes() + digest)
        for frame, print_ in prints.items()
        if frame in rejecting
        for band, value in enumerate(print_.bands())
    }


def _by_item(entries: set[tuple[str, bytes]]) -> dict[str, set[bytes]]:
    grouped: dict[str, set[bytes]] = {}
    for pk, entry in entries:
        grouped.setdefault(pk, set()).add(entry)
    return grouped


def _fingerprint_record(item: dict[str, Any] | None) -> tuple[dict[int, Print], list[int]]:
    """A picture's fingerprints and the frames that reject it, from its record (or none);
    records of the earlier layout named them 'i' (the frames in the index)."""
    if item is None:
        return {}, []
    prints = {
        int(frame): Print.from_bytes(bytes(value["B"]))
        for frame, value in item.get("f", {}).get("M", {}).items()
    }
    frames = item.get("r", item.get("i", {}))
    return prints, [int(frame) for frame in frames.get("NS", [])]


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
# l labels, r reasons, x content types (lists of their fields), and _FIELDS.

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
