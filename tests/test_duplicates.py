"""Near-duplicates: the index of rejected pictures, and what the moderator does with it.

The store is the SQLite store in a temporary directory and the backend the counting one
of test_moderator; the pictures are generated with detail (tests/pictures.py) and put
through the re-encodings a re-upload does.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests import pictures
from tests.test_moderator import (
    EXPLICIT_NUDITY_70,
    Metrics,
    World,
    moderate,
    run,
    sha256,
)
from thumbor_rekognition import stores
from thumbor_rekognition.decision import Decision, Event, Label, Source, Status
from thumbor_rekognition.duplicates import (
    Duplicates,
    Resemblance,
    probes,
    rejecting_frames,
)
from thumbor_rekognition.fingerprint import BITS, Print
from thumbor_rekognition.moderator import Moderator
from thumbor_rekognition.stores import sqlite

ORIGINAL = "host/original.jpg"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    shared = World(tmp_path)
    yield shared
    shared.close()


def png(image: Image.Image) -> bytes:
    return pictures.encoded(image, "PNG")


def copies(image: Image.Image) -> dict[str, bytes]:
    return {
        "host/resized-q70.jpg": pictures.resized_jpeg(image),
        "host/brighter.png": pictures.brighter(image),
        "host/q45.jpg": pictures.reencoded(image),
    }


def rejected_by_the_model(world: World, moderator: Moderator, image: Image.Image) -> Decision:
    """The original, judged and rejected by the backend; after it the backend approves all."""
    world.backend.labels = (EXPLICIT_NUDITY_70,)
    decision = moderate(moderator, ORIGINAL, png(image))
    world.backend.labels = ()
    assert decision.status is Status.REJECTED
    return decision


def decide(moderator: Moderator, key: str, status: Status) -> Decision:
    """A human's decision about the picture at key, as the review does it."""
    previous = moderator.store.get(key)
    assert previous is not None
    event = Event(status, Source.MANUAL, "reviewer", "test")
    saved = moderator.store.save(
        previous.replace(status=status, source=Source.MANUAL, error=""), event
    )
    moderator.forget(key)
    run(moderator.announce(previous, saved, event))
    return saved


# --- the index ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("within", "values"), [(0, 1), (15, 1), (16, 17), (25, 17), (31, 17), (32, 137)]
)
def test_a_lookup_asks_for_the_slot_values_within_a_sixteenth_of_the_distance(
    within: int, values: int
) -> None:
    wanted = probes([Print(0x0123_4567_89AB_CDEF << 150)], within)

    assert [len(slot) for slot in wanted] == [values] * 16


def test_a_lookup_asks_for_the_slot_values_of_every_rotation_and_mirror() -> None:
    variants = tuple(random.Random(turn).getrandbits(256) for turn in range(8))

    wanted = probes([Print(variants[0], variants)], 0)

    assert [len(slot) for slot in wanted] == [
        len({Print(variant).bands()[slot] for variant in variants}) for slot in range(16)
    ]
    assert all(Print(variants[5]).bands()[slot] in wanted[slot] for slot in range(16))


@settings(max_examples=60, deadline=None)
@given(
    value=st.integers(min_value=0, max_value=2**256 - 1),
    within=st.sampled_from([25, 31]),
    data=st.data(),
)
def test_every_indexed_fingerprint_within_the_distance_is_found(
    tmp_path_factory: pytest.TempPathFactory, value: int, within: int, data: st.DataObject
) -> None:
    bits = st.integers(min_value=0, max_value=BITS - 1)
    flipped = data.draw(st.sets(bits, max_size=within))
    store = sqlite.Store(path=str(tmp_path_factory.mktemp("index") / "index.sqlite3"))
    indexed = Print(value)
    query = Print(value ^ sum(1 << bit for bit in flipped))
    for number in range(1, 50):
        other = Print(random.Random(number).getrandbits(256))
        store.put_fingerprints(f"{number:064x}", {0: other}, rejecting={0})
    store.put_fingerprints("f" * 64, {0: indexed}, rejecting={0})

    found = store.indexed_near(probes([query], within), lambda value: True)

    assert stores.Indexed("f" * 64, indexed, rejecting=True) in found
    store.close()


