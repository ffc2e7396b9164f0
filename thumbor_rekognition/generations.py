"""Translation between Rekognition's moderation model generations, from AWS's own table.

AWS moved every account from model 6.1 (two levels) to 7.0 (three levels, other names).
A policy is written in one generation; an answer in the other is translated label by
label with the mapping AWS published (``assets/moderation_6.1_to_7.csv``), so that a 6.x
policy judges a 7.x answer as it would have judged the corresponding 6.x labels, and a
7.x policy a 6.x answer the other way. Where AWS maps several labels onto one, the
translation yields all of them: an ignore must cover each to approve. A 7.x label with
no row of its own is judged as its nearest ancestor that has one (Bare Back as its parent
Non-Explicit Nudity, that is 6.x Suggestive > Revealing Clothes), as AWS's v7-to-v6
helper does when Rekognition reports the parent beside the child.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

from thumbor_rekognition import taxonomy
from thumbor_rekognition.decision import ContentType, Label

TABLE = "moderation_6.1_to_7.csv"
SOURCE = "https://docs.aws.amazon.com/rekognition/latest/dg/moderation-response-transform.html"
# ContentTypes that make 7.x Explicit Nudity or Explicit Sexual Activity 6.x Illustrated
# Explicit Nudity.
DRAWN = frozenset({"animated", "illustrated"})


@dataclass(frozen=True)
class Row:
    """One row of AWS's table, names as slugs; ``v7`` is a path from the top level."""

    v6: tuple[str, ...]
    v7: tuple[str, ...]
    content_types: frozenset[str]
    # Names as AWS spells them, for messages.
    v6_names: tuple[str, ...]
    # From AWS's v7-to-v6 helper rather than its table: translates from 7 to 6.1 only.
    helper: bool = False


@dataclass(frozen=True)
class Judged:
    """A label as the policy's generation sees it, and the label the model reported."""

    label: Label
    reported: Label

    @property
    def translated(self) -> bool:
        return self.label is not self.reported


def _key(name: str) -> str:
    return taxonomy.canonical(name) or taxonomy.slug(name)


