"""The fake Rekognition endpoint, exercised through the real boto3 client."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    HTTPClientError,
    ReadTimeoutError,
)
from PIL import Image

from tests.fakes.rekognition import MAX_IMAGE_BYTES, FakeRekognition

RED = (220, 20, 30)
BLUE = (20, 40, 210)
EXPLICIT = {
    "Name": "Explicit Nudity",
    "ParentName": "",
    "Confidence": 97.25,
    "TaxonomyLevel": 1,
}
NUDITY = {
    "Name": "Nudity",
    "ParentName": "Explicit Nudity",
    "Confidence": 72.5,
    "TaxonomyLevel": 2,
}
SUGGESTIVE = {"Name": "Suggestive", "ParentName": "", "Confidence": 41.0}


def encode(
    color: tuple[int, int, int],
    size: tuple[int, int] = (100, 100),
    image_format: str = "PNG",
    **save_options: Any,
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, image_format, **save_options)
    return buffer.getvalue()


def make_client(url: str, **config: Any) -> Any:
    return boto3.client(
        "rekognition",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, **config),
    )


@pytest.fixture
def fake() -> Iterator[FakeRekognition]:
    with FakeRekognition() as server:
        yield server


@pytest.fixture
def client(fake: FakeRekognition) -> Any:
    return make_client(fake.url)


def test_registered_colour_returns_its_labels_parsed_by_botocore(
    fake: FakeRekognition, client: Any
) -> None:
    fake.respond(RED, [EXPLICIT, NUDITY], model_version="7.1")

    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert response["ModerationLabels"] == [EXPLICIT, NUDITY]
    assert response["ModerationModelVersion"] == "7.1"
    assert response["ContentTypes"] == []
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_response_carries_a_request_id_header(fake: FakeRekognition, client: Any) -> None:
    fake.respond(RED, [EXPLICIT])

    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    metadata = response["ResponseMetadata"]
    assert metadata["RequestId"]
    assert metadata["RequestId"] == metadata["HTTPHeaders"]["x-amzn-requestid"]
    assert metadata["HTTPHeaders"]["content-type"] == "application/x-amz-json-1.1"


def test_jpeg_close_to_a_registered_colour_gets_its_labels(
    fake: FakeRekognition, client: Any
) -> None:
    fake.respond(RED, [EXPLICIT])
    jpeg = encode((200, 35, 45), image_format="JPEG", quality=60)

    response = client.detect_moderation_labels(Image={"Bytes": jpeg})

    assert response["ModerationLabels"] == [EXPLICIT]


def test_nearest_registered_colour_wins(fake: FakeRekognition, client: Any) -> None:
    fake.respond((200, 0, 0), [EXPLICIT])
    fake.respond((240, 0, 0), [NUDITY])

    response = client.detect_moderation_labels(Image={"Bytes": encode((235, 0, 0))})

    assert response["ModerationLabels"] == [NUDITY]


def test_min_confidence_drops_labels_below_it(fake: FakeRekognition, client: Any) -> None:
    fake.respond(RED, [EXPLICIT, NUDITY, SUGGESTIVE])

    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)}, MinConfidence=80)

    assert response["ModerationLabels"] == [EXPLICIT]


def test_min_confidence_keeps_labels_exactly_at_it(fake: FakeRekognition, client: Any) -> None:
    fake.respond(RED, [EXPLICIT, NUDITY])

    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)}, MinConfidence=72.5)

    assert response["ModerationLabels"] == [EXPLICIT, NUDITY]


def test_without_min_confidence_labels_below_fifty_are_dropped(
    fake: FakeRekognition, client: Any
) -> None:
    fake.respond(RED, [NUDITY, SUGGESTIVE])

    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert response["ModerationLabels"] == [NUDITY]


def test_low_min_confidence_returns_low_confidence_labels(
    fake: FakeRekognition, client: Any
) -> None:
    fake.respond(RED, [NUDITY, SUGGESTIVE])

    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)}, MinConfidence=0)

    assert response["ModerationLabels"] == [NUDITY, SUGGESTIVE]


def test_unregistered_colour_gets_no_labels(fake: FakeRekognition, client: Any) -> None:
    fake.respond(RED, [EXPLICIT])

    response = client.detect_moderation_labels(Image={"Bytes": encode(BLUE)})

    assert response["ModerationLabels"] == []
    assert response["ModerationModelVersion"] == "7.0"


@pytest.mark.parametrize(
    ("mode", "code", "status"),
    [
        ("throttle", "ThrottlingException", 400),
        ("throughput", "ProvisionedThroughputExceededException", 400),
        ("internal", "InternalServerError", 500),
        ("access_denied", "AccessDeniedException", 400),
        ("invalid_format", "InvalidImageFormatException", 400),
    ],
)
def test_error_fault_raises_the_modelled_botocore_exception(
    fake: FakeRekognition, client: Any, mode: str, code: str, status: int
) -> None:
    fake.fail(mode)

    with pytest.raises(getattr(client.exceptions, code)) as raised:
        client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert isinstance(raised.value, ClientError)
    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["Error"]["Message"]
    metadata = raised.value.response["ResponseMetadata"]
    assert metadata["HTTPStatusCode"] == status
    assert metadata["HTTPHeaders"]["x-amzn-errortype"] == code


def test_malformed_body_yields_a_response_without_labels_not_an_error(
    fake: FakeRekognition, client: Any
) -> None:
    fake.respond(RED, [EXPLICIT])
    fake.fail("malformed")

    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert "ModerationLabels" not in response
    assert "ModerationModelVersion" not in response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_dropped_connection_raises_connection_closed_error(
    fake: FakeRekognition, client: Any
) -> None:
    fake.fail("drop")

    with pytest.raises(ConnectionClosedError) as raised:
        client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert isinstance(raised.value, HTTPClientError)


def test_slow_answer_past_the_read_timeout_raises_read_timeout_error(
    fake: FakeRekognition,
) -> None:
    impatient = make_client(fake.url, read_timeout=0.2)
    fake.fail("slow", delay=2.0)

    with pytest.raises(ReadTimeoutError):
        impatient.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert [call.fault for call in fake.calls] == ["slow"]


def test_slow_answer_within_the_read_timeout_arrives_late_but_intact(
    fake: FakeRekognition, client: Any
) -> None:
    fake.respond(RED, [EXPLICIT])
    fake.fail("slow", delay=0.2)

    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert response["ModerationLabels"] == [EXPLICIT]


def test_fault_for_one_request_affects_only_the_first_call(
    fake: FakeRekognition, client: Any
) -> None:
    fake.respond(RED, [EXPLICIT])
    fake.fail("throttle", times=1)

    with pytest.raises(client.exceptions.ThrottlingException):
        client.detect_moderation_labels(Image={"Bytes": encode(RED)})
    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert response["ModerationLabels"] == [EXPLICIT]
    assert [call.fault for call in fake.calls] == ["throttle", None]


def test_fault_without_times_lasts_until_cleared(fake: FakeRekognition, client: Any) -> None:
    fake.fail("internal")
    for _ in range(3):
        with pytest.raises(client.exceptions.InternalServerError):
            client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    fake.clear_faults()
    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert response["ModerationLabels"] == []
    assert fake.call_count == 4


def test_faults_apply_in_the_order_they_were_injected(fake: FakeRekognition, client: Any) -> None:
    fake.fail("throttle", times=2)
    fake.fail("access_denied", times=1)

    for expected in ["ThrottlingException", "ThrottlingException", "AccessDeniedException"]:
        with pytest.raises(ClientError) as raised:
            client.detect_moderation_labels(Image={"Bytes": encode(RED)})
        assert raised.value.response["Error"]["Code"] == expected
    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert response["ModerationLabels"] == []


def test_legacy_max_attempts_of_one_still_allows_one_retry(fake: FakeRekognition) -> None:
    legacy = boto3.client(
        "rekognition",
        endpoint_url=fake.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    fake.fail("drop", times=1)

    response = legacy.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert fake.call_count == 2


@pytest.mark.parametrize(
    ("image", "code"),
    [
        (encode(RED, image_format="GIF"), "InvalidImageFormatException"),
        (encode(RED, image_format="BMP"), "InvalidImageFormatException"),
        (encode(RED)[:60], "InvalidImageFormatException"),
        (b"GIF89a" + encode(RED), "InvalidImageFormatException"),
        (encode(RED, size=(50, 50)), "InvalidParameterException"),
        (encode(RED, size=(100, 79)), "InvalidParameterException"),
        (encode(RED, size=(10001, 80)), "InvalidParameterException"),
    ],
    ids=["gif", "bmp", "truncated-png", "png-behind-gif-magic", "50x50", "100x79", "10001x80"],
)
def test_image_outside_the_service_limits_is_rejected(
    fake: FakeRekognition, client: Any, image: bytes, code: str
) -> None:
    with pytest.raises(getattr(client.exceptions, code)):
        client.detect_moderation_labels(Image={"Bytes": image})

    assert [call.fault for call in fake.calls] == [code]


def test_image_over_five_megabytes_is_too_large(fake: FakeRekognition, client: Any) -> None:
    huge = encode(RED, size=(1400, 1300), compress_level=0)
    assert len(huge) > MAX_IMAGE_BYTES

    with pytest.raises(client.exceptions.ImageTooLargeException):
        client.detect_moderation_labels(Image={"Bytes": huge})

    assert fake.calls[0].size == len(huge)
    assert fake.calls[0].fault == "ImageTooLargeException"


def test_image_of_exactly_five_megabytes_is_accepted(fake: FakeRekognition, client: Any) -> None:
    png = encode(RED)
    padded = png + b"\0" * (MAX_IMAGE_BYTES - len(png))

    response = client.detect_moderation_labels(Image={"Bytes": padded})

    assert response["ModerationLabels"] == []


def test_min_confidence_above_one_hundred_is_an_invalid_parameter(
    fake: FakeRekognition, client: Any
) -> None:
    with pytest.raises(client.exceptions.InvalidParameterException):
        client.detect_moderation_labels(Image={"Bytes": encode(RED)}, MinConfidence=150)

    assert fake.calls[0].min_confidence == 150.0


def test_s3_object_images_are_not_supported(fake: FakeRekognition, client: Any) -> None:
    image = {"S3Object": {"Bucket": "some-bucket", "Name": "photo.jpg"}}

    with pytest.raises(client.exceptions.InvalidS3ObjectException):
        client.detect_moderation_labels(Image=image)

    assert fake.call_count == 1


def test_other_operations_are_unknown_and_not_counted(fake: FakeRekognition, client: Any) -> None:
    with pytest.raises(ClientError) as raised:
        client.detect_labels(Image={"Bytes": encode(RED)})

    assert raised.value.response["Error"]["Code"] == "UnknownOperationException"
    assert fake.call_count == 0
    assert [call.fault for call in fake.calls] == ["UnknownOperationException"]


def test_call_count_includes_failed_requests(fake: FakeRekognition, client: Any) -> None:
    fake.fail("throttle", times=1)

    with pytest.raises(client.exceptions.ThrottlingException):
        client.detect_moderation_labels(Image={"Bytes": encode(RED)})
    with pytest.raises(client.exceptions.InvalidImageFormatException):
        client.detect_moderation_labels(Image={"Bytes": encode(RED, image_format="GIF")})
    client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert fake.call_count == 3


def test_calls_describe_each_request(fake: FakeRekognition, client: Any) -> None:
    png = encode(RED, size=(120, 90))
    jpeg = encode(BLUE, size=(300, 200), image_format="JPEG")

    client.detect_moderation_labels(Image={"Bytes": png}, MinConfidence=60)
    client.detect_moderation_labels(Image={"Bytes": jpeg})

    first, second = fake.calls
    assert (first.image_format, first.width, first.height) == ("PNG", 120, 90)
    assert (first.size, first.mean_color, first.min_confidence) == (len(png), RED, 60.0)
    assert (second.image_format, second.width, second.height) == ("JPEG", 300, 200)
    assert second.min_confidence is None
    assert max(abs(a - b) for a, b in zip(second.mean_color, BLUE, strict=True)) <= 5
    assert first.fault is None
    assert first.at <= second.at


def test_calls_is_a_snapshot(fake: FakeRekognition, client: Any) -> None:
    snapshot = fake.calls

    client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert snapshot == []
    assert len(fake.calls) == 1


def test_reset_forgets_calls_scenarios_and_faults(fake: FakeRekognition, client: Any) -> None:
    fake.respond(RED, [EXPLICIT])
    fake.fail("throttle")
    with pytest.raises(client.exceptions.ThrottlingException):
        client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    fake.reset()
    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert response["ModerationLabels"] == []
    assert fake.call_count == 1


def test_server_does_not_log_requests(
    fake: FakeRekognition, client: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    fake.fail("internal", times=1)

    with pytest.raises(client.exceptions.InternalServerError):
        client.detect_moderation_labels(Image={"Bytes": encode(RED)})
    client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    "label",
    [
        {"ParentName": "", "Confidence": 90.0},
        {"Name": "Violence", "Confidence": 90.0},
        {"Name": "Violence", "ParentName": "", "Confidence": 101.0},
        {"Name": "Violence", "ParentName": "", "Confidence": 90.0, "Colour": "red"},
    ],
    ids=["no-name", "no-parent", "confidence-over-100", "unknown-key"],
)
def test_respond_rejects_labels_the_service_could_not_return(
    fake: FakeRekognition, label: dict[str, object]
) -> None:
    with pytest.raises(ValueError, match="label"):
        fake.respond(RED, [label])


def test_fail_rejects_an_unknown_mode(fake: FakeRekognition) -> None:
    with pytest.raises(ValueError, match="unknown fault mode"):
        fake.fail("explode")


@pytest.mark.timing
def test_stop_returns_promptly_while_a_slow_answer_is_pending() -> None:
    fake = FakeRekognition().start()
    impatient = make_client(fake.url, read_timeout=0.1)
    fake.fail("slow", delay=30.0)
    with pytest.raises(ReadTimeoutError):
        impatient.detect_moderation_labels(Image={"Bytes": encode(RED)})

    started = time.monotonic()
    fake.stop()

    assert time.monotonic() - started < 2.0


def test_held_requests_are_answered_once_released(fake: FakeRekognition, client: Any) -> None:
    fake.respond(RED, [EXPLICIT])
    fake.fail("hold")

    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = [
            pool.submit(client.detect_moderation_labels, Image={"Bytes": encode(RED)})
            for _ in range(2)
        ]
        deadline = time.monotonic() + 10
        while fake.call_count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        answered_while_held = [future.done() for future in pending]
        fake.release()
        responses = [future.result(timeout=10) for future in pending]
    after = client.detect_moderation_labels(Image={"Bytes": encode(RED)})

    assert answered_while_held == [False, False]
    assert [response["ModerationLabels"] for response in responses] == [[EXPLICIT]] * 2
    assert after["ModerationLabels"] == [EXPLICIT]
    assert [call.fault for call in fake.calls] == ["hold", "hold", None]


def test_held_request_released_with_an_error_gets_that_error(
    fake: FakeRekognition, client: Any
) -> None:
    fake.fail("hold")

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(client.detect_moderation_labels, Image={"Bytes": encode(RED)})
        deadline = time.monotonic() + 10
        while fake.call_count < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        fake.release("internal")
        with pytest.raises(client.exceptions.InternalServerError):
            pending.result(timeout=10)


def test_release_rejects_an_answer_that_is_not_a_reply(fake: FakeRekognition) -> None:
    with pytest.raises(ValueError, match="cannot answer"):
        fake.release("slow")


def test_stop_returns_promptly_while_a_request_is_held() -> None:
    fake = FakeRekognition().start()
    impatient = make_client(fake.url, read_timeout=0.1)
    fake.fail("hold")
    with pytest.raises(ReadTimeoutError):
        impatient.detect_moderation_labels(Image={"Bytes": encode(RED)})

    started = time.monotonic()
    fake.stop()

    assert time.monotonic() - started < 2.0


ADAPTER = (
    "arn:aws:rekognition:us-east-1:111122223333:project/nsfw/version/nsfw.2024-05-01/1714521600000"
)


def test_a_call_through_a_known_adapter_gets_its_answers_and_its_arn(
    fake: FakeRekognition, client: Any
) -> None:
    fake.add_adapter(ADAPTER)
    fake.respond(RED, [SUGGESTIVE])
    fake.respond(RED, [EXPLICIT], adapter=ADAPTER)

    through = client.detect_moderation_labels(Image={"Bytes": encode(RED)}, ProjectVersion=ADAPTER)
    base = client.detect_moderation_labels(Image={"Bytes": encode(RED)}, MinConfidence=40)

    assert (through["ModerationLabels"], through["ProjectVersion"]) == ([EXPLICIT], ADAPTER)
    assert (base["ModerationLabels"], "ProjectVersion" in base) == ([SUGGESTIVE], False)
    assert [call.project_version for call in fake.calls] == [ADAPTER, None]


def test_an_expired_adapter_is_answered_by_the_base_model_without_its_arn(
    fake: FakeRekognition, client: Any
) -> None:
    fake.add_adapter(ADAPTER, expired=True)
    fake.respond(RED, [EXPLICIT])
    fake.respond(RED, [NUDITY], adapter=ADAPTER)

    response = client.detect_moderation_labels(Image={"Bytes": encode(RED)}, ProjectVersion=ADAPTER)

    assert response["ModerationLabels"] == [EXPLICIT]
    assert "ProjectVersion" not in response


def test_an_unknown_adapter_is_not_found(fake: FakeRekognition, client: Any) -> None:
    with pytest.raises(ClientError) as info:
        client.detect_moderation_labels(Image={"Bytes": encode(RED)}, ProjectVersion=ADAPTER)

    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert fake.calls[0].project_version == ADAPTER


def test_installed_botocore_knows_content_types_and_taxonomy_level() -> None:
    """botocore before 1.34.20 drops both fields of an answer without a word; the package
    requires boto3>=1.34.20 (pyproject.toml), whose botocore models them."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("rekognition")
    answer = model.operation_model("DetectModerationLabels").output_shape
    label = answer.members["ModerationLabels"].member

    assert "ContentTypes" in answer.members
    assert set(answer.members["ContentTypes"].member.members) >= {"Name", "Confidence"}
    assert "TaxonomyLevel" in label.members


def test_package_requires_the_first_boto3_that_knows_both_fields() -> None:
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    wanted = [Requirement(item) for item in requires("thumbor-moderation") or []]
    boto3 = next(item for item in wanted if item.name == "boto3" and not item.marker)

    assert "1.34.20" in boto3.specifier
    assert "1.34.19" not in boto3.specifier
