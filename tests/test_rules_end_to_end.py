"""Rules through the real Thumbor app, the real boto3 client and a fake Rekognition.

A policy written in 6.x names judges model 7.x answers as the 6.x ones (AWS's 6.1 -> 7
table), ContentTypes rules, every frame judged on its own, and Cloudinary's
'aws_rek|manual' chain.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image

from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.servers import Response, ThumborServer, base_config
from tests.test_generations import AWS_L2_ROWS

pytestmark = pytest.mark.e2e

TOKEN = "admin-token-for-rules-tests-7d1e"
SEED_RULES = {
    "MODERATION_CATEGORY_THRESHOLDS": {
        "Female Swimwear Or Underwear": 0.75,
        "Explicit Nudity": 0.6,
    },
    "MODERATION_IGNORED_CATEGORIES": ["Revealing Clothes"],
    "MODERATION_ADMIN_TOKEN": TOKEN,
}
# Between the seed's default (0.5) and its 0.6 on Explicit Nudity.
CONFIDENCE = 55.0
# Well apart, so the fake tells every picture's colour from the others'.
PALETTE = [
    (r, g, b)
    for r in (0, 64, 128, 192, 255)
    for g in (0, 64, 128, 192, 255)
    for b in (0, 64, 128, 192, 255)
]

_names = itertools.count()
_sizes = itertools.count()


def v6(top: str, child: str, confidence: float = CONFIDENCE) -> list[dict[str, Any]]:
    return [
        {"Name": top, "ParentName": "", "Confidence": confidence},
        {"Name": child, "ParentName": top, "Confidence": confidence},
    ]


def v7(path: tuple[str, ...], confidence: float = CONFIDENCE) -> list[dict[str, Any]]:
    return [
        {
            "Name": name,
            "ParentName": path[index - 1] if index else "",
            "Confidence": confidence,
            "TaxonomyLevel": index + 1,
        }
        for index, name in enumerate(path)
    ]


def kinds(names: tuple[str, ...], confidence: float = 90.0) -> list[dict[str, Any]]:
    return [{"Name": name, "Confidence": confidence} for name in names]


def add_picture(images: Path, color: tuple[int, int, int]) -> str:
    name = f"rules-{next(_names)}.png"
    (images / name).write_bytes(picture(color, size=(160, 100 + next(_sizes))))
    return name


def call(server: ThumborServer, method: str, route: str, body: Any = None) -> Response:
    """An admin API request, as the review page sends it."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return server.request(method, "/moderation" + route, body=data, headers=headers)


def shown(server: ThumborServer, name: str) -> Any:
    return json.loads(call(server, "GET", f"/image?url={quote(name, safe='')}").body)


def status(server: ThumborServer, name: str) -> str | None:
    return server.get(f"/unsafe/120x90/{name}").header("X-Moderation-Status")


def start(root: Path, images: Path, fake: FakeRekognition, **keys: Any) -> ThumborServer:
    config = base_config(root, images, fake.url)
    config.update(keys)
    return ThumborServer(root, config).start()


@pytest.fixture(scope="module")
def seed(module_root: Path, images: Path, module_fake: FakeRekognition) -> Iterator[ThumborServer]:
    thumbor = start(module_root / "seed", images, module_fake, **SEED_RULES)
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def seed_decides(top: str, child: str) -> str:
    """What the seed decides on a 6.x label at 55%, read off the seed by hand."""
    if top == "Explicit Nudity" or child in ("Female Swimwear Or Underwear", "Revealing Clothes"):
        return "approved"
    return "rejected"


