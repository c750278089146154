"""A layer-score bar chart as inline SVG (no JavaScript, no image library).

One bar per layer slice: its score when scored (the selected layers filled, the
others outlined), else its norm. Text is escaped; the SVG carries a <title> per
bar so a hover shows the numbers.
"""

from __future__ import annotations

from html import escape

from ..catalog.records import LayerRecord

WIDTH, HEIGHT, PAD = 640, 220, 34


def layer_score_svg(layers: list[LayerRecord]) -> str:
    """The chart of ``layers``' scores (or norms when none is scored) as an ``<svg>`` element."""
    scored = any(lay.score is not None for lay in layers)
    values = [(lay.score if scored else lay.norm) or 0.0 for lay in layers]
    what = "layer score" if scored else "slice norm (not scored yet)"
    if not values:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="40" role="img"><text x="8" y="24">no layers</text></svg>'
    top, bottom = max(max(values), 0.0), min(min(values), 0.0)
    span = (top - bottom) or 1.0
    plot_h = HEIGHT - 2 * PAD
    zero_y = PAD + plot_h * top / span
    step = (WIDTH - 2 * PAD) / len(values)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(what)} per layer">',
             f'<text x="{PAD}" y="16" class="axis">{escape(what)} per layer (filled: selected)</text>',
             f'<line x1="{PAD}" y1="{zero_y:.1f}" x2="{WIDTH - PAD}" y2="{zero_y:.1f}" stroke="#888"/>']  # fmt: skip
    for i, (lay, v) in enumerate(zip(layers, values, strict=True)):
        h = plot_h * abs(v) / span
        y = zero_y - h if v >= 0 else zero_y
        x = PAD + i * step + step * 0.1
        fill = "#2b6cb0" if lay.selected else "none"
        label = lay.label if lay.index is None else str(lay.index)
        parts.append(f'<rect class="bar{" selected" if lay.selected else ""}" x="{x:.1f}" y="{y:.1f}" '
                     f'width="{step * 0.8:.1f}" height="{max(h, 0.5):.1f}" fill="{fill}" stroke="#2b6cb0">'
                     f'<title>{escape(lay.label)}: {v:.4g}{" (selected)" if lay.selected else ""}</title></rect>')  # fmt: skip
        if len(values) <= 40:
            parts.append(f'<text x="{x + step * 0.4:.1f}" y="{HEIGHT - PAD + 14}" text-anchor="middle" '
                         f'class="tick">{escape(label[:6])}</text>')  # fmt: skip
    parts.append(f'<text x="4" y="{PAD + 4}" class="tick">{top:.3g}</text>')
    parts.append(f'<text x="4" y="{HEIGHT - PAD}" class="tick">{bottom:.3g}</text></svg>')
    return "".join(parts)
