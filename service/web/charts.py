"""Small SVG charts drawn on the server (no script, no external library): bars and a line
over days, with every text escaped."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 12, 24  # room for the axis labels


def _ceiling(values: Sequence[int]) -> int:
    """The top of the scale: the largest value rounded up to 1, 2 or 5 times a power of 10."""
    top = max([*values, 1])
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= top:
                return step * factor
        step *= 10


def _frame(label: str, days: Sequence[dt.date], top: int, body: list[str]) -> Markup:
    """The chart's outer SVG: accessible name, the scale's top and the first and last day."""
    bottom = HEIGHT - BOTTOM
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
        f'<line class="axis" x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}"/>',
        f'<line class="grid" x1="{LEFT}" y1="{TOP}" x2="{WIDTH - RIGHT}" y2="{TOP}"/>',
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{top:,}</text>',
        f'<text class="tick" x="{LEFT - 6}" y="{bottom}" text-anchor="end">0</text>',
        *body,
    ]
    if days:
        parts += [
            f'<text class="tick" x="{LEFT}" y="{HEIGHT - 6}">{days[0]:%d %b}</text>',
            f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" '
            f'text-anchor="end">{days[-1]:%d %b}</text>',
        ]
    parts.append("</svg>")
    return Markup("".join(parts))


def _y(value: int, top: int) -> float:
    return round(HEIGHT - BOTTOM - value / top * (HEIGHT - BOTTOM - TOP), 1)


def bars(label: str, days: Sequence[dt.date], values: Sequence[int]) -> Markup:
    """One bar a day; hovering a bar names its day and value."""
    top = _ceiling(values)
    slot = (WIDTH - LEFT - RIGHT) / max(len(values), 1)
    body = []
    for i, (day, value) in enumerate(zip(days, values, strict=True)):
        y = _y(value, top)
        body.append(
            f'<rect class="bar" x="{LEFT + i * slot + slot * 0.1:.1f}" y="{y}" '
            f'width="{slot * 0.8:.1f}" height="{round(HEIGHT - BOTTOM - y, 1)}">'
            f"<title>{day.isoformat()}: {value:,}</title></rect>"
        )
    return _frame(label, days, top, body)


def line(label: str, days: Sequence[dt.date], values: Sequence[int]) -> Markup:
    """A line through one point a day, the area under it shaded."""
    top = _ceiling(values)
    step = (WIDTH - LEFT - RIGHT) / max(len(values) - 1, 1)
    points = [(round(LEFT + i * step, 1), _y(v, top)) for i, v in enumerate(values)]
    path = " ".join(f"{x},{y}" for x, y in points)
    body = []
    if points:
        bottom = HEIGHT - BOTTOM
        area = f"{points[0][0]},{bottom} {path} {points[-1][0]},{bottom}"
        body = [
            f'<polygon class="area" points="{area}"/>',
            f'<polyline class="line" points="{path}"/>',
        ]
    return _frame(label, days, top, body)
