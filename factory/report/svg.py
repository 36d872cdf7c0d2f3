"""Tiny inline-SVG charts for the report: histograms (one or overlaid), lines over time, labelled bars.

Each returns one `<svg>` string with no script, no external reference and every label escaped. Every
mark carries a `<title>` (the browser's own tooltip) and a `data-*` attribute with its value, so the
numbers behind a chart can be read from the file itself."""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape

W, H = 640, 220  # the viewBox; the chart scales to its container's width
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 40
COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1")


def _num(x: float) -> str:
    """A short label for a tick or a value."""
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.0f}"
    if abs(x) >= 0.01:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:.1e}"


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round numbers from lo to hi."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


class _Frame:
    """Maps data coordinates to the plot area and draws the axes."""

    def __init__(self, x0: float, x1: float, y1: float, xlabel: str, ylabel: str, counts: bool = False,
                 y0: float = 0.0):
        self.counts = counts  # whole numbers on the y axis
        self.x0, self.x1 = x0, x1 if x1 > x0 else x0 + 1
        self.y0 = y0  # the bottom: 0, or below it for series that go negative
        self.y1 = y1 if y1 > y0 else y0 + 1
        self.xlabel, self.ylabel = xlabel, ylabel

    def x(self, v: float) -> float:
        return LEFT + (v - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def y(self, v: float) -> float:
        return H - BOTTOM - (v - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)

    def axes(self) -> list[str]:
        out = [
            f'<line class="axis" x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}"/>',
            f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}"/>',
        ]
        for t in [t for t in ticks(self.y0, self.y1, 4) if t == int(t) or not self.counts]:
            out.append(f'<line class="grid" x1="{LEFT}" y1="{self.y(t):.1f}" x2="{W - RIGHT}" y2="{self.y(t):.1f}"/>')
            out.append(f'<text class="tick" x="{LEFT - 4}" y="{self.y(t) + 4:.1f}" text-anchor="end">{_num(t)}</text>')
        for t in ticks(self.x0, self.x1, 6):
            out.append(
                f'<text class="tick" x="{self.x(t):.1f}" y="{H - BOTTOM + 14}" text-anchor="middle">{_num(t)}</text>'
            )
        out.append(
            f'<text class="label" x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" text-anchor="middle">'
            f"{escape(self.xlabel)}</text>"
        )
        out.append(
            f'<text class="label" x="12" y="{(TOP + H - BOTTOM) / 2}" text-anchor="middle" '
            f'transform="rotate(-90 12 {(TOP + H - BOTTOM) / 2})">{escape(self.ylabel)}</text>'
        )
        return out


def _svg(kind: str, body: list[str], legend: list[str] | None = None) -> str:
    keys = "".join(
        f'<span class="key"><i style="background:{COLOURS[i % len(COLOURS)]}"></i>{escape(name)}</span>'
        for i, name in enumerate(legend or [])
    )
    svg = f'<svg class="chart {kind}" viewBox="0 0 {W} {H}" role="img">' + "".join(body) + "</svg>"
    return f'<figure class="plot">{svg}{f"<figcaption>{keys}</figcaption>" if len(legend or []) > 1 else ""}</figure>'


def bin_counts(values: Mapping[float, int] | list[float], lo: float, hi: float, bins: int) -> list[int]:
    """Counts per bin of a list of values, or of values given as value -> count."""
    counts = [0] * bins
    width = (hi - lo) / bins or 1.0
    for v, n in (values.items() if isinstance(values, Mapping) else ((v, 1) for v in values)):
        counts[min(bins - 1, max(0, int((v - lo) / width)))] += n
    return counts


