"""The review console: queues, evidence, history, keys, bulk decisions and blur, in headless
Chromium against the real Thumbor app and the fake Rekognition, and the API routes it reads.

Screenshots of every queue and of the detail view are taken from the demo's pictures;
with REVIEW_SCREENSHOTS=docs/images they are written where the documentation shows them.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image, ImageStat
from playwright.sync_api import Browser, Locator

from tests import pictures
from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.servers import Response, ThumborServer, base_config
from tests.test_review_page import (
    NUDITY,
    PREFIX,
    RED,
    REVIEWER,
    TIMEOUT_MS,
    TOKEN,
    Visit,
    browser,
)
from thumbor_rekognition.decision import Decision, Event, Source, Status
from thumbor_rekognition.stores.sqlite import Store

__all__ = ["browser"]

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MANY = 100_000
_names = itertools.count()


def call(server: ThumborServer, method: str, route: str, body: Any = None) -> Response:
    data = None if body is None else json.dumps(body).encode()
    return server.request(method, PREFIX + route, body=data, headers=AUTH)


def answer(response: Response) -> Any:
    return json.loads(response.body)


def shown(server: ThumborServer, url: str) -> Any:
    return answer(call(server, "GET", f"/image?url={quote(url, safe='')}"))


def add_busy(server: ThumborServer, prefix: str, count: int) -> list[str]:
    """Distinct pictures nobody labels: each is pending for a human ('|manual')."""
    names = []
    for _ in range(count):
        name = f"{prefix}-{next(_names):04d}.png"
        image = pictures.busy(name)
        (server.root / "images" / name).write_bytes(pictures.encoded(image, "PNG"))
        assert server.get(f"/unsafe/80x60/{name}").header("X-Moderation-Status") == "pending"
        names.append(name)
        # Oldest first: each its own time of last change.
        time.sleep(0.01)
    return names


@pytest.fixture(scope="module")
def server(module_root: Path, module_fake: FakeRekognition) -> Iterator[ThumborServer]:
    root = module_root / "review-console"
    images = root / "images"
    images.mkdir(parents=True)
    config = base_config(root, images, module_fake.url)
    config.update(
        {
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_RULES": "aws_rek:explicit_nudity:0.6|manual",
        }
    )
    module_fake.reset()
    module_fake.respond(RED, NUDITY)
    thumbor = ThumborServer(root, config).start()
    yield thumbor
    thumbor.stop()
    module_fake.reset()
    assert "Traceback" not in thumbor.log


@pytest.fixture
def visit(browser: Browser, server: ThumborServer) -> Iterator[Visit]:
    yield from open_page(browser, server)


def open_page(browser: Browser, server: ThumborServer) -> Iterator[Visit]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    opened = Visit(page)
    page.on("request", opened.record_request)
    page.on("dialog", opened.record_dialog)
    page.on("pageerror", opened.record_page_error)
    page.on("console", opened.record_console)
    page.goto(f"http://127.0.0.1:{server.port}{PREFIX}/")
    yield opened
    context.close()


def open_queue(visit: Visit, server: ThumborServer, queue: str, search: str = "") -> None:
    """The page opened on a queue (filtered by URL) from its address, as a bookmark would."""
    fragment = f"queue={queue}" + (f"&q={quote(search)}" if search else "")
    visit.page.goto(f"http://127.0.0.1:{server.port}{PREFIX}/#{fragment}")
    visit.page.reload()
    if visit.page.get_by_label("Admin token").is_visible():
        visit.log_in(TOKEN)
    visit.page.wait_for_function(
        """(queue) => document.querySelector(`#tabs button[data-queue="${queue}"]`)
            ?.getAttribute("aria-selected") === "true"
            && document.getElementById("status").textContent === ""
            && !document.getElementById("console").hidden""",
        arg=queue,
    )
    visit.wait_for_images()


def focused_url(visit: Visit) -> str | None:
    url: str | None = visit.page.evaluate(
        "() => document.activeElement.closest('.card')?.dataset.url ?? null"
    )
    return url


def cards(visit: Visit) -> Locator:
    return visit.page.locator("#grid .card")


def filter_of(locator: Locator) -> str:
    value: str = locator.evaluate("(node) => getComputedStyle(node).filter")
    return value


# The API the console reads


def test_bulk_route_decides_each_url_through_the_single_rules_and_answers_per_item(
    server: ThumborServer,
) -> None:
    names = add_busy(server, "api-bulk", 3)

    response = call(
        server,
        "POST",
        "/images",
        {
            "urls": [*names, "api-bulk-typo.png"],
            "status": "rejected",
            "note": "spam",
            "actor": "Eve",
        },
    )

    assert response.status == 200
    results = answer(response)
    assert (results["decided"], results["failed"]) == (3, 1)
    assert [(r["url"], r["ok"]) for r in results["results"]] == [
        *[(name, True) for name in names],
        ("api-bulk-typo.png", False),
    ]
    assert results["results"][-1]["code"] == 404
    for name in names:
        decision = shown(server, name)
        assert (decision["status"], decision["source"]) == ("rejected", "manual")
        assert (decision["history"][-1]["actor"], decision["history"][-1]["note"]) == (
            "Eve",
            "spam",
        )
        assert server.get(f"/unsafe/80x60/{name}").header("X-Moderation-Status") == "rejected"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"urls": [f"u{i}.png" for i in range(101)], "status": "rejected"}, "at most 100 urls"),
        ({"urls": [], "status": "rejected"}, "urls must be a non-empty list"),
        ({"urls": "a.png", "status": "rejected"}, "urls must be a non-empty list"),
        ({"urls": ["a.png", 3], "status": "rejected"}, "every url must be"),
        ({"urls": ["a.png"], "status": "pending"}, "status must be"),
        ({"urls": ["a.png"], "status": "rejected", "actor": ""}, "actor must be"),
    ],
    ids=["over the cap", "empty", "not a list", "not a string", "pending", "no actor"],
)
def test_bulk_route_refuses_a_bad_batch_whole(
    server: ThumborServer, body: dict[str, Any], error: str
) -> None:
    response = call(server, "POST", "/images", body)

    assert response.status == 400
    assert error in answer(response)["error"]


def test_queues_filter_by_source_category_date_and_url(server: ThumborServer) -> None:
    red = f"filters-red-{next(_names)}.png"
    (server.root / "images" / red).write_bytes(picture(RED, size=(150, 110)))
    assert server.get(f"/unsafe/80x60/{red}").header("X-Moderation-Status") == "rejected"
    [by_hand] = add_busy(server, "filters-hand", 1)
    call(server, "PUT", f"/image?url={by_hand}", {"status": "rejected", "actor": "Eve"})

    def keys(query: str) -> list[str]:
        response = call(server, "GET", f"/images?queue=rejected&q=filters-&{query}")
        assert response.status == 200, response.body
        return [image["key"] for image in answer(response)["images"]]

    assert keys("") == sorted([red, by_hand])
    assert keys("source=model") == [red]
    assert keys("source=human") == [by_hand]
    assert keys("source=bank") == []
    assert keys("category=explicit_nudity") == [red]
    assert keys("since=2000-01-01&until=2999-12-31") == sorted([red, by_hand])
    assert keys(f"since={time.time() + 3600:.0f}") == []
    assert keys("q=hand") == [by_hand]
    for query, error in [
        ("source=robot", "source must be one of"),
        ("since=yesterday", "since must be"),
        ("until=9999-12-31", "until must be"),
        ("order=newest", "order must be"),
        ("order=oldest&cursor=t:yesterday:a.png", "cursor is not one this API gave"),
        (f"q={'x' * 5000}", "q is too long"),
    ]:
        response = call(server, "GET", f"/images?queue=rejected&{query}")
        assert (response.status, error in answer(response)["error"]) == (400, True)
    assert call(server, "GET", "/images?queue=everything").status == 400


def test_pending_queue_is_oldest_first_and_pages_by_cursor(server: ThumborServer) -> None:
    # Fetched in the reverse of key order.
    names = [f"order-{letter}.png" for letter in "edcba"]
    for name in names:
        (server.root / "images" / name).write_bytes(pictures.encoded(pictures.busy(name), "PNG"))
        server.get(f"/unsafe/80x60/{name}")
        time.sleep(0.01)

    first = answer(call(server, "GET", "/images?queue=pending&q=order-&limit=3"))
    second = answer(
        call(server, "GET", f"/images?queue=pending&q=order-&limit=3&cursor={first['next_cursor']}")
    )

    assert first["order"] == "oldest"
    assert [i["key"] for i in first["images"] + second["images"]] == names
    assert second["next_cursor"] is None
    assert first["counts"]["pending"] >= 5


LONG = 2_500


def serve_seeded(root: Path, images: Path, fake: FakeRekognition) -> Iterator[ThumborServer]:
    """The review console's Thumbor over a store a fixture has filled through its API."""
    config = base_config(root, images, fake.url)
    config["MODERATION_ADMIN_TOKEN"] = TOKEN
    thumbor = ThumborServer(root, config).start()
    yield thumbor
    thumbor.stop()
    assert "Traceback" not in thumbor.log


