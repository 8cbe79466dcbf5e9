"""Small inline SVG charts for the latent browser (pure Python: no plotting library, no
script, nothing fetched). Plugins draw their panels with them too.

Every text a chart shows is HTML-escaped here; numbers are formatted with ``fmt``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

#: Colours of the browser: the highlight of an activation, and lines of several series.
ACCENT = "#e8833a"
SERIES_COLORS = ("#e8833a", "#3a7be8", "#2a9d5c", "#b5479b", "#8a6d3b", "#5b5b5b")
_PAD_LEFT, _PAD_BOTTOM, _PAD_TOP, _PAD_RIGHT = 60, 30, 8, 8


def fmt(value: float) -> str:
    """A number in at most 3 significant digits (``1.23e-05``, ``0.123``, ``12.3``)."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    if abs(value) < 1e-3 or abs(value) >= 1e6:
        return f"{value:.2e}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _frame(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{html.escape(title)}">'
    ]


def _axes(
    width: int,
    height: int,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    xlabel: str,
    ylabel: str,
) -> list[str]:
    x0, y0 = _PAD_LEFT, height - _PAD_BOTTOM
    parts = [
        f'<line x1="{x0}" y1="{_PAD_TOP}" x2="{x0}" y2="{y0}" class="axis"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{width - _PAD_RIGHT}" y2="{y0}" class="axis"/>',
        f'<text x="{x0 - 4}" y="{y0}" class="tick" text-anchor="end">{fmt(y_range[0])}</text>',
        f'<text x="{x0 - 4}" y="{_PAD_TOP + 8}" class="tick" text-anchor="end">'
        f"{fmt(y_range[1])}</text>",
        f'<text x="{x0}" y="{y0 + 12}" class="tick">{fmt(x_range[0])}</text>',
        f'<text x="{width - _PAD_RIGHT}" y="{y0 + 12}" class="tick" text-anchor="end">'
        f"{fmt(x_range[1])}</text>",
    ]
    if xlabel:
        parts.append(
            f'<text x="{(x0 + width) / 2:.1f}" y="{height - 4}" class="label" '
            f'text-anchor="middle">{html.escape(xlabel)}</text>'
        )
    if ylabel:
        parts.append(
            f'<text x="10" y="{(_PAD_TOP + y0) / 2:.1f}" class="label" text-anchor="middle" '
            f'transform="rotate(-90 10 {(_PAD_TOP + y0) / 2:.1f})">{html.escape(ylabel)}</text>'
        )
    return parts


def bar_chart(
    heights: Sequence[float],
    edges: Sequence[float],
    *,
    width: int = 340,
    height: int = 130,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "bar chart",
    color: str = ACCENT,
) -> str:
    """Bars of ``heights`` over the bins ``edges`` (``len(edges) == len(heights) + 1``)."""
    if len(edges) != len(heights) + 1:
        raise ValueError(f"bar_chart: {len(edges)} edges for {len(heights)} bars")
    top = max((float(h) for h in heights), default=0.0) or 1.0
    lo, hi = float(edges[0]), float(edges[-1])
    span = (hi - lo) or 1.0
    plot_w, plot_h = width - _PAD_LEFT - _PAD_RIGHT, height - _PAD_TOP - _PAD_BOTTOM
    parts = _frame(width, height, title)
    for h, a, b in zip(heights, edges[:-1], edges[1:], strict=True):
        if h <= 0:
            continue
        x = _PAD_LEFT + (float(a) - lo) / span * plot_w
        w = max(0.5, (float(b) - float(a)) / span * plot_w - 0.5)
        bar_h = float(h) / top * plot_h
        parts.append(
            f'<rect x="{x:.1f}" y="{_PAD_TOP + plot_h - bar_h:.1f}" width="{w:.1f}" '
            f'height="{bar_h:.1f}" fill="{color}"><title>{fmt(float(a))} to {fmt(float(b))}: '
            f"{fmt(float(h))}</title></rect>"
        )
    parts += _axes(width, height, (lo, hi), (0.0, top), xlabel, ylabel)
    return "".join([*parts, "</svg>"])


def line_chart(
    series: Sequence[Sequence[float]],
    *,
    x: Sequence[float] | None = None,
    width: int = 340,
    height: int = 130,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "line chart",
    y_range: tuple[float, float] | None = None,
    marker_x: float | None = None,
    colors: Sequence[str] = SERIES_COLORS,
    labels: Sequence[str] = (),
) -> str:
    """One polyline per series over ``x`` (default ``0..n-1``; a NaN value leaves a gap);
    ``marker_x`` draws a dashed vertical line there; ``labels`` name the series (on hover)."""
    n = max((len(s) for s in series), default=0)
    xs = [float(v) for v in (x if x is not None else range(n))]
    values = [float(v) for s in series for v in s if math.isfinite(float(v))]
    lo, hi = y_range or (min(values, default=0.0), max(values, default=1.0))
    if hi <= lo:
        hi = lo + 1.0
    x_lo, x_hi = (xs[0], xs[-1]) if xs else (0.0, 1.0)
    x_span = (x_hi - x_lo) or 1.0
    plot_w, plot_h = width - _PAD_LEFT - _PAD_RIGHT, height - _PAD_TOP - _PAD_BOTTOM

    def point(xv: float, yv: float) -> str:
        px = _PAD_LEFT + (xv - x_lo) / x_span * plot_w
        py = _PAD_TOP + plot_h - (min(max(yv, lo), hi) - lo) / (hi - lo) * plot_h
        return f"{px:.1f},{py:.1f}"

    parts = _frame(width, height, title)
    if marker_x is not None and x_lo <= marker_x <= x_hi:
        mx = _PAD_LEFT + (marker_x - x_lo) / x_span * plot_w
        parts.append(
            f'<line x1="{mx:.1f}" y1="{_PAD_TOP}" x2="{mx:.1f}" y2="{_PAD_TOP + plot_h}" '
            'class="marker"/>'
        )
    for i, s in enumerate(series):
        label = f"<title>{html.escape(labels[i])}</title>" if i < len(labels) else ""
        for segment in _segments(xs, s):
            pts = " ".join(point(xv, yv) for xv, yv in segment)
            parts.append(
                f'<polyline points="{pts}" fill="none" stroke="{colors[i % len(colors)]}" '
                f'stroke-width="1.5" stroke-opacity="0.8">{label}</polyline>'
            )
    parts += _axes(width, height, (x_lo, x_hi), (lo, hi), xlabel, ylabel)
    return "".join([*parts, "</svg>"])


def _segments(xs: Sequence[float], ys: Sequence[float]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive finite points."""
    runs: list[list[tuple[float, float]]] = [[]]
    for xv, yv in zip(xs, ys, strict=False):
        if math.isfinite(float(yv)):
            runs[-1].append((xv, float(yv)))
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run]
