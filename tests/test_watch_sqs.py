"""`thumbor-moderation watch-sqs` against moto's SQS and S3 in server mode (a process of
its own), consumers as real processes, and the fake Rekognition, whose counter says what
the backend was asked.

S3's own notifications come from moto, which sends them as S3 does (its test event
first, keys encoded with '+' for a space); the SNS and EventBridge shapes wrap or restate
them as those services do.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
from thumbor.config import Config

from tests.conftest import picture
from tests.fakes.rekognition import Call, FakeRekognition
from tests.moto_server import aws_client, moto_server_process
from tests.receivers import Receiver
from tests.servers import ThumborServer, aws_test_environment, base_config
from thumbor_rekognition.cli.s3_events import NewObject, Unreadable, new_objects
from thumbor_rekognition.config import ConfigurationError, Settings
from thumbor_rekognition.stores.sqlite import Store

pytestmark = pytest.mark.e2e

RED = (255, 0, 0)
BLUE = (0, 0, 255)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]
HOOK_PATH = "/moderation-events"

_sizes = itertools.count()


def new_picture(color: tuple[int, int, int] = BLUE) -> bytes:
    """A picture with bytes of its own (so it needs a backend call of its own)."""
    return picture(color, size=(160, 100 + next(_sizes) % 2000))


# S3 notifications, in the three shapes a queue gets them


def s3_record(bucket: str, key: str, event: str = "ObjectCreated:Put") -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventName": event,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            # As S3 writes it: URL-encoded, '+' for a space.
            "object": {"key": quote_plus(key, safe="/"), "size": 1},
        },
    }


def s3_shape(bucket: str, key: str, event: str = "ObjectCreated:Put") -> str:
    return json.dumps({"Records": [s3_record(bucket, key, event)]})


def sns_shape(s3_message: str) -> str:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:uploads",
            "Subject": "Amazon S3 Notification",
            "Message": s3_message,
            "Timestamp": "2026-01-01T00:00:00.000Z",
        }
    )


def eventbridge_shape(bucket: str, key: str, detail_type: str = "Object Created") -> str:
    return json.dumps(
        {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": detail_type,
            "source": "aws.s3",
            "account": "123456789012",
            "region": "us-east-1",
            "resources": [f"arn:aws:s3:::{bucket}"],
            # EventBridge's keys are not encoded.
            "detail": {"version": "0", "bucket": {"name": bucket}, "object": {"key": key}},
        }
    )


# moto, a queue and a bucket


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server_process() as url:
        yield url


class Aws:
    """A bucket and a queue of a test's own on moto, and the tests' own clients."""

    def __init__(self, endpoint: str, visibility: int) -> None:
        self.endpoint = endpoint
        self.s3 = aws_client("s3", endpoint)
        self.sqs = aws_client("sqs", endpoint)
        name = f"uploads-{uuid.uuid4().hex[:12]}"
        self.bucket = name
        self.s3.create_bucket(Bucket=name)
        self.queue = self.sqs.create_queue(
            QueueName=name, Attributes={"VisibilityTimeout": str(visibility)}
        )["QueueUrl"]

    def notify_from_s3(self) -> None:
        """Have S3 (moto) send its notifications of new objects to the queue."""
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])
        self.s3.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {"QueueArn": arn["Attributes"]["QueueArn"], "Events": ["s3:ObjectCreated:*"]}
                ]
            },
        )

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def send(self, *bodies: str) -> None:
        for start in range(0, len(bodies), 10):
            entries = [
                {"Id": str(index), "MessageBody": body}
                for index, body in enumerate(bodies[start : start + 10])
            ]
            self.sqs.send_message_batch(QueueUrl=self.queue, Entries=entries)

    def messages_left(self) -> int:
        """Messages in the queue, visible or in flight."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )


@pytest.fixture
def aws(endpoint: str) -> Aws:
    return Aws(endpoint, visibility=30)


# Consumers: thumbor-moderation watch-sqs in processes of their own


def consumer_config(root: Path, fake: FakeRekognition, **extra: Any) -> dict[str, Any]:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    config = base_config(root, images, fake.url)
    config.update(
        {
            "MODERATION_S3_URL_TEMPLATE": "{key}",
            # A consumer killed while it judged holds its picture's lease this long.
            "MODERATION_LEASE_SECONDS": 1.0,
            **extra,
        }
    )
    return config