@pytest.fixture(scope="module")
def long_queue(module_root: Path, module_fake: FakeRekognition) -> Iterator[ThumborServer]:
    """A server whose store holds LONG pending decisions saved through the store's API,
    each a second older than the one before it in key order, and one rejected."""
    root = module_root / "long-queue"
    images = root / "images"
    images.mkdir(parents=True)
    store = Store(path=str(root / "decisions.sqlite3"))
    for index in range(LONG + 1):
        key = f"queue/{index:05d}.png"
        status = Status.REJECTED if index == LONG else Status.PENDING
        store.save(
            Decision(
                key=key,
                url=key,
                sha256=hashlib.sha256(key.encode()).hexdigest(),
                status=status,
                source=Source.AUTO,
                updated_at=1_700_000_000.0 - index,
            ),
            Event(status, Source.AUTO, "seed", ""),
        )
    store.close()
    yield from serve_seeded(root, images, module_fake)


def test_a_pending_queue_of_thousands_is_oldest_first_on_every_page(
    long_queue: ThumborServer,
) -> None:
    pages = [answer(call(long_queue, "GET", "/images?queue=pending&limit=100"))]
    while pages[-1]["next_cursor"]:
        cursor = quote(pages[-1]["next_cursor"], safe="")
        pages.append(answer(call(long_queue, "GET", f"/images?queue=pending&cursor={cursor}")))

    oldest = [f"queue/{index:05d}.png" for index in reversed(range(LONG))]
    assert pages[0]["counts"]["pending"] == LONG
    assert {page["order"] for page in pages} == {"oldest"}
    assert [image["key"] for image in pages[0]["images"]] == oldest[:100]
    assert [image["key"] for image in pages[1]["images"]] == oldest[100:200]
    assert [image["key"] for page in pages for image in page["images"]] == oldest
    assert max(len(page["images"]) for page in pages) == 100


