"""`watch-sqs`: judge new S3 objects from their upload notifications, before anyone views them.

Each message of the queue (S3's notification, directly, through SNS or through
EventBridge: see s3_events) names new objects; each is read from S3, named as Thumbor
will be asked for it (MODERATION_S3_URL_TEMPLATE) and judged as the check route judges
a picture (upload.judge: same decision store, call rate, quarantine and webhooks), then
the message is deleted. A message is deleted only once every object it names has a
stored decision: one that failed is made visible again after RETRY_SECONDS and SQS
redelivers it (its receive count takes it to a dead-letter queue, when one is set).
Judging is idempotent: bytes already judged under that URL cost no backend call, and a
picture another consumer is judging is waited for, not judged twice.

As many consumers as the queue needs may run: SQS hands each message to one of them.
SIGTERM (or Ctrl-C) stops receiving; the messages in hand are judged and deleted first.
The S3 and SQS clients take boto3's standard configuration: credentials chain, region
(else the queue URL's), AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_SQS / _S3.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from thumbor_rekognition import stores, upload
from thumbor_rekognition.cli.environment import EXIT_OK, Environment, Failure, UsageError
from thumbor_rekognition.cli.s3_events import NewObject, Unreadable, new_objects
from thumbor_rekognition.decision import Status
from thumbor_rekognition.preparation import UnsupportedImage

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WAIT_SECONDS = 20
DEFAULT_CONCURRENCY = 2
# Most messages one receive asks for (SQS's own limit).
BATCH = 10
# A message that failed comes back this soon, or after the queue's visibility timeout
# when that is shorter.
RETRY_SECONDS = 10
# The share of the visibility timeout a message's judgement may wait for a turn of the
# call rate: past it, another consumer could receive the message while it is judged.
VISIBILITY_SHARE = 0.8
PROGRESS_SECONDS = 5.0
# After a failed receive, the next one waits this long (doubling, up to the most).
RECEIVE_BACKOFF = (1.0, 30.0)
GONE = frozenset({"NoSuchKey", "404", "NotFound"})
_REGION = re.compile(r"^https://sqs[.-]([a-z0-9-]+)\.amazonaws\.com", re.IGNORECASE)


def run_watch_sqs(environment: Environment, arguments: argparse.Namespace) -> int:
    """Judge new S3 objects from an SQS queue of upload notifications until stopped."""
    consumer = Consumer(
        environment, arguments.queue_url, arguments.wait_seconds, arguments.concurrency
    )
    asyncio.run(consumer.run())
    return EXIT_OK


@dataclass
class Progress:
    """What a consumer has done since it started."""

    judged: int = 0
    rejected: int = 0
    failed: int = 0

    def line(self, calls: int, seconds: float) -> str:
        rate = calls / seconds if seconds > 0 else 0.0
        return (
            f"watch-sqs: judged {self.judged}, rejected {self.rejected}, "
            f"failed {self.failed}, {rate:.2f} calls/s"
        )


class Consumer:
    """One process's consumer of a queue: receivers, judgements, deletions."""

    def __init__(
        self, environment: Environment, queue_url: str, wait_seconds: int, concurrency: int
    ) -> None:
        self.runtime = environment.runtime
        self.queue_url = queue_url
        self.wait_seconds = wait_seconds
        self.concurrency = concurrency
        self.template = self.runtime.settings.s3_url_template
        session = boto3.session.Session()
        region = session.region_name or _region_of(queue_url)
        if region is None:
            raise UsageError(
                "no AWS region: set AWS_DEFAULT_REGION (or AWS_REGION, or a profile's region)"
            )
        # A connection for each thread that calls AWS; the rest is boto3's own configuration.
        pool = botocore.config.Config(max_pool_connections=self._threads)
        self.sqs: Any = session.client("sqs", region_name=region, config=pool)
        self.s3: Any = session.client("s3", region_name=region, config=pool)
        self.progress = Progress()
        self.visibility = 30
        self._started = time.monotonic()
        self._stopping = asyncio.Event()
        self._aws: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def _threads(self) -> int:
        # Each receive in flight, and a read or a deletion for each message it brought.
        return self.concurrency * (BATCH + 1)

    async def run(self) -> None:
        """Receive and judge until stopped; then judge what is in hand, and return."""
        self._aws = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._threads, thread_name_prefix="watch-sqs"
        )
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, self.stop)
        try:
            self.visibility = await self._visibility_timeout()
            await self._warm_up()
            calls_before = self.runtime.moderator.backend_calls
            self._started = time.monotonic()
            progress = asyncio.ensure_future(self._show_progress(calls_before))
            await asyncio.gather(*(self._receive() for _ in range(self.concurrency)))
            progress.cancel()
            self._print(calls_before, time.monotonic() - self._started)
        finally:
            for number in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(number)
            self._aws.shutdown(wait=True)

    def stop(self) -> None:
        """Receive no more; the messages in hand are judged and deleted first."""
        if not self._stopping.is_set():
            logger.warning("stopping after the messages in hand")
        self._stopping.set()

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._aws, functools.partial(func, *args, **kwargs)
        )

    async def _warm_up(self) -> None:
        # The backend's client is built before the first turn to call is taken: built by
        # the first call instead, it would hold back the calls whose turns pass meanwhile,
        # which would then go out together, over the rate.
        try:
            await self._call(self.runtime.moderator.backend.warm_up)
        except Exception:
            logger.exception("moderation backend failed to warm up")

    async def _visibility_timeout(self) -> int:
        try:
            answer = await self._call(
                self.sqs.get_queue_attributes,
                QueueUrl=self.queue_url,
                AttributeNames=["VisibilityTimeout"],
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise Failure(f"cannot read the queue {self.queue_url}: {error}") from None
        return int(answer.get("Attributes", {}).get("VisibilityTimeout", 30))

    async def _receive(self) -> None:
        backoff = RECEIVE_BACKOFF[0]
        while not self._stopping.is_set():
            try:
                answer = await self._call(
                    self.sqs.receive_message,
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=BATCH,
                    WaitTimeSeconds=self.wait_seconds,
                )
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
                logger.warning("receiving from %s failed: %s", self.queue_url, error)
                await self._pause(backoff)
                backoff = min(backoff * 2, RECEIVE_BACKOFF[1])
                continue
            backoff = RECEIVE_BACKOFF[0]
            messages = answer.get("Messages", [])
            # The judgements of this batch wait for a turn of the call rate no longer than
            # the messages stay invisible to the other consumers.
            deadline = time.monotonic() + max(
                self.visibility * VISIBILITY_SHARE, self.runtime.settings.request_budget
            )
            await asyncio.gather(*(self._message(message, deadline) for message in messages))

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _message(self, message: dict[str, Any], deadline: float) -> None:
        identifier = message.get("MessageId", "?")
        try:
            objects = new_objects(message.get("Body", ""))
        except Unreadable as error:
            # Left as it is: it comes back until the dead-letter queue takes it.
            logger.error(
                "message %s is not an S3 notification (%s): not deleted", identifier, error
            )
            self.progress.failed += 1
            return
        # No object (a test event, a deletion): deleted at once.
        outcomes = await asyncio.gather(*(self._judged(new, deadline) for new in objects))
        if all(outcomes):
            await self._delete(message)
        else:
            await self._retry_soon(message)

    async def _judged(self, new: NewObject, deadline: float) -> bool:
        try:
            return await self._judge(new, deadline)
        except Exception:
            # Whatever one object raises (a quarantine down, say), the others go on and
            # its message comes back.
            logger.exception("judging s3://%s/%s failed", new.bucket, new.key)
            self.progress.failed += 1
            return False

    async def _judge(self, new: NewObject, deadline: float) -> bool:
        """Judge one new object; whether its decision is stored (or it is gone)."""
        url = self.template.format(bucket=new.bucket, key=new.key)
        try:
            data = await self._read(new)
        except _Gone:
            # Deleted since: nothing to judge, and nothing to serve.
            logger.info("s3://%s/%s is gone; nothing to judge", new.bucket, new.key)
            return True
        except _NotRead as error:
            logger.warning("s3://%s/%s not read: %s", new.bucket, new.key, error)
            self.progress.failed += 1
            return False
        try:
            decision = await upload.judge(self.runtime, url, data, None, deadline, patient=True)
        except UnsupportedImage as error:
            logger.warning("%s is not a picture the plugin can judge: %s", url, error)
            self.progress.failed += 1
            return False
        except stores.StoreUnavailable as error:
            logger.warning("%s not judged, decision store unavailable: %s", url, error)
            self.progress.failed += 1
            return False
        if decision.needs_retry:
            logger.warning(
                "%s left pending (%s): judged again when it comes back", url, decision.error
            )
            self.progress.failed += 1
            return False
        self.progress.judged += 1
        if decision.status is Status.REJECTED:
            self.progress.rejected += 1
        return True

    async def _read(self, new: NewObject) -> bytes:
        limit = self.runtime.settings.check_max_body
        try:
            answer = await self._call(self.s3.get_object, Bucket=new.bucket, Key=new.key)
            body = answer["Body"]
            try:
                if int(answer.get("ContentLength", 0)) > limit:
                    raise _NotRead(f"larger than MODERATION_CHECK_MAX_BODY_BYTES ({limit})")
                data: bytes = await self._call(body.read, limit + 1)
            finally:
                body.close()
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in GONE:
                raise _Gone() from None
            raise _NotRead(str(error)) from None
        except botocore.exceptions.BotoCoreError as error:
            raise _NotRead(str(error)) from None
        if len(data) > limit:
            raise _NotRead(f"larger than MODERATION_CHECK_MAX_BODY_BYTES ({limit})")
        return data

    async def _delete(self, message: dict[str, Any]) -> None:
        try:
            await self._call(
                self.sqs.delete_message,
                QueueUrl=self.queue_url,
                ReceiptHandle=message["ReceiptHandle"],
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            # Received again later, it is judged again at no backend cost.
            logger.warning("message %s not deleted: %s", message.get("MessageId", "?"), error)

    async def _retry_soon(self, message: dict[str, Any]) -> None:
        if self.visibility <= RETRY_SECONDS:
            return
        try:
            await self._call(
                self.sqs.change_message_visibility,
                QueueUrl=self.queue_url,
                ReceiptHandle=message["ReceiptHandle"],
                VisibilityTimeout=RETRY_SECONDS,
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            logger.warning("message %s comes back later: %s", message.get("MessageId", "?"), error)

    async def _show_progress(self, calls_before: int) -> None:
        shown = Progress()
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            if self.progress != shown:
                shown = Progress(**vars(self.progress))
                self._print(calls_before, time.monotonic() - self._started)

    def _print(self, calls_before: int, seconds: float) -> None:
        calls = self.runtime.moderator.backend_calls - calls_before
        print(self.progress.line(calls, seconds), file=sys.stderr, flush=True)


class _Gone(Exception):
    """The object no longer exists."""


class _NotRead(Exception):
    """The object could not be read (yet)."""


def _region_of(queue_url: str) -> str | None:
    """The region of an AWS queue URL (https://sqs.<region>.amazonaws.com/...)."""
    match = _REGION.match(queue_url)
    return match.group(1) if match else None