def test_nearest_ranks_by_similarity_and_keeps_only_those_close_enough(world: World) -> None:
    duplicates = Duplicates(world.store, 0.9, "test")
    base = Print(0x0F0F_0F0F_0F0F_0F0F << 100)
    world.store.put_fingerprints("1" * 64, {0: Print(base.value ^ 0b11)}, rejecting={0})
    world.store.put_fingerprints("2" * 64, {0: base}, rejecting={0})
    world.store.put_fingerprints("3" * 64, {0: Print(base.value ^ (1 << 40) - 1)}, rejecting={0})

    nearest = duplicates.nearest({0: base}, minimum=0.9, limit=5)

    assert [(match.sha256, match.similarity) for match in nearest] == [
        ("2" * 64, 1.0),
        ("1" * 64, 1 - 2 / 256),
    ]


# Pairs of PDQ hashes on either side of the configured similarity (1 - distance/256):
# (MODERATION_DUPLICATE_SIMILARITY, bits flipped, matched). None is the default, 0.9:
# 25 bits (0.902) are close enough, 26 (0.898) are not; the lowest allowed, Meta's 31 bits.
CUT_OFF_PAIRS = [
    (None, 25, True),
    (None, 26, False),
    (0.95, 12, True),
    (0.95, 13, False),
    (1 - 31 / 256, 31, True),
    (1 - 31 / 256, 32, False),
]
INDEXED = Print(0x0123_4567_89AB_CDEF_0F1E_2D3C_4B5A_6978_8796_A5B4_C3D2_E1F0 << 60)


def flipped(print_: Print, bits: int) -> Print:
    """The hash with this many bits flipped, spread over every slot."""
    return Print(print_.value ^ sum(1 << bit for bit in range(0, 256, 7)[:bits]))


def rejected_by_the_model_with(world: World, print_: Print) -> Decision:
    """A decision the model made rejecting a picture, whose one frame has this fingerprint."""
    rejected = Decision(
        key="host/rejected.jpg",
        url="http://host/rejected.jpg",
        sha256="a" * 64,
        status=Status.REJECTED,
        source=Source.AUTO,
    )
    world.store.save(rejected, Event(Status.REJECTED, Source.AUTO, "test", ""))
    world.store.put_fingerprints(rejected.sha256, {0: print_}, rejecting={0})
    return rejected


@pytest.mark.parametrize(
    ("similarity", "bits", "matched"),
    CUT_OFF_PAIRS,
    ids=[
        f"{similarity or 'default'}-{bits}bits-{'match' if matched else 'miss'}"
        for similarity, bits, matched in CUT_OFF_PAIRS
    ],
)
def test_a_fingerprint_matches_a_rejected_one_only_at_least_as_alike_as_configured(
    world: World, similarity: float | None, bits: int, matched: bool
) -> None:
    configured = {} if similarity is None else {"MODERATION_DUPLICATE_SIMILARITY": similarity}
    moderator = world.moderator(**configured)
    rejected = rejected_by_the_model_with(world, INDEXED)
    query = flipped(INDEXED, bits)

    found = moderator.duplicates.find({0: query})

    alike = query.similarity(INDEXED)
    assert alike == 1 - bits / 256
    if matched:
        assert found == Resemblance(rejected.sha256, alike, rejected.key, rejecting=True)
    else:
        assert found is None


def test_a_copy_near_any_rotation_or_mirror_of_a_rejected_frame_matches(world: World) -> None:
    moderator = world.moderator()
    # The rejected frame's own hash, then its 7 rotations' and mirrors', as preparation
    # gives them; a mirrored copy's own hash is 3 bits from one of them and far from the
    # rejected frame's own.
    turned = [random.Random(turn).getrandbits(256) for turn in range(7)]
    rejected = rejected_by_the_model_with(world, Print(INDEXED.value, (INDEXED.value, *turned)))
    mirrored = flipped(Print(turned[3]), 3)
    unrelated = flipped(Print(random.Random(99).getrandbits(256)), 3)

    found = moderator.duplicates.find({0: mirrored})
    not_found = moderator.duplicates.find({0: unrelated})

    assert (mirrored.value ^ INDEXED.value).bit_count() > 100
    assert found == Resemblance(rejected.sha256, 1 - 3 / 256, rejected.key, rejecting=True)
    assert not_found is None


def test_a_rejected_frames_rotations_and_mirrors_leave_the_index_when_it_stops_rejecting(
    world: World,
) -> None:
    moderator = world.moderator()
    turned = [random.Random(turn).getrandbits(256) for turn in range(7)]
    indexed = Print(INDEXED.value, (INDEXED.value, *turned))
    rejected = rejected_by_the_model_with(world, indexed)
    mirrored = {0: flipped(Print(turned[5]), 2)}
    before = moderator.duplicates.nearest(mirrored, 0.95, limit=10)

    world.store.put_fingerprints(rejected.sha256, {0: indexed}, rejecting=())

    assert [match.sha256 for match in before] == [rejected.sha256]
    assert moderator.duplicates.nearest(mirrored, 0.95, limit=10) == []