def test_a_picture_decided_leaves_the_pending_order_for_the_rejected_one(
    long_queue: ThumborServer,
) -> None:
    oldest = f"queue/{LONG - 1:05d}.png"
    decided = call(
        long_queue, "PUT", f"/image?url={quote(oldest, safe='')}", {"status": "rejected"}
    )
    assert decided.status == 200

    pending = answer(call(long_queue, "GET", "/images?queue=pending&limit=2"))
    rejected = answer(call(long_queue, "GET", "/images?queue=rejected&order=oldest&limit=2"))

    assert [image["key"] for image in pending["images"]] == [
        f"queue/{LONG - 2:05d}.png",
        f"queue/{LONG - 3:05d}.png",
    ]
    # The one rejected at seeding is older than the decision just taken.
    assert [image["key"] for image in rejected["images"]] == [f"queue/{LONG:05d}.png", oldest]
    assert rejected["order"] == "oldest"


# The page


def test_keys_move_between_cards_and_decide_moving_on_to_the_next(
    visit: Visit, server: ThumborServer
) -> None:
    names = add_busy(server, "keys", 3)
    open_queue(visit, server, "pending", "keys-")
    assert [cards(visit).nth(i).get_attribute("data-url") for i in range(3)] == names
    assert focused_url(visit) == names[0]

    visit.page.keyboard.press("j")
    after_j = focused_url(visit)
    visit.page.keyboard.press("j")
    visit.page.keyboard.press("k")
    after_k = focused_url(visit)
    visit.page.keyboard.press("x")
    selected = visit.page.locator("#selected").inner_text()
    visit.page.keyboard.press("x")
    visit.page.keyboard.press("a")
    cards(visit).filter(has_text=names[1]).wait_for(state="detached")
    after_a = focused_url(visit)
    visit.page.keyboard.press("r")
    cards(visit).filter(has_text=names[2]).wait_for(state="detached")
    after_r = focused_url(visit)

    assert (after_j, after_k) == (names[1], names[1])
    assert selected == "1 selected"
    assert after_a == names[2]
    assert after_r == names[0]
    assert [shown(server, name)["status"] for name in names] == ["pending", "approved", "rejected"]
    assert shown(server, names[1])["history"][-1]["actor"] == REVIEWER
    assert visit.errors == []
    assert visit.dialogs == []


