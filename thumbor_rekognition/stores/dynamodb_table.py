"""The ground floor of the DynamoDB store: its settings, a client per process, creating
the table when asked, and the requests every layer above makes (single, queried,
batched, transactions, races tried again)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions
import botocore.utils

from thumbor_rekognition import stores
from thumbor_rekognition._process import PerProcess
from thumbor_rekognition.stores.dynamodb_items import (
    _endpoint_url,
    _key,
    _Refused,
    _s,
    _table_name,
    table_definition,
)

if TYPE_CHECKING:
    from thumbor_rekognition.config import Settings

logger = logging.getLogger(__name__)


# BatchGetItem's most keys a request.
_BATCH_GET = 100


class Table(stores.Store):
    """A client per process, the table, and requests to it: refusals apart, retried races."""

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
                    "it (see docs/stores.md) or set MODERATION_DYNAMODB_CREATE_TABLE = True"
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
