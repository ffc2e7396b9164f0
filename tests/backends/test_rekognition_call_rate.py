"""REKOGNITION_MAX_CALLS_PER_SECOND in the Rekognition backend: the real boto3 client over a
socket to the fake endpoint, which records when each call arrives."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.backends.test_rekognition import RED, frame, make_settings, prepared
from tests.conftest import picture
from tests.fakes.rekognition import Call, FakeRekognition
from thumbor_rekognition import ratelimit
from thumbor_rekognition.backends import RetryableError
from thumbor_rekognition.backends.rekognition import Backend, RateLimitedError


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def limited(fake: FakeRekognition, tmp_path: Path, limit: float, **values: Any) -> Backend:
    return Backend(
        make_settings(
            REKOGNITION_ENDPOINT_URL=fake.url,
            REKOGNITION_MAX_CALLS_PER_SECOND=limit,
            MODERATION_SQLITE_PATH=str(tmp_path / "moderation.sqlite3"),
            **values,
        )
    )


def busiest_second(calls: list[Call]) -> int:
    """The most calls that arrived within any one second."""
    times = sorted(call.at for call in calls)
    return max(sum(1 for other in times if start <= other < start + 1.0) for start in times)


def test_calls_from_many_threads_and_two_processes_keep_to_the_limit(
    fake: FakeRekognition, tmp_path: Path
) -> None:
    # Two backends on one SQLite file: two processes of one machine.
    backends = [limited(fake, tmp_path, 2.0), limited(fake, tmp_path, 2.0)]
    image = prepared(frame(picture(RED)))

    with ThreadPoolExecutor(max_workers=8) as pool:
        analyses = list(pool.map(lambda n: backends[n % 2].detect(image, 50.0), range(8)))

    assert len(analyses) == 8
    assert fake.call_count == 8
    assert busiest_second(fake.calls) <= 2 + 1


def test_the_scenes_of_an_animation_take_a_turn_each(fake: FakeRekognition, tmp_path: Path) -> None:
    backend = limited(fake, tmp_path, 2.0)
    animation = prepared(*(frame(picture(RED)) for _ in range(6)))

    analysis = backend.detect(animation, 50.0)

    assert analysis.frames == 6
    assert fake.call_count == 6
    assert busiest_second(fake.calls) <= 2 + 1


def test_a_call_with_no_turn_before_its_deadline_is_not_made(
    fake: FakeRekognition, tmp_path: Path
) -> None:
    backend = limited(fake, tmp_path, 0.5)
    image = prepared(frame(picture(RED)))
    backend.detect(image, 50.0)

    with pytest.raises(RateLimitedError, match="REKOGNITION_MAX_CALLS_PER_SECOND") as raised:
        ratelimit.within(ratelimit.Budget(time.monotonic() + 0.5), backend.detect, image, 50.0)

    assert raised.value.kind == "rate_limited"
    assert fake.call_count == 1


def test_a_throttling_answer_lowers_the_rate_and_the_retry_waits_for_the_lowered_turn(
    fake: FakeRekognition, tmp_path: Path
) -> None:
    backend = limited(fake, tmp_path, 2.0, REKOGNITION_MAX_ATTEMPTS=3)
    fake.fail("throttle", times=1)

    analysis = backend.detect(prepared(frame(picture(RED))), 50.0)

    assert analysis.labels == ()
    assert [call.fault for call in fake.calls] == ["throttle", None]
    # Halved from 2/s: the retry came one lowered interval (1 s) after the answer at least.
    assert fake.calls[1].at - fake.calls[0].at >= 1.0 - 0.01
    assert backend.call_rate is not None
    assert backend.call_rate.current() == pytest.approx(1.0, abs=0.1)


def test_throughput_answers_lower_the_rate_of_every_process(
    fake: FakeRekognition, tmp_path: Path
) -> None:
    throttled = limited(fake, tmp_path, 4.0, REKOGNITION_MAX_ATTEMPTS=1)
    other = limited(fake, tmp_path, 4.0)
    fake.fail("throughput", times=1)

    with pytest.raises(RetryableError):
        throttled.detect(prepared(frame(picture(RED))), 50.0)
    other.detect(prepared(frame(picture(RED))), 50.0)

    assert other.call_rate is not None
    assert other.call_rate.current() == pytest.approx(2.0, abs=0.1)


def test_without_a_reachable_store_no_call_is_made(fake: FakeRekognition, tmp_path: Path) -> None:
    # A directory where the SQLite file should be: the shared turns cannot be read.
    backend = Backend(
        make_settings(
            REKOGNITION_ENDPOINT_URL=fake.url,
            REKOGNITION_MAX_CALLS_PER_SECOND=5,
            MODERATION_SQLITE_PATH=str(tmp_path),
        )
    )

    with pytest.raises(RetryableError, match="call rate unknown"):
        backend.detect(prepared(frame(picture(RED))), 50.0)

    assert fake.call_count == 0


def test_without_a_limit_the_backend_opens_no_store(fake: FakeRekognition, tmp_path: Path) -> None:
    backend = Backend(
        make_settings(
            REKOGNITION_ENDPOINT_URL=fake.url,
            MODERATION_SQLITE_PATH=str(tmp_path / "never" / "moderation.sqlite3"),
        )
    )

    backend.detect(prepared(frame(picture(RED))), 50.0)

    assert backend.call_rate is None
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("value", ["0", -1, "fast", 20_000])
def test_a_limit_that_is_not_a_positive_number_stops_start_up(value: object) -> None:
    with pytest.raises(ValueError, match="REKOGNITION_MAX_CALLS_PER_SECOND"):
        make_settings(REKOGNITION_MAX_CALLS_PER_SECOND=value)


def test_an_unset_limit_read_from_the_environment_is_no_limit() -> None:
    assert (
        make_settings(REKOGNITION_MAX_CALLS_PER_SECOND="").rekognition_max_calls_per_second is None
    )
    assert (
        make_settings(REKOGNITION_MAX_CALLS_PER_SECOND="2.5").rekognition_max_calls_per_second
        == 2.5
    )