def test_question_mark_lists_the_keys(visit: Visit, server: ThumborServer) -> None:
    add_busy(server, "help", 1)
    open_queue(visit, server, "pending", "help-")

    visit.page.keyboard.press("?")

    listed = visit.page.locator("#help")
    listed.wait_for()
    text = listed.inner_text()
    assert all(key in text for key in ("j", "k", "a", "r", "Enter", "x", "?"))


def test_bulk_reject_of_a_page_of_pending_pictures(visit: Visit, server: ThumborServer) -> None:
    names = add_busy(server, "bulk", 6)
    open_queue(visit, server, "pending", "bulk-")

    visit.page.get_by_role("button", name="Select all on the page").click()
    visit.page.get_by_label("Note for the selected pictures").fill("a spam wave")
    visit.page.get_by_role("button", name="Reject selected").click()
    visit.page.locator("#empty").wait_for()
    bulk_requests = [r for r in visit.requests if r.method == "POST" and r.url.endswith("/images")]

    assert len(bulk_requests) == 1
    assert json.loads(bulk_requests[0].post_data or "")["urls"] == names
    for name in names:
        decision = shown(server, name)
        assert decision["status"] == "rejected"
        assert (decision["history"][-1]["actor"], decision["history"][-1]["note"]) == (
            REVIEWER,
            "a spam wave",
        )
    assert visit.errors == []