def test_a_human_rejection_marks_every_frame_rejecting_and_the_model_only_those_that_decided(
    world: World,
) -> None:
    moderator = world.moderator()
    prints = {0: Print(1), 1: Print(2), 2: Print(3)}
    auto = Decision(
        key="host/a.gif",
        url="http://host/a.gif",
        sha256="a" * 64,
        status=Status.REJECTED,
        source=Source.AUTO,
        reasons=(moderator.policy.judge((Label("Explicit Nudity", "", 1, 90.0, frame=1),)).reasons),
    )

    assert rejecting_frames(auto, prints) == {1}
    assert rejecting_frames(auto.replace(source=Source.MANUAL), prints) == {0, 1, 2}
    assert rejecting_frames(auto.replace(status=Status.APPROVED), prints) == set()
    assert rejecting_frames(auto.replace(source=Source.DUPLICATE), prints) == set()


# --- the moderator --------------------------------------------------------------------


def test_copies_of_a_picture_the_model_rejected_are_rejected_without_a_backend_call(
    world: World,
) -> None:
    moderator = world.moderator()
    image = pictures.busy(100)
    rejected_by_the_model(world, moderator, image)
    metrics = Metrics()

    decided = {
        key: run(moderator.moderate(key, f"http://{key}", data, metrics))
        for key, data in copies(image).items()
    }

    assert len(world.backend.calls) == 1
    for decision in decided.values():
        assert (decision.status, decision.source) == (Status.REJECTED, Source.DUPLICATE)
        assert decision.duplicate_of == ORIGINAL
        assert 0.9 <= decision.similarity <= 1.0
    assert metrics.counts["moderation.duplicate.matched"] == 3
    history = world.store.history("host/q45.jpg")
    assert history[-1].note.startswith(f"resembles {ORIGINAL} (similarity ")


def test_unrelated_busy_pictures_are_judged_by_the_backend_and_approved(world: World) -> None:
    moderator = world.moderator()
    rejected_by_the_model(world, moderator, pictures.busy(101))

    decided = [moderate(moderator, f"host/other-{n}.png", png(pictures.busy(n))) for n in range(10)]

    assert len(world.backend.calls) == 11
    assert {(item.status, item.source) for item in decided} == {(Status.APPROVED, Source.AUTO)}


def test_copies_of_a_picture_a_human_rejected_are_rejected_as_its_duplicates(
    world: World,
) -> None:
    moderator = world.moderator()
    image = pictures.photo_like(102)
    world.backend.labels = ()
    assert moderate(moderator, ORIGINAL, png(image)).status is Status.APPROVED

    decide(moderator, ORIGINAL, Status.REJECTED)
    decided = [moderate(moderator, key, data) for key, data in copies(image).items()]

    assert len(world.backend.calls) == 1
    assert {(item.source, item.duplicate_of) for item in decided} == {(Source.DUPLICATE, ORIGINAL)}


def test_approving_the_original_forgets_its_duplicates_which_the_backend_then_judges(
    world: World,
) -> None:
    moderator = world.moderator()
    image = pictures.busy(103)
    rejected_by_the_model(world, moderator, image)
    for key, data in copies(image).items():
        moderate(moderator, key, data)

    decide(moderator, ORIGINAL, Status.APPROVED)
    forgotten = {key: world.store.get(key) for key in copies(image)}
    lifted = world.store.history("host/q45.jpg")[-1]
    again = [moderate(moderator, key, data) for key, data in copies(image).items()]

    assert forgotten == dict.fromkeys(copies(image))
    assert (lifted.status, lifted.actor) == (None, "thumbor-moderation")
    assert f"duplicate of {ORIGINAL}, which is no longer rejected" in lifted.note
    assert {(item.status, item.source) for item in again} == {(Status.APPROVED, Source.AUTO)}
    assert len(world.backend.calls) == 4
    assert world.store.duplicates_of(sha256(png(image))) == []


