from __future__ import annotations

import pytest

from sluicegate.processors.request_options import extra_fields, request_options

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("extra_json", "options"),
    [
        (None, {}),
        ("", {}),
        ("not json", {}),
        ("[1, 2]", {}),
        ('{"other": 1}', {}),
        ('{"sluicegate": "batch"}', {}),
        ('{"sluicegate": {"priority": "batch"}}', {"priority": "batch"}),
    ],
)
def test_options_are_read_leniently(extra_json: str | None, options: dict) -> None:
    assert request_options(extra_json) == options


def test_extra_fields_keep_everything_the_caller_sent() -> None:
    assert extra_fields('{"a": 1, "sluicegate": {}}') == {"a": 1, "sluicegate": {}}
    assert extra_fields('"just a string"') == {}