def test_detail_view_shows_scores_history_and_a_duplicate_beside_its_original(
    visit: Visit, server: ThumborServer
) -> None:
    red = f"detail-red-{next(_names)}.png"
    (server.root / "images" / red).write_bytes(picture(RED, size=(170, 130)))
    assert server.get(f"/unsafe/80x60/{red}").header("X-Moderation-Status") == "rejected"
    image = pictures.busy("detail-original")
    (server.root / "images" / "detail-poster.png").write_bytes(pictures.encoded(image, "PNG"))
    (server.root / "images" / "detail-poster-copy.jpg").write_bytes(pictures.resized_jpeg(image))
    server.get("/unsafe/80x60/detail-poster.png")
    call(
        server,
        "PUT",
        "/image?url=detail-poster.png",
        {"status": "rejected", "note": "a known fake", "actor": "Grace"},
    )
    copy = server.get("/unsafe/80x60/detail-poster-copy.jpg").header("X-Moderation-Status")

    open_queue(visit, server, "rejected", red)
    visit.page.keyboard.press("Enter")
    detail = visit.page.locator("#detail")
    detail.locator("table.history tr.event").first.wait_for()
    reasons = detail.locator("li.reason").all_inner_texts()
    events = detail.locator("tr.event").all_inner_texts()
    offered = [
        button.inner_text()
        for button in detail.locator("button[data-detail]").all()
        if button.is_visible()
    ]
    visit.page.keyboard.press("Escape")
    open_queue(visit, server, "duplicates", "detail-poster-copy")
    cards(visit).first.click()
    detail.locator("table.history tr.event").first.wait_for()
    visit.page.wait_for_function(
        """() => [...document.querySelectorAll("#detail img.tile")].length === 2
            && [...document.querySelectorAll("#detail img.tile")].every(
                (img) => img.src.startsWith("blob:") && img.complete && img.naturalWidth > 0)"""
    )
    sides = detail.locator("img.tile")
    original_events = shown(server, "detail-poster.png")["history"]

    assert any("Nudity: 0.99 (threshold 0.6)" in reason for reason in reasons)
    assert any("rejected" in event and "auto" in event for event in events)
    assert offered == ["Approve"]
    assert copy == "rejected"
    assert [sides.nth(i).get_attribute("data-url") for i in range(2)] == [
        "detail-poster-copy.jpg",
        "detail-poster.png",
    ]
    similarity = re.search(r"similarity ([0-9.]+)", detail.locator(".side").last.inner_text())
    assert similarity is not None
    assert float(similarity[1]) >= 0.9
    assert (original_events[-1]["actor"], original_events[-1]["note"]) == ("Grace", "a known fake")
    assert visit.errors == []


def test_a_card_names_the_frame_that_decided_and_the_content_types(
    visit: Visit, server: ThumborServer, module_fake: FakeRekognition
) -> None:
    drawn = (20, 20, 250)
    module_fake.respond(drawn, [], "7.0", content_types=[{"Name": "Animated", "Confidence": 88.0}])
    name = f"frames-{next(_names)}.gif"
    (server.root / "images" / name).write_bytes(frames_gif([drawn] * 5 + [RED] * 5))
    try:
        decided = server.get(f"/unsafe/80x60/{name}").header("X-Moderation-Status")
    finally:
        # The module's other pictures meet the red scenario only.
        module_fake.reset()
        module_fake.respond(RED, NUDITY)

    open_queue(visit, server, "rejected", name)
    card = cards(visit).first

    reasons = card.locator("li.reason").all_inner_texts()
    assert decided == "rejected"
    assert any("Nudity: 0.99 (threshold 0.6) (frame 2)" in reason for reason in reasons)
    assert "Animated 0.88" in card.locator(".content-types").inner_text()
    assert "rekognition · 7.0" in card.locator(".facts").inner_text()


def frames_gif(colors: list[tuple[int, int, int]]) -> bytes:
    """An animated GIF of solid frames; a counter pixel keeps each frame its own."""
    frames = []
    for index, color in enumerate(colors):
        frame = Image.new("RGB", (160, 120), color)
        frame.putpixel((index, 0), (index * 7 % 256, 0, 0))
        frames.append(frame)
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    return buffer.getvalue()


def test_detail_view_decides_with_a_note_and_shows_it_in_the_history(
    visit: Visit, server: ThumborServer
) -> None:
    [name] = add_busy(server, "noted", 1)
    open_queue(visit, server, "pending", "noted-")

    visit.page.keyboard.press("Enter")
    visit.page.locator("#detail table.history tr.event").first.wait_for()
    visit.page.locator("#detail-note").fill("looked at every frame")
    visit.page.locator("#detail").get_by_role("button", name="Approve").click()
    visit.page.locator("#detail").wait_for(state="hidden")
    cards(visit).first.wait_for(state="detached")
    open_queue(visit, server, "approved", name)
    visit.page.keyboard.press("Enter")
    rows = visit.page.locator("#detail tr.event")
    rows.nth(1).wait_for()

    cells = rows.last.locator("td").all_inner_texts()
    assert cells[1:] == ["approved", "manual", REVIEWER, "looked at every frame"]


