from __future__ import annotations

import pytest

from sluicegate.waterfall import SpanRow, render_waterfall

pytestmark = pytest.mark.unit


def test_children_nest_under_their_parent_and_bars_follow_time() -> None:
    spans = [
        SpanRow("b", "root", "inference", 1004.0, 1010.0, "ok", {"deployment": "fake"}),
        SpanRow("root", None, "bridge", 1000.0, 1010.0, "ok", {}),
        SpanRow("a", "root", "admission", 1001.0, 1002.0, "error", {}),
    ]
    lines = render_waterfall(spans).splitlines()
    assert lines[0].endswith("timeline (10.0 ms)")
    assert [line.split()[0] for line in lines[1:]] == ["bridge", "admission", "inference"]
    assert lines[2].startswith("  admission") and "[error]" in lines[2]
    assert "deployment=fake" in lines[3]
    bridge_bar = lines[1].split("|")[1]
    inference_bar = lines[3].split("|")[1]
    assert bridge_bar.count("█") == 40 and inference_bar.index("█") == 16


def test_no_spans() -> None:
    assert render_waterfall([]) == "no spans"
