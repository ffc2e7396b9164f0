"""Which decision stands: the tables of docs/decisions.md, checked row by row against rules.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from thumbor_rekognition import rules
from thumbor_rekognition.decision import Decision, Event, Source, Status

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "decisions.md").read_text()
BYTES = {"X": "a" * 64, "Y": "b" * 64}


def _table(heading: str) -> list[list[str]]:
    """The rows of the table under a heading, as lists of cells (header rows left out)."""
    section = PAGE.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| #")
    ]
    return [row for row in rows if not set(row[0]) <= {"-", " "}]


SETTLE = _table("## At one URL")
STANDING = _table("## For a picture")


def decision(text: str, key: str = "host/a.jpg") -> Decision | None:
    """A decision written as the tables write them: 'none', 'blind approved', 'manual
    rejected X @2', 'contested X', 'auto failed X'..."""
    if text == "none":
        return None
    match = re.fullmatch(
        r"(auto|duplicate|manual|blind|contested)"
        r"( approved| rejected| pending| failed)?( [XY])?( @\d)?",
        text,
    )
    assert match, f"the page writes a decision the test cannot read: {text!r}"
    kind, status, picture, at = (part.strip() if part else "" for part in match.groups())
    made = Decision(
        key=key,
        url="https://" + key,
        sha256=BYTES[picture] if picture else "",
        status=Status.PENDING,
        source=Source.AUTO,
        updated_at=float(at[1:]) if at else 1.0,
    )
    if kind == "contested":
        return made.replace(
            source=Source.MANUAL,
            blind=True,
            reasons=(rules.contested_reason(made.replace(status=Status.REJECTED)),),
        )
    if status == "failed":
        return made.replace(error="retryable: throttled")
    made = made.replace(status=Status(status))
    if kind == "duplicate":
        return made.replace(source=Source.DUPLICATE, duplicate_of="host/original.jpg")
    if kind in ("manual", "blind"):
        return made.replace(source=Source.MANUAL, blind=kind == "blind")
    return made


def shape(found: Decision | None) -> tuple[object, ...] | None:
    """What a row's outcome states: status, source, blind, bytes, whether contested."""
    if found is None:
        return None
    return (found.status, found.source, found.blind, found.sha256, rules.is_contested(found))


def test_the_page_has_both_tables_in_full() -> None:
    assert [int(row[0]) for row in SETTLE] == list(range(1, 23))
    assert [int(row[0]) for row in STANDING] == list(range(1, 10))


@pytest.mark.parametrize("row", SETTLE, ids=[f"row {row[0]}: {row[4]}" for row in SETTLE])
def test_settle_keeps_what_the_table_says(row: list[str]) -> None:
    stored, arriving, kept = decision(row[1]), decision(row[2]), decision(row[3])
    assert arriving is not None

    found = rules.settle(stored, arriving)

    assert shape(found) == shape(kept)


@pytest.mark.parametrize("row", STANDING, ids=[f"row {row[0]}: {row[3]}" for row in STANDING])
def test_standing_picks_what_the_table_says(row: list[str]) -> None:
    decisions = [
        decision(text, key=f"host/{index}.jpg") for index, text in enumerate(row[1].split(", "))
    ]
    expected = decision(row[2])

    found = rules.standing([d for d in decisions if d is not None])

    assert shape(found) == shape(expected)
    if expected is not None:
        # The very decision of one of the URLs, not one made up from them.
        assert found in decisions


def test_settle_keeps_the_stored_decision_itself_when_it_stands() -> None:
    # Stores write nothing when settle hands back what they read: identity says so.
    stored = decision("manual rejected X")
    assert stored is not None

    assert rules.settle(stored, decision("auto approved X")) is stored  # type: ignore[arg-type]


def test_a_contested_approval_says_which_url_rejects_its_bytes() -> None:
    rejection = decision("auto rejected X", key="host/bad.png")
    blind = decision("blind approved", key="host/future.png")
    assert rejection is not None
    assert blind is not None

    found = rules.settle(blind, rejection.replace(key="host/future.png"))

    assert found.status is Status.PENDING
    assert found.reasons[0].category == rules.CONTESTED
    assert "host/future.png" in found.reasons[0].name


def test_the_history_says_why_a_proposal_was_not_kept_as_it_came() -> None:
    blind = decision("blind rejected")
    judged = decision("auto approved X")
    assert blind is not None
    assert judged is not None
    event = Event(Status.APPROVED, Source.AUTO, "system", "rekognition 7.0: nothing above")

    kept = rules.settle(blind, judged)
    noted = rules.noted(kept, judged, event)

    assert noted.status is Status.REJECTED
    assert noted.source is Source.MANUAL
    assert "bound to sha256 aaaaaaaaaaaa" in noted.note
    assert rules.noted(judged, judged, event) is event