def test_the_same_bytes_as_a_duplicate_under_a_new_url_are_lifted_with_it(world: World) -> None:
    moderator = world.moderator()
    image = pictures.busy(104)
    rejected_by_the_model(world, moderator, image)
    copy = pictures.reencoded(image)
    first = moderate(moderator, "host/copy.jpg", copy)

    second = moderate(world.moderator(), "cdn/copy.jpg", copy)
    decide(moderator, ORIGINAL, Status.APPROVED)

    assert (first.source, second.source) == (Source.DUPLICATE, Source.DUPLICATE)
    assert second.duplicate_of == ORIGINAL
    assert (world.store.get("host/copy.jpg"), world.store.get("cdn/copy.jpg")) == (None, None)


def test_a_duplicate_is_indexed_but_rejects_nothing_itself(world: World) -> None:
    moderator = world.moderator()
    image = pictures.busy(105)
    original = rejected_by_the_model(world, moderator, image)
    copy = pictures.resized_jpeg(image)
    duplicate = moderate(moderator, "host/copy.jpg", copy)

    prints = world.store.fingerprints(duplicate.sha256)
    found = world.store.indexed_near(probes(prints.values(), 31), lambda value: True)

    assert prints
    assert {entry.sha256 for entry in found if entry.rejecting} == {original.sha256}
    assert {entry.sha256 for entry in found} == {original.sha256, duplicate.sha256}


def test_a_human_approving_a_duplicate_keeps_it_approved(world: World) -> None:
    moderator = world.moderator()
    image = pictures.busy(106)
    rejected_by_the_model(world, moderator, image)
    moderate(moderator, "host/copy.jpg", pictures.reencoded(image))

    approved = decide(moderator, "host/copy.jpg", Status.APPROVED)
    again = moderate(world.moderator(), "host/copy.jpg", pictures.reencoded(image))

    assert approved.source is Source.MANUAL
    assert (again.status, again.source) == (Status.APPROVED, Source.MANUAL)
    assert len(world.backend.calls) == 1


def test_with_similarity_0_copies_are_judged_by_the_backend(world: World) -> None:
    moderator = world.moderator(MODERATION_DUPLICATE_SIMILARITY=0)
    image = pictures.busy(107)
    rejected_by_the_model(world, moderator, image)

    decided = [moderate(moderator, key, data) for key, data in copies(image).items()]

    assert len(world.backend.calls) == 4
    assert {item.source for item in decided} == {Source.AUTO}


def test_a_picture_indexed_but_no_longer_rejected_rejects_nothing(world: World) -> None:
    moderator = world.moderator()
    image = pictures.busy(108)
    world.backend.labels = ()
    original = moderate(moderator, ORIGINAL, png(image))
    # An index a moment behind the decision: the decision has the say.
    world.store.put_fingerprints(
        original.sha256, world.store.fingerprints(original.sha256), rejecting={0}
    )

    copy = moderate(moderator, "host/copy.jpg", pictures.reencoded(image))

    assert (copy.status, copy.source) == (Status.APPROVED, Source.AUTO)


class IndexDown(sqlite.Store):
    """An SQLite store whose index lookups fail with a given error."""

    error: Exception = stores.StoreUnavailable("index unreachable")

    def indexed_near(
        self, probes: Sequence[Collection[int]], close: Callable[[int], bool]
    ) -> list[stores.Indexed]:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [stores.StoreUnavailable("index unreachable"), ValueError("a fingerprint is 24 bytes")],
    ids=["store-unavailable", "damaged-entry"],
)
def test_when_the_index_cannot_be_read_the_backend_judges(
    world: World, tmp_path: Path, error: Exception
) -> None:
    store = IndexDown(path=str(tmp_path / "moderation.sqlite3"))
    store.error = error
    moderator = world.moderator(store=store)
    image = pictures.busy(109)
    rejected_by_the_model(world, moderator, image)

    copy = moderate(moderator, "host/copy.jpg", pictures.reencoded(image))

    assert (copy.status, copy.source) == (Status.APPROVED, Source.AUTO)
    assert len(world.backend.calls) == 2
    store.close()


def test_only_the_frame_that_decided_an_animation_is_matched(world: World) -> None:
    moderator = world.moderator()
    frames = [pictures.busy(110), pictures.photo_like(111)]
    animation = pictures.encoded(
        frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True
    )
    world.backend.labels = (Label("Explicit Nudity", "", 1, 90.0, frame=1),)
    assert moderate(moderator, "host/anim.webp", animation).status is Status.REJECTED
    world.backend.labels = ()

    innocent = moderate(moderator, "host/first-frame.jpg", pictures.reencoded(frames[0]))
    guilty = moderate(moderator, "host/second-frame.jpg", pictures.reencoded(frames[1]))

    assert (innocent.status, innocent.source) == (Status.APPROVED, Source.AUTO)
    assert (guilty.source, guilty.duplicate_of) == (Source.DUPLICATE, "host/anim.webp")