def write_conf(root: Path, config: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "thumbor.conf"
    conf.write_text("".join(f"{key} = {value!r}\n" for key, value in config.items()))
    return conf


class Consumer:
    """`thumbor-moderation watch-sqs` in a process of its own, its standard error kept."""

    def __init__(self, root: Path, config: dict[str, Any], aws: Aws, *options: str) -> None:
        self.conf = write_conf(root, config)
        self.errors = root / f"watch-sqs-{uuid.uuid4().hex[:6]}.err"
        environment = aws_test_environment()
        # boto3's standard configuration is all it is given: the endpoint variables.
        environment.update(
            {"AWS_ENDPOINT_URL_SQS": aws.endpoint, "AWS_ENDPOINT_URL_S3": aws.endpoint}
        )
        with self.errors.open("wb") as errors:
            self.process = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("thumbor-moderation")),
                    "--conf",
                    str(self.conf),
                    "watch-sqs",
                    "--queue-url",
                    aws.queue,
                    "--wait-seconds",
                    "1",
                    *options,
                ],
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env=environment,
            )

    @property
    def stderr(self) -> str:
        return self.errors.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, and the exit code once it has stopped."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def consumers() -> Iterator[Callable[..., Consumer]]:
    started: list[Consumer] = []

    def start(root: Path, config: dict[str, Any], aws: Aws, *options: str) -> Consumer:
        consumer = Consumer(root, config, aws, *options)
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        consumer.kill()
        assert "Traceback" not in consumer.stderr, consumer.stderr


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def decisions(config: dict[str, Any], keys: list[str]) -> dict[str, str]:
    """The status stored for each key that has a decision."""
    store = Store(path=config["MODERATION_SQLITE_PATH"])
    try:
        found = {key: store.get(key) for key in keys}
    finally:
        store.close()
    return {key: decision.status.value for key, decision in found.items() if decision is not None}


def all_judged(config: dict[str, Any], keys: list[str], aws: Aws) -> Callable[[], bool]:
    return lambda: len(decisions(config, keys)) == len(keys) and aws.messages_left() == 0


def sizes(calls: list[Call]) -> set[tuple[int, int]]:
    return {(call.width, call.height) for call in calls}


# The three shapes


def test_objects_told_of_in_each_shape_are_judged_and_their_messages_deleted(
    tmp_path: Path, aws: Aws, fake: FakeRekognition, consumers: Callable[..., Consumer]
) -> None:
    fake.respond(RED, NUDITY)
    direct = "new uploads/a+b ü.png"
    through_sns = "sns/photo one.png"
    through_eventbridge = "eventbridge/photo+two.png"
    aws.put(through_sns, new_picture())
    aws.put(through_eventbridge, new_picture())
    aws.notify_from_s3()
    aws.put(direct, new_picture(RED))
    aws.send(
        sns_shape(s3_shape(aws.bucket, through_sns)),
        eventbridge_shape(aws.bucket, through_eventbridge),
        s3_shape(aws.bucket, "removed.png", event="ObjectRemoved:Delete"),
        eventbridge_shape(aws.bucket, "removed.png", detail_type="Object Deleted"),
        sns_shape(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})),
    )
    config = consumer_config(tmp_path, fake)
    keys = [direct, through_sns, through_eventbridge]

    consumer = consumers(tmp_path, config, aws)
    # moto's own notifications too: its test event, then the direct one.
    wait_for(all_judged(config, keys, aws))
    code = consumer.stop()

    assert decisions(config, keys) == {
        direct: "rejected",
        through_sns: "approved",
        through_eventbridge: "approved",
    }
    assert fake.call_count == 3
    assert code == 0
    assert "judged 3, rejected 1, failed 0" in consumer.stderr.splitlines()[-1]


