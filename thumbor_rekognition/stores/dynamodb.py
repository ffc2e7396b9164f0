"""Decisions in one DynamoDB table, shared by every Thumbor process of every node.

One table with a string partition key ``pk`` and a string sort key ``sk`` holds
everything, told apart by the prefix of ``pk``:

- ``D#<key>``: the decision (sk ``d``), its history (``e#<version>``) and its result
  paths (``r#<path>``, numbered by the counter ``r``);
- ``H#<sha256>`` and ``S#<status>``: one small item per decision, sorted by key, to find
  decisions by content hash and to list them by status; ``T#pending`` and
  ``T#rejected``: one per waiting decision, sorted by the time of its last change, then
  its key (``M#timed`` says those saved before this index existed were added);
- ``C#counts``, ``C#counters``, ``C#outbox``: counters (the decision counts split over a
  few items so that concurrent saves seldom touch the same one);
- ``L#<name>``: leases, a conditional put with an expiry time;
- ``F#<minute>``: the change feed, one item per change, polled by every process;
- ``Q#...``, ``OD``, ``QA#<topic>``: the outbox (queues per topic and key, what is due
  when, what was given up); ``V#<name>``: small shared values (the call rate);
- ``K#<sha256>``: a picture's fingerprints (PDQ hashes); ``J#<slot>#<value>``: the index
  of judged pictures, one item per slot value (sk ``i``; sk ``r``: the rotations and
  mirrors of rejecting frames); ``X#<sha256>``: the keys of the decisions
  that reject duplicates of that picture. (``P#`` and ``I#`` held the former fingerprint
  and its index: `migrate-store` deletes them.)

Every save reads the decision, then writes it on the condition that its version has
not moved meanwhile: an automatic decision therefore never lands on a manual one about
the same bytes, whichever node writes it. When the change calls for outbox items
(webhooks, CDN purges), they, its history entry, change-feed entry and counts are
written with it in one transaction; otherwise those follow the conditional put.
Index entries follow in one batch, and are checked against the decision when read,
so one left behind by a race or a crash is never believed. Reads are strongly
consistent, but for lookups in the index of fingerprints (a match found a moment late
costs one backend call; the decision it names is read strongly). The outbox moves its
items with transactions.

The layers below the decisions: ``dynamodb_items`` (items as pure functions),
``dynamodb_table`` (client, table, requests), ``dynamodb_shared`` (counters, leases,
shared values, the outbox), ``dynamodb_index`` (fingerprints, the index, duplicates).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from thumbor_rekognition import rules, stores
from thumbor_rekognition.decision import Decision, Event, Source, Status
from thumbor_rekognition.stores.dynamodb_index import (
    FingerprintIndex,
)
from thumbor_rekognition.stores.dynamodb_items import (
    FEED_KEEP_SECONDS,
    _counted,
    _decision,
    _decision_pk,
    _event,
    _event_json,
    _index_item,
    _indexed_key,
    _key,
    _n,
    _name,
    _Refused,
    _s,
    _timed_item,
    _timed_key,
    _timed_key_of,
    _timed_sk,
    _token,
    _unchanged,
    _version,
    decode,
    encode,
    table_definition,
)

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

logger = logging.getLogger(__name__)

# A decision's item and the table's definition are read from here too.
__all__ = ["POLL_SECONDS", "Store", "decode", "encode", "table_definition"]

# Each process polls the change feed this often; two polls leave room for one under way.
POLL_SECONDS = 0.5
# Changes stamped this much earlier than the last poll are still looked for: a write
# that took long to land, or a writer whose clock is behind by less than this, is not
# missed (past it the memory TTL acts). Each poll reads this many seconds of changes.
FEED_OVERLAP_SECONDS = 2.0
# The item whose presence says every pending and rejected decision is indexed by time.
_TIMED_MARK = "M#timed"


class Store(FingerprintIndex):
    """The decision store for clusters on AWS."""

    propagation_seconds = 2 * POLL_SECONDS

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
        super().__init__(
            settings,
            table=table,
            region=region,
            endpoint_url=endpoint_url,
            create_table=create_table,
            timeout=timeout,
        )
        self._changes = stores.ChangeFeed(self._poll)
        # Whether this object has seen the index by time built (see _order_by_time).
        self._timed = False

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
            noted = rules.noted(stands, decision, event)
            if not self._written(decision.key, version, body, item, (current, stands), noted):
                return False  # Changed since it was read: read it again.
            self._changed(stands.key, current, stands)
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
            if not self._written(key, version, tombstone, item, (current, None), event):
                return False
            self._changed(key, current, None)
            deleted.append(True)
            return True

        self._retrying(attempt, f"forgetting {key}")
        return deleted[0]

    def _written(
        self,
        key: str,
        version: int,
        body: dict[str, Any],
        item: dict[str, Any] | None,
        change: tuple[Decision | None, Decision | None],
        event: Event,
    ) -> bool:
        """Put a decision item on the condition that it is still as read, with its
        history entry, its change-feed entry and the decision counts; False if it moved.
        When the change calls for outbox items, they are all one transaction; otherwise
        the conditional put lands first and the rest follow (a transaction costs twice
        the writes), logged rather than raised if they fail: the change stands."""
        previous, current = change
        entries = (
            self.announcements(previous, current, event, self.results(key))
            if self.announcer is not None
            else []
        )
        at = time.time()
        writes: list[dict[str, Any]] = [
            {"Put": {"Item": body, **_unchanged(item)}},
            {
                "Put": {
                    "Item": {
                        **_key(_decision_pk(key), f"e#{version:012d}"),
                        "j": _s(_event_json(event)),
                    }
                }
            },
            {
                "Put": {
                    "Item": {
                        **_key(
                            f"F#{int(at // 60)}", f"{at:017.6f}#{self._changes.sender}#{_token()}"
                        ),
                        "k": _s(key),
                        "ttl": _n(int(at) + FEED_KEEP_SECONDS),
                    }
                }
            },
        ]
        counted = _counted(previous, current)
        if counted is not None:
            writes.append({"Update": counted})
        try:
            if entries:
                self._transact([*writes, *self._outbox_writes(key, entries)])
            else:
                self._do("put_item", TableName=self.table, **writes[0]["Put"])
        except _Refused as refused:
            reasons = refused.reasons
            if refused.conflict or "ConditionalCheckFailed" in reasons or not reasons:
                return False  # Changed since it was read, or being changed: read it again.
            raise stores.StoreUnavailable(f"DynamoDB store: refused: {reasons}") from None
        if not entries:
            try:
                if counted is not None:
                    self._do("update_item", TableName=self.table, **counted)
                self._write_all([write["Put"]["Item"] for write in writes[1:3]], [])
            except stores.StoreUnavailable as error:
                logger.error("%s saved; its history or counts not written: %s", key, error)
        return True

    def _changed(self, key: str, current: Decision | None, new: Decision | None) -> None:
        """What follows a decision's change, once its transaction has landed: its index
        entries. These writes carry no condition, so they go in batches: a change they
        race with can leave an index entry behind, never take one away from the decision
        the store holds, and readers check entries against the decisions. The change is
        saved and announced: a failure here is logged, not answered as the change's."""
        puts = []
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
        before, after = _timed_key(current), _timed_key(new)
        if before is not None and before != after:
            deletes.append(before)
        if new is not None and after is not None:
            puts.append(_timed_item(new))
        try:
            self._write_all(puts, deletes)
        except stores.StoreUnavailable as error:
            logger.warning("%s saved; its index entries not all written: %s", key, error)

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

    def page_by_time(
        self, status: Status, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Decision], str | None]:
        stores.check_timed(status, limit)
        condition, values = "", {}
        if cursor:
            code, key = stores.split_time_cursor(cursor)
            condition, values = "sk > :after", {":after": _s(_timed_sk(code, key))}
        if not self._timed:
            if self._item(_TIMED_MARK, "m") is None:
                self._order_by_time()
            self._timed = True
        entries = [
            (str(item["sk"]["S"])[: len(stores.time_code(0))], _timed_key_of(item))
            for item in self._query("T#" + status.value, condition, values, limit=limit + 1)
        ]
        decisions = self._decisions([key for _, key in entries[:limit]])
        page, stale = [], []
        for code, key in entries[:limit]:
            found = decisions.get(key)
            if found and found.status is status and stores.time_code(found.updated_at) == code:
                page.append(found)
            else:
                # Left behind by racing saves: the decision has moved on since.
                stale.append(_key("T#" + status.value, _timed_sk(code, key)))
        if stale:
            with contextlib.suppress(stores.StoreUnavailable):
                self._write_all([], stale)
        last = entries[limit - 1] if len(entries) > limit else None
        return page, (last[0] + last[1] if last else None)

    def _order_by_time(self) -> int:
        """List every pending and rejected decision in its status's index by time (for
        decisions saved before it existed), then mark it done; how many were missing.
        Idempotent: `migrate-store` runs it again. An entry a save meanwhile leaves
        behind is checked and dropped by readers."""
        listed = 0
        for status in stores.TIMED:
            decisions = self._decisions(
                [_indexed_key(item) for item in self._query("S#" + status.value)]
            )
            held = {str(item["sk"]["S"]) for item in self._query("T#" + status.value)}
            missing = [
                _timed_item(d)
                for d in decisions.values()
                if d.status is status and _timed_item(d)["sk"]["S"] not in held
            ]
            self._write_all(missing, [])
            listed += len(missing)
        self._do("put_item", TableName=self.table, Item=_key(_TIMED_MARK, "m"))
        return listed

    def migrate(self) -> int:
        """The fingerprint index's conversion, then the index by time of pending and
        rejected decisions."""
        converted = super().migrate()
        return max(converted, self._order_by_time())

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

    def close(self) -> None:
        self._changes.closed.set()
