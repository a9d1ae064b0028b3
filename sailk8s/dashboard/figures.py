"""The run page's pictures as inline SVG, drawn on the server: the stage DAG and the attempt timeline."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from sailk8s.ledger.runstate import StageState

# One colour per stage state and per attempt phase (the CSS legend uses the same names).
COLOURS = {
    "pending": "#c9ced6", "running": "#3b82f6", "retrying": "#f59e0b", "succeeded": "#16a34a",
    "skipped": "#86c99a", "failed": "#dc2626", "blocked": "#9ca3af", "cancelled": "#6b7280",
    "Pending": "#93c5fd", "Running": "#3b82f6", "Succeeded": "#16a34a", "Failed": "#dc2626",
    "Cancelled": "#6b7280",
}
NODE_W, NODE_H, GAP_X, GAP_Y = 150, 40, 60, 18


def depths(stages: Sequence[StageState]) -> dict[str, int]:
    """Each stage's column: 0 for stages without dependencies, else one more than its deepest one."""
    known = {s.name: s for s in stages}
    out: dict[str, int] = {}

    def depth(name: str, seen: frozenset[str]) -> int:
        if name in out:
            return out[name]
        deps = [d for d in known[name].depends if d in known and d not in seen]
        out[name] = 1 + max((depth(d, seen | {name}) for d in deps), default=-1)
        return out[name]

    for s in stages:
        depth(s.name, frozenset())
    return out


def dag_svg(stages: Sequence[StageState]) -> str:
    """The stages as boxes in dependency columns, coloured by state, with an arrow per dependency."""
    cols = depths(stages)
    rows_in: dict[int, int] = {}
    pos: dict[str, tuple[int, int]] = {}
    for s in stages:
        col = cols[s.name]
        row = rows_in.get(col, 0)
        rows_in[col] = row + 1
        pos[s.name] = (10 + col * (NODE_W + GAP_X), 10 + row * (NODE_H + GAP_Y))
    width = 20 + (max(cols.values(), default=0) + 1) * (NODE_W + GAP_X) - GAP_X
    height = 20 + max(rows_in.values(), default=1) * (NODE_H + GAP_Y) - GAP_Y
    parts = [f'<svg class="dag" role="img" aria-label="stage graph" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
             'markerHeight="6" orient="auto"><path d="M0,0L10,5L0,10z" fill="#555"/></marker></defs>']
    for s in stages:
        x2, y2 = pos[s.name]
        for dep in s.depends:
            if dep in pos:
                x1, y1 = pos[dep]
                parts.append(f'<line x1="{x1 + NODE_W}" y1="{y1 + NODE_H // 2}" x2="{x2}" '
                             f'y2="{y2 + NODE_H // 2}" stroke="#555" marker-end="url(#arrow)"/>')
    for s in stages:
        x, y = pos[s.name]
        colour = COLOURS.get(s.state, "#c9ced6")
        label = escape(s.name if len(s.name) <= 18 else s.name[:17] + "…")
        tip = escape(f"{s.name} ({s.kind or '-'}): {s.state}" + (f": {s.cause}" if s.cause else ""))
        parts.append(f'<g class="node" data-stage="{escape(s.name)}" data-state="{escape(s.state)}">'
                     f'<title>{tip}</title>'
                     f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{colour}"/>'
                     f'<text x="{x + NODE_W // 2}" y="{y + 17}" text-anchor="middle" fill="#fff" '
                     f'font-weight="600">{label}</text>'
                     f'<text x="{x + NODE_W // 2}" y="{y + 32}" text-anchor="middle" fill="#fff" '
                     f'font-size="11">{escape(s.state)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def timeline_svg(stages: Sequence[StageState], now: float, width: int = 900) -> str:
    """One row per stage, one bar per attempt from submission to its end (or now), coloured by phase.

    Each bar's tooltip gives the attempt, its phase, the failure class and cause: a retry story
    reads as a red bar followed by a green one.
    """
    attempts = [(s, a) for s in stages for a in s.attempts]
    label_w, row_h = 130, 24
    height = 30 + max(len(stages), 1) * row_h
    parts = [f'<svg class="timeline" role="img" aria-label="attempt timeline" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">']
    if not attempts:
        parts.append('<text x="10" y="20">no attempts yet</text></svg>')
        return "".join(parts)
    t0 = min(a.submitted_at for _, a in attempts)
    t1 = max([a.finished_at or now for _, a in attempts] + [t0 + 1.0])
    scale = (width - label_w - 10) / (t1 - t0)
    parts.append(f'<text x="{label_w}" y="{height - 6}" font-size="11" fill="#555">0s</text>'
                 f'<text x="{width - 10}" y="{height - 6}" font-size="11" fill="#555" text-anchor="end">'
                 f'{t1 - t0:.0f}s</text>')
    for row, s in enumerate(stages):
        y = 6 + row * row_h
        parts.append(f'<text x="4" y="{y + 15}" font-size="12">{escape(s.name[:18])}</text>')
        for a in s.attempts:
            x = label_w + (a.submitted_at - t0) * scale
            w = max(3.0, ((a.finished_at or now) - a.submitted_at) * scale)
            why = f" [{a.failure}] {a.message or a.reason or ''}" if a.failure else ""
            tip = escape(f"{s.name} attempt {a.attempt}: {a.phase}{why}".strip())
            parts.append(f'<g class="attempt" data-stage="{escape(s.name)}" data-attempt="{a.attempt}" '
                         f'data-phase="{escape(a.phase)}"><title>{tip}</title>'
                         f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 6}" rx="3" '
                         f'fill="{COLOURS.get(a.phase, "#999")}"/>'
                         f'<text x="{x + 3:.1f}" y="{y + 13}" font-size="10" fill="#fff">'
                         f'#{a.attempt}</text></g>')
    parts.append("</svg>")
    return "".join(parts)