def test_a_message_that_is_no_s3_notification_is_left_for_the_dead_letter_queue(
    tmp_path: Path, aws: Aws, fake: FakeRekognition, consumers: Callable[..., Consumer]
) -> None:
    aws.put("kept.png", new_picture())
    aws.send("not json", json.dumps({"Records": "nope"}), s3_shape(aws.bucket, "kept.png"))
    config = consumer_config(tmp_path, fake)

    consumer = consumers(tmp_path, config, aws)
    wait_for(lambda: decisions(config, ["kept.png"]) == {"kept.png": "approved"})
    wait_for(lambda: "failed 2" in consumer.stderr)
    code = consumer.stop()

    assert aws.messages_left() == 2
    assert "is not an S3 notification" in consumer.stderr
    assert code == 0


@pytest.mark.parametrize(
    ("data", "extra", "says"),
    [
        (b"these are not the pixels you are looking for", {}, "not a picture"),
        (b"\x89PNG" + b"\0" * 4096, {"MODERATION_CHECK_MAX_BODY_BYTES": 1024}, "larger than"),
    ],
)
def test_an_object_that_is_not_a_picture_or_too_large_is_not_deleted_and_costs_no_call(
    tmp_path: Path,
    aws: Aws,
    fake: FakeRekognition,
    consumers: Callable[..., Consumer],
    data: bytes,
    extra: dict[str, Any],
    says: str,
) -> None:
    aws.put("notes.png", data)
    aws.send(s3_shape(aws.bucket, "notes.png"))
    config = consumer_config(tmp_path, fake, **extra)

    consumer = consumers(tmp_path, config, aws)
    wait_for(lambda: "failed 1" in consumer.stderr)
    code = consumer.stop()

    assert aws.messages_left() == 1
    assert decisions(config, ["notes.png"]) == {}
    assert says in consumer.stderr
    assert fake.call_count == 0
    assert code == 0


# Many consumers, and consumers that stop


def test_two_consumers_judge_200_objects_with_one_backend_call_each(
    tmp_path: Path, aws: Aws, fake: FakeRekognition, consumers: Callable[..., Consumer]
) -> None:
    keys = [f"bulk/{index:03d}.png" for index in range(200)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda key: aws.put(key, new_picture()), keys))
    aws.send(*(s3_shape(aws.bucket, key) for key in keys))
    config = consumer_config(tmp_path, fake)

    first = consumers(tmp_path / "a", config, aws)
    second = consumers(tmp_path / "b", config, aws)
    wait_for(all_judged(config, keys, aws), timeout=120)
    codes = [first.stop(), second.stop()]

    assert set(decisions(config, keys).values()) == {"approved"}
    assert fake.call_count == 200
    assert len(sizes(fake.calls)) == 200
    assert codes == [0, 0]


def test_a_consumer_killed_mid_batch_loses_nothing(
    tmp_path: Path, endpoint: str, fake: FakeRekognition, consumers: Callable[..., Consumer]
) -> None:
    aws = Aws(endpoint, visibility=2)
    keys = [f"killed/{index:02d}.png" for index in range(20)]
    for key in keys:
        aws.put(key, new_picture())
    aws.send(*(s3_shape(aws.bucket, key) for key in keys))
    config = consumer_config(tmp_path, fake)
    fake.fail("hold")

    killed = consumers(tmp_path / "killed", config, aws)
    wait_for(lambda: fake.call_count >= 1)
    killed.kill()
    fake.release("drop")
    # The fake records a request when it has read it: one the killed consumer was still
    # sending is recorded when its connection closes, which may come after the kill.
    wait_for(lambda: fake.connections == 0)
    calls_before = fake.call_count
    survivor = consumers(tmp_path / "survivor", config, aws)
    wait_for(all_judged(config, keys, aws))
    code = survivor.stop()

    assert set(decisions(config, keys).values()) == {"approved"}
    # Each picture judged once after the kill: the calls the killed one had out were lost
    # with it, and no picture is judged twice.
    after = fake.calls[calls_before:]
    assert len(after) == 20
    assert len(sizes(after)) == 20
    assert code == 0