def histogram(
    series: dict[str, Mapping[float, int] | list[float]],
    xlabel: str,
    *,
    bins: int = 20,
    lo: float | None = None,
    hi: float | None = None,
    ylabel: str = "count",
) -> str:
    """One histogram per series over shared bins, overlaid (translucent). A series is a list of
    values or a value -> count mapping. Empty series are skipped."""
    series = {k: v for k, v in series.items() if v}
    values = [v for vs in series.values() for v in vs]  # a mapping's distinct values are enough for the range
    lo = min(values, default=0.0) if lo is None else lo
    hi = max(values, default=1.0) if hi is None else hi
    if hi <= lo:
        hi = lo + 1
    counts = {name: bin_counts(vs, lo, hi, bins) for name, vs in series.items()}
    frame = _Frame(lo, hi, max((max(c) for c in counts.values()), default=1), xlabel, ylabel, counts=True)
    body = frame.axes()
    width = (hi - lo) / bins
    for i, (name, cs) in enumerate(counts.items()):
        colour = COLOURS[i % len(COLOURS)]
        for b, n in enumerate(cs):
            a, z = lo + b * width, lo + (b + 1) * width
            x, y = frame.x(a), frame.y(n)
            body.append(
                f'<rect class="bar" data-series="{escape(name)}" data-n="{n}" x="{x + 0.5:.1f}" y="{y:.1f}" '
                f'width="{max(frame.x(z) - x - 1, 0.5):.1f}" height="{frame.y(0) - y:.1f}" fill="{colour}" '
                f'fill-opacity="{0.85 if len(counts) == 1 else 0.5}"><title>{escape(name)}: {_num(a)} to '
                f"{_num(z)}: {n}</title></rect>"
            )
    return _svg("histogram", body, list(counts))


def lines(x: list[float], series: dict[str, list[float]], xlabel: str, ylabel: str) -> str:
    """Lines over a shared x (time bins), one per series, with a dot per point (the y axis goes below 0
    when a series does)."""
    top = max((v for vs in series.values() for v in vs), default=1.0)
    bottom = min(0.0, min((v for vs in series.values() for v in vs), default=0.0))
    frame = _Frame(min(x, default=0.0), max(x, default=1.0), top + 0.05 * (top - bottom), xlabel, ylabel,
                   y0=bottom - (0.05 * (top - bottom) if bottom < 0 else 0.0))
    body = frame.axes()
    for i, (name, ys) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(f"{frame.x(a):.1f},{frame.y(b):.1f}" for a, b in zip(x, ys, strict=True))
        body.append(
            f'<polyline class="series" data-series="{escape(name)}" data-points="{len(ys)}" fill="none" '
            f'stroke="{colour}" stroke-width="1.8" points="{points}"/>'
        )
        body += [
            f'<circle class="point" cx="{frame.x(a):.1f}" cy="{frame.y(b):.1f}" r="2" fill="{colour}">'
            f"<title>{escape(name)} at {_num(a)}: {_num(b)}</title></circle>"
            for a, b in zip(x, ys, strict=True)
        ]
    return _svg("lines", body, list(series))


def bars(items: list[tuple[str, float]], unit: str = "", *, colour: int = 0) -> str:
    """Horizontal bars, one per (label, value), labelled on the left, the value on the right."""
    row = 22
    height = TOP + row * len(items) + 8
    top = max((v for _, v in items), default=1.0) or 1.0
    left, right = 200, 90
    body = []
    for i, (label, value) in enumerate(items):
        y = TOP + i * row
        w = (W - left - right) * value / top
        shown = label if len(label) <= 30 else label[:29] + "\u2026"
        body.append(f'<text class="tick" x="{left - 6}" y="{y + 15}" text-anchor="end">{escape(shown)}</text>')
        body.append(
            f'<rect class="bar" data-label="{escape(label)}" data-n="{value}" x="{left}" y="{y + 3}" '
            f'width="{max(w, 0.5):.1f}" height="{row - 6}" fill="{COLOURS[colour % len(COLOURS)]}">'
            f"<title>{escape(label)}: {_num(value)}{escape(unit)}</title></rect>"
        )
        body.append(f'<text class="tick" x="{left + w + 6:.1f}" y="{y + 15}">{_num(value)}{escape(unit)}</text>')
    svg = f'<svg class="chart bars" viewBox="0 0 {W} {height}" role="img">' + "".join(body) + "</svg>"
    return f'<figure class="plot">{svg}</figure>'
