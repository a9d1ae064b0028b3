"""The filter funnel: samples in, then what each step of the chain removed, and a PNG chart."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any


def build_funnel(samples_in: int, dropped: Mapping[str, int],
                 steps: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, Any]]:
    """Rows in chain order: step, dropped by reason, remaining after it.

    `steps` are (step name, reasons it owns); reasons no step owns (read-time problems such
    as bad json) form a leading 'read' step so every drop is shown exactly once.
    """
    owned = {r for _, reasons in steps for r in reasons}
    rows: list[dict[str, Any]] = []
    remaining = samples_in
    unowned = {r: n for r, n in dropped.items() if r not in owned and n}
    for name, reasons in [("read", sorted(unowned)), *steps]:
        mine = {r: int(dropped.get(r, 0)) for r in reasons if dropped.get(r, 0)}
        if name == "read" and not mine:
            continue
        remaining -= sum(mine.values())
        rows.append({"step": name, "dropped": mine, "remaining": remaining})
    return rows


def funnel_png(samples_in: int, rows: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """A horizontal bar chart of samples remaining after each step, drops annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["input", *[str(r["step"]) for r in rows]]
    values = [samples_in, *[int(r["remaining"]) for r in rows]]
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(labels) + 1.4), dpi=100)
    bars = ax.barh(range(len(labels)), values, color="#4C72B0")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("samples remaining")
    ax.set_title(title)
    for i, bar in enumerate(bars):
        note = f"{values[i]}"
        if i > 0:
            drops = rows[i - 1]["dropped"]
            if drops:
                note += "  (-" + ", -".join(f"{n} {r}" for r, n in sorted(drops.items())) + ")"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + note, va="center", fontsize=8)
    ax.set_xlim(0, max([*values, 1]) * 1.9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
