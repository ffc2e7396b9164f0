"""The new S3 objects an SQS message tells of, in any of the three shapes it may take.

S3 sends its notification to SQS directly (``{"Records": [...]}``, keys URL-encoded
with '+' for a space), through an SNS topic (that JSON as the ``Message`` string of an
SNS envelope, unless raw delivery is on), or through EventBridge (one object a message,
``detail-type`` "Object Created", its key not encoded). When a notification is set up,
S3 sends one ``s3:TestEvent``, which tells of no object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

CREATED_PREFIX = "ObjectCreated:"
EVENTBRIDGE_SOURCE = "aws.s3"
EVENTBRIDGE_CREATED = "Object Created"
TEST_EVENT = "s3:TestEvent"


class Unreadable(ValueError):
    """A message that is not an S3 notification in a shape this module knows."""


@dataclass(frozen=True)
class NewObject:
    """An object S3 says was created: its bucket and its key, decoded."""

    bucket: str
    key: str


def new_objects(body: str) -> list[NewObject]:
    """The objects created that a message body tells of; [] for a test event or other
    events (deletions, say). Raises Unreadable for what no S3 notification looks like."""
    message = _json(body)
    if message.get("Type") == "Notification" and isinstance(message.get("Message"), str):
        message = _json(message["Message"])
    if message.get("Event") == TEST_EVENT:
        return []
    if isinstance(message.get("Records"), list):
        return [_from_record(record) for record in message["Records"] if _created(record)]
    if message.get("source") == EVENTBRIDGE_SOURCE and isinstance(message.get("detail"), dict):
        if message.get("detail-type") != EVENTBRIDGE_CREATED:
            return []
        detail = message["detail"]
        # EventBridge's keys are not encoded.
        return [NewObject(_name(detail, "bucket"), _text(detail.get("object"), "key"))]
    raise Unreadable("neither S3's Records, an SNS envelope, nor an EventBridge event")


def _created(record: Any) -> bool:
    if not isinstance(record, dict):
        raise Unreadable("a record is not an object")
    name = record.get("eventName")
    return (
        record.get("eventSource") == "aws:s3"
        and isinstance(name, str)
        and (name.startswith(CREATED_PREFIX))
    )


def _from_record(record: dict[str, Any]) -> NewObject:
    s3 = record.get("s3")
    if not isinstance(s3, dict):
        raise Unreadable("a record without its s3 object")
    # S3 encodes keys as a form would: '+' is a space, '%2B' a plus.
    return NewObject(_name(s3, "bucket"), unquote_plus(_text(s3.get("object"), "key")))


def _name(holder: dict[str, Any], field: str) -> str:
    return _text(holder.get(field), "name")


def _text(holder: Any, field: str) -> str:
    value = holder.get(field) if isinstance(holder, dict) else None
    if not isinstance(value, str) or not value:
        raise Unreadable(f"no {field}")
    return value


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise Unreadable("not JSON") from None
    if not isinstance(value, dict):
        raise Unreadable("not a JSON object")
    return value
