"""Hash banks through the real Thumbor app: pictures whose PDQ hash a bank lists are
decided without a backend call, naming the bank and entry; a bank file that grows while
Thumbor runs rejects new pictures and pictures already approved.

One Thumbor on the SQLite store, the fake Rekognition endpoint (which approves every
picture here: only a bank can reject one), a real webhook receiver.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image

from tests import pictures
from tests.fakes.rekognition import FakeRekognition
from tests.receivers import Received, Receiver
from tests.servers import ThumborServer, base_config
from thumbor_rekognition import banks, pdq

pytestmark = pytest.mark.e2e

TOKEN = "hash-banks-admin-token-5c0e19ab"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOOK_PATH = "/hooks/moderation"
# Bank files are looked at this often here; the documented bound is a minute.
RELOAD_SECONDS = 0.3

_seeds = itertools.count(2000)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as started:
        yield started


@pytest.fixture(scope="module")
def bank_files(module_root: Path) -> dict[str, Path]:
    folder = module_root / "banks"
    folder.mkdir()
    files = {name: folder / f"{name}.txt" for name in ("known-bad", "cleared", "dormant")}
    for path in files.values():
        path.write_text("# PDQ hashes, one a line\n")
    return files


@pytest.fixture(scope="module")
def server(
    module_root: Path,
    images: Path,
    module_fake: FakeRekognition,
    receiver: Receiver,
    bank_files: dict[str, Path],
) -> Iterator[ThumborServer]:
    root = module_root / "hash-banks"
    config = base_config(root, images, module_fake.url)
    config.update(
        {
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_WEBHOOK_URL": receiver.url + HOOK_PATH,
            "MODERATION_OUTBOX_TIMEOUT_SECONDS": 2.0,
            "MODERATION_HASH_BANKS": [
                {"name": "known-bad", "path": str(bank_files["known-bad"]), "action": "reject"},
                {"name": "cleared", "path": str(bank_files["cleared"]), "action": "approve"},
                {
                    "name": "dormant",
                    "path": str(bank_files["dormant"]),
                    "action": "reject",
                    "enabled": False,
                },
            ],
            "MODERATION_HASH_BANK_RELOAD_SECONDS": RELOAD_SECONDS,
        }
    )
    thumbor = ThumborServer(root, config).start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def add(images: Path, name: str, data: bytes) -> str:
    (images / name).write_bytes(data)
    return name


def listed(path: Path, image: Image.Image, note: str, *more: tuple[Image.Image, str]) -> str:
    """Add pictures' PDQ hashes to a bank file in one write, as a list maintainer would;
    the first one's hex."""
    lines = [(pdq.of(each).hex(), text) for each, text in ((image, note), *more)]
    with path.open("a") as file:
        file.write("".join(f"{hashed},{text}\n" for hashed, text in lines))
    return lines[0][0]


def status_of(server: ThumborServer, name: str) -> str | None:
    return server.get(f"/unsafe/120x90/{quote(name)}").header("X-Moderation-Status")


def decision_of(server: ThumborServer, name: str) -> dict[str, Any]:
    response = server.request("GET", f"/moderation/image?url={quote(name, safe='')}", headers=AUTH)
    assert response.status == 200, response.body
    found: dict[str, Any] = json.loads(response.body)
    return found


def wait_for_status(server: ThumborServer, name: str, status: str, within: float) -> str:
    deadline = time.monotonic() + within
    while True:
        found = decision_of(server, name)["status"]
        if found == status or time.monotonic() > deadline:
            return str(found)
        time.sleep(0.1)


def test_listed_picture_and_its_resized_copy_are_rejected_without_a_backend_call(
    server: ThumborServer, images: Path, fake: FakeRekognition, bank_files: dict[str, Path]
) -> None:
    image = pictures.busy(next(_seeds))
    entry = listed(bank_files["known-bad"], image, "case 4411")
    time.sleep(RELOAD_SECONDS * 2)
    original = add(images, "listed.png", pictures.encoded(image, "PNG"))
    copy = add(images, "listed-resized.jpg", pictures.resized_jpeg(image, 0.5, 70))
    calls = fake.call_count

    statuses = [status_of(server, original), status_of(server, copy)]
    decisions = [decision_of(server, original), decision_of(server, copy)]

    assert statuses == ["rejected", "rejected"]
    assert fake.call_count == calls
    for decision in decisions:
        assert decision["source"] == "bank"
        assert decision["reasons"][0]["name"] == "known-bad"
        assert decision["reasons"][0]["parent"] == f"{entry} (case 4411)"
        assert decision["reasons"][0]["category"] == "hash_bank"
    assert decisions[0]["pdq"][0]["hash"] == entry
    assert decisions[0]["pdq"][0]["quality"] >= pdq.MIN_QUALITY


