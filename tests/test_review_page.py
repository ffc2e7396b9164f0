"""The review page in headless Chromium, against the real Thumbor app and the fake Rekognition.

Chromium is Debian's (`scripts/install-system-packages`), driven by Playwright; nothing
is downloaded. A missing browser fails the tests instead of skipping them, so that CI
cannot go green without having looked at the page.
"""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Error,
    Locator,
    Page,
    Request,
    sync_playwright,
)

from tests import pictures
from tests.conftest import picture
from tests.fakes.rekognition import FakeRekognition
from tests.servers import ThumborServer, base_config

pytestmark = pytest.mark.e2e

TOKEN = "review-page-token-0123456789"
WRONG_TOKEN = "not-the-token-9876543210"
REVIEWER = "Ada Reviewer"
PREFIX = "/moderation"
RED, GREEN, BLUE = (255, 0, 0), (0, 160, 0), (0, 0, 255)
NUDITY = [
    {"Name": "Explicit Nudity", "ParentName": "", "Confidence": 99.0},
    {"Name": "Nudity", "ParentName": "Explicit Nudity", "Confidence": 99.0},
]
APPROVED_NAME = "meadow.png"
REJECTED_NAME = "nude.png"
MARKUP_NAME = "<img src=x onerror=alert(1)>.png"
# Root needs --no-sandbox; the rest keep Chromium off the (closed) network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TIMEOUT_MS = 10_000