def test_pending_and_rejected_pictures_are_blurred_until_revealed(
    visit: Visit, server: ThumborServer
) -> None:
    [name] = add_busy(server, "blurred", 1)
    open_queue(visit, server, "pending", "blurred-")
    picture_of = cards(visit).first.locator("img.tile")

    blurred = filter_of(picture_of)
    cards(visit).first.locator("img.tile").hover()
    hovered = filter_of(picture_of)
    visit.page.mouse.move(0, 0)
    after_hover = filter_of(picture_of)
    visit.page.keyboard.press("v")
    revealed = filter_of(picture_of)
    call(server, "PUT", f"/image?url={name}", {"status": "rejected"})
    open_queue(visit, server, "rejected", "blurred-")
    rejected = filter_of(cards(visit).first.locator("img.tile"))
    call(server, "PUT", f"/image?url={name}", {"status": "approved"})
    open_queue(visit, server, "approved", "blurred-")
    approved = filter_of(cards(visit).first.locator("img.tile"))

    assert blurred.startswith("blur(")
    assert (hovered, after_hover, revealed) == ("none", blurred, "none")
    assert rejected.startswith("blur(")
    assert approved == "none"


def test_a_setting_blurs_approved_pictures_too(
    browser: Browser, module_root: Path, module_fake: FakeRekognition
) -> None:
    root = module_root / "blur-approved"
    images = root / "images"
    images.mkdir(parents=True)
    (images / "fine.png").write_bytes(picture((0, 160, 0)))
    config = base_config(root, images, module_fake.url)
    config.update({"MODERATION_ADMIN_TOKEN": TOKEN, "MODERATION_REVIEW_BLUR_APPROVED": True})
    thumbor = ThumborServer(root, config).start()
    try:
        assert thumbor.get("/unsafe/80x60/fine.png").header("X-Moderation-Status") == "approved"
        for visit in open_page(browser, thumbor):
            open_queue(visit, thumbor, "approved")
            approved = filter_of(cards(visit).first.locator("img.tile"))
    finally:
        thumbor.stop()

    assert approved.startswith("blur(")


def test_a_picture_without_an_original_shows_a_tile_saying_so(
    visit: Visit, server: ThumborServer
) -> None:
    name = f"never-fetched-{next(_names)}.png"
    call(server, "PUT", f"/image?url={name}", {"status": "rejected", "unseen": True})

    open_queue(visit, server, "rejected", name)
    card = cards(visit).first
    card.locator(".tile.none").wait_for()

    assert card.locator(".tile.none").inner_text() == "no original kept"
    assert card.locator("img").count() == 0
    assert visit.errors == []


# 100,000 decisions


@pytest.fixture(scope="module")
def crowded(module_root: Path, module_fake: FakeRekognition) -> Iterator[ThumborServer]:
    """A server whose store holds MANY pending decisions, saved through the store's API."""
    root = module_root / "crowded"
    images = root / "images"
    images.mkdir(parents=True)
    store = Store(path=str(root / "decisions.sqlite3"))
    event = Event(Status.PENDING, Source.AUTO, "seed", "")
    for index in range(MANY):
        key = f"crowd/{index:06d}.png"
        # As real content hashes: spread over the whole index, not sharing a prefix.
        sha = hashlib.sha256(key.encode()).hexdigest()
        store.save(
            Decision(key=key, url=key, sha256=sha, status=Status.PENDING, source=Source.AUTO),
            event,
        )
    store.close()
    yield from serve_seeded(root, images, module_fake)