# --- matching backwards ---------------------------------------------------------------


def test_copies_approved_before_the_model_rejects_their_original_become_its_duplicates(
    world: World,
) -> None:
    moderator = world.moderator()
    image = pictures.busy(120)
    world.backend.labels = ()
    earlier = [moderate(moderator, key, data) for key, data in copies(image).items()]

    original = rejected_by_the_model(world, moderator, image)

    assert {item.status for item in earlier} == {Status.APPROVED}
    for key in copies(image):
        copy = world.store.get(key)
        assert copy is not None
        assert (copy.status, copy.source, copy.duplicate_of) == (
            Status.REJECTED,
            Source.DUPLICATE,
            ORIGINAL,
        )
        assert copy.similarity >= 0.9
        assert moderator.remembered(key) is None
    assert world.store.duplicates_of(original.sha256) == sorted(copies(image))
    assert len(world.backend.calls) == 4


def test_mirrored_and_rotated_copies_approved_before_their_original_is_rejected_are_caught(
    world: World,
) -> None:
    moderator = world.moderator()
    image = pictures.busy(121)
    turned = {
        "host/mirrored.png": png(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        "host/rotated.png": png(image.transpose(Image.Transpose.ROTATE_90)),
    }
    world.backend.labels = ()
    earlier = [moderate(moderator, key, data) for key, data in turned.items()]

    rejected_by_the_model(world, moderator, image)

    assert {item.status for item in earlier} == {Status.APPROVED}
    for key in turned:
        copy = world.store.get(key)
        assert copy is not None
        assert (copy.status, copy.source, copy.duplicate_of) == (
            Status.REJECTED,
            Source.DUPLICATE,
            ORIGINAL,
        )


def test_only_stills_of_the_frame_that_decided_an_animation_become_its_duplicates(
    world: World,
) -> None:
    moderator = world.moderator()
    frames = [pictures.busy(121), pictures.photo_like(122)]
    world.backend.labels = ()
    moderate(moderator, "host/first-frame.jpg", pictures.reencoded(frames[0]))
    moderate(moderator, "host/second-frame.jpg", pictures.reencoded(frames[1]))
    animation = pictures.encoded(
        frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True
    )

    world.backend.labels = (Label("Explicit Nudity", "", 1, 90.0, frame=1),)
    assert moderate(moderator, "host/anim.webp", animation).status is Status.REJECTED

    innocent = world.store.get("host/first-frame.jpg")
    guilty = world.store.get("host/second-frame.jpg")
    assert innocent is not None
    assert guilty is not None
    assert (innocent.status, innocent.source) == (Status.APPROVED, Source.AUTO)
    assert (guilty.status, guilty.source, guilty.duplicate_of) == (
        Status.REJECTED,
        Source.DUPLICATE,
        "host/anim.webp",
    )


def test_a_human_rejecting_an_animation_makes_copies_of_every_frame_its_duplicates(
    world: World,
) -> None:
    moderator = world.moderator()
    frames = [pictures.busy(123), pictures.photo_like(124)]
    world.backend.labels = ()
    animation = pictures.encoded(
        frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True
    )
    moderate(moderator, "host/anim.webp", animation)
    moderate(moderator, "host/first-frame.jpg", pictures.reencoded(frames[0]))

    decide(moderator, "host/anim.webp", Status.REJECTED)

    still = world.store.get("host/first-frame.jpg")
    assert still is not None
    assert (still.status, still.source) == (Status.REJECTED, Source.DUPLICATE)


def test_lookups_answer_every_indexed_picture_marked_rejecting_or_not(world: World) -> None:
    duplicates = Duplicates(world.store, 0.9, "test")
    base = Print(0x0F0F_0F0F_0F0F_0F0F << 100)
    world.store.put_fingerprints("1" * 64, {0: base}, rejecting=())
    world.store.put_fingerprints("2" * 64, {0: Print(base.value ^ 0b1)}, rejecting={0})

    every = duplicates.nearest({0: base}, minimum=0.9, limit=5, only_rejecting=False)
    rejecting = duplicates.nearest({0: base}, minimum=0.9, limit=5)

    assert every == [
        Resemblance("1" * 64, 1.0, rejecting=False),
        Resemblance("2" * 64, 1 - 1 / 256, rejecting=True),
    ]
    assert rejecting == [Resemblance("2" * 64, 1 - 1 / 256, rejecting=True)]
