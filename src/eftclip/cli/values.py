"""The one KEY=VALUE parser of every verb: values are decoded as JSON where they parse
(numbers, true/false, null, lists, objects), else kept as strings."""

from __future__ import annotations

import json

from eftclip.errors import EftclipError


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_key_values(items: list[str] | None, flag: str) -> dict:
    """``["size=8", "position=top-left"]`` -> ``{"size": 8, "position": "top-left"}``; dashes in keys
    become underscores.  A malformed item is an error naming ``flag``."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EftclipError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out