@pytest.mark.slow
def test_a_queue_of_100000_shows_its_first_page_and_never_more_than_100_cards(
    browser: Browser, crowded: ThumborServer
) -> None:
    for visit in open_page(browser, crowded):
        visit.page.get_by_label("Admin token").fill(TOKEN)
        started = time.perf_counter()
        visit.page.get_by_role("button", name="Open").click()
        visit.page.get_by_label("Your name").fill(REVIEWER)
        visit.page.get_by_role("button", name="Start reviewing").click()
        cards(visit).nth(99).wait_for()
        first_page = time.perf_counter() - started
        tab = visit.page.locator('#tabs button[data-queue="pending"]').inner_text()
        shown_first = cards(visit).count()
        visit.page.get_by_role("button", name="More").click()
        visit.page.locator(".card[data-url='crowd/000100.png']").wait_for()
        shown_next = cards(visit).count()
        # A whole page decided at once: the queue starts again on a fresh page.
        visit.page.get_by_role("button", name="Select all on the page").click()
        visit.page.get_by_role("button", name="Reject selected").click()
        visit.page.locator(".card[data-url='crowd/000000.png']").wait_for()
        visit.page.locator("#tabs").get_by_text(f"Pending ({MANY - 100})").wait_for()
        shown_after_bulk = cards(visit).count()
        print(f"\n{MANY:,} pending decisions: first page of the queue shown in {first_page:.3f} s")

    assert tab == f"Pending ({MANY})"
    assert (shown_first, shown_next, shown_after_bulk) == (100, 100, 100)


# Screenshots from the demo's pictures


def mean_colour(path: Path) -> tuple[int, int, int]:
    with Image.open(path) as image:
        red, green, blue = ImageStat.Stat(image.convert("RGB")).mean
    return round(red), round(green), round(blue)


@pytest.mark.slow
def test_screenshots_of_each_queue_and_the_detail_view_from_the_demo_pictures(
    browser: Browser, module_root: Path, module_fake: FakeRekognition, tmp_path: Path
) -> None:
    root = module_root / "demo-shots"
    images = root / "images"
    shutil.copytree(ROOT / "demo" / "pictures", images)
    chart = Image.open(images / "chart.webp").convert("RGB")
    (images / "chart-copy.jpg").write_bytes(pictures.resized_jpeg(chart))
    module_fake.reset()
    # The still life scores inside the review band: pending, with its score and threshold.
    module_fake.respond(
        mean_colour(images / "still-life.png"),
        [
            {"Name": "Suggestive", "ParentName": "", "Confidence": 55.0},
            {"Name": "Revealing Clothes", "ParentName": "Suggestive", "Confidence": 55.0},
        ],
    )
    config = base_config(root, images, module_fake.url)
    config.update(
        {
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_CATEGORY_THRESHOLDS": {"Suggestive": 0.6},
            "MODERATION_REVIEW_BAND": 0.1,
        }
    )
    thumbor = ThumborServer(root, config).start()
    folder = Path(os.environ.get("REVIEW_SCREENSHOTS", "") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for name in ("landscape.jpg", "still-life.png", "spinner.gif", "chart.webp"):
            thumbor.get(f"/unsafe/300x200/{name}")
        call(
            thumbor,
            "PUT",
            "/image?url=chart.webp",
            {"status": "rejected", "note": "rejected by hand for the demo", "actor": "demo"},
        )
        thumbor.get("/unsafe/300x200/chart-copy.jpg")
        for visit in open_page(browser, thumbor):
            for queue in ("pending", "rejected", "approved", "duplicates"):
                open_queue(visit, thumbor, queue)
                visit.page.screenshot(path=str(folder / f"review-{queue}.png"))
            open_queue(visit, thumbor, "duplicates")
            visit.page.keyboard.press("Enter")
            visit.page.locator("#detail table.history tr.event").first.wait_for()
            visit.page.wait_for_function(
                """() => [...document.querySelectorAll("#detail img.tile")].every(
                    (img) => img.src.startsWith("blob:") && img.complete && img.naturalWidth > 0)"""
            )
            # The copy revealed (the pointer over it), the original still blurred.
            visit.page.locator("#detail img.tile").first.hover()
            visit.page.screenshot(path=str(folder / "review-detail.png"))
            errors = visit.errors
    finally:
        thumbor.stop()
        module_fake.reset()

    assert errors == []
    assert {path.name for path in folder.glob("review-*.png")} >= {
        "review-pending.png",
        "review-rejected.png",
        "review-approved.png",
        "review-duplicates.png",
        "review-detail.png",
    }
