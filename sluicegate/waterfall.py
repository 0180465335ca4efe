"""A request's spans as a terminal waterfall: one line per stage, nested by parent span, with a
bar placed on the request's timeline. Pure: rows in, text out."""

from __future__ import annotations

from dataclasses import dataclass

BAR_WIDTH = 40


@dataclass(frozen=True, slots=True)
class SpanRow:
    span_id: str
    parent_span_id: str | None
    name: str
    start_ms: float  # epoch milliseconds
    end_ms: float
    status: str
    attributes: dict[str, str]


def render_waterfall(spans: list[SpanRow]) -> str:
    if not spans:
        return "no spans"
    origin = min(s.start_ms for s in spans)
    total = max(max(s.end_ms for s in spans) - origin, 1e-9)
    children: dict[str | None, list[SpanRow]] = {}
    known = {s.span_id for s in spans}
    for span in spans:
        parent = span.parent_span_id if span.parent_span_id in known else None
        children.setdefault(parent, []).append(span)
    lines = [f"{'stage':<24} {'start':>9} {'ms':>9}  timeline ({total:.1f} ms)"]

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: (s.start_ms, s.end_ms)):
            offset = span.start_ms - origin
            duration = span.end_ms - span.start_ms
            left = round(offset / total * BAR_WIDTH)
            width = max(1, round(duration / total * BAR_WIDTH))
            bar = " " * left + "█" * min(width, BAR_WIDTH - left or 1)
            mark = "" if span.status == "ok" else f"  [{span.status}]"
            detail = " ".join(f"{k}={v}" for k, v in sorted(span.attributes.items()))
            label = ("  " * depth + span.name)[:24]
            lines.append(
                f"{label:<24} {offset:>9.1f} {duration:>9.1f}  |{bar:<{BAR_WIDTH}}|"
                f"{mark} {detail}".rstrip()
            )
            if span.span_id != parent:
                walk(span.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)
