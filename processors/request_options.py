"""The per-request options every stage reads: `extra_body={"sluicegate": {...}}`.

The bridge keeps the caller's extra body fields as JSON in `params.extra_json`, and maps its
`X-Sluicegate-*` headers into the same `sluicegate` object. Routing validates that object
strictly once, in admission (processors/routing.py `_override`: unknown fields and bad values
are a 400); every other reader — prompts, priority, knowledge base, replay — reads it leniently
through `request_options`, so an unreadable value there simply means "not set".
"""

from __future__ import annotations

import json
from typing import Any, Final

OPTIONS_KEY: Final = "sluicegate"


def extra_fields(extra_json: str | None) -> dict[str, Any]:
    """The caller's extra body fields; {} when there are none or they are not a JSON object."""
    if not extra_json:
        return {}
    try:
        extra = json.loads(extra_json)
    except ValueError:
        return {}
    return extra if isinstance(extra, dict) else {}


def request_options(extra_json: str | None) -> dict[str, Any]:
    """The `sluicegate` object of the extra body fields; {} when absent or not an object."""
    options = extra_fields(extra_json).get(OPTIONS_KEY)
    return options if isinstance(options, dict) else {}