def test_seed_decides_every_row_of_aws_table_on_7x_as_on_6x(
    seed: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    colors = iter(PALETTE)
    names: list[tuple[str, str, str]] = []
    for top, child, path, types in AWS_L2_ROWS:
        old, new = next(colors), next(colors)
        fake.respond(old, v6(top, child), model_version="6.1")
        fake.respond(new, v7(path), model_version="7.0", content_types=kinds(types))
        names.append((add_picture(images, old), add_picture(images, new), seed_decides(top, child)))

    seen = [(status(seed, old), status(seed, new)) for old, new, _ in names]

    assert seen == [(expected, expected) for _, _, expected in names]
    assert {"approved", "rejected"} <= {expected for _, _, expected in names}


def test_seed_start_up_says_which_7x_labels_have_no_6x_counterpart(seed: ThumborServer) -> None:
    assert "Bare Back -> Suggestive" in seed.log


# Every 6.1 label of AWS's table gets a threshold of its own, 2 points apart, and every
# top-level category is ignored: a 7.x label translated to any other 6.1 label than its
# row's is judged at another threshold, and one of a pair of answers just above and just
# below its own threshold then comes out wrong.
DISTINCT_LABELS = list(dict.fromkeys(child for _, child, _, _ in AWS_L2_ROWS))
DISTINCT = {child: round(0.10 + 0.02 * index, 2) for index, child in enumerate(DISTINCT_LABELS)}
# Gambling is its own child: its threshold covers both levels.
TOPS = sorted({top for top, _, _, _ in AWS_L2_ROWS} - set(DISTINCT))


@pytest.fixture(scope="module")
def distinct(
    module_root: Path, images: Path, module_fake: FakeRekognition
) -> Iterator[ThumborServer]:
    thumbor = start(
        module_root / "distinct",
        images,
        module_fake,
        MODERATION_CATEGORY_THRESHOLDS=DISTINCT,
        MODERATION_IGNORED_CATEGORIES=TOPS,
    )
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def test_every_row_of_aws_table_meets_its_own_6x_threshold_on_7x_answers(
    distinct: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    palette = [
        (r, g, b)
        for r in (0, 51, 102, 153, 204, 255)
        for g in (0, 51, 102, 153, 204, 255)
        for b in (0, 51, 102, 153, 204, 255)
    ]
    colors = iter(palette)
    cases: list[tuple[str, str, str]] = []
    for top, child, path, types in AWS_L2_ROWS:
        at = DISTINCT[child] * 100
        for confidence, expected in ((at + 1, "rejected"), (at - 1, "approved")):
            old, new = next(colors), next(colors)
            fake.respond(old, v6(top, child, confidence), model_version="6.1")
            fake.respond(new, v7(path, confidence), model_version="7.0", content_types=kinds(types))
            cases.append((add_picture(images, old), add_picture(images, new), expected))

    seen = [(status(distinct, old), status(distinct, new)) for old, new, _ in cases]

    assert seen == [(expected, expected) for _, _, expected in cases]


def frames_gif(colors: list[tuple[int, int, int]]) -> bytes:
    frames = []
    for index, color in enumerate(colors):
        frame = Image.new("RGB", (160, 120), color)
        frame.putpixel((index, 0), (index * 7 % 256, 0, 0))
        frames.append(frame)
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    return buffer.getvalue()


def test_each_frame_is_judged_on_its_own_and_the_decision_names_the_frame(
    seed: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    # Frame 1 alone is rejected (Suggestive, no child); frame 2's Revealing Clothes is
    # ignored. Merged, frame 2's child hid frame 1's bare Suggestive and approved.
    first, second = (250, 20, 20), (20, 20, 250)
    fake.respond(first, [{"Name": "Suggestive", "ParentName": "", "Confidence": 90.0}], "6.1")
    fake.respond(
        second,
        [
            {"Name": "Suggestive", "ParentName": "", "Confidence": 60.0},
            {"Name": "Revealing Clothes", "ParentName": "Suggestive", "Confidence": 60.0},
        ],
        "6.1",
    )
    name = f"frames-{next(_names)}.gif"
    (images / name).write_bytes(frames_gif([first] * 5 + [second] * 5))

    decided = status(seed, name)
    decision = shown(seed, name)

    assert decided == "rejected"
    assert [(reason["name"], reason["frame"]) for reason in decision["reasons"]] == [
        ("Suggestive", 0)
    ]
    assert fake.call_count == 2


@pytest.fixture(scope="module")
def drawn(module_root: Path, images: Path, module_fake: FakeRekognition) -> Iterator[ThumborServer]:
    thumbor = start(
        module_root / "drawn",
        images,
        module_fake,
        MODERATION_CATEGORY_THRESHOLDS={"Explicit Nudity": 0.6, "Illustrated": 0.95},
        MODERATION_IGNORED_CATEGORIES=["Illustrated Explicit Nudity"],
        MODERATION_ADMIN_TOKEN=TOKEN,
    )
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def test_content_types_rules_decide_drawn_7x_answers(
    drawn: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    cases = [
        # 'illustrated': 0.95 covers every label of a picture the model calls illustrated
        # at 0.95 or more; at 0.9 the picture is judged as a photograph.
        (("Violence", "Graphic Violence", "Blood & Gore"), ("Illustrated",), 97.0, "approved"),
        (("Violence", "Graphic Violence", "Blood & Gore"), ("Illustrated",), 90.0, "rejected"),
        (("Violence", "Graphic Violence", "Blood & Gore"), (), 0.0, "rejected"),
        # 6.x Illustrated Explicit Nudity (ignored) is 7.x Explicit Sexual Activity drawn,
        # drawn meaning a ContentType at or above the default 0.5.
        (("Explicit", "Explicit Sexual Activity"), ("Animated",), 90.0, "approved"),
        (("Explicit", "Explicit Sexual Activity"), ("Animated",), 30.0, "rejected"),
        (("Explicit", "Explicit Sexual Activity"), (), 0.0, "rejected"),
    ]
    names = []
    for (path, types, sure, _), color in zip(cases, PALETTE[::7], strict=False):
        fake.respond(color, v7(path, 90.0), "7.0", content_types=kinds(types, sure))
        names.append(add_picture(images, color))

    seen = [status(drawn, name) for name in names]
    decision = shown(drawn, names[0])
    judged = [shown(drawn, n) for n, s in zip(names, seen, strict=True) if s == "rejected"]

    assert seen == [expected for *_, expected in cases]
    assert (
        "Explicit Sexual Activity",
        "Explicit Nudity > Sexual Activity",
        "explicit_nudity",
    ) in {(r["name"], r["judged_as"], r["category"]) for d in judged for r in d["reasons"]}
    assert decision["content_types"] == [{"name": "Illustrated", "confidence": 0.97, "frame": 0}]


@pytest.fixture(scope="module")
def manual(
    module_root: Path, images: Path, module_fake: FakeRekognition
) -> Iterator[ThumborServer]:
    thumbor = start(
        module_root / "manual",
        images,
        module_fake,
        MODERATION_RULES="aws_rek:explicit_nudity:0.6|manual",
        MODERATION_ADMIN_TOKEN=TOKEN,
    )
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def test_aws_rek_then_manual_keeps_what_the_model_passes_pending_until_approved(
    manual: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    clean, nude = (40, 200, 40), (200, 40, 200)
    fake.respond(nude, v7(("Explicit", "Explicit Nudity", "Exposed Female Nipple"), 90.0))
    waiting, refused = add_picture(images, clean), add_picture(images, nude)

    first = [status(manual, waiting), status(manual, waiting), status(manual, refused)]
    calls = fake.call_count
    put = call(manual, "PUT", f"/image?url={quote(waiting, safe='')}", {"status": "approved"})
    served = manual.get(f"/unsafe/120x90/{waiting}")

    assert first == ["pending", "pending", "rejected"]
    # Awaiting a human is no failure: the model is not asked again.
    assert calls == 2
    assert put.status == 200
    assert served.status == 200
    assert served.header("X-Moderation-Status") == "approved"
    with Image.open(io.BytesIO(served.body)) as image:
        assert image.size == (120, 90)
    assert fake.call_count == 2


def test_manual_chain_leaves_every_new_picture_to_a_human_without_a_backend_call(
    tmp_path: Path, images: Path, fake: FakeRekognition
) -> None:
    # Cloudinary's 'manual' alone (cloudinary_npm docs/moderate-upload.md): every upload
    # waits for a human. Switching to a chain with a model step later calls the backend
    # for what is still waiting: nothing was analysed, so nothing is approved from no labels.
    nude, clean = (210, 30, 120), (30, 210, 120)
    fake.respond(nude, v7(("Explicit", "Explicit Nudity", "Exposed Female Nipple"), 90.0))
    waiting, approved = add_picture(images, nude), add_picture(images, clean)
    humans = start(tmp_path, images, fake, MODERATION_RULES="manual", MODERATION_ADMIN_TOKEN=TOKEN)
    try:
        first = [status(humans, waiting), status(humans, waiting), status(humans, approved)]
        calls_while_manual = fake.call_count
        put = call(humans, "PUT", f"/image?url={quote(approved, safe='')}", {"status": "approved"})
        served = status(humans, approved)
        reasons = [reason["category"] for reason in shown(humans, waiting)["reasons"]]
    finally:
        humans.stop()
    assert "Traceback" not in humans.log
    model = start(tmp_path, images, fake, MODERATION_RULES="aws_rek", MODERATION_ADMIN_TOKEN=TOKEN)
    try:
        judged = [status(model, waiting), status(model, approved)]
    finally:
        model.stop()

    assert first == ["pending", "pending", "pending"]
    assert calls_while_manual == 0
    assert reasons == ["manual"]
    assert (put.status, served) == (200, "approved")
    assert judged == ["rejected", "approved"]
    # The model was asked about the picture still waiting, not about the approved one.
    assert fake.call_count == 1
    assert "Traceback" not in model.log


def test_duplicate_then_manual_chain_starts_and_calls_no_backend(
    tmp_path: Path, images: Path, fake: FakeRekognition
) -> None:
    name = add_picture(images, (90, 90, 250))
    thumbor = start(tmp_path, images, fake, MODERATION_RULES="duplicate:0.9|manual")
    try:
        seen = status(thumbor, name)
    finally:
        thumbor.stop()

    assert seen == "pending"
    assert fake.call_count == 0
    assert "Traceback" not in thumbor.log


@pytest.fixture(scope="module")
def helper(
    module_root: Path, images: Path, module_fake: FakeRekognition
) -> Iterator[ThumborServer]:
    thumbor = start(
        module_root / "helper",
        images,
        module_fake,
        MODERATION_IGNORED_CATEGORIES=["Revealing Clothes", "Corpses", "Illustrated"],
    )
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


def test_6x_policy_judges_7x_labels_as_aws_v7_to_v6_helper_maps_them(
    helper: ThumborServer, images: Path, fake: FakeRekognition
) -> None:
    nen = "Non-Explicit Nudity of Intimate parts and Kissing"
    hate = ("Hate Symbols", "Nazi Party")
    cases = [
        # A beach photo: Bare Back is its parent Non-Explicit Nudity, 6.x Revealing Clothes.
        ((nen, "Non-Explicit Nudity", "Bare Back"), (), 0.0, "approved"),
        ((nen, "Obstructed Intimate Parts", "Obstructed Female Nipple"), (), 0.0, "approved"),
        # 7.x Corpses is 6.x Corpses and Hanging: ignoring Corpses alone does not approve.
        (("Visually Disturbing", "Death and Emaciation", "Corpses"), (), 0.0, "rejected"),
        # 'illustrated' ignored: only for a ContentType at or above the default 0.5.
        (hate, ("Illustrated",), 30.0, "rejected"),
        (hate, ("Illustrated",), 90.0, "approved"),
    ]
    names = []
    for (path, types, sure, _), color in zip(cases, PALETTE[3::11], strict=False):
        fake.respond(color, v7(path, 90.0), "7.0", content_types=kinds(types, sure))
        names.append(add_picture(images, color))

    seen = [status(helper, name) for name in names]

    assert seen == [expected for *_, expected in cases]
    assert fake.call_count == len(cases)
