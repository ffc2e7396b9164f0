"""Decision keys: spellings of one original share a key, different originals never do."""

from __future__ import annotations

import pytest

from thumbor_rekognition.cdn import cache_tag
from thumbor_rekognition.urls import MEMO_ENTRIES, key_of, normalise


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("http://host/a.jpg", "https://host/a.jpg"),
        ("http://host/a.jpg", "http%3A//host/a.jpg"),
        ("https://host/a.jpg", "https%3A%2F%2Fhost%2Fa.jpg"),
        ("http://host/a.jpg", "http:/host/a.jpg"),
        ("http://host/a.jpg", "http://host:80/a.jpg"),
        ("https://host/a.jpg", "https://host:443/a.jpg"),
        ("http://host/a.jpg", "http://HOST/a.jpg"),
        ("http://host/a.jpg", "HTTP://Host:80/a.jpg"),
        ("http://host/a.jpg", "http://host/a.jpg#top"),
        ("http://host/a.jpg", "http%3A//host/a.jpg%23top"),
        ("http://host/a.jpg?w=1", "http%3A//host/a.jpg%3Fw%3D1"),
        ("http://host/a.jpg", "host/a.jpg"),
    ],
)
def test_spellings_of_one_original_share_a_key(first: str, second: str) -> None:
    assert normalise(first) == normalise(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Without a scheme the first segment may be a file-loader folder: case matters.
        ("Folder/a.jpg", "folder/a.jpg"),
        ("//Folder/a.jpg", "//folder/a.jpg"),
        ("http://host/A.jpg", "http://host/a.jpg"),
        ("http://host/a.jpg?w=1", "http://host/a.jpg?w=2"),
        ("http://host/a.jpg?w=1", "http://host/a.jpg"),
        ("http://host/a.jpg", "http://host/b.jpg"),
        ("http://host/x/a.jpg", "http://host/y/a.jpg"),
        ("http://host/a.jpg", "http://other/a.jpg"),
        ("http://host/a.jpg", "http://host:8080/a.jpg"),
        ("http://host:8080/a.jpg", "http://host:8081/a.jpg"),
        ("http://host/a.jpg", "http://host.example/a.jpg"),
    ],
)
def test_different_originals_get_different_keys(first: str, second: str) -> None:
    assert normalise(first) != normalise(second)


def test_key_drops_scheme_default_port_and_host_case() -> None:
    result = normalise("HTTPS%3A//Images.Example.COM:443/Path/To/Photo.JPG?v=2")

    assert result == "images.example.com/Path/To/Photo.JPG?v=2"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("photos/a%231.jpg", "photos/a%232.jpg"),
        ("photos/a%231.jpg", "photos/a"),
    ],
)
def test_file_loader_names_containing_a_hash_sign_get_different_keys(
    first: str, second: str
) -> None:
    assert normalise(first) != normalise(second)


def test_names_differing_only_by_surrounding_spaces_are_different_pictures() -> None:
    assert len({normalise("mint.png"), normalise("mint.png%20"), normalise("%20mint.png")}) == 3
    assert key_of("mint.png ") != key_of("mint.png")


def test_keys_remembered_for_urls_are_bounded() -> None:
    # Every new picture's URL is normalised on its first view: a process serving new
    # pictures day after day keeps a bounded number of them, not one per picture.
    for index in range(MEMO_ENTRIES + 2_000):
        normalise(f"bounded/{index}.jpg")
        cache_tag(f"bounded/{index}.jpg")
    assert normalise.cache_info().currsize <= MEMO_ENTRIES
    assert cache_tag.cache_info().currsize <= MEMO_ENTRIES
    assert MEMO_ENTRIES <= 10_000