def test_mirrored_copy_of_a_listed_picture_is_rejected(
    server: ThumborServer, images: Path, fake: FakeRekognition, bank_files: dict[str, Path]
) -> None:
    image = pictures.photo_like(next(_seeds))
    listed(bank_files["known-bad"], image, "mirrored on upload")
    time.sleep(RELOAD_SECONDS * 2)
    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    name = add(images, "listed-mirrored.png", pictures.encoded(mirrored, "PNG"))
    calls = fake.call_count

    status = status_of(server, name)

    assert status == "rejected"
    assert fake.call_count == calls
    assert decision_of(server, name)["reasons"][0]["name"] == "known-bad"


def test_picture_of_an_approve_bank_is_approved_without_a_backend_call(
    server: ThumborServer, images: Path, fake: FakeRekognition, bank_files: dict[str, Path]
) -> None:
    image = pictures.busy(next(_seeds))
    entry = listed(bank_files["cleared"], image, "false positive, ticket 88")
    time.sleep(RELOAD_SECONDS * 2)
    name = add(images, "cleared.png", pictures.encoded(image, "PNG"))
    calls = fake.call_count

    status = status_of(server, name)

    decision = decision_of(server, name)
    assert status == "approved"
    assert fake.call_count == calls
    assert decision["source"] == "bank"
    assert decision["reasons"][0]["parent"] == f"{entry} (false positive, ticket 88)"


def test_reject_bank_wins_over_approve_bank(
    server: ThumborServer, images: Path, fake: FakeRekognition, bank_files: dict[str, Path]
) -> None:
    image = pictures.busy(next(_seeds))
    listed(bank_files["cleared"], image, "cleared once")
    listed(bank_files["known-bad"], image, "listed since")
    time.sleep(RELOAD_SECONDS * 2)
    name = add(images, "both-banks.png", pictures.encoded(image, "PNG"))

    status = status_of(server, name)

    assert status == "rejected"
    assert decision_of(server, name)["reasons"][0]["name"] == "known-bad"


def test_disabled_bank_decides_nothing(
    server: ThumborServer, images: Path, fake: FakeRekognition, bank_files: dict[str, Path]
) -> None:
    image = pictures.busy(next(_seeds))
    listed(bank_files["dormant"], image, "kept, not used")
    time.sleep(RELOAD_SECONDS * 2)
    name = add(images, "dormant.png", pictures.encoded(image, "PNG"))
    calls = fake.call_count

    status = status_of(server, name)

    assert status == "approved"
    assert fake.call_count == calls + 1
    assert decision_of(server, name)["source"] == "auto"


def test_bank_grown_while_running_rejects_new_and_already_approved_pictures(
    server: ThumborServer,
    images: Path,
    fake: FakeRekognition,
    receiver: Receiver,
    bank_files: dict[str, Path],
) -> None:
    served = pictures.busy(next(_seeds))
    already = add(images, "approved-then-listed.png", pictures.encoded(served, "PNG"))
    assert status_of(server, already) == "approved"
    fresh = pictures.busy(next(_seeds))
    new = add(images, "listed-later.png", pictures.encoded(fresh, "PNG"))

    listed(
        bank_files["known-bad"],
        served,
        "reported after it was served",
        (fresh, "listed before its first request"),
    )

    # Within the documented minute; polled, so as soon as it happens.
    assert wait_for_status(server, already, "rejected", within=60) == "rejected"
    calls = fake.call_count
    assert status_of(server, already) == "rejected"
    assert status_of(server, new) == "rejected"
    assert fake.call_count == calls
    decision = decision_of(server, already)
    assert decision["source"] == "bank"
    assert "reported after it was served" in decision["reasons"][0]["parent"]

    def about(request: Received) -> bool:
        body = json.loads(request.body)
        return request.path == HOOK_PATH and body["key"] == already and body["status"] == "rejected"

    assert receiver.wait_for(1, about)


def test_bank_file_lines_hashes_notes_comments_and_threatexchange_csv() -> None:
    first, second, third = "a" * 64, "0f" * 32, "1234" * 16
    text = "\n".join(
        [
            "# known bad",
            "",
            f"{first}",
            f"{second}, found in report 12",
            "not a hash",
            "signal_type,signal_str,collab,category,tags",
            f"pdq,{third},Sample Collab,ADVERSE,tag1 tag2",
            "video_md5,d41d8cd98f00b204e9800998ecf8427e,Sample Collab,ADVERSE,",
        ]
    )

    entries = banks.parse(text, "test")

    assert [(pdq.hex_of(e.value), e.note, e.line) for e in entries] == [
        (first, "", 3),
        (second, "found in report 12", 4),
        (third, "Sample Collab ADVERSE", 7),
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"name": "x"}, "Not a list of banks"),
        ([{"name": "x", "path": "/p"}], "action None"),
        ([{"name": "x", "path": "/p", "action": "delete"}], "'reject' or 'approve'"),
        ([{"path": "/p", "action": "reject"}], "needs a 'name'"),
        ([{"name": "x", "action": "reject"}], "needs a 'path'"),
        ([{"name": "x", "path": "/p", "action": "reject", "enabled": "no"}], "True or False"),
        ([{"name": "x", "path": "/p", "action": "reject", "when": 1}], "Unknown fields: when"),
    ],
)
def test_bank_configuration_errors_name_what_is_wrong(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        banks.configs(value)
