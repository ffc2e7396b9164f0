"""thumbor-moderation against a real thumbor.conf, SQLite store, file STORAGE and quarantine,
and the fake Rekognition endpoint over HTTP."""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import thumbor_rekognition
from tests import pictures
from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.servers import base_config, result_file, storage_file
from thumbor_rekognition import cli
from thumbor_rekognition.caches import storage_key
from thumbor_rekognition.cli import environment, parser
from thumbor_rekognition.decision import Source, Status
from thumbor_rekognition.moderation.memory import sha256_hex
from thumbor_rekognition.stores.sqlite import Store

RED = (220, 20, 30)
BLUE = (20, 40, 210)
GREEN = (30, 200, 40)
NUDITY_70 = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 70.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 70.0},
]
SWIMWEAR_65 = [
    {"Name": "Suggestive", "ParentName": "", "Confidence": 65.0},
    {"Name": "Female Swimwear Or Underwear", "ParentName": "Suggestive", "Confidence": 65.0},
]
SWIMWEAR_AT_075 = {"MODERATION_CATEGORY_THRESHOLDS": {"Female Swimwear Or Underwear": 0.75}}
SWIMWEAR_AT_060 = {"MODERATION_CATEGORY_THRESHOLDS": {"Female Swimwear Or Underwear": 0.6}}
REEVALUATE = "cli:reevaluate"


