"""`thumbor-moderation eval-matching`: caught copies and false positives of both hashes
on a folder of pictures, at the configured thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import pictures
from tests.fakes.rekognition import FakeRekognition
from tests.servers import base_config
from thumbor_rekognition import cli


def conf(tmp_path: Path, fake: FakeRekognition) -> Path:
    config = base_config(tmp_path, tmp_path / "images", fake.url)
    config["MODERATION_HASH_BANK_DISTANCE"] = 31
    path = tmp_path / "thumbor.conf"
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in config.items()))
    return path


def test_eval_matching_counts_copies_caught_and_distinct_pictures_matching(
    tmp_path: Path, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()
    for seed in range(3):
        pictures.busy(seed).save(folder / f"busy-{seed}.png")
        pictures.photo_like(seed).save(folder / f"photo-{seed}.jpg", quality=90)
    (folder / "notes.txt").write_text("not a picture")

    code = cli.main(["--conf", str(conf(tmp_path, fake)), "eval-matching", str(folder), "--json"])

    figures = json.loads(capsys.readouterr().out)
    assert code == 0
    assert figures["pictures"] == 6
    assert figures["distance"] == 31
    edits = {row["edit"]: row for row in figures["edits"]}
    assert set(edits) == {
        "JPEG quality 50",
        "JPEG quality 30",
        "half size",
        "5 % crop",
        "mirror",
        "10 % brighter",
        "small watermark",
        "10-px border",
    }
    assert edits["JPEG quality 50"]["pdq_caught"] == edits["JPEG quality 50"]["pdq_total"] == 6
    assert edits["mirror"]["pdq_caught"] == 6
    assert figures["false_positives"]["pdq"] == {"pairs": 15, "matching": 0}


def test_eval_matching_prints_a_table(
    tmp_path: Path, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()
    for seed in range(2):
        pictures.busy(seed).save(folder / f"busy-{seed}.png")

    code = cli.main(["--conf", str(conf(tmp_path, fake)), "eval-matching", str(folder)])

    out = capsys.readouterr().out
    assert code == 0
    assert "| mirror | " in out
    assert "false positives" in out


def test_eval_matching_refuses_a_folder_without_two_pictures(
    tmp_path: Path, fake: FakeRekognition, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()

    code = cli.main(["--conf", str(conf(tmp_path, fake)), "eval-matching", str(folder)])

    assert code == 2
    assert "fewer than two pictures" in capsys.readouterr().err
