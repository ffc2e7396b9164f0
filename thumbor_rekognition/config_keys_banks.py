"""The configuration keys of hash banks and HMA (known pictures matched by their PDQ
hash before the backend is paid), declared with the others by ``config_keys``."""

from __future__ import annotations

from typing import Any

BANK_GROUP = "Moderation - hash banks and HMA"

BANK_KEYS: list[tuple[str, Any, str, str]] = [
    (
        "MODERATION_HASH_BANKS",
        [],
        "Files of PDQ hashes of known pictures, each a mapping {'name': 'known-bad', "
        "'path': '/etc/thumbor/known-bad.txt', 'action': 'reject'} ('approve' for known "
        "false positives; 'enabled': False keeps a bank without using it). One 64-hex "
        "hash a line, an optional ',note' after it, '#' comments; threatexchange's CSV "
        "export is read too. A picture within MODERATION_HASH_BANK_DISTANCE of an entry "
        "(any rotation or mirror) is decided without a backend call, naming the bank and "
        "entry (source 'bank'); reject wins over approve. A file that changes is read "
        "again, and its new reject entries also reject pictures already approved. See "
        "docs/hash-banks.md.",
        BANK_GROUP,
    ),
    (
        "MODERATION_HASH_BANK_DISTANCE",
        31,
        "Most bits (of 256) a picture's PDQ hash may differ from a bank entry's and "
        "match it: Meta's threshold is 31.",
        BANK_GROUP,
    ),
    (
        "MODERATION_HASH_BANK_RELOAD_SECONDS",
        10.0,
        "How often each process looks at the bank files (size and modification time) "
        "and reads again those that changed; at most 60.",
        BANK_GROUP,
    ),
    (
        "MODERATION_HMA_URL",
        None,
        "Base URL of Meta's Hasher-Matcher-Actioner (HMA 2.0), e.g. 'http://hma:5000': "
        "every new picture's PDQ hash is looked up there (GET /m/lookup) before the "
        "backend is called, and a match rejects it naming HMA's bank. HMA unreachable: "
        "the backend judges alone, and the failure is counted (stats: hma_unreachable).",
        BANK_GROUP,
    ),
    (
        "MODERATION_HMA_HEADERS",
        {},
        "Headers sent with every HMA lookup, for a proxy in front of HMA that asks for "
        "credentials (HMA itself has none); never logged.",
        BANK_GROUP,
    ),
    (
        "MODERATION_HMA_TIMEOUT_SECONDS",
        2.0,
        "How long an HMA lookup may take before the backend judges the picture alone.",
        BANK_GROUP,
    ),
]
