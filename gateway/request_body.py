"""Request bodies of the API: one bounded JSON object, and Shifter's id lists.

A body larger than MAX_BODY bytes is refused before it is parsed; an id list
("1000,1001" as Shifter's client sends it, or a JSON list) is read in one
pass and may name at most MAX_IDS ids, as many as Shifter's runtime reads.
Every refusal is a BadRequest (HTTP 400) saying what to fix.
"""
from __future__ import annotations

import json

from shifter_core.imageconfig import MAX_ID

from .errors import BadRequest

MAX_BODY = 64 * 1024
MAX_IDS = 1000


def json_object(request) -> dict:
    """The request's JSON object body; {} when there is none."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest(f"the request body has {request.content_length} bytes; at most {MAX_BODY} are accepted")
    data = request.stream.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise BadRequest(f"the request body has more than {MAX_BODY} bytes; at most {MAX_BODY} are accepted")
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def id_list(body: dict, key: str) -> list[int]:
    """Shifter's "1000,1001" strings (or JSON lists) to distinct ids, in order; ids <= 0 are dropped."""
    value = body.get(key)
    if value in (None, ""):
        return []
    items = value.split(",", MAX_IDS + 1) if isinstance(value, str) else value if isinstance(value, list) else None
    if items is None:
        raise BadRequest(f"{key} must be a comma-separated string or a list of numeric ids")
    if len(items) > MAX_IDS:
        raise BadRequest(f"{key} names more than {MAX_IDS} ids; use groups (allowed_gids) for more users")
    ids: dict[int, None] = {}
    for item in items:
        number = _id(item, key)
        if number is not None and number > 0:
            ids[number] = None
    return list(ids)


def _id(item, key: str) -> int | None:
    text = item.strip() if isinstance(item, str) else None
    if isinstance(item, int) and not isinstance(item, bool):
        number = item
    elif text is not None and text.isascii() and text.isdigit() and len(text) <= len(str(MAX_ID)):
        number = int(text)
    elif text == "":
        return None
    else:
        raise BadRequest(f"{key} holds {str(item)[:40]!r}: give numeric ids (shifterimg resolves names)")
    if not 0 <= number <= MAX_ID:
        raise BadRequest(f"{key} holds {number}, which is not a user or group id")
    return number
