"""The Rekognition backend: request, parsing and error classification.

Unit tests put botocore's Stubber on the backend's own client, which checks requests and
canned answers against the service model. The rest run the real boto3 client, with its
retries and timeouts, over a socket against the fake endpoint in tests/fakes.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from thumbor.config import Config

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from thumbor_rekognition.backends import (
    BackendConfigurationError,
    BackendError,
    BadImageError,
    RetryableError,
    load_backend,
    startup_warnings,
)
from thumbor_rekognition.backends.rekognition import Backend
from thumbor_rekognition.config import Settings
from thumbor_rekognition.decision import Analysis, ContentType, Label
from thumbor_rekognition.policy import Policy
from thumbor_rekognition.preparation import Frame, PreparedImage, prepare

RED = (220, 20, 30)
BLUE = (20, 40, 210)


def make_settings(**values: Any) -> Settings:
    config = Config()
    for key, value in values.items():
        setattr(config, key, value)
    return Settings.from_config(config)


def frame(data: bytes) -> Frame:
    return Frame(data=data, format="PNG", width=160, height=120)


def prepared(*frames: Frame) -> PreparedImage:
    return PreparedImage(frames=frames, width=160, height=120, format="PNG", frame_count=1)


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


@pytest.fixture
def backend() -> Backend:
    return Backend(make_settings())


# --- Stubber: the request and the parsing of canned answers ------------------------------


def test_request_sends_the_picture_bytes_and_min_confidence(backend: Backend) -> None:
    data = picture(RED)
    with Stubber(backend.client()) as stubber:
        stubber.add_response(
            "detect_moderation_labels",
            {"ModerationLabels": [], "ModerationModelVersion": "7.0"},
            expected_params={"Image": {"Bytes": data}, "MinConfidence": 42.5},
        )

        backend.detect(prepared(frame(data)), 42.5)

        stubber.assert_no_pending_responses()


def test_model_6_labels_without_taxonomy_level_get_levels_from_their_parents(
    backend: Backend,
) -> None:
    data = picture(RED)
    response = {
        "ModerationLabels": [
            {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 97.3},
            {"Name": "Graphic Female Nudity", "ParentName": "Explicit Nudity", "Confidence": 97.3},
            {"Name": "Suggestive", "ParentName": "", "Confidence": 61.0},
        ],
        "ModerationModelVersion": "6.1",
    }
    with Stubber(backend.client()) as stubber:
        stubber.add_response("detect_moderation_labels", response)

        analysis = backend.detect(prepared(frame(data)), 50.0)

    assert analysis == Analysis(
        labels=(
            Label("Explicit Nudity", "", 1, 97.3),
            Label("Graphic Female Nudity", "Explicit Nudity", 2, 97.3),
            Label("Suggestive", "", 1, 61.0),
        ),
        backend="rekognition",
        model_version="6.1",
        min_confidence=50.0,
        frames=1,
    )


def test_model_7_labels_keep_their_three_taxonomy_levels(backend: Backend) -> None:
    data = picture(RED)
    response = {
        "ModerationLabels": [
            {"Name": "Explicit", "ParentName": "", "Confidence": 88.0, "TaxonomyLevel": 1},
            {
                "Name": "Explicit Nudity",
                "ParentName": "Explicit",
                "Confidence": 88.0,
                "TaxonomyLevel": 2,
            },
            {
                "Name": "Exposed Female Nipple",
                "ParentName": "Explicit Nudity",
                "Confidence": 88.0,
                "TaxonomyLevel": 3,
            },
        ],
        "ModerationModelVersion": "7.0",
        "ContentTypes": [{"Name": "Illustrated", "Confidence": 71.0}],
    }
    with Stubber(backend.client()) as stubber:
        stubber.add_response("detect_moderation_labels", response)

        analysis = backend.detect(prepared(frame(data)), 30.0)

    assert analysis.labels == (
        Label("Explicit", "", 1, 88.0),
        Label("Explicit Nudity", "Explicit", 2, 88.0),
        Label("Exposed Female Nipple", "Explicit Nudity", 3, 88.0),
    )
    assert (analysis.model_version, analysis.min_confidence) == ("7.0", 30.0)
    assert analysis.content_types == (ContentType("Illustrated", 71.0),)


def test_every_frame_is_sent_and_keeps_its_own_labels(
    backend: Backend,
) -> None:
    first, second = picture(RED), picture(BLUE)
    with Stubber(backend.client()) as stubber:
        stubber.add_response(
            "detect_moderation_labels",
            {
                "ModerationLabels": [
                    {"Name": "Violence", "ParentName": "", "Confidence": 91.0},
                    {"Name": "Weapons", "ParentName": "Violence", "Confidence": 91.0},
                ],
                "ModerationModelVersion": "6.1",
            },
            expected_params={"Image": {"Bytes": first}, "MinConfidence": 50.0},
        )
        stubber.add_response(
            "detect_moderation_labels",
            {
                "ModerationLabels": [
                    {"Name": "Violence", "ParentName": "", "Confidence": 64.0},
                    {"Name": "Weapons", "ParentName": "Violence", "Confidence": 64.0},
                    {"Name": "Gambling", "ParentName": "", "Confidence": 77.0},
                ],
                "ModerationModelVersion": "6.1",
            },
            expected_params={"Image": {"Bytes": second}, "MinConfidence": 50.0},
        )

        analysis = backend.detect(prepared(frame(first), frame(second)), 50.0)

        stubber.assert_no_pending_responses()
    # Not merged: each frame is judged on its own labels.
    assert analysis.labels == (
        Label("Violence", "", 1, 91.0, frame=0),
        Label("Weapons", "Violence", 2, 91.0, frame=0),
        Label("Violence", "", 1, 64.0, frame=1),
        Label("Weapons", "Violence", 2, 64.0, frame=1),
        Label("Gambling", "", 1, 77.0, frame=1),
    )
    assert analysis.frames == 2


# --- Stubber: error classification -------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("ThrottlingException", 400, RetryableError),
        ("ProvisionedThroughputExceededException", 400, RetryableError),
        ("InternalServerError", 500, RetryableError),
        ("InvalidImageFormatException", 400, BadImageError),
        ("ImageTooLargeException", 400, BadImageError),
        # Prepared pictures are within every limit: the settings are the likely cause.
        ("InvalidParameterException", 400, BackendConfigurationError),
        ("AccessDeniedException", 400, BackendConfigurationError),
        ("InvalidS3ObjectException", 400, BackendConfigurationError),
        ("ResourceNotFoundException", 400, BackendConfigurationError),
        ("ResourceNotReadyException", 400, BackendConfigurationError),
        ("HumanLoopQuotaExceededException", 400, BackendConfigurationError),
        ("UnrecognizedClientException", 400, BackendConfigurationError),
        ("SomethingNewException", 503, RetryableError),
        ("SomethingNewException", 403, BackendConfigurationError),
    ],
)
def test_service_error_is_classified_by_its_code(
    backend: Backend, code: str, status: int, expected: type[BackendError]
) -> None:
    with Stubber(backend.client()) as stubber:
        stubber.add_client_error(
            "detect_moderation_labels", code, "it went wrong", http_status_code=status
        )

        with pytest.raises(BackendError) as raised:
            backend.detect(prepared(frame(picture(RED))), 50.0)

    assert type(raised.value) is expected
    assert code in str(raised.value)
    assert isinstance(raised.value.__cause__, ClientError)


def test_invalid_parameter_names_the_settings_to_check(backend: Backend) -> None:
    with Stubber(backend.client()) as stubber:
        stubber.add_client_error(
            "detect_moderation_labels",
            "InvalidParameterException",
            "Request has invalid parameters",
        )

        with pytest.raises(BackendConfigurationError) as raised:
            backend.detect(prepared(frame(picture(RED))), 50.0)

    assert raised.value.kind == "configuration"
    assert "REKOGNITION_PROJECT_VERSION of another region than REKOGNITION_REGION" in str(
        raised.value
    )


def test_unknown_client_error_is_a_plain_backend_error(backend: Backend) -> None:
    with Stubber(backend.client()) as stubber:
        stubber.add_client_error(
            "detect_moderation_labels", "SomethingNewException", "new", http_status_code=400
        )

        with pytest.raises(BackendError) as raised:
            backend.detect(prepared(frame(picture(RED))), 50.0)

    assert type(raised.value) is BackendError


def test_error_on_a_later_frame_fails_the_whole_picture(backend: Backend) -> None:
    with Stubber(backend.client()) as stubber:
        stubber.add_response(
            "detect_moderation_labels",
            {"ModerationLabels": [], "ModerationModelVersion": "7.0"},
        )
        stubber.add_client_error("detect_moderation_labels", "ThrottlingException", "slow down")

        with pytest.raises(RetryableError):
            backend.detect(prepared(frame(picture(RED)), frame(picture(BLUE))), 50.0)


# --- the real boto3 client against the fake endpoint over a socket ------------------------


def real_backend(fake: FakeRekognition, **values: Any) -> Backend:
    return Backend(make_settings(REKOGNITION_ENDPOINT_URL=fake.url, **values))


EXPLICIT = {"Name": "Explicit", "ParentName": "", "Confidence": 93.5, "TaxonomyLevel": 1}
EXPLICIT_NUDITY = {
    "Name": "Explicit Nudity",
    "ParentName": "Explicit",
    "Confidence": 93.5,
    "TaxonomyLevel": 2,
}
WEAPONS = {"Name": "Weapons", "ParentName": "Violence", "Confidence": 58.0, "TaxonomyLevel": 2}


def test_real_client_gets_the_labels_of_the_picture_it_sent(fake: FakeRekognition) -> None:
    fake.respond(RED, [EXPLICIT, EXPLICIT_NUDITY])
    fake.respond(BLUE, [WEAPONS])
    backend = real_backend(fake)

    red = backend.detect(prepare(picture(RED)), 50.0)
    blue = backend.detect(prepare(picture(BLUE)), 50.0)

    assert red.labels == (
        Label("Explicit", "", 1, 93.5),
        Label("Explicit Nudity", "Explicit", 2, 93.5),
    )
    assert blue.labels == (Label("Weapons", "Violence", 2, 58.0),)
    assert red.model_version == "7.0"


def test_real_client_sends_the_min_confidence_it_was_given(fake: FakeRekognition) -> None:
    fake.respond(RED, [EXPLICIT, WEAPONS])
    backend = real_backend(fake)

    analysis = backend.detect(prepare(picture(RED)), 60.0)

    assert [call.min_confidence for call in fake.calls] == [60.0]
    assert analysis.labels == (Label("Explicit", "", 1, 93.5),)


ADAPTER = (
    "arn:aws:rekognition:us-east-1:111122223333:project/nsfw/version/nsfw.2024-05-01/1714521600000"
)


def test_configured_adapter_is_sent_with_every_call_and_named_in_the_analysis(
    fake: FakeRekognition,
) -> None:
    fake.add_adapter(ADAPTER)
    fake.respond(RED, [EXPLICIT], adapter=ADAPTER)
    backend = real_backend(fake, REKOGNITION_PROJECT_VERSION=ADAPTER)

    analysis = backend.detect(prepare(picture(RED)), 50.0)

    assert [call.project_version for call in fake.calls] == [ADAPTER]
    assert analysis.labels == (Label("Explicit", "", 1, 93.5),)
    assert (analysis.model_version, analysis.project_version) == ("7.0", ADAPTER)


def test_without_an_adapter_none_is_sent_and_none_named(fake: FakeRekognition) -> None:
    fake.respond(RED, [EXPLICIT])

    analysis = real_backend(fake).detect(prepare(picture(RED)), 50.0)

    assert [call.project_version for call in fake.calls] == [None]
    assert analysis.project_version == ""


def test_an_expired_adapter_leaves_the_analysis_to_the_base_model_and_says_so(
    fake: FakeRekognition,
) -> None:
    fake.add_adapter(ADAPTER, expired=True)
    fake.respond(RED, [WEAPONS])
    backend = real_backend(fake, REKOGNITION_PROJECT_VERSION=ADAPTER)

    analysis = backend.detect(prepare(picture(RED)), 50.0)

    assert [call.project_version for call in fake.calls] == [ADAPTER]
    assert (analysis.labels, analysis.project_version) == (
        (Label("Weapons", "Violence", 2, 58.0),),
        "",
    )


def test_an_adapter_the_account_does_not_have_is_a_configuration_error(
    fake: FakeRekognition,
) -> None:
    backend = real_backend(fake, REKOGNITION_PROJECT_VERSION=ADAPTER)

    with pytest.raises(BackendConfigurationError, match="ResourceNotFoundException"):
        backend.detect(prepare(picture(RED)), 50.0)


def test_throttling_is_retried_until_the_third_attempt_succeeds(fake: FakeRekognition) -> None:
    fake.respond(RED, [EXPLICIT])
    fake.fail("throttle", times=2)
    backend = real_backend(fake, REKOGNITION_MAX_ATTEMPTS=3)

    analysis = backend.detect(prepare(picture(RED)), 50.0)

    assert analysis.labels == (Label("Explicit", "", 1, 93.5),)
    assert fake.call_count == 3


def test_one_attempt_gives_up_on_the_first_throttle(fake: FakeRekognition) -> None:
    fake.respond(RED, [EXPLICIT])
    fake.fail("throttle", times=2)
    backend = real_backend(fake, REKOGNITION_MAX_ATTEMPTS=1)

    with pytest.raises(RetryableError):
        backend.detect(prepare(picture(RED)), 50.0)

    assert fake.call_count == 1


@pytest.mark.timing
def test_answer_slower_than_the_timeout_is_retryable(fake: FakeRekognition) -> None:
    fake.respond(RED, [EXPLICIT])
    fake.fail("slow", times=1, delay=3.0)
    backend = real_backend(fake, REKOGNITION_TIMEOUT_SECONDS=0.3, REKOGNITION_MAX_ATTEMPTS=1)
    started = time.monotonic()

    with pytest.raises(RetryableError):
        backend.detect(prepare(picture(RED)), 50.0)

    assert time.monotonic() - started < 2.0
    assert fake.call_count == 1


def test_dropped_connection_is_retryable(fake: FakeRekognition) -> None:
    fake.fail("drop", times=1)
    backend = real_backend(fake, REKOGNITION_MAX_ATTEMPTS=1)

    with pytest.raises(RetryableError):
        backend.detect(prepare(picture(RED)), 50.0)


def test_malformed_answer_is_retryable_not_a_picture_without_labels(
    fake: FakeRekognition,
) -> None:
    fake.respond(RED, [EXPLICIT])
    fake.fail("malformed", times=1)
    backend = real_backend(fake, REKOGNITION_MAX_ATTEMPTS=1)

    with pytest.raises(RetryableError):
        backend.detect(prepare(picture(RED)), 50.0)


def test_endpoint_nobody_listens_on_is_retryable(fake: FakeRekognition) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    backend = Backend(
        make_settings(
            REKOGNITION_ENDPOINT_URL=f"http://127.0.0.1:{closed_port}",
            REKOGNITION_MAX_ATTEMPTS=1,
        )
    )

    with pytest.raises(RetryableError):
        backend.detect(prepare(picture(RED)), 50.0)


def test_access_denied_is_a_configuration_error(fake: FakeRekognition) -> None:
    fake.fail("access_denied")
    backend = real_backend(fake)

    with pytest.raises(BackendConfigurationError):
        backend.detect(prepare(picture(RED)), 50.0)

    assert fake.call_count == 1


def test_missing_credentials_are_a_configuration_error(
    fake: FakeRekognition, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in (
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    backend = real_backend(fake)

    with pytest.raises(BackendConfigurationError):
        backend.detect(prepare(picture(RED)), 50.0)

    assert fake.call_count == 0


def test_request_botocore_refuses_to_send_is_a_backend_error(fake: FakeRekognition) -> None:
    backend = real_backend(fake)

    with pytest.raises(BackendError):
        backend.detect(prepare(picture(RED)), -1.0)

    assert fake.call_count == 0


def test_configured_backend_module_loads_the_rekognition_backend() -> None:
    settings = make_settings(MODERATION_BACKEND="thumbor_rekognition.backends.rekognition")

    backend = load_backend(settings)

    assert isinstance(backend, Backend)
    assert backend.settings is settings


def test_module_without_a_backend_class_is_refused() -> None:
    settings = make_settings(MODERATION_BACKEND="thumbor_rekognition.decision")

    with pytest.raises(TypeError, match="MODERATION_BACKEND"):
        load_backend(settings)


def test_client_is_built_once_per_process(fake: FakeRekognition) -> None:
    backend = real_backend(fake)

    first = backend.client()
    second = backend.client()

    assert first is second


def test_client_is_built_again_in_a_forked_process(
    fake: FakeRekognition, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.respond(RED, [EXPLICIT])
    backend = real_backend(fake)
    parent_client = backend.client()
    child_pid = os.getpid() + 1
    monkeypatch.setattr(os, "getpid", lambda: child_pid)

    child_client = backend.client()
    analysis = backend.detect(prepare(picture(RED)), 50.0)

    assert child_client is not parent_client
    assert backend.client() is child_client
    assert analysis.labels == (Label("Explicit", "", 1, 93.5),)


# --- Start-up: what a policy written for the other model generation cannot see ----------


def test_start_up_names_the_7x_labels_a_6x_policy_judges_by_approximation(
    backend: Backend,
) -> None:
    # Since AWS's helper maps 7.x Corpses to 6.x Hanging too, model 7 reaches every 6.x
    # category: nothing is "never reported", and the approximations are listed.
    policy = Policy(rules={"hanging": None, "explicit_nudity": 0.6})

    messages = startup_warnings(backend, policy)

    assert len(messages) == 1
    assert "never reports" not in messages[0]
    assert "Bare Back -> Suggestive > Revealing Clothes" in messages[0]
    assert (
        "Corpses -> Visually Disturbing > Corpses and Visually Disturbing > Hanging"
        in (messages[0])
    )
    assert "Products -> Drugs > Drug Products and Tobacco > Tobacco Products" in messages[0]


def test_start_up_is_quiet_for_a_7x_policy(backend: Backend) -> None:
    assert startup_warnings(backend, Policy(rules={"bare_back": None})) == []