def chromium_executable() -> str:
    found = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        pytest.fail(
            "Chromium is not installed: run scripts/install-system-packages "
            "(Debian package 'chromium', /usr/bin/chromium)",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_executable()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(module_root: Path, module_fake: FakeRekognition) -> Iterator[ThumborServer]:
    root = module_root / "review-page"
    images = root / "images"
    images.mkdir(parents=True)
    for name, color in ((APPROVED_NAME, GREEN), (REJECTED_NAME, RED), (MARKUP_NAME, BLUE)):
        (images / name).write_bytes(picture(color))
    config = base_config(root, images, module_fake.url)
    config.update(
        {
            "MODERATION_ADMIN_TOKEN": TOKEN,
            "MODERATION_QUARANTINE_PATH": str(root / "quarantine"),
        }
    )
    module_fake.reset()
    module_fake.respond(RED, NUDITY)
    thumbor = ThumborServer(root, config).start()
    # The first fetch of each picture is what moderates it.
    for name in (APPROVED_NAME, REJECTED_NAME, MARKUP_NAME):
        thumbor.get(image_path(name))
    yield thumbor
    thumbor.stop()
    module_fake.reset()
    assert "Traceback" not in thumbor.log


@dataclass
class Visit:
    """A fresh tab on the review page, recording requests, dialogs and script errors."""

    page: Page
    requests: list[Request] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record_request(self, request: Request) -> None:
        self.requests.append(request)

    def record_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def record_page_error(self, error: Error) -> None:
        self.errors.append(f"uncaught: {error.message}")

    def record_console(self, message: ConsoleMessage) -> None:
        # Failed fetches (the 401 of a wrong token) log errors too: keep only the page's own.
        if "Content Security Policy" in message.text or "Uncaught" in message.text:
            self.errors.append(f"console: {message.text}")

    def urls_with(self, secret: str) -> list[str]:
        return [r.url for r in self.requests if secret in r.url or quote(secret) in r.url]

    def log_in(self, token: str, name: str = REVIEWER) -> None:
        self.page.get_by_label("Admin token").fill(token)
        self.page.get_by_role("button", name="Open").click()
        if token == TOKEN:
            # Asked once: the name is kept in the browser's local storage.
            self.page.get_by_label("Your name").fill(name)
            self.page.get_by_role("button", name="Start reviewing").click()

    def open_queue(self, queue: str) -> None:
        self.page.locator(f'#tabs button[data-queue="{queue}"]').click()
        self.page.wait_for_function(
            """(queue) => {
                const tab = document.querySelector(`#tabs button[data-queue="${queue}"]`);
                return tab.getAttribute("aria-selected") === "true"
                    && document.getElementById("status").textContent !== "Loading…";
            }""",
            arg=queue,
        )
        self.wait_for_images()

    def card(self, name: str) -> Locator:
        caption = self.page.locator(".url").filter(has_text=name)
        return self.page.locator("#grid .card").filter(has=caption)

    def wait_for_images(self) -> None:
        """Every original fetched with the token and decoded from a blob: URL, or a tile
        saying none is kept."""
        self.page.wait_for_function(
            """() => {
                const images = [...document.querySelectorAll("#grid img[data-url]")];
                return images.every(
                    (img) => img.src.startsWith("blob:") && img.complete && img.naturalWidth > 0
                );
            }""",
            timeout=TIMEOUT_MS,
        )

    def decide(self, button: str, name: str, from_queue: str, to_queue: str) -> None:
        self.open_queue(from_queue)
        self.card(name).get_by_role("button", name=button).click()
        self.card(name).wait_for(state="detached", timeout=TIMEOUT_MS)
        self.open_queue(to_queue)
        self.card(name).wait_for(timeout=TIMEOUT_MS)


@pytest.fixture
def visit(browser: Browser, server: ThumborServer) -> Iterator[Visit]:
    context = browser.new_context()
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


def image_path(name: str, size: str = "100x100") -> str:
    return f"/unsafe/{size}/{quote(name)}"


def served_status(server: ThumborServer, name: str) -> str | None:
    url = f"http://127.0.0.1:{server.port}{image_path(name)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        status: str | None = response.headers["X-Moderation-Status"]
        return status


def test_wrong_token_is_refused_then_the_right_one_opens_the_queues(visit: Visit) -> None:
    visit.page.get_by_label("Admin token").wait_for()

    visit.log_in(WRONG_TOKEN)
    visit.page.locator("#login-error").filter(has_text="That token was refused.").wait_for()
    grid_after_refusal = visit.page.locator("#grid").inner_html()
    visit.log_in(TOKEN)
    visit.page.locator("#tabs").wait_for()

    assert grid_after_refusal == ""
    assert visit.page.locator("#login").is_hidden()
    assert visit.page.get_by_text("That token was refused.").is_hidden()
    assert visit.page.locator("#logout").is_visible()
    assert visit.dialogs == []
    assert visit.errors == []
    assert visit.urls_with(WRONG_TOKEN) == []
    assert visit.urls_with(TOKEN) == []


def test_reviewer_sees_the_queues_and_moves_pictures_between_them(
    visit: Visit, server: ThumborServer
) -> None:
    visit.log_in(TOKEN)
    visit.open_queue("approved")
    tabs = visit.page.locator("#tabs button")
    assert [tabs.nth(i).get_attribute("data-queue") for i in range(4)] == [
        "pending",
        "rejected",
        "approved",
        "duplicates",
    ]
    assert visit.card(APPROVED_NAME).count() == 1
    originals = [r for r in visit.requests if f"{PREFIX}/original?" in r.url]
    assert len(originals) >= 2
    assert {r.headers.get("authorization") for r in originals} == {f"Bearer {TOKEN}"}

    visit.decide("Reject", APPROVED_NAME, "approved", "rejected")
    rejected_status = served_status(server, APPROVED_NAME)
    visit.decide("Approve", APPROVED_NAME, "rejected", "approved")
    approved_again_status = served_status(server, APPROVED_NAME)
    visit.decide("Approve", REJECTED_NAME, "rejected", "approved")
    restored_status = served_status(server, REJECTED_NAME)

    assert rejected_status == "rejected"
    assert approved_again_status == "approved"
    assert restored_status == "approved"
    assert visit.page.locator("#status").inner_text() == ""
    assert visit.dialogs == []
    assert visit.errors == []
    assert visit.urls_with(TOKEN) == []
    assert TOKEN not in visit.page.url
    assert TOKEN not in visit.page.content()


def test_file_name_with_markup_is_shown_as_text(visit: Visit) -> None:
    visit.log_in(TOKEN)
    visit.open_queue("approved")

    card = visit.card(MARKUP_NAME)

    assert card.locator(".url").inner_text() == MARKUP_NAME
    assert card.locator("img").count() == 1
    assert card.locator("img").get_attribute("data-url") == MARKUP_NAME
    assert visit.page.locator('img[src="x"]').count() == 0
    assert visit.page.locator("#grid img").count() == visit.page.locator("#grid .card").count()
    assert visit.dialogs == []
    assert visit.errors == []


def test_a_copy_of_a_picture_rejected_on_the_page_is_shown_as_its_duplicate(
    visit: Visit, server: ThumborServer
) -> None:
    image = pictures.busy("review-original")
    images = server.root / "images"
    (images / "poster.png").write_bytes(pictures.encoded(image, "PNG"))
    (images / "poster-copy.jpg").write_bytes(pictures.resized_jpeg(image))
    assert served_status(server, "poster.png") == "approved"
    visit.log_in(TOKEN)

    visit.decide("Reject", "poster.png", "approved", "rejected")
    copy_status = served_status(server, "poster-copy.jpg")
    # The tab keeps its token and the reviewer's name: the page opens on the queues again.
    visit.page.reload()
    visit.open_queue("duplicates")
    card = visit.card("poster-copy.jpg")

    assert copy_status == "rejected"
    note = card.locator("p.duplicate").inner_text()
    assert note.startswith("duplicate of poster.png (similarity ")
    assert float(note.rsplit(" ", 1)[1].rstrip(")")) >= 0.9
    assert "rejected · duplicate ·" in card.locator(".facts").inner_text()
    assert visit.errors == []
