"""`thumbor-moderation backfill --fingerprints`: decisions stored before PDQ hashes were
kept get them from their stored original, and an approved one a reject hash bank lists
is rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import pictures
from tests.fakes.rekognition import FakeRekognition
from tests.servers import base_config, storage_file
from thumbor_rekognition import cli, fingerprint, pdq
from thumbor_rekognition.caches import storage_key
from thumbor_rekognition.decision import Event, Source, Status
from thumbor_rekognition.stores.sqlite import Store


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_backfill_fingerprints_hashes_old_decisions_and_applies_reject_banks(
    tmp_path: Path, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    bank = tmp_path / "known-bad.txt"
    bank.write_text("")
    config = base_config(tmp_path, images, fake.url)
    config["MODERATION_HASH_BANKS"] = [{"name": "known-bad", "path": str(bank), "action": "reject"}]
    conf = tmp_path / "thumbor.conf"
    conf.write_text("".join(f"{key} = {value!r}\n" for key, value in config.items()))
    listed, kept = pictures.busy(1), pictures.photo_like(2)
    for name, image in (("listed.png", listed), ("kept.png", kept)):
        data = pictures.encoded(image)
        (images / name).write_bytes(data)
        stored = storage_file(tmp_path, storage_key(name))
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_bytes(data)
    urls = tmp_path / "urls.txt"
    urls.write_text("listed.png\nkept.png\n")
    assert cli.main(["--conf", str(conf), "backfill", str(urls)]) == 0
    store = Store(path=config["MODERATION_SQLITE_PATH"])
    try:
        # As earlier versions stored them: no PDQ hashes (listed.png), or PDQ hashes in
        # the decision (kept.png); neither in the index of judged pictures.
        listed_decision = store.get("listed.png")
        assert listed_decision is not None
        store.save(
            listed_decision.replace(pdq=()),
            Event(listed_decision.status, listed_decision.source, "t", ""),
        )
        for key in ("listed.png", "kept.png"):
            decision = store.get(key)
            assert decision is not None
            store.put_fingerprints(decision.sha256, {}, ())
        bank.write_text(f"{pdq.of(listed).hex()},listed later\n")
        capsys.readouterr()

        code = cli.main(["--conf", str(conf), "backfill", "--fingerprints"])

        out = capsys.readouterr().out
        rejected, approved = store.get("listed.png"), store.get("kept.png")
        assert rejected is not None
        assert approved is not None
        indexed = [store.fingerprints(item.sha256) for item in (rejected, approved)]
    finally:
        store.close()
    assert code == 0
    assert out.startswith("hashed: 0\nindexed: 1\n")
    assert "rejected by a hash bank: 1" in out
    assert indexed == [
        {0: fingerprint.of(pdq.of(listed))},
        {0: fingerprint.of(pdq.of(kept))},
    ]
    assert rejected is not None
    assert (rejected.status, rejected.source) == (Status.REJECTED, Source.BANK)
    assert approved is not None
    assert approved.status is Status.APPROVED
    assert approved.pdq[0].hash == pdq.of(kept).hex()
    assert cli.main(["--conf", str(conf), "show", "kept.png"]) == 0
    assert f"pdq: {pdq.of(kept).hex()} quality 100" in capsys.readouterr().out


def test_backfill_needs_urls_or_fingerprints(
    tmp_path: Path, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "thumbor.conf"
    config = base_config(tmp_path, tmp_path / "images", fake.url)
    conf.write_text("".join(f"{key} = {value!r}\n" for key, value in config.items()))

    code = cli.main(["--conf", str(conf), "backfill"])

    assert code == 2
    assert "needs a URLS_FILE" in capsys.readouterr().err