def test_sigterm_stops_after_the_messages_in_hand_are_judged_and_deleted(
    tmp_path: Path, aws: Aws, fake: FakeRekognition, consumers: Callable[..., Consumer]
) -> None:
    keys = [f"in-hand/{index}.png" for index in range(3)]
    for key in keys:
        aws.put(key, new_picture())
    aws.send(*(s3_shape(aws.bucket, key) for key in keys))
    config = consumer_config(tmp_path, fake)
    fake.fail("hold")

    consumer = consumers(tmp_path, config, aws, "--concurrency", "1")
    wait_for(lambda: fake.call_count == 3)
    consumer.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    running = consumer.process.poll() is None
    fake.release()
    code = consumer.stop()

    assert running
    assert code == 0
    assert set(decisions(config, keys).values()) == {"approved"}
    assert aws.messages_left() == 0


# With Thumbor: the first view, the webhook, the call rate


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as started:
        yield started


def test_a_judged_object_is_a_cached_hit_at_its_first_view_and_sends_the_usual_webhook(
    tmp_path: Path,
    aws: Aws,
    fake: FakeRekognition,
    receiver: Receiver,
    consumers: Callable[..., Consumer],
) -> None:
    fake.respond(RED, NUDITY)
    data = new_picture(RED)
    aws.put("hook.png", data)
    config = consumer_config(tmp_path, fake, MODERATION_WEBHOOK_URL=receiver.url + HOOK_PATH)
    (tmp_path / "images" / "hook.png").write_bytes(data)
    thumbor = ThumborServer(tmp_path / "thumbor", config).start()
    try:
        consumer = consumers(tmp_path, config, aws)
        aws.send(s3_shape(aws.bucket, "hook.png"))
        wait_for(all_judged(config, ["hook.png"], aws))
        [hook] = receiver.wait_for(1, lambda request: request.path == HOOK_PATH)
        view = thumbor.get("/unsafe/64x48/hook.png")
        consumer.stop()
    finally:
        thumbor.stop()

    body = json.loads(hook.body)
    assert (body["event"], body["key"], body["status"], body["source"]) == (
        "decision.changed",
        "hook.png",
        "rejected",
        "auto",
    )
    assert [reason["name"] for reason in body["reasons"]] == ["Nudity"]
    assert view.header("X-Moderation-Status") == "rejected"
    assert fake.call_count == 1
    assert "Traceback" not in thumbor.log


@pytest.mark.timing
def test_the_call_rate_holds_across_consumers_and_thumbor_together(
    tmp_path: Path, aws: Aws, fake: FakeRekognition, consumers: Callable[..., Consumer]
) -> None:
    limit = 4
    config = consumer_config(
        tmp_path,
        fake,
        REKOGNITION_MAX_CALLS_PER_SECOND=limit,
        # Thumbor's first views wait for their turns too, rather than answer pending.
        MODERATION_TIMEOUT_SECONDS=60.0,
        MODERATION_TURN_WAIT_SECONDS=60.0,
    )
    keys = [f"rate/{index:02d}.png" for index in range(16)]
    for key in keys:
        aws.put(key, new_picture())
    viewed = [f"viewed-{index}.png" for index in range(8)]
    for name in ["warm-up.png", *viewed]:
        (tmp_path / "images" / name).write_bytes(new_picture())
    thumbor = ThumborServer(tmp_path / "thumbor", config).start()
    try:
        # Its Rekognition client built, as a server's is once it has warmed up.
        assert thumbor.get("/unsafe/60x60/warm-up.png").header("X-Moderation-Status") == "approved"
        consumers(tmp_path / "a", config, aws)
        consumers(tmp_path / "b", config, aws)
        aws.send(*(s3_shape(aws.bucket, key) for key in keys))
        with ThreadPoolExecutor(max_workers=len(viewed)) as pool:
            views = list(
                pool.map(
                    lambda name: thumbor.request("GET", f"/unsafe/60x60/{name}", timeout=90),
                    viewed,
                )
            )
        wait_for(all_judged(config, keys, aws), timeout=120)
    finally:
        thumbor.stop()

    assert [view.header("X-Moderation-Status") for view in views] == ["approved"] * 8
    assert fake.call_count == 25
    times = sorted(call.at for call in fake.calls)
    busiest = max(sum(1 for other in times if start <= other < start + 1.0) for start in times)
    assert busiest <= limit + 1


# The consumer's own checks