class Site:
    """A Thumbor configuration in a temporary folder, and the command run against it."""

    def __init__(self, root: Path, fake: FakeRekognition) -> None:
        self.root = root
        self.images = root / "images"
        self.images.mkdir()
        self.quarantine = root / "quarantine"
        self.conf = root / "thumbor.conf"
        self._stores: list[Store] = []
        self.config = base_config(root, self.images, fake.url)
        self.config.update(
            {
                "MODERATION_QUARANTINE_PATH": str(self.quarantine),
                "MODERATION_CACHE_TTL_SECONDS": 0.0,
                # Nothing here is about timeouts: a loaded machine may keep the fake
                # endpoint past the tests' usual 3 s.
                "REKOGNITION_TIMEOUT_SECONDS": 30.0,
                **SWIMWEAR_AT_075,
            }
        )
        self.write_conf()

    def write_conf(self, **overrides: Any) -> None:
        config = {**self.config, **overrides}
        self.conf.write_text("".join(f"{key} = {value!r}\n" for key, value in config.items()))

    def add(
        self, name: str, color: tuple[int, int, int], size: tuple[int, int] = (160, 120)
    ) -> str:
        (self.images / name).write_bytes(picture(color, size))
        return name

    def run(self, *arguments: str) -> int:
        return cli.main(["--conf", str(self.conf), *arguments])

    def urls_file(self, *lines: str) -> str:
        path = self.root / "urls.txt"
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    def stored(self, url: str) -> Path:
        """Where Thumbor's file STORAGE keeps the original of an image URL."""
        return storage_file(self.root, storage_key(url))

    def store_original(self, url: str) -> bytes:
        """Put an original into STORAGE, as Thumbor does after serving an approved image."""
        data = (self.images / url).read_bytes()
        path = self.stored(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def quarantined(self, data: bytes) -> Path:
        digest = sha256_hex(data)
        return self.quarantine / digest[:2] / digest

    def store(self) -> Store:
        store = Store(path=self.config["MODERATION_SQLITE_PATH"])
        self._stores.append(store)
        return store

    def close(self) -> None:
        for store in self._stores:
            store.close()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def site(tmp_path: Path, fake: FakeRekognition) -> Iterator[Site]:
    fake.respond(RED, NUDITY_70)
    fake.respond(BLUE, SWIMWEAR_65)
    site = Site(tmp_path, fake)
    yield site
    site.close()


@pytest.fixture
def moderated(site: Site, capsys: pytest.CaptureFixture[str]) -> Site:
    """red.png rejected, blue.png and green.png approved, by a backfill."""
    for name, color in (("red.png", RED), ("blue.png", BLUE), ("green.png", GREEN)):
        site.add(name, color)
    assert site.run("backfill", site.urls_file("red.png", "blue.png", "green.png")) == 0
    capsys.readouterr()
    return site


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


# check


def test_check_prints_labels_and_decision_and_stores_nothing(
    site: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    path = site.root / "upload.png"
    path.write_bytes(picture(RED))

    code = site.run("check", str(path))

    out = capsys.readouterr().out
    assert code == 0
    assert "Explicit Nudity > Nudity  0.7" in out
    assert "decision: rejected" in out
    assert "Explicit Nudity > Nudity 0.7 above 0.5 (default)" in out
    assert fake.call_count == 1
    assert site.store().counts() == {}
    assert not site.quarantine.exists()


def test_check_json_gives_the_decision_under_the_current_thresholds(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    path = site.root / "beach.png"
    path.write_bytes(picture(BLUE))

    approved = site.run("check", str(path), "--json")
    loose = json.loads(capsys.readouterr().out)
    site.write_conf(**SWIMWEAR_AT_060)
    rejected = site.run("check", str(path), "--json")
    strict = json.loads(capsys.readouterr().out)

    assert approved == rejected == 0
    assert loose["status"] == "approved"
    assert loose["reasons"] == []
    assert {"name": "Female Swimwear Or Underwear", "parent": "Suggestive"}.items() <= (
        loose["labels"][1].items()
    )
    assert strict["status"] == "rejected"
    assert [reason["category"] for reason in strict["reasons"]] == ["female_swimwear_or_underwear"]
    assert strict["min_confidence"] == 0.5
    assert [label["confidence"] for label in strict["labels"]] == [0.65, 0.65]
    assert [reason["confidence"] for reason in strict["reasons"]] == [0.65]
    assert [reason["threshold"] for reason in strict["reasons"]] == [0.6]


def test_check_shows_7x_labels_as_reported_and_as_a_6x_policy_judges_them(
    site: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.respond(
        GREEN,
        [
            {"Name": "Explicit", "ParentName": "", "Confidence": 80.0, "TaxonomyLevel": 1},
            {
                "Name": "Explicit Sexual Activity",
                "ParentName": "Explicit",
                "Confidence": 80.0,
                "TaxonomyLevel": 2,
            },
        ],
        model_version="7.0",
        content_types=[{"Name": "Illustrated", "Confidence": 91.0}],
    )
    path = site.root / "drawing.png"
    path.write_bytes(picture(GREEN))

    code = site.run("check", str(path))
    out = capsys.readouterr().out
    site.run("check", str(path), "--json")
    shown = json.loads(capsys.readouterr().out)

    assert code == 0
    assert "Explicit > Explicit Sexual Activity  0.8" in out
    assert "content types:\n  Illustrated  0.91" in out
    assert "labels as judged (thresholds in model 6.x names):" in out
    assert (
        "Explicit Nudity > Illustrated Explicit Nudity  0.8  "
        "(reported as Explicit > Explicit Sexual Activity)"
    ) in out
    assert [item["name"] for item in shown["judged_labels"]] == ["Illustrated Explicit Nudity"]
    assert shown["content_types"] == [{"name": "Illustrated", "confidence": 0.91, "frame": 0}]
    assert [item["confidence"] for item in shown["judged_labels"]] == [0.8]


def test_check_names_a_file_that_is_not_an_image(
    site: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    path = site.root / "page.png"
    path.write_text("<html>not a picture</html>")

    code = site.run("check", str(path))

    assert code == 1
    assert capsys.readouterr().err == (
        f"thumbor-moderation: {path}: not an image Pillow can open\n"
    )
    assert fake.call_count == 0


def test_check_of_a_missing_file_is_a_usage_error(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code = site.run("check", str(site.root / "nowhere.png"))

    assert code == 2
    assert "cannot read" in capsys.readouterr().err


def test_check_fails_loudly_when_the_backend_refuses(
    site: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    path = site.root / "upload.png"
    path.write_bytes(picture(GREEN))
    fake.fail("access_denied", times=1)

    code = site.run("check", str(path))

    captured = capsys.readouterr()
    assert code == 1
    assert "rekognition backend failed (configuration)" in captured.err
    assert "AccessDeniedException" in captured.err
    assert captured.out == ""


def test_check_names_an_undefined_key_of_the_conf_and_the_nearest_defined_one(
    site: Site,
) -> None:
    path = site.root / "upload.png"
    path.write_bytes(picture(RED))
    site.write_conf(MODERATION_MIN_CONFIDANCE=0.8)

    check = subprocess.run(
        [console_script(), "--conf", str(site.conf), "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert check.returncode == 0, check.stderr
    assert "decision: rejected" in check.stdout
    assert (
        "Config 'MODERATION_MIN_CONFIDANCE' (set in the configuration) is not a key of the "
        "plugin: ignored. Did you mean 'MODERATION_MIN_CONFIDENCE'?"
    ) in check.stderr


def test_check_with_the_offline_backend_but_not_its_libraries_names_the_extra(
    site: Site,
) -> None:
    # onnxruntime as a plain `pip install .` leaves it: first on the path, failing to import.
    absent = site.root / "absent"
    absent.mkdir()
    (absent / "onnxruntime.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'onnxruntime'\", name='onnxruntime')\n"
    )
    path = site.root / "upload.png"
    path.write_bytes(picture(RED))
    site.write_conf(MODERATION_BACKEND="thumbor_rekognition.backends.nudenet")

    check = subprocess.run(
        [console_script(), "--conf", str(site.conf), "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(absent)},
    )

    assert check.returncode == 2
    assert "Config 'MODERATION_BACKEND'" in check.stderr
    assert "No module named 'onnxruntime'" in check.stderr
    assert "pip install 'thumbor-moderation[local]'" in check.stderr
    assert "Traceback" not in check.stderr


# backfill


def test_backfill_moderates_urls_concurrently_with_one_call_per_picture(
    site: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    site.add("red.png", RED)
    (site.images / "red-copy.png").write_bytes((site.images / "red.png").read_bytes())
    site.add("blue.png", BLUE)
    site.add("green.png", GREEN)
    (site.images / "notes.png").write_text("not a picture")
    urls = site.urls_file(
        "# pictures of the week",
        "red.png",
        "",
        "red-copy.png",
        "blue.png",
        "  green.png  ",
        "blue.png",
        "missing.png",
        "notes.png",
    )
    # Each call is held 0.3 s: calls that overlap were made concurrently.
    fake.fail("slow", times=3, delay=0.3)

    code = site.run("backfill", urls, "--concurrency", "4")

    captured = capsys.readouterr()
    assert code == 1
    assert fake.call_count == 3
    arrivals = [call.at for call in fake.calls]
    assert max(arrivals) - min(arrivals) < 0.3
    for line in (
        "urls: 6 (repeated, skipped: 1)",
        "approved: 2",
        "rejected: 2",
        "pending: 0",
        "backend error: 0",
        "not found: 1",
        "not an image: 1",
        "backend calls: 3",
    ):
        assert line in captured.out.splitlines()
    assert "not found: missing.png" in captured.err
    assert "not an image: notes.png" in captured.err
    decisions = {d.key: d.status for d in site.store().page(limit=100)[0]}
    assert decisions == {
        "red.png": Status.REJECTED,
        "red-copy.png": Status.REJECTED,
        "blue.png": Status.APPROVED,
        "green.png": Status.APPROVED,
    }


def test_backfill_exits_0_when_every_url_got_a_decision_and_pays_nothing_twice(
    site: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    site.add("red.png", RED)
    site.add("green.png", GREEN)
    urls = site.urls_file("red.png", "green.png")

    first = site.run("backfill", urls)
    again = site.run("backfill", urls)

    out = capsys.readouterr().out
    assert first == again == 0
    assert fake.call_count == 2
    assert out.count("backend calls: 2") == 1
    assert out.count("backend calls: 0") == 1


def test_backfill_exits_1_when_the_backend_fails(
    site: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    site.add("green.png", GREEN)
    fake.fail("access_denied", times=1)

    code = site.run("backfill", site.urls_file("green.png"))

    captured = capsys.readouterr()
    assert code == 1
    assert "backend error: 1" in captured.out.splitlines()
    assert "backend error: green.png" in captured.err
    decision = site.store().get("green.png")
    assert decision is not None
    assert decision.needs_retry


def test_backfill_reads_urls_from_standard_input(
    site: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    site.add("green.png", GREEN)
    monkeypatch.setattr(sys, "stdin", io.StringIO("# from a pipe\ngreen.png\n"))

    code = site.run("backfill", "-")

    assert code == 0
    assert "approved: 1" in capsys.readouterr().out.splitlines()
    assert fake.call_count == 1


# list, show, stats


def test_list_prints_one_line_per_decision(
    moderated: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code = moderated.run("list")

    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [line[:3] for line in lines] == [
        ["approved", "auto", "blue.png"],
        ["approved", "auto", "green.png"],
        ["rejected", "auto", "red.png"],
    ]
    assert lines[2][3] == "Explicit Nudity > Nudity 0.7 above 0.5 (default)"


def test_list_filters_by_status_limits_and_prints_json_lines(
    moderated: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    moderated.run("list", "--status", "approved", "--json")
    approved = json_lines(capsys.readouterr().out)
    moderated.run("list", "--limit", "1", "--json")
    limited = json_lines(capsys.readouterr().out)

    assert [item["key"] for item in approved] == ["blue.png", "green.png"]
    assert {item["status"] for item in approved} == {"approved"}
    assert len(approved[0]["content_hash"]) == 64
    assert [label["confidence"] for label in approved[0]["labels"]] == [0.65, 0.65]
    assert approved[0]["min_confidence"] == 0.5
    assert [item["key"] for item in limited] == ["blue.png"]


def test_list_walks_every_page(
    site: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    names = [site.add(f"green-{index}.png", GREEN, (160, 100 + index)) for index in range(5)]
    site.run("backfill", site.urls_file(*names))
    capsys.readouterr()
    monkeypatch.setattr(environment, "MAX_PAGE", 2)

    everything = site.run("list")
    all_keys = [line.split("\t")[2] for line in capsys.readouterr().out.splitlines()]
    site.run("list", "--limit", "3")
    some_keys = [line.split("\t")[2] for line in capsys.readouterr().out.splitlines()]

    assert everything == 0
    assert all_keys == sorted(names)
    assert some_keys == sorted(names)[:3]


def test_show_prints_labels_reasons_backend_hash_and_history(
    moderated: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    data = (moderated.images / "red.png").read_bytes()

    code = moderated.run("show", "red.png")

    out = capsys.readouterr().out
    assert code == 0
    assert "status: rejected (auto)" in out
    assert f"content hash: {sha256_hex(data)}" in out
    assert "backend: rekognition 7.0" in out
    assert "  Explicit Nudity > Nudity  0.7" in out
    assert "  Explicit Nudity > Nudity 0.7 above 0.5 (default)" in out
    history = out.split("history:\n")[1].splitlines()
    assert len(history) == 1
    assert "rejected (auto)  thumbor-moderation  rekognition 7.0: Nudity" in history[0]


def test_show_json_is_the_admin_view_with_history(
    moderated: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code = moderated.run("show", "/blue.png", "--json")

    view = json.loads(capsys.readouterr().out)
    assert code == 0
    assert view["key"] == "blue.png"
    assert view["status"] == "approved"
    assert view["backend"] == "rekognition"
    assert view["model_version"] == "7.0"
    assert [label["name"] for label in view["labels"]] == [
        "Suggestive",
        "Female Swimwear Or Underwear",
    ]
    assert [event["actor"] for event in view["history"]] == ["thumbor-moderation"]


def test_show_of_an_unknown_url_fails(moderated: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code = moderated.run("show", "never-seen.png")

    assert code == 1
    assert "no decision for never-seen.png" in capsys.readouterr().err


def test_stats_counts_by_status_and_source(
    moderated: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    moderated.run("reject", "green.png")
    capsys.readouterr()

    text = moderated.run("stats")
    out = capsys.readouterr().out
    as_json = moderated.run("stats", "--json")
    stats = json.loads(capsys.readouterr().out)

    assert text == as_json == 0
    assert "approved: 1 (auto 1, manual 0, duplicate 0, bank 0)" in out
    assert "rejected: 2 (auto 1, manual 1, duplicate 0, bank 0)" in out
    assert "backend calls: 3" in out
    assert stats["decisions"] == {"approved": 1, "rejected": 2, "pending": 0}
    assert stats["by_source"]["rejected.manual"] == 1
    assert stats["backend_calls"] == 3
    assert stats["backend"] == "rekognition"


# approve, reject, forget


def test_reject_removes_the_original_and_results_and_approve_puts_the_original_back(
    moderated: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    data = moderated.store_original("green.png")
    result = result_file(moderated.root, "/unsafe/100x100/green.png")
    result.parent.mkdir(parents=True)
    result.write_bytes(b"a rendered result")
    moderated.store().add_results("green.png", ["/unsafe/100x100/green.png"])

    rejected = moderated.run("reject", "green.png", "--note", "spam", "--actor", "alice")
    rejected_out = capsys.readouterr().out
    removed = not moderated.stored("green.png").exists() and not result.exists()
    kept = moderated.quarantined(data).read_bytes()
    approved = moderated.run("approve", "green.png", "--note", "fine after all")
    approved_out = capsys.readouterr().out

    assert rejected == approved == 0
    assert rejected_out == "rejected\tgreen.png\n"
    assert approved_out == "approved\tgreen.png\n"
    assert removed
    assert kept == data
    assert moderated.stored("green.png").read_bytes() == data
    events = moderated.store().history("green.png")
    assert [(e.status, e.source, e.actor, e.note) for e in events[1:]] == [
        (Status.REJECTED, Source.MANUAL, "alice", "spam"),
        (Status.APPROVED, Source.MANUAL, f"cli:{parser._login()}", "fine after all"),
    ]


def test_reject_applies_to_every_url_of_the_same_picture(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site.add("green.png", GREEN)
    (site.images / "copy.png").write_bytes((site.images / "green.png").read_bytes())
    site.run("backfill", site.urls_file("green.png", "copy.png"))
    capsys.readouterr()

    code = site.run("reject", "copy.png")

    assert code == 0
    assert sorted(capsys.readouterr().out.splitlines()) == [
        "rejected\tcopy.png",
        "rejected\tgreen.png",
    ]
    store = site.store()
    for key in ("green.png", "copy.png"):
        decision = store.get(key)
        assert decision is not None
        assert (decision.status, decision.source) == (Status.REJECTED, Source.MANUAL)


def test_forget_drops_the_decision_and_logs_who(
    moderated: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    forgotten = moderated.run("forget", "red.png", "--actor", "bob")
    out = capsys.readouterr().out
    again = moderated.run("forget", "red.png")
    err = capsys.readouterr().err

    assert forgotten == 0
    assert out == "forgotten\tred.png\n"
    assert again == 1
    assert "no decision for red.png" in err
    store = moderated.store()
    assert store.get("red.png") is None
    last = store.history("red.png")[-1]
    assert (last.status, last.actor, last.note) == (None, "bob", "decision forgotten")


# reevaluate


def test_reevaluate_applies_stricter_thresholds_to_automatic_decisions_only(
    moderated: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    moderated.run("approve", "red.png", "--actor", "carol")
    data = moderated.store_original("blue.png")
    capsys.readouterr()
    calls = fake.call_count
    moderated.write_conf(**SWIMWEAR_AT_060)

    code = moderated.run("reevaluate")

    out = capsys.readouterr().out
    assert code == 0
    assert fake.call_count == calls
    assert "approved -> rejected\tblue.png\t" in out
    for line in (
        "examined: 3",
        "changed: 1 (rejected 1)",
        "unchanged: 1",
        "skipped, manual: 1",
        "need a new analysis: 0",
    ):
        assert line in out.splitlines()
    store = moderated.store()
    blue, red = store.get("blue.png"), store.get("red.png")
    assert blue is not None
    assert red is not None
    assert (blue.status, blue.source) == (Status.REJECTED, Source.AUTO)
    assert [reason.category for reason in blue.reasons] == ["female_swimwear_or_underwear"]
    assert (red.status, red.source) == (Status.APPROVED, Source.MANUAL)
    last = store.history("blue.png")[-1]
    assert (last.status, last.source, last.actor) == (Status.REJECTED, Source.AUTO, REEVALUATE)
    assert not moderated.stored("blue.png").exists()
    assert moderated.quarantined(data).read_bytes() == data


def test_reevaluate_restores_pictures_that_looser_thresholds_approve(
    moderated: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    data = moderated.store_original("blue.png")
    moderated.write_conf(**SWIMWEAR_AT_060)
    moderated.run("reevaluate")
    moderated.write_conf(**SWIMWEAR_AT_075)
    capsys.readouterr()

    code = moderated.run("reevaluate")

    assert code == 0
    assert "rejected -> approved\tblue.png\t" in capsys.readouterr().out
    assert moderated.stored("blue.png").read_bytes() == data
    blue = moderated.store().get("blue.png")
    assert blue is not None
    assert (blue.status, blue.source) == (Status.APPROVED, Source.AUTO)
    assert fake.call_count == 3


def test_reevaluate_dry_run_changes_nothing(
    moderated: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    data = moderated.store_original("blue.png")
    store = moderated.store()
    before = [(d, store.history(d.key)) for d in store.page(limit=100)[0]]
    moderated.write_conf(**SWIMWEAR_AT_060)

    code = moderated.run("reevaluate", "--dry-run")

    out = capsys.readouterr().out
    assert code == 0
    assert "approved -> rejected\tblue.png\t" in out
    assert "would change: 1 (rejected 1)" in out
    assert "dry run: nothing was changed" in out
    assert [(d, store.history(d.key)) for d in store.page(limit=100)[0]] == before
    assert moderated.stored("blue.png").read_bytes() == data
    assert not moderated.quarantined(data).exists()


def test_reevaluate_reports_decisions_that_need_a_new_analysis_and_skips_failures(
    moderated: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    moderated.add("failed.png", GREEN, (200, 120))
    fake.fail("internal", times=1)
    moderated.run("backfill", moderated.urls_file("failed.png"))
    store = moderated.store()
    before = store.page(limit=100)[0]
    moderated.write_conf(MODERATION_MIN_CONFIDENCE=0.4)
    capsys.readouterr()

    code = moderated.run("reevaluate")

    out = capsys.readouterr().out
    assert code == 0
    assert "needs new analysis\tblue.png\tlabels stored from 0.5, thresholds now look from 0.4" in (
        out
    )
    assert "need a new analysis: 3" in out
    assert "skipped, backend error (retried on the next request): 1" in out
    assert "changed: 0" in out
    assert store.page(limit=100)[0] == before


# near-duplicates


COPIES = ("copy-q70.jpg", "copy-brighter.png", "copy-q45.jpg")


@pytest.fixture
def reported(site: Site, capsys: pytest.CaptureFixture[str]) -> Site:
    """original.png, busy, rejected by hand; three copies of it and an unrelated picture
    judged after that by a backfill."""
    image = pictures.busy("cli-original")
    (site.images / "original.png").write_bytes(pictures.encoded(image, "PNG"))
    (site.images / "other.png").write_bytes(pictures.encoded(pictures.busy("cli-other"), "PNG"))
    for name, data in zip(
        COPIES,
        (pictures.resized_jpeg(image), pictures.brighter(image), pictures.reencoded(image)),
        strict=True,
    ):
        (site.images / name).write_bytes(data)
    assert site.run("backfill", site.urls_file("original.png")) == 0
    assert site.run("reject", "original.png", "--note", "reported") == 0
    assert site.run("backfill", site.urls_file(*COPIES, "other.png")) == 0
    capsys.readouterr()
    return site


def test_copies_backfilled_after_a_rejection_are_its_duplicates_without_a_backend_call(
    reported: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    code = reported.run("list", "--status", "rejected")

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert fake.call_count == 2
    assert len(lines) == 4
    for name in COPIES:
        line = next(line for line in lines if f"\t{name}\t" in line)
        assert line.startswith("rejected\tduplicate\t")
        found = re.search(r"\tduplicate of original\.png \(similarity ([0-9.]+)\)$", line)
        assert found is not None
        assert float(found[1]) >= 0.9


def test_show_of_a_duplicate_names_the_picture_it_resembles(
    reported: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code = reported.run("show", "copy-q45.jpg")
    as_json = reported.run("show", "copy-q45.jpg", "--json")

    out, view = capsys.readouterr().out.split("\n{", 1)
    shown = json.loads("{" + view)
    assert code == as_json == 0
    assert "status: rejected (duplicate)" in out
    assert re.search(r"^duplicate of: original\.png \(similarity (0\.9\d\d|1\.000)\)$", out, re.M)
    assert "backend: -" in out
    assert (shown["source"], shown["duplicate_of"]) == ("duplicate", "original.png")
    assert shown["similarity"] >= 0.9


def test_similar_lists_the_nearest_rejected_pictures_and_the_duplicates_of_one(
    reported: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    of_copy = reported.run("similar", "copy-brighter.png")
    copy_out = capsys.readouterr().out
    of_original = reported.run("similar", "original.png", "--json")
    original_view = json.loads(capsys.readouterr().out)
    of_other = reported.run("similar", "other.png")
    other_out = capsys.readouterr().out

    assert of_copy == of_original == of_other == 0
    assert "url: copy-brighter.png (rejected, duplicate)" in copy_out
    nearest = copy_out.splitlines()[2]
    assert nearest.endswith("  rejected (manual)  original.png")
    assert float(nearest.split()[0]) >= 0.9
    assert original_view["nearest"] == []
    duplicates = {item["key"]: item["similarity"] for item in original_view["duplicates"]}
    assert set(duplicates) == set(COPIES)
    assert min(duplicates.values()) >= 0.9
    assert "nearest rejected pictures (similarity 0.85 or more):\n  none" in other_out


def test_similar_of_an_unknown_url_fails_and_a_bad_similarity_is_a_usage_error(
    reported: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown = reported.run("similar", "nowhere.png")
    unknown_err = capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        reported.run("similar", "original.png", "--min-similarity", "0.5")

    assert unknown == 1
    assert "no decision for nowhere.png" in unknown_err
    assert usage.value.code == 2
    assert "between 0.82 and 1" in capsys.readouterr().err


def test_approving_the_original_forgets_its_duplicates(
    reported: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    code = reported.run("approve", "original.png")
    store = reported.store()
    forgotten = [store.get(name) for name in COPIES]
    reported.run("backfill", reported.urls_file(*COPIES))

    assert code == 0
    assert forgotten == [None, None, None]
    assert [store.get(name).status for name in COPIES] == [Status.APPROVED] * 3  # type: ignore[union-attr]
    assert fake.call_count == 2 + 3


def test_reevaluate_never_approves_a_duplicate(
    reported: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    reported.write_conf(MODERATION_MIN_CONFIDENCE=0.9)

    code = reported.run("reevaluate")

    out = capsys.readouterr().out
    assert code == 0
    assert "skipped, duplicates of rejected pictures: 3" in out.splitlines()
    assert {reported.store().get(name).source for name in COPIES} == {Source.DUPLICATE}  # type: ignore[union-attr]


# Custom Moderation adapters

ADAPTER = (
    "arn:aws:rekognition:us-east-1:111122223333:project/nsfw/version/nsfw.2024-05-01/1714521600000"
)


def test_show_names_the_adapter_and_reevaluate_lists_decisions_of_another(
    site: Site, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add_adapter(ADAPTER)
    fake.respond(GREEN, SWIMWEAR_65, adapter=ADAPTER)
    site.add("green.png", GREEN)
    site.add("blue.png", BLUE)
    site.write_conf(REKOGNITION_PROJECT_VERSION=ADAPTER)
    site.run("backfill", site.urls_file("green.png"))
    site.write_conf()
    site.run("backfill", site.urls_file("blue.png"))
    site.write_conf(REKOGNITION_PROJECT_VERSION=ADAPTER)
    capsys.readouterr()

    shown = site.run("show", "green.png")
    show_out = capsys.readouterr().out
    reevaluated = site.run("reevaluate")
    out = capsys.readouterr().out

    assert shown == reevaluated == 0
    assert [call.project_version for call in fake.calls] == [ADAPTER, None]
    assert f"backend: rekognition 7.0 (adapter {ADAPTER})" in show_out
    assert "judged by another adapter\tblue.png\tbase model" in out
    assert "green.png" not in out
    assert (
        "judged by another adapter than REKOGNITION_PROJECT_VERSION, labels kept "
        "(forget to judge again): 1"
    ) in out


# configuration and the console script


def test_a_bad_configuration_value_exits_2_naming_the_key(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site.write_conf(MODERATION_MIN_CONFIDENCE=2)

    code = site.run("stats")

    err = capsys.readouterr().err
    assert code == 2
    assert "MODERATION_MIN_CONFIDENCE" in err
    assert "Traceback" not in err


def test_a_missing_or_broken_conf_file_exits_2(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = cli.main(["--conf", str(site.root / "nope.conf"), "stats"])
    missing_err = capsys.readouterr().err
    site.conf.write_text("MODERATION_MIN_CONFIDENCE = (\n")
    broken = site.run("stats")
    broken_err = capsys.readouterr().err

    assert missing == broken == 2
    assert "No configuration file at" in missing_err
    assert "SyntaxError" in broken_err


def test_thumbor_conf_is_found_in_the_current_folder_without_conf(
    moderated: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(moderated.root)

    code = cli.main(["stats", "--json"])

    assert code == 0
    assert json.loads(capsys.readouterr().out)["backend_calls"] == 3


def test_an_unknown_command_is_a_usage_error(site: Site) -> None:
    with pytest.raises(SystemExit) as exit_info:
        site.run("approve-everything")

    assert exit_info.value.code == 2


def console_script() -> str:
    return str(Path(sys.executable).with_name("thumbor-moderation"))


def test_console_script_check_of_a_non_image_says_so_without_a_traceback(site: Site) -> None:
    path = site.root / "notes.txt"
    path.write_text("shopping list\n")

    check = subprocess.run(
        [console_script(), "--conf", str(site.conf), "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert check.returncode == 1
    assert check.stderr == f"thumbor-moderation: {path}: not an image Pillow can open\n"


def test_console_script_does_not_pass_on_thumbors_pycurl_advice(site: Site) -> None:
    # Installed or not here (thumbor-aws brings it), pycurl cannot be imported by the
    # commands below: a pycurl first on their path that fails, as a missing one would.
    absent = site.root / "absent" / "pycurl"
    absent.mkdir(parents=True)
    (absent / "__init__.py").write_text("raise ModuleNotFoundError('pycurl')\n")
    environment = {**os.environ, "PYTHONPATH": str(absent.parent)}
    site.write_conf(MODERATION_SOURCE_LOADER="thumbor.loaders.http_loader")
    importing = subprocess.run(
        [sys.executable, "-c", "import thumbor.loaders.http_loader"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
    )

    stats = subprocess.run(
        [console_script(), "--conf", str(site.conf), "stats"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
    )

    assert cli.PYCURL_ADVICE in importing.stderr
    assert stats.returncode == 0
    assert stats.stderr == ""


def test_only_thumbors_pycurl_advice_is_silenced(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    site.run("stats")

    thumbor_logger = logging.getLogger("thumbor")
    thumbor_logger.warning("pycurl usage is advised. It could not be loaded properly.")
    thumbor_logger.warning("another warning")

    assert [r.getMessage() for r in caplog.records if r.name == "thumbor"] == ["another warning"]


def test_console_script_runs_commands_and_reports_configuration_errors(moderated: Site) -> None:
    stats = subprocess.run(
        [console_script(), "--conf", str(moderated.conf), "stats", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    moderated.write_conf(MODERATION_CATEGORY_THRESHOLDS={"explicit_nudty": 0.6})
    broken = subprocess.run(
        [console_script(), "--conf", str(moderated.conf), "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["decisions"] == {"approved": 2, "rejected": 1, "pending": 0}
    assert broken.returncode == 2
    assert "MODERATION_CATEGORY_THRESHOLDS" in broken.stderr
    assert "explicit_nudty" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_console_script_prints_the_version_the_package_metadata_has() -> None:
    shown = subprocess.run(
        [console_script(), "--version"], capture_output=True, text=True, timeout=60, check=False
    )

    assert shown.returncode == 0
    assert (
        shown.stdout == f"thumbor-moderation {importlib.metadata.version('thumbor-moderation')}\n"
    )
    assert importlib.metadata.version("thumbor-moderation") == thumbor_rekognition.__version__


# A URL no request has fetched


def run_console_script(
    *arguments: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_rejecting_a_url_no_request_fetched_fails_naming_the_nearest_known_urls(
    moderated: Site,
) -> None:
    rejected = run_console_script("--conf", str(moderated.conf), "reject", "gren.png")
    shown = run_console_script("--conf", str(moderated.conf), "show", "gren.png")

    assert rejected.returncode == 1
    assert rejected.stdout == ""
    assert "no request has fetched gren.png; nearest known URLs: green.png" in rejected.stderr
    assert "--unseen" in rejected.stderr
    assert "binds to the bytes of that fetch" in rejected.stderr
    assert shown.returncode == 1
    assert moderated.store().get("green.png").status is Status.APPROVED  # type: ignore[union-attr]


def test_approving_with_unseen_records_a_decision_that_binds_at_the_first_fetch(
    moderated: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    decided = run_console_script(
        "--conf", str(moderated.conf), "reject", "later.png", "--unseen", "--note", "reported"
    )
    moderated.add("later.png", BLUE)
    moderated.run("backfill", moderated.urls_file("later.png"))
    capsys.readouterr()
    moderated.run("show", "later.png", "--json")
    view = json.loads(capsys.readouterr().out)

    assert decided.returncode == 0, decided.stderr
    assert decided.stdout == (
        "rejected\tlater.png\tno request has fetched it yet: "
        "the decision binds to the bytes of its first fetch\n"
    )
    assert (view["status"], view["source"]) == ("rejected", "manual")
    assert view["content_hash"] == sha256_hex((moderated.images / "later.png").read_bytes())


def test_unseen_is_not_needed_for_a_url_fetched_before(
    moderated: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code = moderated.run("reject", "green.png")

    assert code == 0
    assert capsys.readouterr().out == "rejected\tgreen.png\n"


# Where the configuration comes from


def test_conf_is_taken_after_the_subcommand_as_well_as_before(moderated: Site) -> None:
    after = run_console_script("stats", "--json", "--conf", str(moderated.conf))
    before = run_console_script("--conf", str(moderated.conf), "stats", "--json")
    short_after = run_console_script("list", "-c", str(moderated.conf))

    assert after.returncode == before.returncode == short_after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)
    assert json.loads(after.stdout)["decisions"]["approved"] == 2
    assert short_after.stdout.count("\n") == 3


def test_without_a_configuration_found_the_command_stops_saying_where_it_looked(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    environment = {**os.environ, "HOME": str(home)}

    stats = subprocess.run(
        [console_script(), "stats"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env=environment,
    )

    assert stats.returncode == 2
    assert stats.stdout == ""
    assert f"{tmp_path / 'thumbor.conf'}, {home / 'thumbor.conf'}, /etc/thumbor.conf" in (
        stats.stderr
    )
    assert "--conf" in stats.stderr
    assert "Traceback" not in stats.stderr
