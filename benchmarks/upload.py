"""Print how many new S3 objects `thumbor-moderation watch-sqs` judges per second.

    python benchmarks/upload.py [--objects 200] [--consumers 1 2] [--concurrency 2] [--delay 0.15]

moto's SQS and S3 in server mode (a process of their own), the fake Rekognition
answering after `delay` seconds as a real round trip would, and consumers as processes
of their own on one SQLite decision store, all on the same machine (unpinned: the
consumers, moto and the fake share its CPUs). Each object is a new 800-pixel-wide JPEG with
a photo's entropy and bytes of its own (so each costs one backend call). Consumers are
started and warmed up (a few objects judged) before the clock starts; the clock stops
when every object has a stored decision and the queue is empty.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import photo_like  # noqa: E402
from tests.fakes.rekognition import FakeRekognition  # noqa: E402
from tests.moto_server import aws_client, moto_server_process  # noqa: E402
from tests.servers import aws_test_environment, base_config  # noqa: E402
from thumbor_rekognition.stores.sqlite import Store  # noqa: E402

WARM_UP = 4


def notification(bucket: str, key: str) -> str:
    """S3's own notification of a new object, as it sends it to SQS."""
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key, safe="/")}},
    }
    return json.dumps({"Records": [record]})


class Queue:
    """A bucket and a queue on moto, filled with objects and their notifications."""

    def __init__(self, endpoint: str) -> None:
        self.s3 = aws_client("s3", endpoint)
        self.sqs = aws_client("sqs", endpoint)
        self.bucket = f"bench-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.url = self.sqs.create_queue(
            QueueName=self.bucket, Attributes={"VisibilityTimeout": "60"}
        )["QueueUrl"]

    def upload(self, pictures: dict[str, bytes]) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda item: self.s3.put_object(Bucket=self.bucket, Key=item[0], Body=item[1]),
                    pictures.items(),
                )
            )

    def notify(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 10):
            entries = [
                {"Id": str(index), "MessageBody": notification(self.bucket, key)}
                for index, key in enumerate(keys[start : start + 10])
            ]
            self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)

    def left(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(value) for value in attributes.values())


def judged(database: str, keys: list[str]) -> int:
    store = Store(path=database)
    try:
        return sum(1 for key in keys if store.get(key) is not None)
    finally:
        store.close()


def wait_until_judged(queue: Queue, database: str, keys: list[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while judged(database, keys) < len(keys) or queue.left():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not judged within {timeout:.0f} s")
        time.sleep(0.05)


def pictures(prefix: str, count: int, first_width: int) -> dict[str, bytes]:
    return {
        f"{prefix}/{index:04d}.jpg": photo_like(first_width + index, 600) for index in range(count)
    }


def run(
    work: Path, endpoint: str, fake: FakeRekognition, consumers: int, concurrency: int, count: int
) -> None:
    queue = Queue(endpoint)
    root = work / f"run-{consumers}"
    config: dict[str, Any] = base_config(root, root / "images", fake.url)
    config["MODERATION_S3_URL_TEMPLATE"] = "{key}"
    (root / "images").mkdir(parents=True)
    conf = root / "thumbor.conf"
    conf.write_text("".join(f"{key} = {value!r}\n" for key, value in config.items()))
    database = config["MODERATION_SQLITE_PATH"]
    warm = pictures("warm", WARM_UP * consumers, 800)
    timed = pictures("timed", count, 1000)
    queue.upload({**warm, **timed})
    environment = {**aws_test_environment(), "AWS_ENDPOINT_URL": endpoint}
    command = [
        str(Path(sys.executable).with_name("thumbor-moderation")),
        "--conf",
        str(conf),
        "watch-sqs",
        "--queue-url",
        queue.url,
        "--wait-seconds",
        "1",
        "--concurrency",
        str(concurrency),
    ]
    processes = [
        subprocess.Popen(
            command,
            env=environment,
            stderr=None if os.environ.get("BENCH_VERBOSE") else subprocess.DEVNULL,
        )
        for _ in range(consumers)
    ]
    try:
        queue.notify(list(warm))
        wait_until_judged(queue, database, list(warm))
        calls_before = fake.call_count
        started = time.monotonic()
        queue.notify(list(timed))
        wait_until_judged(queue, database, list(timed))
        seconds = time.monotonic() - started
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(60)
    calls = fake.call_count - calls_before
    rate = count / seconds
    print(
        f"  {consumers} consumer{'s' if consumers > 1 else ' '} x {concurrency} receives: "
        f"{count} objects in {seconds:5.1f} s = {rate:6.1f} objects/s, "
        f"{rate / consumers:6.1f} per consumer; backend calls {calls}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=200, help="objects judged per run")
    parser.add_argument(
        "--consumers", type=int, nargs="+", default=[1, 2], help="consumer processes, per run"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="receives of each consumer")
    parser.add_argument("--delay", type=float, default=0.15, help="backend delay in seconds")
    arguments = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as directory,
        FakeRekognition() as fake,
        moto_server_process() as endpoint,
    ):
        fake.fail("slow", delay=arguments.delay)
        print(
            f"watch-sqs, backend answering in {arguments.delay * 1000:.0f} ms, moto's SQS and "
            f"S3, one SQLite store, {len(os.sched_getaffinity(0))} CPUs for all "
            f"(load average {os.getloadavg()[0]:.1f})"
        )
        for consumers in arguments.consumers:
            run(
                Path(directory), endpoint, fake, consumers, arguments.concurrency, arguments.objects
            )


if __name__ == "__main__":
    main()
