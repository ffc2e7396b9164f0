"""Raw Thumbor configuration -> typed, validated settings, with errors that name the key."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from thumbor.config import Config

from tests.servers import (
    ThumborServer,
    aws_test_environment,
    base_config,
    free_port,
    thumbor_executable,
)
from thumbor_rekognition.config import (
    DEFAULTS,
    ConfigurationError,
    Secret,
    Settings,
    unknown_keys,
)
from thumbor_rekognition.policy import Policy


def settings(**values: Any) -> Settings:
    """Settings read from a Thumbor config with these keys set, as thumbor.conf would."""
    config = Config()
    for key, value in values.items():
        setattr(config, key, value)
    return Settings.from_config(config)


def test_defaults_give_the_documented_settings() -> None:
    result = Settings.from_config(Config())

    assert result.policy == Policy(default=0.5, rules={}, review_band=0.0)
    assert result.source_loader == "thumbor.loaders.http_loader"
    assert result.backend == "thumbor_rekognition.backends.rekognition"
    assert result.rejected_response == "placeholder"
    assert result.placeholder_path is None
    assert result.rejected_max_age == 60
    assert result.on_error == "reject"
    assert result.decision_store == "thumbor_rekognition.stores.sqlite"
    assert result.cache_ttl == 2.0
    assert result.workers == 8
    assert result.max_pixels == 100_000_000
    assert result.analysis_max_side == 1600
    assert result.rekognition_region == "us-east-1"
    assert result.rekognition_endpoint_url is None
    assert result.rekognition_timeout == 5.0
    assert result.rekognition_max_attempts == 3


@pytest.mark.parametrize(
    ("key", "text", "attribute", "expected"),
    [
        ("MODERATION_MIN_CONFIDENCE", "0.7", lambda s: s.policy.default, 0.7),
        ("MODERATION_MIN_CONFIDENCE", "1", lambda s: s.policy.default, 1.0),
        ("MODERATION_REVIEW_BAND", "0.1", lambda s: s.policy.review_band, 0.1),
        ("MODERATION_CACHE_TTL_SECONDS", "0.5", lambda s: s.cache_ttl, 0.5),
        ("REKOGNITION_TIMEOUT_SECONDS", "2.5", lambda s: s.rekognition_timeout, 2.5),
        ("MODERATION_REJECTED_MAX_AGE", "0", lambda s: s.rejected_max_age, 0),
        ("MODERATION_WORKERS", " 4 ", lambda s: s.workers, 4),
        ("MODERATION_MAX_PIXELS", "50000000", lambda s: s.max_pixels, 50_000_000),
        ("MODERATION_ANALYSIS_MAX_SIDE", "800", lambda s: s.analysis_max_side, 800),
        ("REKOGNITION_MAX_ATTEMPTS", "5", lambda s: s.rekognition_max_attempts, 5),
        ("MODERATION_REJECTED_RESPONSE", "Forbidden", lambda s: s.rejected_response, "forbidden"),
        ("MODERATION_ON_ERROR", " allow ", lambda s: s.on_error, "allow"),
        ("MODERATION_PLACEHOLDER_PATH", "None", lambda s: s.placeholder_path, None),
        ("MODERATION_PLACEHOLDER_PATH", "", lambda s: s.placeholder_path, None),
        ("REKOGNITION_ENDPOINT_URL", "", lambda s: s.rekognition_endpoint_url, None),
        (
            "REKOGNITION_ENDPOINT_URL",
            "http://127.0.0.1:9000",
            lambda s: s.rekognition_endpoint_url,
            "http://127.0.0.1:9000",
        ),
    ],
)
def test_string_values_are_cast_to_their_types(
    key: str, text: str, attribute: Any, expected: object
) -> None:
    result = attribute(settings(**{key: text}))

    assert result == expected
    assert type(result) is type(expected)


def test_values_from_the_environment_are_read_and_cast(monkeypatch: pytest.MonkeyPatch) -> None:
    # What `thumbor --use-environment` switches on; patched so it does not outlive the test.
    monkeypatch.setattr(Config, "_allow_environment_variables", True)
    monkeypatch.setenv("MODERATION_MIN_CONFIDENCE", "0.8")
    monkeypatch.setenv("MODERATION_CATEGORY_THRESHOLDS", '{"Explicit Nudity": 0.6}')
    monkeypatch.setenv("MODERATION_IGNORED_CATEGORIES", "Revealing Clothes")
    monkeypatch.setenv("MODERATION_WORKERS", "2")
    monkeypatch.setenv("MODERATION_ON_ERROR", "allow")

    result = Settings.from_config(Config())

    assert result.policy == Policy(
        default=0.8, rules={"explicit_nudity": 0.6, "revealing_clothes": None}
    )
    assert result.workers == 2
    assert result.on_error == "allow"


@pytest.mark.parametrize(
    "thresholds",
    [
        '{"Explicit Nudity": 0.6, "female_swimwear_or_underwear": "0.75"}',
        {"EXPLICIT_NUDITY": "0.6", "Female Swimwear or Underwear": 0.75},
    ],
    ids=["json-string", "dict"],
)
def test_category_thresholds_are_keyed_by_slug_and_cast_to_floats(thresholds: object) -> None:
    result = settings(MODERATION_CATEGORY_THRESHOLDS=thresholds)

    assert result.policy.rules == {"explicit_nudity": 0.6, "female_swimwear_or_underwear": 0.75}


@pytest.mark.parametrize(
    "ignored",
    [
        "Revealing Clothes, suggestive",
        '["revealing_clothes", "Suggestive"]',
        ["Revealing Clothes", "SUGGESTIVE"],
        ("revealing_clothes", "suggestive"),
    ],
    ids=["comma-separated", "json-list", "list", "tuple"],
)
def test_ignored_categories_are_read_from_lists_and_strings(ignored: object) -> None:
    result = settings(MODERATION_IGNORED_CATEGORIES=ignored)

    assert result.policy.rules == {"revealing_clothes": None, "suggestive": None}


@pytest.mark.parametrize("empty", ["", "  ", "[]", []])
def test_empty_ignored_categories_ignore_nothing(empty: object) -> None:
    result = settings(MODERATION_IGNORED_CATEGORIES=empty)

    assert result.policy.rules == {}


def test_rules_string_is_merged_with_thresholds_and_ignored_categories() -> None:
    result = settings(
        MODERATION_RULES="aws_rek:explicit_nudity:0.6:revealing_clothes:ignore",
        MODERATION_CATEGORY_THRESHOLDS={"Female Swimwear Or Underwear": 0.75},
        MODERATION_IGNORED_CATEGORIES=["hate_symbols"],
    )

    assert result.policy.rules == {
        "explicit_nudity": 0.6,
        "revealing_clothes": None,
        "female_swimwear_or_underwear": 0.75,
        "hate_symbols": None,
    }


def test_seed_rules_string_judges_like_the_equivalent_thresholds() -> None:
    from_rules = settings(
        MODERATION_RULES=(
            "aws_rek:explicit_nudity:0.6:female_swimwear_or_underwear:0.75:revealing_clothes:ignore"
        )
    )

    from_dicts = settings(
        MODERATION_CATEGORY_THRESHOLDS={
            "explicit_nudity": 0.6,
            "female_swimwear_or_underwear": 0.75,
        },
        MODERATION_IGNORED_CATEGORIES="revealing_clothes",
    )

    assert from_rules.policy == from_dicts.policy


def test_category_given_the_same_value_in_two_places_is_accepted() -> None:
    result = settings(
        MODERATION_RULES="aws_rek:Explicit_Nudity:0.6:revealing_clothes:ignore",
        MODERATION_CATEGORY_THRESHOLDS='{"explicit nudity": "0.60"}',
        MODERATION_IGNORED_CATEGORIES="Revealing Clothes",
    )

    assert result.policy.rules == {"explicit_nudity": 0.6, "revealing_clothes": None}


@pytest.mark.parametrize(
    ("values", "first_key", "second_key"),
    [
        (
            {
                "MODERATION_RULES": "aws_rek:explicit_nudity:0.6",
                "MODERATION_CATEGORY_THRESHOLDS": {"Explicit Nudity": 0.7},
            },
            "MODERATION_RULES",
            "MODERATION_CATEGORY_THRESHOLDS",
        ),
        (
            {
                "MODERATION_RULES": "aws_rek:revealing_clothes:ignore",
                "MODERATION_CATEGORY_THRESHOLDS": {"revealing_clothes": 0.9},
            },
            "MODERATION_RULES",
            "MODERATION_CATEGORY_THRESHOLDS",
        ),
        (
            {
                "MODERATION_CATEGORY_THRESHOLDS": {"suggestive": 0.5},
                "MODERATION_IGNORED_CATEGORIES": ["Suggestive"],
            },
            "MODERATION_CATEGORY_THRESHOLDS",
            "MODERATION_IGNORED_CATEGORIES",
        ),
        (
            {"MODERATION_CATEGORY_THRESHOLDS": {"Explicit Nudity": 0.6, "explicit_nudity": 0.7}},
            "MODERATION_CATEGORY_THRESHOLDS",
            "MODERATION_CATEGORY_THRESHOLDS",
        ),
    ],
)
def test_category_given_different_values_stops_start_up_naming_both_keys(
    values: dict[str, Any], first_key: str, second_key: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(**values)

    message = str(info.value)
    assert f"{second_key} gives category" in message
    assert f"{first_key} already gives it" in message


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("MODERATION_CATEGORY_THRESHOLDS", {"explict_nudity": 0.6}, "explicit_nudity"),
        (
            "MODERATION_CATEGORY_THRESHOLDS",
            '{"Female Swimware Or Underwear": 0.7}',
            "female_swimwear_or_underwear",
        ),
        ("MODERATION_IGNORED_CATEGORIES", "revealing_cloths", "revealing_clothes"),
        ("MODERATION_IGNORED_CATEGORIES", ["Hate Symbol"], "hate_symbols"),
        ("MODERATION_RULES", "aws_rek:explict_nudity:0.6", "explicit_nudity"),
    ],
)
def test_misspelt_category_stops_start_up_with_a_suggestion(
    key: str, value: object, hint: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(**{key: value})

    message = str(info.value)
    assert key in message
    assert f"Did you mean '{hint}'?" in message


def test_unknown_category_unlike_any_other_stops_start_up_without_a_suggestion() -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(MODERATION_IGNORED_CATEGORIES="kittens")

    message = str(info.value)
    assert "MODERATION_IGNORED_CATEGORIES" in message
    assert "'kittens'" in message
    assert "Did you mean" not in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        # Confidences and thresholds out of 0..1, not numbers, or booleans.
        ("MODERATION_MIN_CONFIDENCE", "abc"),
        ("MODERATION_MIN_CONFIDENCE", ""),
        ("MODERATION_MIN_CONFIDENCE", "1.5"),
        ("MODERATION_MIN_CONFIDENCE", -0.1),
        ("MODERATION_MIN_CONFIDENCE", "nan"),
        ("MODERATION_MIN_CONFIDENCE", True),
        ("MODERATION_REVIEW_BAND", "-0.1"),
        ("MODERATION_REVIEW_BAND", "abc"),
        ("MODERATION_CATEGORY_THRESHOLDS", {"suggestive": 1.5}),
        ("MODERATION_CATEGORY_THRESHOLDS", {"suggestive": -0.01}),
        ("MODERATION_CATEGORY_THRESHOLDS", '{"suggestive": "abc"}'),
        ("MODERATION_CATEGORY_THRESHOLDS", {"suggestive": True}),
        ("MODERATION_CATEGORY_THRESHOLDS", {"suggestive": None}),
        ("MODERATION_CATEGORY_THRESHOLDS", {"suggestive": float("inf")}),
        ("MODERATION_RULES", "aws_rek:suggestive:1.5"),
        ("MODERATION_RULES", "aws_rek:suggestive:abc"),
        # Integers.
        ("MODERATION_WORKERS", "abc"),
        ("MODERATION_WORKERS", "0"),
        ("MODERATION_WORKERS", 2.5),
        ("MODERATION_WORKERS", True),
        ("MODERATION_REJECTED_MAX_AGE", "-1"),
        ("MODERATION_MAX_PIXELS", "100"),
        ("MODERATION_ANALYSIS_MAX_SIDE", "20000"),
        ("MODERATION_ANALYSIS_MAX_SIDE", "79"),
        ("REKOGNITION_MAX_ATTEMPTS", "0"),
        ("REKOGNITION_TIMEOUT_SECONDS", "0"),
        ("MODERATION_CACHE_TTL_SECONDS", "-1"),
        # Choices.
        ("MODERATION_REJECTED_RESPONSE", "redirect"),
        ("MODERATION_REJECTED_RESPONSE", 403),
        ("MODERATION_ON_ERROR", "open"),
        ("MODERATION_ON_ERROR", True),
        # Shapes.
        ("MODERATION_CATEGORY_THRESHOLDS", "{not json"),
        ("MODERATION_CATEGORY_THRESHOLDS", "[0.5]"),
        ("MODERATION_CATEGORY_THRESHOLDS", ["suggestive"]),
        ("MODERATION_IGNORED_CATEGORIES", '["revealing_clothes"'),
        ("MODERATION_IGNORED_CATEGORIES", '["revealing_clothes", 3]'),
        ("MODERATION_IGNORED_CATEGORIES", 5),
        ("MODERATION_RULES", "explicit_nudity:0.6"),
        ("MODERATION_RULES", "aws_rek:suggestive"),
        ("MODERATION_RULES", 0.6),
        ("MODERATION_SOURCE_LOADER", "thumbor/loaders/http_loader"),
        ("MODERATION_BACKEND", ""),
        ("MODERATION_DECISION_STORE", "stores.sqlite-3"),
        ("REKOGNITION_REGION", 1),
        # Redis: a prefix that would put keys under a hash tag of its own, a bool that is
        # no bool, a negative count of replicas.
        ("MODERATION_REDIS_PREFIX", "site{a}:"),
        ("MODERATION_REDIS_PREFIX", "site}:"),
        ("MODERATION_REDIS_CLUSTER", "maybe"),
        ("MODERATION_REDIS_CLUSTER", 2),
        ("MODERATION_REDIS_WAIT_REPLICAS", "-1"),
        ("MODERATION_REDIS_WAIT_REPLICAS", "one"),
        # Hash banks and HMA.
        ("MODERATION_HASH_BANKS", '[{"name": "x", "path": "/b.txt", "action": "delete"}]'),
        ("MODERATION_HASH_BANKS", [{"name": "x", "action": "reject"}]),
        ("MODERATION_HASH_BANKS", "{not json"),
        ("MODERATION_HASH_BANK_DISTANCE", "65"),
        ("MODERATION_HASH_BANK_RELOAD_SECONDS", "600"),
        ("MODERATION_HMA_URL", "hma:5000"),
        ("MODERATION_HMA_HEADERS", '["Authorization"]'),
    ],
)
def test_bad_value_stops_start_up_with_a_message_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(**{key: value})

    assert key in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("True", True), ("true", True), ("1", True), ("yes", True), (True, True),
     ("False", False), ("false", False), ("0", False), ("", False), (False, False)],
)  # fmt: skip
def test_redis_cluster_reads_booleans_as_thumbor_conf_and_the_environment_give_them(
    text: object, expected: bool
) -> None:
    assert settings(MODERATION_REDIS_CLUSTER=text).redis_cluster is expected


def test_redis_settings_default_to_one_server_answering_once_the_master_has_it() -> None:
    result = Settings.from_config(Config())

    assert (result.redis_cluster, result.redis_wait_replicas) == (False, 0)
    assert settings(MODERATION_REDIS_WAIT_REPLICAS="1").redis_wait_replicas == 1


def test_bad_number_message_shows_the_value_and_what_was_wrong() -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(MODERATION_MIN_CONFIDENCE="abc")

    assert (
        str(info.value) == "Config 'MODERATION_MIN_CONFIDENCE' has value 'abc'. Not a valid number."
    )


def test_bad_threshold_message_names_the_category_entry() -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(MODERATION_CATEGORY_THRESHOLDS={"suggestive": 60})

    message = str(info.value)
    assert "MODERATION_CATEGORY_THRESHOLDS['suggestive']" in message
    assert "between 0 and 1" in message


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="MODERATION_ON_ERROR"):
        settings(MODERATION_ON_ERROR="maybe")


def test_secret_hides_its_value_in_repr_and_str() -> None:
    secret = Secret("hunter2")

    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", repr({"token": secret})]

    assert all("hunter2" not in text for text in shown)
    assert repr(secret) == "Secret('**********')"


def test_thresholds_mixing_model_generations_stop_start_up_naming_names_and_keys() -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(
            MODERATION_RULES="aws_rek:explicit_nudity:0.6:revealing_clothes:ignore",
            MODERATION_IGNORED_CATEGORIES=["Bare Back"],
        )

    message = str(info.value)
    assert "MODERATION_IGNORED_CATEGORIES" in message
    assert "MODERATION_RULES" in message
    assert "revealing_clothes" in message
    assert "bare_back" in message


def test_thresholds_in_7x_names_make_a_7x_policy() -> None:
    result = settings(MODERATION_CATEGORY_THRESHOLDS={"Explicit Nudity": 0.6, "Bare Back": 0.9})

    assert result.policy.generation == "7"
    assert settings(MODERATION_RULES="aws_rek:explicit_nudity:0.6").policy.generation == "6"


def test_cloudinary_chain_ending_in_manual_is_read_into_the_policy() -> None:
    result = settings(MODERATION_RULES="aws_rek:explicit_nudity:0.6|manual")

    assert result.policy == Policy(rules={"explicit_nudity": 0.6}, manual_review=True)


def test_cloudinary_duplicate_step_is_its_own_setting_beside_duplicate_similarity() -> None:
    # Cloudinary's step refuses copies of any judged picture (docs/moderate-upload.md);
    # MODERATION_DUPLICATE_SIMILARITY keeps meaning copies of rejected pictures.
    result = settings(
        MODERATION_RULES="aws_rek:explicit_nudity:0.6|duplicate:0.95|manual",
        MODERATION_DUPLICATE_SIMILARITY=0.97,
    )

    assert result.indexed_copy_similarity == 0.95
    assert result.duplicate_similarity == 0.97
    assert result.policy == Policy(rules={"explicit_nudity": 0.6}, manual_review=True)


def test_duplicate_similarity_defaults_to_0_9_and_0_disables_it() -> None:
    assert Settings.from_config(Config()).duplicate_similarity == 0.9
    assert settings(MODERATION_DUPLICATE_SIMILARITY="0").duplicate_similarity == 0.0


def test_duplicate_step_0_only_indexes_and_no_step_means_none() -> None:
    assert Settings.from_config(Config()).indexed_copy_similarity == 0.0
    assert settings(MODERATION_RULES="aws_rek").indexed_copy_similarity == 0.0
    assert settings(MODERATION_RULES="aws_rek|duplicate:0").indexed_copy_similarity == 0.0
    assert settings(MODERATION_RULES="aws_rek|duplicate:0").duplicate_similarity == 0.9


def test_duplicate_step_below_what_pdq_tells_apart_is_read_as_31_bits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="thumbor_rekognition.config"):
        result = settings(MODERATION_RULES="aws_rek|duplicate:0.7")

    assert result.indexed_copy_similarity == 1 - 31 / 256
    assert "'duplicate:0.7' is read as 'duplicate:0.879'" in caplog.text


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"MODERATION_DUPLICATE_SIMILARITY": 0.86}, ["MODERATION_DUPLICATE_SIMILARITY", "0.879"]),
        ({"MODERATION_DUPLICATE_SIMILARITY": "1.5"}, ["MODERATION_DUPLICATE_SIMILARITY"]),
        ({"MODERATION_RULES": "aws_rek|duplicate:high"}, ["MODERATION_RULES", "'high'"]),
        ({"MODERATION_RULES": "aws_rek|duplicate:1.5"}, ["MODERATION_RULES", "between 0 and 1"]),
    ],
)
def test_a_duplicate_similarity_that_cannot_work_stops_start_up_naming_the_key(
    values: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(**values)

    assert all(name in str(info.value) for name in names)


ADAPTER = (
    "arn:aws:rekognition:us-east-1:111122223333:project/nsfw/version/nsfw.2024-05-01/1714521600000"
)


def test_hash_banks_are_read_from_lists_and_json_with_their_defaults() -> None:
    banks = '[{"name": "known-bad", "path": "/b.txt", "action": "reject", "enabled": false}]'

    read = settings(MODERATION_HASH_BANKS=banks, MODERATION_HMA_URL="http://hma:5000")

    assert [(b.name, b.action, b.enabled) for b in read.hash_banks] == [
        ("known-bad", "reject", False)
    ]
    assert read.hash_bank_distance == 31
    assert read.hma_url == "http://hma:5000"
    assert settings().hash_banks == ()
    assert settings().hma_url is None


def test_rekognition_project_version_is_read_as_an_adapter_arn() -> None:
    assert Settings.from_config(Config()).rekognition_project_version is None
    assert settings(REKOGNITION_PROJECT_VERSION=ADAPTER).rekognition_project_version == ADAPTER
    assert settings(REKOGNITION_PROJECT_VERSION="").rekognition_project_version is None


def test_a_project_version_that_is_not_an_adapter_arn_stops_start_up() -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(REKOGNITION_PROJECT_VERSION="my-adapter")

    assert "REKOGNITION_PROJECT_VERSION" in str(info.value)
    assert "project version ARN" in str(info.value)


def test_an_adapter_of_another_region_than_rekognition_region_stops_start_up() -> None:
    other = ADAPTER.replace(":us-east-1:", ":eu-west-1:")

    with pytest.raises(ConfigurationError) as info:
        settings(REKOGNITION_PROJECT_VERSION=other, REKOGNITION_REGION="us-east-1")

    assert "names an adapter in region 'eu-west-1'" in str(info.value)
    assert "REKOGNITION_REGION is 'us-east-1'" in str(info.value)
    assert settings(REKOGNITION_PROJECT_VERSION=other, REKOGNITION_REGION="eu-west-1")


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"MODERATION_DECISION_STORE": "thumbor_rekognition.stores.dynamodb"},
         "MODERATION_DYNAMODB_TABLE"),
        ({"MODERATION_DECISION_STORE": "thumbor_rekognition.stores.dynamodb",
          "MODERATION_DYNAMODB_TABLE": "moderation",
          "MODERATION_DYNAMODB_ENDPOINT_URL": "localhost:8000"},
         "MODERATION_DYNAMODB_ENDPOINT_URL"),
        ({"MODERATION_QUARANTINE": "thumbor_rekognition.quarantine.s3"},
         "MODERATION_QUARANTINE_S3_BUCKET"),
        ({"MODERATION_QUARANTINE": "thumbor_rekognition.quarantine.s3",
          "MODERATION_QUARANTINE_S3_BUCKET": "s3://quarantine/originals"},
         "MODERATION_QUARANTINE_S3_BUCKET"),
    ],
)  # fmt: skip
def test_a_store_or_quarantine_that_cannot_work_stops_thumbor_at_start_up(
    tmp_path: Path, extra: dict[str, str], key: str
) -> None:
    # Built in each process on first use, they would otherwise fail every request with a
    # 500 and a traceback while Thumbor looked up and serving.
    config = base_config(tmp_path, tmp_path / "images", None)
    config.update(extra)
    thumbor = ThumborServer(tmp_path, config)

    thumbor.start(wait=False)
    code = thumbor.wait_exit()

    assert code != 0
    assert f"Config '{key}'" in thumbor.log
    assert "cannot start" in thumbor.log
    assert "Traceback" not in thumbor.log


ENDPOINT_KEYS = sorted(key for key in DEFAULTS if key.endswith("_ENDPOINT_URL"))


def test_every_endpoint_key_of_the_plugin_is_checked_below() -> None:
    # The checks below take the keys from the definitions: a new one is checked too.
    assert ENDPOINT_KEYS == [
        "MODERATION_CLOUDFRONT_ENDPOINT_URL",
        "MODERATION_DYNAMODB_ENDPOINT_URL",
        "MODERATION_QUARANTINE_S3_ENDPOINT_URL",
        "REKOGNITION_ENDPOINT_URL",
    ]


@pytest.mark.parametrize("key", ENDPOINT_KEYS)
@pytest.mark.parametrize("value", ["localhost:4566", "127.0.0.1:9000", "s3.amazonaws.com"])
def test_an_endpoint_url_without_a_scheme_is_refused_whichever_module_uses_it(
    key: str, value: str
) -> None:
    # Checked whether or not the store, quarantine or purger that reads it is chosen.
    with pytest.raises(ConfigurationError) as info:
        settings(**{key: value})

    assert f"Config '{key}' has value '{value}'" in str(info.value)


@pytest.mark.parametrize("key", ENDPOINT_KEYS)
def test_an_endpoint_url_with_a_scheme_is_kept(key: str) -> None:
    result = settings(**{key: "http://127.0.0.1:4566"})

    assert getattr(result, key.removeprefix("MODERATION_").lower()) == "http://127.0.0.1:4566"


@pytest.mark.parametrize(
    "value", [":s3cret@cache:6379", "cache", "redis://:s3cret@a:6379,b:6379", "http://cache:6379"]
)
def test_a_redis_url_without_its_scheme_is_refused_without_showing_it(value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(MODERATION_REDIS_URL=value)

    message = str(info.value)
    assert "Config 'MODERATION_REDIS_URL'" in message
    assert "redis://" in message
    assert value not in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    "value",
    ["redis://:pw@127.0.0.1:6379/0", "rediss://cache:6380", "unix:///run/redis.sock",
     "REDIS://127.0.0.1", "redis://a:7000, redis://b:7001"],
)  # fmt: skip
def test_redis_urls_redis_py_accepts_are_kept(value: str) -> None:
    assert settings(MODERATION_REDIS_URL=value).redis_url.value == value


@pytest.mark.parametrize(
    "extra",
    [{"REKOGNITION_ENDPOINT_URL": "localhost:4566"},
     {"MODERATION_CLOUDFRONT_ENDPOINT_URL": "cloudfront.amazonaws.com"},
     {"MODERATION_QUARANTINE": "thumbor_rekognition.quarantine.s3",
      "MODERATION_QUARANTINE_S3_BUCKET": "quarantine",
      "MODERATION_QUARANTINE_S3_ENDPOINT_URL": "127.0.0.1:9000"},
     {"MODERATION_DECISION_STORE": "thumbor_rekognition.stores.redis",
      "MODERATION_REDIS_URL": "127.0.0.1:6379"}],
    ids=["rekognition", "cloudfront", "s3-quarantine", "redis"],
)  # fmt: skip
def test_an_endpoint_without_a_scheme_stops_thumbor_at_start_up(
    tmp_path: Path, extra: dict[str, str]
) -> None:
    # Accepted, every new picture got a 500 once a process built its client.
    config = base_config(tmp_path, tmp_path / "images", None)
    config.update(extra)
    thumbor = ThumborServer(tmp_path, config)

    thumbor.start(wait=False)
    code = thumbor.wait_exit()

    assert code != 0
    key = next(key for key in extra if key.endswith("_URL"))
    assert f"Config '{key}'" in thumbor.log
    assert "cannot start" in thumbor.log
    assert "Traceback" not in thumbor.log


def test_the_offline_backend_without_its_libraries_stops_thumbor_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # onnxruntime as a plain `pip install .` leaves it: first on the path, failing to import.
    absent = tmp_path / "absent"
    absent.mkdir()
    (absent / "onnxruntime.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'onnxruntime'\", name='onnxruntime')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(absent))
    config = base_config(tmp_path, tmp_path / "images", None)
    config["MODERATION_BACKEND"] = "thumbor_rekognition.backends.nudenet"
    thumbor = ThumborServer(tmp_path, config)

    thumbor.start(wait=False)
    code = thumbor.wait_exit()

    assert code != 0
    assert "Config 'MODERATION_BACKEND'" in thumbor.log
    assert "No module named 'onnxruntime'" in thumbor.log
    assert "pip install 'thumbor-moderation[local]'" in thumbor.log
    assert "cannot start" in thumbor.log
    assert "Traceback" not in thumbor.log


TYPOS = {"MODERATION_MIN_CONFIDANCE": 0.7, "MODERATION_BACKENDS": "x", "REKOGNITION_ZONE": "eu"}
NEAREST = {
    "MODERATION_MIN_CONFIDANCE": "Did you mean 'MODERATION_MIN_CONFIDENCE'?",
    "MODERATION_BACKENDS": "Did you mean 'MODERATION_BACKEND'?",
    "MODERATION_NUDENET_THREADS": "Did you mean 'NUDENET_THREADS'?",
    "REKOGNITION_TIMEOUT": "Did you mean 'REKOGNITION_TIMEOUT_SECONDS'?",
    "MODERATION_TOKEN": "Did you mean 'MODERATION_ADMIN_TOKEN'?",
    "REKOGNITION_ZONE": "thumbor.conf.example lists every key.",
}


def warnings_for(**values: Any) -> list[str]:
    config = Config()
    for key, value in values.items():
        setattr(config, key, value)
    return unknown_keys(config)


@pytest.mark.parametrize(("key", "hint"), NEAREST.items())
def test_an_undefined_key_is_named_with_the_nearest_defined_one(key: str, hint: str) -> None:
    warnings = warnings_for(**{key: "1"})

    assert len(warnings) == 1
    assert f"Config '{key}'" in warnings[0]
    assert warnings[0].endswith(hint)


def test_defined_keys_and_keys_of_other_prefixes_get_no_warning() -> None:
    defined = {key: default for key, default in DEFAULTS.items() if key.startswith("MODERATION_")}

    assert warnings_for(**defined, LOADER="x", MY_MODERATION_NOTE="x", moderation_x=1) == []


def test_undefined_keys_from_the_environment_are_named_only_with_use_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODERATION_BACKENDS", "thumbor_rekognition.backends.nudenet")
    without = warnings_for()
    monkeypatch.setattr(Config, "_allow_environment_variables", True)

    with_environment = warnings_for()

    assert without == []
    assert [w for w in with_environment if "MODERATION_BACKENDS" in w] == [
        "Config 'MODERATION_BACKENDS' (set in the environment) is not a key of the plugin: "
        "ignored. Did you mean 'MODERATION_BACKEND'?"
    ]


def test_thumbor_starts_and_warns_about_each_undefined_key_of_its_conf(tmp_path: Path) -> None:
    config = base_config(tmp_path, tmp_path / "images", None)
    config.update(TYPOS)
    thumbor = ThumborServer(tmp_path, config, log_level="warning")

    thumbor.start()
    thumbor.stop()

    log = thumbor.log
    assert log.count("is not a key of the plugin") == len(TYPOS)
    assert "Config 'MODERATION_MIN_CONFIDANCE' (set in the configuration)" in log
    assert "Did you mean 'MODERATION_MIN_CONFIDENCE'?" in log
    assert "Did you mean 'MODERATION_BACKEND'?" in log
    assert "Config 'REKOGNITION_ZONE'" in log


def test_thumbor_with_use_environment_warns_about_undefined_keys_of_the_environment(
    tmp_path: Path,
) -> None:
    thumbor = ThumborServer(tmp_path, base_config(tmp_path, tmp_path / "images", None))
    thumbor.write_conf()
    thumbor.port = free_port()
    environment = {**aws_test_environment(), "MODERATION_MIN_CONFIDANCE": "0.7"}

    with thumbor.log_path.open("ab") as log:
        # ThumborServer's own start() has no --use-environment.
        thumbor.process = subprocess.Popen(
            [thumbor_executable(), f"--conf={thumbor.conf_path}", "--use-environment=True",
             "--ip=127.0.0.1", f"--port={thumbor.port}", "--log-level=warning"],
            stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True,
        )  # fmt: skip
    try:
        thumbor.wait_ready()
    finally:
        thumbor.stop()

    assert (
        "Config 'MODERATION_MIN_CONFIDANCE' (set in the environment) is not a key of the "
        "plugin: ignored. Did you mean 'MODERATION_MIN_CONFIDENCE'?"
    ) in thumbor.log