def test_an_unknown_queue_is_a_failure_named_on_standard_error(
    tmp_path: Path, endpoint: str, fake: FakeRekognition
) -> None:
    aws = Aws(endpoint, visibility=30)
    conf = write_conf(tmp_path, consumer_config(tmp_path, fake))
    environment = aws_test_environment()
    environment["AWS_ENDPOINT_URL"] = endpoint

    ran = subprocess.run(
        [
            str(Path(sys.executable).with_name("thumbor-moderation")),
            "--conf",
            str(conf),
            "watch-sqs",
            "--queue-url",
            aws.queue + "-missing",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )

    assert ran.returncode == 1
    assert "cannot read the queue" in ran.stderr
    assert "Traceback" not in ran.stderr


# Reading the messages, and the template


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (s3_shape("b", "a b+c.png"), [NewObject("b", "a b+c.png")]),
        (sns_shape(s3_shape("b", "x/ü é.jpg")), [NewObject("b", "x/ü é.jpg")]),
        (eventbridge_shape("b", "a+b c%41.png"), [NewObject("b", "a+b c%41.png")]),
        (s3_shape("b", "gone.png", event="ObjectRemoved:Delete"), []),
        (eventbridge_shape("b", "gone.png", detail_type="Object Deleted"), []),
        (json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}), []),
        (
            json.dumps({"Records": [s3_record("b", "1.png"), s3_record("b", "2.png")]}),
            [NewObject("b", "1.png"), NewObject("b", "2.png")],
        ),
    ],
)
def test_each_shape_names_the_objects_created_with_their_keys_decoded(
    body: str, expected: list[NewObject]
) -> None:
    assert new_objects(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        json.dumps({"Records": "nope"}),
        json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]}),
        json.dumps({"source": "aws.s3", "detail-type": "Object Created", "detail": {}}),
        json.dumps({"Type": "Notification", "Message": "not json"}),
        json.dumps({"hello": "world"}),
    ],
)
def test_what_no_s3_notification_looks_like_is_unreadable(body: str) -> None:
    with pytest.raises(Unreadable):
        new_objects(body)


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("https://cdn.example.com/{bucket}", "must contain {key}"),
        ("{key}/{size}", "may only be {bucket}, {key}"),
        ("{key", "Not a format template"),
        ("{0}{key}", "may only be"),
    ],
)
def test_a_url_template_with_other_fields_is_refused_at_start_up(template: str, says: str) -> None:
    config = Config(MODERATION_S3_URL_TEMPLATE=template)

    with pytest.raises(ConfigurationError) as refused:
        Settings.from_config(config)

    assert "MODERATION_S3_URL_TEMPLATE" in str(refused.value)
    assert says in str(refused.value)


def run_once(conf: Path, queue_url: str, environment: dict[str, str]) -> Any:
    """watch-sqs run to its end: SIGTERM once it has had time to read its queue."""
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("thumbor-moderation")),
            "--conf",
            str(conf),
            "watch-sqs",
            "--queue-url",
            queue_url,
            "--wait-seconds",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        _, stderr = process.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


def test_without_a_region_the_queue_url_of_aws_gives_it_and_another_is_a_usage_error(
    tmp_path: Path, endpoint: str, fake: FakeRekognition
) -> None:
    conf = write_conf(tmp_path, consumer_config(tmp_path, fake))
    sqs = boto3.session.Session().client(
        "sqs",
        region_name="eu-west-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    name = f"regional-{uuid.uuid4().hex[:8]}"
    sqs.create_queue(QueueName=name)
    environment = aws_test_environment()
    environment.pop("AWS_DEFAULT_REGION")
    environment["AWS_ENDPOINT_URL"] = endpoint
    environment["AWS_CONFIG_FILE"] = str(tmp_path / "no-aws-config")

    aws_url = run_once(
        conf, f"https://sqs.eu-west-1.amazonaws.com/123456789012/{name}", environment
    )
    other_url = run_once(conf, f"{endpoint}/123456789012/{name}", environment)

    # Its queue found in the queue URL's region: read, and stopped cleanly.
    assert aws_url[0] == 0, aws_url[1]
    assert "judged 0, rejected 0, failed 0" in aws_url[1]
    assert other_url[0] == 2
    assert "no AWS region" in other_url[1]
