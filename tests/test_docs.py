"""The documentation that operators read is generated from, or checked against, the code."""

from __future__ import annotations

import re
from pathlib import Path

from thumbor_rekognition import config, config_docs, config_keys

ROOT = Path(__file__).resolve().parents[1]


def test_conf_example_is_generated_from_the_key_definitions() -> None:
    assert (ROOT / "thumbor.conf.example").read_text() == config.example_conf()


def test_configuration_reference_page_is_generated_from_the_key_definitions() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text() == config_docs.reference_markdown()


def test_conf_example_lists_every_key_with_its_default() -> None:
    example = config.example_conf()

    for key, default, _, _ in config_keys.KEYS:
        assert re.search(rf"^#? ?{key} = {re.escape(repr(default))}$", example, re.M), key


def test_conf_example_is_a_valid_thumbor_conf() -> None:
    namespace: dict[str, object] = {}

    exec((ROOT / "thumbor.conf.example").read_text(), namespace)

    assert namespace["LOADER"] == "thumbor_rekognition.loader"
    assert "thumbor_rekognition.handler_list" in namespace["HANDLER_LISTS"]  # type: ignore[operator]


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()

    block = lines[lines.index("```sh") + 1 : lines.index("```")]

    assert [line.split("#")[0].strip() for line in block] == ["make demo", "make test"]


def test_every_relative_link_of_the_readme_and_the_docs_resolves() -> None:
    # The README is read on GitHub, the docs on the site and on GitHub: a link to a file
    # that moved, or to a heading that was renamed, is found here.
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")

    assert broken == []


def _anchors(page: Path) -> set[str]:
    """The ids Python-Markdown's toc and GitHub give the headings of a page."""
    headings = re.findall(r"^#{1,6} (.+)$", page.read_text(), re.M)
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings
    }