@cache
def rows() -> tuple[Row, ...]:
    """AWS's L1 and L2 mapping rows."""
    assets = resources.files("thumbor_rekognition").joinpath("assets")
    text = assets.joinpath(TABLE).read_text("utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    table: list[Row] = []
    for record in csv.DictReader(io.StringIO("\n".join(lines))):
        v6_names = tuple(name for name in (record["v6_l1"], record["v6_l2"]) if name)
        types = frozenset(
            _key(name) for name in record["v7_content_types"].split(";") if name.strip()
        )
        top = tuple(_key(name) for name in (record["v7_l1"], record["v7_l2"]) if name)
        for leaf in record["v7_l3"].split(";") or [""]:
            v7 = (*top, _key(leaf)) if leaf.strip() else top
            v6 = tuple(_key(n) for n in v6_names)
            table.append(Row(v6, v7, types, v6_names, helper=record["table"] == "helper"))
    return tuple(table)


@cache
def _paths(tree_name: str) -> dict[tuple[str, ...], tuple[str, ...]]:
    """Every path of a generation's tree, as slugs -> as display names."""
    tree = taxonomy.TAXONOMY_6 if tree_name == "6" else taxonomy.TAXONOMY_7
    paths: dict[tuple[str, ...], tuple[str, ...]] = {}
    for top, children in tree.items():
        paths[(_key(top),)] = (top,)
        for child in children:
            name, grandchildren = child if isinstance(child, tuple) else (child, [])
            paths[(_key(top), _key(name))] = (top, name)
            for grandchild in grandchildren:
                paths[(_key(top), _key(name), _key(grandchild))] = (top, name, grandchild)
    return paths


@cache
def _edges(generation: str) -> frozenset[tuple[str, str]]:
    return frozenset((path[-1], path[-2] if len(path) > 1 else "") for path in _paths(generation))


@cache
def only_in(generation: str) -> frozenset[str]:
    """Category slugs that name a category of this generation and none of the other."""
    other = "7" if generation == "6" else "6"
    mine = {path[-1] for path in _paths(generation)}
    theirs = {path[-1] for path in _paths(other)}
    return frozenset(mine - theirs)


def policy_generation(categories: Iterable[str]) -> str:
    """'7' when a policy names a category only model 7.x has, else '6'.

    A name both generations share ('Violence', 'Explicit Nudity') is read as 6.x, the
    generation of Cloudinary's add-on and of most configurations written before 2024.
    Raises ValueError naming the names when a policy mixes generations.
    """
    names = set(categories)
    six, seven = sorted(names & only_in("6")), sorted(names & only_in("7"))
    if six and seven:
        raise ValueError(
            "the thresholds mix model generations: 6.x names "
            f"{', '.join(six)} and 7.x names {', '.join(seven)}; write them all in one "
            f"generation (AWS's mapping: {SOURCE})"
        )
    return "7" if seven else "6"


def answer_generation(labels: Iterable[Label]) -> str | None:
    """The generation an answer's labels belong to; None when both share every label."""
    for label in labels:
        edge = (_key(label.name), _key(label.parent) if label.parent else "")
        in_six, in_seven = edge in _edges("6"), edge in _edges("7")
        if in_seven and not in_six:
            return "7"
        if in_six and not in_seven:
            return "6"
    return None


def _path(label: Label) -> tuple[str, ...]:
    return tuple(reversed(taxonomy.lineage(label.name, label.parent, label.level)))


def _as_label(path: tuple[str, ...], generation: str, reported: Label) -> Label:
    names = _paths(generation).get(path, path)
    return Label(
        name=names[-1],
        parent=names[-2] if len(names) > 1 else "",
        level=len(names),
        confidence=reported.confidence,
        frame=reported.frame,
    )


def to_6(path: tuple[str, ...], drawn: bool) -> tuple[list[tuple[str, ...]], bool]:
    """The 6.x paths a 7.x path stands for, and whether AWS's table says so exactly."""
    if drawn:
        found = [row.v6 for row in rows() if row.content_types and path[: len(row.v7)] == row.v7]
        if found:
            return _unique(found), True
    for end in range(len(path), 0, -1):
        found = [
            row.v6 for row in rows() if row.v7 == path[:end] and row.v6 and not row.content_types
        ]
        if found:
            return _unique(found), end == len(path)
    return [], False


def to_7(path: tuple[str, ...]) -> tuple[list[tuple[str, ...]], bool]:
    """The 7.x paths a 6.x path stands for, and whether AWS's table says so exactly."""
    table = [row for row in rows() if not row.helper]
    found = [_valid_7(row.v7) for row in table if row.v6 == path]
    if found:
        return _unique(found), all(_valid_7(row.v7) == row.v7 for row in table if row.v6 == path)
    tops = [row.v7 for row in table if len(row.v6) == 1 and row.v6 == path[:1]]
    return _unique(tops), len(path) == 1


def _valid_7(path: tuple[str, ...]) -> tuple[str, ...]:
    """The longest start of a path that model 7.x can report (AWS's Hanging row is not)."""
    while path and path not in _paths("7"):
        path = path[:-1]
    return path


def _unique(paths: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return list(dict.fromkeys(path for path in paths if path))


def translate(
    leaves: Sequence[Label], content_types: Iterable[ContentType], generation: str
) -> list[Judged]:
    """One frame's judged labels in the given generation."""
    source = answer_generation(leaves)
    if source is None or source == generation:
        return [Judged(label, label) for label in leaves]
    drawn = any(_key(kind.name) in DRAWN for kind in content_types)
    judged: list[Judged] = []
    for leaf in leaves:
        path = _path(leaf)
        targets = to_6(path, drawn)[0] if generation == "6" else to_7(path)[0]
        if not targets:
            judged.append(Judged(leaf, leaf))
            continue
        judged += [Judged(_as_label(target, generation, leaf), leaf) for target in targets]
    return judged


def implied_content_types(leaves: Sequence[Label], generation: str) -> list[ContentType]:
    """ContentTypes a 6.x answer states through its labels, for a 7.x policy's rules."""
    if generation != "7" or answer_generation(leaves) != "6":
        return []
    return [
        ContentType("Illustrated", leaf.confidence, leaf.frame)
        for leaf in leaves
        if _key(leaf.name) == "illustrated_explicit_nudity"
    ]


def approximations(generation: str) -> dict[str, list[str]]:
    """Labels of the other generation with no single exact counterpart -> what they are
    judged as (a parent, or each of several labels AWS maps onto one)."""
    other = "7" if generation == "6" else "6"
    found: dict[str, list[str]] = {}
    for path, names in _paths(other).items():
        targets, exact = to_6(path, False) if generation == "6" else to_7(path)
        if not exact or len(targets) > 1:
            shown = [" > ".join(_paths(generation).get(t, t)) for t in targets] or ["default"]
            found[" > ".join(names)] = shown
    return found


def unreachable(generation: str) -> frozenset[str]:
    """Category slugs of a generation that no answer of the other generation turns into."""
    return unseen_after_translation(frozenset(), generation)


def unseen_after_translation(unseen: frozenset[str], generation: str) -> frozenset[str]:
    """Slugs of ``generation`` never reached from a backend of the other generation that
    can report every category but ``unseen``."""
    other = "7" if generation == "6" else "6"
    reached: set[str] = set()
    for path in _paths(other):
        if path[-1] in unseen:
            continue
        for drawn in (False, True) if generation == "6" else (False,):
            targets = to_6(path, drawn)[0] if generation == "6" else to_7(path)[0]
            for target in targets:
                reached.update(target)
    return frozenset({path[-1] for path in _paths(generation)} - reached)
