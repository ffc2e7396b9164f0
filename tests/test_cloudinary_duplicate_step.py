"""Cloudinary's 'duplicate:<score>' chain step through the real Thumbor app.

In Cloudinary (cloudinary_npm docs/moderate-upload.md), 'duplicate:<threshold>' rejects an
upload that is a near-copy of an image already in the duplicate index, approved ones
included: de-duplication of uploads, not only copies of rejected pictures. 'duplicate:0'
adds to the index without rejecting. Here every judged picture is in the index; the
fake Rekognition approves every picture, so only the step can reject.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pictures
from tests.fakes.rekognition import FakeRekognition
from tests.servers import ThumborServer, base_config
from tests.test_duplicates_end_to_end import TOKEN, add, admin, copies_of, decision_of, status_of

pytestmark = pytest.mark.e2e

_seeds = itertools.count(7000)


def start(root: Path, images: Path, fake: FakeRekognition, rules: str) -> ThumborServer:
    config = base_config(root, images, fake.url)
    config.update({"MODERATION_ADMIN_TOKEN": TOKEN, "MODERATION_RULES": rules})
    return ThumborServer(root, config).start()


@pytest.fixture(scope="module")
def dedupe(
    module_root: Path, images: Path, module_fake: FakeRekognition
) -> Iterator[ThumborServer]:
    thumbor = start(module_root / "dedupe", images, module_fake, "aws_rek|duplicate:0.9")
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def test_a_near_copy_of_an_approved_picture_is_rejected_naming_it_without_a_backend_call(
    dedupe: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    image = pictures.busy(next(_seeds))
    first = add(images, "dedupe-first.png", pictures.encoded(image, "PNG"))
    assert status_of(dedupe, first) == "approved"
    copies = copies_of(images, image, "dedupe-again")
    calls = fake.call_count

    statuses = [status_of(dedupe, name) for name in copies]
    decisions = [decision_of(dedupe, name) for name in copies]

    assert statuses == ["rejected"] * 3
    assert fake.call_count == calls
    for decision in decisions:
        assert (decision["status"], decision["source"]) == ("rejected", "duplicate")
        assert decision["duplicate_of"] == first
        assert decision["similarity"] >= 0.9
        assert [reason["category"] for reason in decision["reasons"]] == ["indexed_copy"]
    # The picture copied stays approved: the step refuses copies, not what they copy.
    assert status_of(dedupe, first) == "approved"


def test_unrelated_pictures_pass_the_step_and_are_judged_by_the_backend(
    dedupe: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    names = [
        add(images, f"dedupe-unrelated-{n}.png", pictures.encoded(pictures.busy(next(_seeds))))
        for n in range(6)
    ]
    calls = fake.call_count

    statuses = [status_of(dedupe, name) for name in names]

    assert statuses == ["approved"] * 6
    assert fake.call_count == calls + 6


def test_a_copy_a_human_approves_stays_approved_and_the_original_approved_again_lifts_nothing(
    dedupe: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    image = pictures.busy(next(_seeds))
    first = add(images, "dedupe-kept.png", pictures.encoded(image, "PNG"))
    assert status_of(dedupe, first) == "approved"
    wanted, other = copies_of(images, image, "dedupe-kept-copy")[:2]
    assert [status_of(dedupe, wanted), status_of(dedupe, other)] == ["rejected", "rejected"]

    approved = admin(dedupe, "PUT", wanted, {"status": "approved"})
    again = admin(dedupe, "PUT", first, {"status": "approved"})

    assert (approved.status, again.status) == (200, 200)
    assert status_of(dedupe, wanted) == "approved"
    # Approving the picture copied does not make its copies welcome: they stay refused.
    assert status_of(dedupe, other) == "rejected"
    assert decision_of(dedupe, other)["source"] == "duplicate"


@pytest.mark.parametrize("rules", ["aws_rek|duplicate:0", "aws_rek"])
def test_without_a_scoring_duplicate_step_a_near_copy_is_judged_on_its_own(
    tmp_path: Path, images: Path, fake: FakeRekognition, rules: str
) -> None:
    thumbor = start(tmp_path, images, fake, rules)
    try:
        image = pictures.busy(next(_seeds))
        first = add(images, f"plain-{next(_seeds)}.png", pictures.encoded(image, "PNG"))
        copy = copies_of(images, image, f"plain-copy-{next(_seeds)}")[2]
        seen = [status_of(thumbor, first), status_of(thumbor, copy)]
    finally:
        thumbor.stop()

    assert seen == ["approved", "approved"]
    assert fake.call_count == 2
    assert "Traceback" not in thumbor.log
